// Over 500 lines: a connection's queue and every operation on it (`execute`, `control`,
// `status`, `close`) share one lock and its invariants; split, they would each re-check them.
//! A connection's jobs: the [`Session`] handle, its queue, and `execute`, `control`, `status`
//! and `close`. Lives as long as the connection (and its last job's task).
//!
//! The session has one *head*: the job that owns it, from the moment it is next in line
//! (waiting for hooks, running pre-hooks) until its terminal event. Jobs behind it wait in the
//! queue. The state mutex is held only for short, non-blocking steps, never while a job waits
//! for hooks or runs hooks, so `status`, `control` and `close` always answer promptly; order is
//! kept because only the head's task, when it ends, promotes the next queued job.

use super::job::{self, JobStart};
use super::terminal::End;
use super::{Accepted, ExecError, Executor, JobRequest};
use crate::events::{Event, HookWarning, JobId};
use crate::jobs::Control;
use crate::protocol::{ControlType, QueuedStatus, RpcError, RunningStatus, SessionStatus};
use crate::registry::{JobLog, NewJob};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// A connection's jobs. Cheap to clone; [`Session::close`] ends them.
#[derive(Clone)]
pub struct Session {
    pub(super) inner: Arc<SessionInner>,
}

/// Who submits a session's jobs, as their records keep it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client's address.
    pub peer: Option<String>,
    /// The label of the token it presented (`default` for `server.token`).
    pub token_label: Option<String>,
}

/// What [`Session::close`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The connection went away: its jobs end, except detached ones.
    Disconnect,
    /// The server stops: every job ends.
    Everything,
}

pub(super) struct SessionInner {
    pub(super) exec: Arc<Executor>,
    pub(super) id: Arc<str>,
    pub(super) origin: Origin,
    pub(super) events: mpsc::Sender<Event>,
    /// An async mutex so a job's task can wait for it; never held across a hook call, a wait
    /// for hooks, or a send into `events` (a slow client must not stall `status`).
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    /// The job that owns the session, if any. `None` implies an empty queue.
    pub(super) head: Option<Head>,
    pub(super) queue: VecDeque<Queued>,
    pub(super) closed: bool,
}

/// The session's current job.
pub(super) struct Head {
    pub(super) job_id: JobId,
    pub(super) log: JobLog,
    pub(super) command: String,
    /// Canceled by `control CANCEL` or `close` before the process exists; the job's task checks
    /// it under the state lock right before spawning, so no process starts after it.
    pub(super) cancel: CancellationToken,
    pub(super) phase: Phase,
    /// Closes when the job's task has sent its terminal event and let go of the session.
    pub(super) done: watch::Receiver<()>,
    /// Set when the job's task is about to send its terminal event: a client may answer that
    /// event with its next `execute` before the task has let go, and that `execute` waits for
    /// `done` rather than queue behind a job that has ended.
    pub(super) ending: bool,
}

pub(super) enum Phase {
    /// Waiting for hooks or running pre-hooks. `answered`: the client has the job's id (it was
    /// answered `queued`); an `execute` still waiting for its answer is not the client's yet,
    /// so `status` and `control` do not see it (only `close` ends it).
    Starting {
        answered: bool,
    },
    Running(Running),
}

pub(super) struct Running {
    pub(super) pid: u32,
    pub(super) pgid: i32,
    pub(super) started: Instant,
    pub(super) paused: bool,
    pub(super) ctrl: mpsc::Sender<Control>,
    /// Its stdin or terminal, when it keeps one open.
    pub(super) input: Option<crate::jobs::input::JobInput>,
    /// The input stage for it: its generation's hooks, its context and its request as run
    /// (`None` when no hook checks input).
    pub(super) input_check: Option<Arc<super::input::InputCheck>>,
}

pub(super) struct Queued {
    pub(super) job_id: JobId,
    pub(super) request: JobRequest,
    pub(super) log: JobLog,
}

impl Head {
    fn visible_starting(&self) -> bool {
        matches!(self.phase, Phase::Starting { answered: true })
    }
}

impl Session {
    pub(super) fn new(
        exec: Arc<Executor>,
        id: Arc<str>,
        events: mpsc::Sender<Event>,
        origin: Origin,
    ) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                exec,
                id,
                origin,
                events,
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub(super) fn from_inner(inner: Arc<SessionInner>) -> Session {
        Session { inner }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.inner.id
    }

    /// Starts `request` now if the session is idle, else queues it behind the others.
    ///
    /// Starting now includes waiting for the current generation's hooks (at most its
    /// `hooks_load_timeout`, then [`ExecError::HooksNotReady`]) and running the pre-hooks.
    /// Dropping this future does not stop the job; [`Session::close`] does.
    pub async fn execute(&self, request: JobRequest) -> Result<Accepted, ExecError> {
        let cfg = self.inner.exec.config();
        if let Some(t) = request.timeout
            && t > cfg.max_timeout
        {
            return Err(ExecError::Invalid(format!(
                "`timeout` of {} s is above the server's maximum of {} s",
                t.as_secs_f64(),
                cfg.max_timeout.as_secs_f64()
            )));
        }
        cfg.limits
            .resolve(request.limits)
            .map_err(ExecError::Invalid)?;
        if let Some(pty) = &request.pty {
            pty.check().map_err(ExecError::Invalid)?;
        }
        JobRequest::check_labels(&request.labels)?;
        let exec = &self.inner.exec;
        let registry = exec.registry();
        let job_id = request.job_id.clone().unwrap_or_else(|| exec.new_job_id());
        if request.detach {
            check_detach_room(registry)?;
        }
        let request_hash = request
            .idempotency_key
            .as_ref()
            .map(|_| request.fingerprint());
        if let (Some(key), Some(hash)) = (&request.idempotency_key, &request_hash) {
            match registry.claim_key(key, hash, &job_id).await {
                Ok(Some(existing)) => return Ok(Accepted::Existing { job_id: existing }),
                Ok(None) => {}
                Err(e) => return Err(ExecError::Registry(e)),
            }
        }
        let answer = loop {
            let mut st = self.inner.state.lock().await;
            let ended = st.head.as_ref().filter(|h| h.ending && st.queue.is_empty());
            if let Some(head) = ended {
                let mut done = head.done.clone();
                drop(st);
                // Closes (an error) once the ending job has let go of the session.
                let _ = done.changed().await;
                continue;
            }
            let refusal = if st.closed {
                Some(ExecError::Closed)
            } else if st.head.is_some() && st.queue.len() >= cfg.max_queue {
                self.inner.exec.refused(
                    "queue_full",
                    self.inner.origin.peer.as_deref(),
                    serde_json::json!({
                        "detail": format!("{} jobs already queued", st.queue.len()),
                        "token_label": self.inner.origin.token_label,
                        "session_id": &*self.inner.id,
                        "command": request.command,
                        "cwd": request.cwd,
                    }),
                );
                Some(ExecError::QueueFull(st.queue.len()))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                if let Some(key) = &request.idempotency_key {
                    registry.release_key(key);
                }
                return Err(refusal);
            }
            let log = registry.create(NewJob {
                job_id: job_id.clone(),
                command: request.command.clone(),
                cwd: request.cwd.clone(),
                env: crate::config::mask_env(&cfg.secret_env, &request.env),
                timeout: request.timeout.map(|t| t.as_secs_f64()),
                peer: self.inner.origin.peer.clone(),
                token_label: self.inner.origin.token_label.clone(),
                session_id: Some(self.inner.id.to_string()),
                detached: request.detach,
                output_encoding: request.output_encoding,
                idempotency_key: request.idempotency_key.clone(),
                request_hash,
            });
            exec.track(&job_id, &self.inner);
            match &st.head {
                None => {
                    let (tx, rx) = oneshot::channel();
                    self.inner
                        .take_head(&mut st, job_id, request, log, Some(tx), false);
                    break rx;
                }
                Some(head) => {
                    let ahead = usize::from(head.visible_starting());
                    st.queue.push_back(Queued {
                        job_id: job_id.clone(),
                        request,
                        log,
                    });
                    return Ok(Accepted::Queued {
                        job_id,
                        position: ahead + st.queue.len(),
                    });
                }
            }
        };
        // The job's task always answers (its supervisor does if the task panicked); no answer
        // means the runtime is going away.
        answer.await.unwrap_or(Err(ExecError::Closed))
    }

    /// Pauses, resumes or cancels the running job (`job_id: None`) or the named one; a job
    /// not started yet (queued, or waiting for its hooks) can only be canceled.
    pub async fn control(
        &self,
        kind: ControlType,
        job_id: Option<&str>,
    ) -> Result<JobId, ExecError> {
        let mut guard = self.inner.state.lock().await;
        // Through a plain `&mut State`, so the head and the queue borrow separately.
        let st = &mut *guard;
        let head = st
            .head
            .as_mut()
            .filter(|h| !matches!(h.phase, Phase::Starting { answered: false }));
        let head = match (job_id, head) {
            (None, None) => return Err(ExecError::NoSuchJob("no job is running".into())),
            (None, Some(h)) => Some(h),
            (Some(id), Some(h)) if &*h.job_id == id => Some(h),
            (Some(_), _) => None,
        };
        let Some(head) = head else {
            let id = job_id.expect("a named job");
            let Some(pos) = st.queue.iter().position(|q| &*q.job_id == id) else {
                return Err(ExecError::NoSuchJob(format!(
                    "no job {id} on this connection"
                )));
            };
            if kind != ControlType::Cancel {
                return Err(not_started(id));
            }
            let q = st.queue.remove(pos).expect("position is in range");
            drop(guard);
            self.inner
                .finish_unstarted(&q.job_id, &q.log, End::Canceled)
                .await;
            return Ok(q.job_id);
        };
        let running = match &mut head.phase {
            Phase::Starting { .. } if kind == ControlType::Cancel => {
                // Its task sees this while waiting, or under this lock before spawning.
                head.cancel.cancel();
                return Ok(head.job_id.clone());
            }
            Phase::Starting { .. } => return Err(not_started(&head.job_id)),
            Phase::Running(r) => r,
        };
        let (tx, rx) = oneshot::channel();
        let id = head.job_id.clone();
        let ended = move || ExecError::NoSuchJob(format!("job {id} has already ended"));
        if running
            .ctrl
            .send(Control { kind, reply: tx })
            .await
            .is_err()
        {
            return Err(ended());
        }
        match rx.await {
            Ok(Ok(())) => {
                match kind {
                    ControlType::Pause => running.paused = true,
                    ControlType::Resume => running.paused = false,
                    ControlType::Cancel => {}
                }
                Ok(head.job_id.clone())
            }
            Ok(Err(msg)) => Err(ExecError::NoSuchJob(msg)),
            Err(_) => Err(ended()),
        }
    }

    /// The running job and the jobs not started yet.
    pub async fn status(&self) -> SessionStatus {
        let st = self.inner.state.lock().await;
        let head = st.head.as_ref();
        let running = head.and_then(|h| match &h.phase {
            Phase::Running(r) => Some(RunningStatus {
                job_id: h.job_id.clone(),
                command: h.command.clone(),
                pid: r.pid,
                pgid: r.pgid,
                state: if r.paused { "paused" } else { "running" }.to_string(),
                elapsed: r.started.elapsed().as_secs_f64(),
            }),
            Phase::Starting { .. } => None,
        });
        let starting = head
            .filter(|h| h.visible_starting())
            .map(|h| (h.job_id.clone(), h.command.clone()));
        let queued = starting
            .into_iter()
            .chain(
                st.queue
                    .iter()
                    .map(|q| (q.job_id.clone(), q.request.command.clone())),
            )
            .enumerate()
            .map(|(i, (job_id, command))| QueuedStatus {
                job_id,
                command,
                position: i + 1,
            })
            .collect();
        SessionStatus {
            session_id: self.inner.id.to_string(),
            running,
            queued,
        }
    }

    /// Lets the running or queued job `job_id` of this session outlive it.
    pub async fn detach(&self, job_id: &str) -> Result<JobId, ExecError> {
        let st = self.inner.state.lock().await;
        let found = st
            .head
            .iter()
            .map(|h| (&h.job_id, &h.log))
            .chain(st.queue.iter().map(|q| (&q.job_id, &q.log)))
            .find(|(id, _)| &***id == job_id);
        let Some((id, log)) = found else {
            return Err(ExecError::NoSuchJob(format!(
                "job {job_id} has already ended"
            )));
        };
        if !log.is_detached() {
            check_detach_room(self.inner.exec.registry())?;
            log.mark_detached();
        }
        Ok(id.clone())
    }

    /// Ends the session's jobs — with [`Closing::Disconnect`], all but the detached ones:
    /// queued jobs are dropped (each with its terminal event), then the current one is
    /// canceled (waiting for hooks or running), and this returns once its terminal event has
    /// been sent. Detached jobs go on, one after another, as if the session were open.
    pub async fn close(&self, closing: Closing) {
        let keep = |log: &JobLog| closing == Closing::Disconnect && log.is_detached();
        let dropped: VecDeque<Queued> = {
            let mut st = self.inner.state.lock().await;
            st.closed = true;
            let (kept, dropped): (VecDeque<Queued>, VecDeque<Queued>) =
                st.queue.drain(..).partition(|q| keep(&q.log));
            st.queue = kept;
            dropped
        };
        for q in dropped {
            self.inner
                .finish_unstarted(&q.job_id, &q.log, End::Dropped)
                .await;
        }
        // Read afresh: the head may have started its process meanwhile (nothing new can
        // become head once `closed` is set).
        let head = {
            let st = self.inner.state.lock().await;
            st.head.as_ref().filter(|h| !keep(&h.log)).map(|h| {
                h.cancel.cancel();
                let ctrl = match &h.phase {
                    Phase::Running(r) => Some(r.ctrl.clone()),
                    Phase::Starting { .. } => None,
                };
                (ctrl, h.done.clone())
            })
        };
        if let Some((ctrl, mut done)) = head {
            if let Some(ctrl) = ctrl {
                let (tx, _rx) = oneshot::channel();
                let _ = ctrl
                    .send(Control {
                        kind: ControlType::Cancel,
                        reply: tx,
                    })
                    .await;
            }
            while done.changed().await.is_ok() {}
        }
    }
}

/// Refuses one more detached job past `[state] max_detached` (or with no registry to find it
/// again).
fn check_detach_room(registry: &crate::registry::Registry) -> Result<(), ExecError> {
    if !registry.is_on() {
        return Err(ExecError::Registry(RpcError::RegistryOff(
            "a detached job could not be found again: the job registry is off".into(),
        )));
    }
    if registry.detached_jobs() >= registry.max_detached() {
        return Err(ExecError::DetachedLimit(registry.detached_jobs()));
    }
    Ok(())
}

fn not_started(id: &str) -> ExecError {
    ExecError::NoSuchJob(format!(
        "job {id} is queued, not running: only CANCEL applies"
    ))
}

impl SessionInner {
    /// Records a job's event and sends it; a session whose receiver is gone simply stops
    /// hearing.
    pub(super) async fn emit(&self, log: &JobLog, event: Event) {
        log.event(&event);
        if matches!(event, Event::Completed(_)) {
            // A client that attaches on `process.completed` finds the final spool.
            log.settled().await;
        }
        let _ = self.events.send(event).await;
    }

    /// Sends each hook warning as its own event.
    pub(super) async fn emit_warnings(&self, log: &JobLog, warnings: Vec<HookWarning>) {
        for warning in warnings {
            self.emit(log, Event::HookWarning(warning)).await;
        }
    }

    /// Makes `job_id` the head and starts its task. `answer` is the waiting `execute`'s, for a
    /// job that starts at once; `answered` says whether the client already has its id.
    fn take_head(
        self: &Arc<Self>,
        st: &mut State,
        job_id: JobId,
        request: JobRequest,
        log: JobLog,
        answer: Option<oneshot::Sender<Result<Accepted, ExecError>>>,
        answered: bool,
    ) {
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(());
        st.head = Some(Head {
            job_id: job_id.clone(),
            log: log.clone(),
            command: request.command.clone(),
            cancel: cancel.clone(),
            phase: Phase::Starting { answered },
            done: done_rx,
            ending: false,
        });
        job::spawn(JobStart {
            inner: self.clone(),
            job_id,
            request,
            log,
            cancel,
            answer,
            done: done_tx,
        });
    }

    /// Lets go of the session after the head's terminal event and starts the next queued job
    /// (after `close`, only detached jobs are left in the queue). Dropping `done` tells
    /// `close` the head has ended.
    pub(super) async fn release(self: &Arc<Self>, done: watch::Sender<()>) {
        let mut st = self.state.lock().await;
        st.head = None;
        drop(done);
        if let Some(next) = st.queue.pop_front() {
            self.take_head(&mut st, next.job_id, next.request, next.log, None, true);
        }
    }
}
