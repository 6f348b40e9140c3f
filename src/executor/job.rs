//! One job's task, from the moment it heads its session to its end: wait for the hooks of the
//! generation in force, run the pre-hooks, spawn, answer the waiting `execute`, stream, run the
//! post-hooks. Lives as long as the job.
//!
//! The body runs in its own task under a supervisor that awaits it: whatever the body returns,
//! or a panic in it (in a hook implementation, say), the supervisor turns into the job's one
//! terminal event and hands the session on. Drop guards in the body undo what a panic would
//! leave behind: the running-jobs count and a live process group.

use super::session::{Phase, Running, SessionInner};
use super::tap::JobTap;
use super::terminal::{Answer, End};
use super::{Accepted, Generation, JobContext, JobRequest, PreVerdict};
use crate::config::ExecConfig;
use crate::events::{Event, JobId, Started};
use crate::jobs::{self, ProcessSpec};
use crate::registry::JobLog;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, field, info, info_span, warn};

/// What the session hands a job that has just become its head.
pub(super) struct JobStart {
    pub(super) inner: Arc<SessionInner>,
    pub(super) job_id: JobId,
    pub(super) request: JobRequest,
    pub(super) log: JobLog,
    pub(super) cancel: CancellationToken,
    /// The waiting `execute`'s, for a job that starts at once.
    pub(super) answer: Option<Answer>,
    /// Dropped once the job has let go of the session.
    pub(super) done: watch::Sender<()>,
}

/// What the terminal event of a job whose task panicked says.
pub(super) const TASK_FAILED: &str = "the job's task failed internally (see the server log)";

/// Starts the job's supervised task.
pub(super) fn spawn(mut job: JobStart) {
    let span = info_span!(
        "job",
        job = %job.job_id,
        session = %job.inner.id,
        pid = field::Empty,
        trace_id = field::Empty,
        span_id = field::Empty,
        parent_span_id = field::Empty,
    );
    // The job is a span of the client's trace; its processes run under it.
    if let Some(parent) = job.request.trace.take() {
        let own = crate::trace::join(&span, &parent);
        span.record("trace_id", own.trace_id.as_str());
        span.record("span_id", own.parent_id.as_str());
        span.record("parent_span_id", parent.parent_id.as_str());
        job.request.trace = Some(own);
    }
    tokio::spawn(supervise(job).instrument(span));
}

async fn supervise(job: JobStart) {
    let JobStart {
        inner,
        job_id,
        request,
        log,
        cancel,
        answer,
        done,
    } = job;
    // Shared with the body, which takes it to answer `started`; what is left here after the
    // body ends answers a refusal or a failure.
    let answer = Arc::new(Mutex::new(answer));
    let body = tokio::spawn(
        run(
            inner.clone(),
            job_id.clone(),
            request,
            log.clone(),
            cancel,
            answer.clone(),
        )
        .in_current_span(),
    );
    let end = match body.await {
        Ok(end) => end,
        Err(e) => {
            error!(cause = %e, "job task failed");
            End::Failed(TASK_FAILED.into())
        }
    };
    let answer = take(&answer);
    inner.finish(&job_id, &log, end, answer, done).await;
}

fn take(answer: &Mutex<Option<Answer>>) -> Option<Answer> {
    answer.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The job's body: everything between heading the session and its end.
async fn run(
    inner: Arc<SessionInner>,
    job_id: JobId,
    mut request: JobRequest,
    log: JobLog,
    cancel: CancellationToken,
    answer: Arc<Mutex<Option<Answer>>>,
) -> End {
    let turn = std::time::Instant::now();
    // One snapshot: this job's config and hooks come from the same generation.
    let generation = match generation_with_hooks(&inner, &cancel).await {
        Ok(g) => g,
        Err(end) => return end,
    };
    let cfg = &generation.config;
    let hooks = generation.hooks.clone().expect("a generation with hooks");
    // Hooks see the timeout and limits that will apply, defaults included.
    request.timeout = Some(request.timeout.unwrap_or(cfg.default_timeout));
    let asked = match cfg.limits.resolve(request.limits) {
        Ok(l) => l,
        Err(error) => return End::Failed(error),
    };
    request.limits = Some(asked);
    let ctx = JobContext {
        session_id: inner.id.clone(),
        job_id: job_id.clone(),
        origin: inner.origin.clone(),
        received: request.clone(),
    };
    let mut pre = hooks.pre(&ctx, request).await;
    // The text given as stdin passes the input stage too, before anything runs.
    if let PreVerdict::Allow { request, .. } = &pre.verdict
        && let Some(text) = &request.stdin
        && hooks.checks_input()
        && let Err((hook, reason)) = hooks.check_input(&ctx, request, text.as_bytes()).await
    {
        pre.verdict = PreVerdict::Deny { hook, reason };
    }

    // The output stage starts before the process: an output hook that fails closed and cannot
    // start keeps the job from running.
    let mut output = super::OutputStart::default();
    if let PreVerdict::Allow { request, .. } = &pre.verdict {
        match hooks.start_output(&ctx, request).await {
            Ok(o) => output = o,
            Err((hook, reason)) => {
                let reason = format!("the output hook could not start: {reason}");
                pre.verdict = PreVerdict::Deny { hook, reason };
            }
        }
    }
    pre.warnings.append(&mut output.warnings);

    // Decide and spawn under the session lock: `control` and `close` cancel under it too, so
    // either they see the process or the process is never started.
    let mut st = inner.state.lock().await;
    let (request, info) = match pre.verdict {
        _ if cancel.is_cancelled() => {
            drop(st);
            inner.emit_warnings(&log, pre.warnings).await;
            info!("canceled before it started");
            return End::Canceled;
        }
        PreVerdict::Deny { hook, reason } => {
            drop(st);
            inner.emit_warnings(&log, pre.warnings).await;
            info!(%hook, %reason, "denied by hook");
            return End::Denied { hook, reason };
        }
        PreVerdict::Allow { request, info } => (*request, info),
    };
    let timeout = request
        .timeout
        .unwrap_or(cfg.default_timeout)
        .min(cfg.max_timeout);
    // A pre-hook may change the limits, never past the maxima.
    let limits = cfg.limits.clamp(request.limits.unwrap_or(asked));
    let spec = ProcessSpec {
        shell: cfg.shell.clone(),
        command: request.command.clone(),
        cwd: request.cwd.as_ref().map(PathBuf::from),
        env: child_env(cfg, &request, &job_id),
        timeout,
        max_pause: cfg.max_pause,
        stdin: request.stdin.clone().map(String::into_bytes),
        merge_stderr: request.merge_stderr,
        stdin_open: request.stdin_open,
        pty: request.pty.map(|p| (p.rows, p.cols)),
        kill_grace: cfg.kill_grace,
        tail_bytes: hooks.tail_bytes(),
    };
    let spawned = inner
        .exec
        .containment()
        .prepare(&job_id, &limits)
        .map_err(|e| format!("cannot make the job's cgroup: {e}"))
        .and_then(|scope| {
            jobs::spawn(&spec, scope).map_err(|e| match &request.cwd {
                Some(cwd) => format!("cannot start `{}` in `{cwd}`: {e}", cfg.shell),
                None => format!("cannot start `{}`: {e}", cfg.shell),
            })
        });
    let process = match spawned {
        Ok(p) => p,
        Err(error) => {
            drop(st);
            warn!(%error, "spawn failed");
            inner.emit_warnings(&log, pre.warnings).await;
            return End::Failed(error);
        }
    };
    let (pid, pgid) = (process.pid, process.pgid);
    tracing::Span::current().record("pid", pid);
    log.spawned(pid, pgid);
    inner.exec.metrics.spawned(turn.elapsed());
    let mut group = GroupGuard(Some(pgid));
    let counted = Counted::new(&inner.exec.running);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(8);
    if let Some(head) = st.head.as_mut() {
        head.command = request.command.clone();
        head.phase = Phase::Running(Running {
            pid,
            pgid,
            started: std::time::Instant::now(),
            paused: false,
            ctrl: ctrl_tx,
            input: process.input(),
            input_check: (process.input().is_some() && hooks.checks_input()).then(|| {
                Arc::new(super::input::InputCheck {
                    hooks: hooks.clone(),
                    ctx: ctx.clone(),
                    request: request.clone(),
                })
            }),
        });
    }
    drop(st);

    // Answer a waiting `execute`; its events wait until the caller has sent that answer on
    // (or dropped it), so the client sees reply → started → output.
    let (gate_tx, gate_rx) = oneshot::channel();
    if let Some(tx) = take(&answer) {
        let _ = tx.send(Ok(Accepted::Started {
            job_id: job_id.clone(),
            pid,
            pgid,
            _gate: gate_tx,
        }));
    } else {
        drop(gate_tx);
    }
    let _ = gate_rx.await;

    inner.emit_warnings(&log, pre.warnings).await;
    inner
        .emit(
            &log,
            Event::Started(Started {
                job_id: job_id.clone(),
                status: Default::default(),
                pid,
                pgid,
                command: request.command.clone(),
                cwd: request.cwd.clone(),
                timeout: timeout.as_secs_f64(),
                hooks: info,
                limits: (!limits.is_empty()).then_some(limits),
                pty: request.pty,
                worker: None,
            }),
        )
        .await;
    info!(command = %request.command, "started");
    let mut tap = JobTap::new(job_id.clone(), request.output_encoding, log.clone());
    let mut stage = output.stage;
    let outcome = process
        .run(
            job_id.clone(),
            inner.events.clone(),
            &mut tap,
            stage
                .as_deref_mut()
                .map(|s| s as &mut dyn crate::jobs::OutputStage),
            ctrl_rx,
        )
        .await;
    // The output hooks' instances go now (they hold slots of the instance pool).
    let mut reports = stage.take().map(|s| s.reports()).unwrap_or_default();
    // Reaped: the group id may be reused from here on.
    group.0 = None;
    drop(counted);
    let post = hooks.post(&ctx, &request, &outcome).await;
    inner.emit_warnings(&log, post.warnings).await;
    info!(status = ?outcome.status, exit_code = ?outcome.exit_code, signal = ?outcome.signal,
        secs = outcome.duration.as_secs_f64(), "ended");
    reports.extend(post.reports);
    End::Ran {
        outcome: Box::new(outcome),
        pid,
        pgid,
        reports,
    }
}

/// The current generation once its hooks have loaded: at once if they have, else when a
/// generation with hooks arrives. Gives up (as the job's `End`) on cancel or after the
/// waiting generation's `hooks_load_timeout`.
async fn generation_with_hooks(
    inner: &SessionInner,
    cancel: &CancellationToken,
) -> Result<Arc<Generation>, End> {
    let mut generations = inner.exec.generation.subscribe();
    let limit = {
        let current = generations.borrow_and_update();
        if current.hooks.is_some() {
            return Ok(current.clone());
        }
        current.config.hooks_load_timeout
    };
    info!(
        limit_secs = limit.as_secs_f64(),
        "waiting for hooks to load"
    );
    let ready = tokio::time::timeout(limit, generations.wait_for(|g| g.hooks.is_some()));
    tokio::select! {
        _ = cancel.cancelled() => {
            info!("canceled while waiting for hooks");
            Err(End::Canceled)
        }
        r = ready => match r {
            Ok(Ok(generation)) => Ok(generation.clone()),
            // The sender lives in the executor, which this job holds: cannot happen.
            Ok(Err(_)) => Err(End::Failed("the executor is gone".into())),
            Err(_) => {
                let msg = format!(
                    "the hooks did not finish loading within {} s (`[sandbox] load_timeout`)",
                    limit.as_secs_f64()
                );
                warn!("{msg}");
                Err(End::HooksNotReady(msg))
            }
        },
    }
}

/// Counts a running process for [`super::Executor::running_jobs`] until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Kills a process group that was never reaped: only a panic while the process runs leaves
/// it armed.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            jobs::signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// The variable every job's processes carry: after a crash, the next start finds what is left
/// of a job by it (see `registry::reap`).
pub const JOB_ID_ENV: &str = "CCX_JOB_ID";

/// The child's environment: the passed-through server variables, the configured ones, the
/// request's, `TRACEPARENT` when the job has a trace context, then [`JOB_ID_ENV`].
fn child_env(cfg: &ExecConfig, request: &JobRequest, job_id: &str) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = if cfg.pass_env.iter().any(|k| k == "*") {
        std::env::vars().collect()
    } else {
        cfg.pass_env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect()
    };
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(trace) = &request.trace {
        env.insert(crate::trace::TRACEPARENT_ENV.to_string(), trace.to_string());
    }
    env.insert(JOB_ID_ENV.to_string(), job_id.to_string());
    env.into_iter().collect()
}
