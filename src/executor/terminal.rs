//! How a job ended ([`End`]) and the one place its `process.completed` is built and sent
//! ([`SessionInner::finish`] for a job that had a task, [`SessionInner::finish_unstarted`] for
//! one dropped from the queue; both go through [`SessionInner::complete`]).
//!
//! Exactly once per job follows from ownership: a queued job is finished by whoever removes it
//! from the queue, and a job with a task by that task's supervisor, which turns even a panic
//! into an `End` (see `job`).

use super::session::SessionInner;
use super::{Accepted, ExecError};
use crate::events::{Completion, Event, HookReport, JobId, JobNote, JobStatus, NoteStatus};
use crate::jobs::ProcessOutcome;
use crate::registry::JobLog;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// How a job ended.
pub(super) enum End {
    /// Its process ran; `reports` are the post-hooks'.
    Ran {
        outcome: Box<ProcessOutcome>,
        pid: u32,
        pgid: i32,
        reports: Vec<HookReport>,
    },
    /// A pre-hook refused it.
    Denied { hook: String, reason: String },
    /// Its generation's hooks did not load in time; the message says so.
    HooksNotReady(String),
    /// It could not run (spawn failure, or its task failed internally).
    Failed(String),
    /// Canceled (by `control` or `close`) before its process existed; announced with
    /// `process.canceled` like a running job's cancel.
    Canceled,
    /// Dropped from the queue by `close`: only the terminal event.
    Dropped,
}

/// What the caller of an `execute` that was to start at once hears.
pub(super) type Answer = oneshot::Sender<Result<Accepted, ExecError>>;

impl End {
    /// For a job whose `execute` is still waiting for its answer: the error that answers it
    /// instead of a terminal event (the client never had the job's id).
    fn refusal(&self, job_id: &JobId) -> Option<ExecError> {
        match self {
            End::Denied { hook, reason } => Some(ExecError::Denied {
                job_id: job_id.clone(),
                hook: hook.clone(),
                reason: reason.clone(),
            }),
            End::HooksNotReady(msg) => Some(ExecError::HooksNotReady(msg.clone())),
            // Only `close` reaches a job nobody has the id of.
            End::Canceled | End::Dropped => Some(ExecError::Closed),
            End::Ran { .. } | End::Failed(_) => None,
        }
    }

    fn into_completion(self, job_id: JobId) -> Completion {
        match self {
            End::Ran {
                outcome,
                pid,
                pgid,
                reports,
            } => Completion {
                job_id,
                status: outcome.status,
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                execution_time: outcome.duration.as_secs_f64(),
                stdout_bytes: outcome.stdout_bytes,
                stderr_bytes: outcome.stderr_bytes,
                stdout_raw_bytes: outcome.raw_bytes.map(|r| r.0),
                stderr_raw_bytes: outcome.raw_bytes.map(|r| r.1),
                stdout_sha256: Some(outcome.stdout_sha256),
                stderr_sha256: Some(outcome.stderr_sha256),
                pid: Some(pid),
                pgid: Some(pgid),
                error: outcome.error,
                hook: None,
                reason: None,
                hooks: reports,
                leftovers_killed: (outcome.leftovers_killed > 0)
                    .then_some(outcome.leftovers_killed as u64),
                limit: outcome.limit,
                usage: Some(outcome.usage),
            },
            End::Denied { hook, reason } => {
                let mut c = Completion::without_process(job_id, JobStatus::Denied);
                c.hook = Some(hook);
                c.reason = Some(reason);
                c
            }
            End::HooksNotReady(msg) => {
                let mut c = Completion::without_process(job_id, JobStatus::Failed);
                c.error = Some(ExecError::HooksNotReady(msg).to_string());
                c
            }
            End::Failed(error) => {
                let mut c = Completion::without_process(job_id, JobStatus::Failed);
                c.error = Some(error);
                c
            }
            End::Canceled | End::Dropped => {
                Completion::without_process(job_id, JobStatus::Canceled)
            }
        }
    }
}

impl SessionInner {
    /// The only place a `process.completed` is sent.
    async fn complete(&self, job_id: &JobId, log: &JobLog, end: End) {
        if matches!(end, End::Canceled) {
            let note = Event::Canceled(JobNote {
                job_id: job_id.clone(),
                status: NoteStatus::Canceled,
            });
            self.emit(log, note).await;
        }
        let completion = end.into_completion(job_id.clone());
        self.exec.metrics.job_ended(&completion);
        let completion = Event::Completed(completion);
        self.exec.untrack(job_id);
        self.emit(log, completion).await;
    }

    /// Ends a job that never had a task (removed from the queue by its taker).
    pub(super) async fn finish_unstarted(&self, job_id: &JobId, log: &JobLog, end: End) {
        self.complete(job_id, log, end).await;
    }

    /// Ends the session's head: its terminal event (or, for an `execute` still waiting, the
    /// refusal that replaces it), then the session goes to the next job, then the waiting
    /// `execute` hears its answer, so a client that sends its next job on that answer finds
    /// the session free.
    pub(super) async fn finish(
        self: &Arc<Self>,
        job_id: &JobId,
        log: &JobLog,
        end: End,
        answer: Option<Answer>,
        done: watch::Sender<()>,
    ) {
        if let Some(head) = self.state.lock().await.head.as_mut()
            && head.job_id == *job_id
        {
            head.ending = true;
        }
        let reply = match answer {
            Some(tx) => match end.refusal(job_id) {
                Some(err) => {
                    // The client never had the job's id: no event, but the record ends.
                    self.exec.untrack(job_id);
                    let completion = end.into_completion(job_id.clone());
                    self.exec.metrics.job_ended(&completion);
                    log.event(&Event::Completed(completion));
                    Some((tx, Err(err)))
                }
                None => {
                    let reply = match &end {
                        End::Failed(error) => Some((
                            tx,
                            Ok(Accepted::Failed {
                                job_id: job_id.clone(),
                                error: error.clone(),
                            }),
                        )),
                        // A job that ran had its answer already; nothing left to say.
                        _ => None,
                    };
                    self.complete(job_id, log, end).await;
                    reply
                }
            },
            None => {
                self.complete(job_id, log, end).await;
                None
            }
        };
        self.release(done).await;
        if let Some((tx, reply)) = reply {
            let _ = tx.send(reply);
        }
    }
}
