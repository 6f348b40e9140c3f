//! The one place that runs a job end to end: per-session queue, pre-hooks, spawn, output pump,
//! timeout and cancel, post-hooks, and exactly one terminal event.
//!
//! The WebSocket session, `ccx mcp` and the tests all drive this API; none re-implements it.
//! A [`Session`] is a connection's view: its jobs run strictly one after another in the order
//! they were sent, while different sessions run in parallel.

mod hook_chain;

pub use hook_chain::HookChain;

use crate::config::ExecConfig;
use crate::events::{
    Completion, Event, HookReport, HookWarning, JobId, JobNote, JobStatus, NoteStatus, PreHooks,
    Started,
};
use crate::jobs::{self, Control, Process, ProcessOutcome, ProcessSpec};
use crate::protocol::{ControlType, ExecuteResult, QueuedStatus, RunningStatus, SessionStatus};
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tracing::{Instrument, info, info_span, warn};

/// A command as a client asked for it (and as pre-hooks may have changed it).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub command: String,
    /// `None`: the configured default applies.
    pub timeout: Option<Duration>,
    pub cwd: Option<String>,
    /// Variables the request sets, on top of the server's child environment.
    pub env: BTreeMap<String, String>,
}

impl JobRequest {
    /// Validates a request's fields; errors are meant for the client.
    pub fn new(
        command: String,
        timeout_secs: Option<f64>,
        cwd: Option<String>,
        env: BTreeMap<String, String>,
    ) -> Result<JobRequest, ExecError> {
        if command.trim().is_empty() {
            return Err(ExecError::Invalid("`command` is empty".into()));
        }
        if command.contains('\0') {
            return Err(ExecError::Invalid("`command` contains a NUL byte".into()));
        }
        let timeout = match timeout_secs {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 && t < 1e9 => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(ExecError::Invalid(format!(
                    "`timeout` must be a positive number of seconds, got {t}"
                )));
            }
        };
        if let Some(cwd) = &cwd
            && (cwd.is_empty() || cwd.contains('\0'))
        {
            return Err(ExecError::Invalid(
                "`cwd` is empty or has a NUL byte".into(),
            ));
        }
        if let Some((k, _)) = env
            .iter()
            .find(|(k, v)| !crate::config::valid_env_name(k) || v.contains('\0'))
        {
            return Err(ExecError::Invalid(format!(
                "`env`: `{k}` is not a valid variable name or its value has a NUL byte"
            )));
        }
        Ok(JobRequest {
            command,
            timeout,
            cwd,
            env,
        })
    }
}

/// Why an `execute` or `control` was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Invalid(String),
    #[error("denied by hook `{hook}`: {reason}")]
    Denied {
        job_id: JobId,
        hook: String,
        reason: String,
    },
    #[error("queue full: {0} jobs already queued")]
    QueueFull(usize),
    #[error("{0}")]
    NoSuchJob(String),
    #[error("the session is closing")]
    Closed,
    /// The hooks of the configuration in force had not finished loading within
    /// `[sandbox] load_timeout`.
    #[error("hooks not ready: {0}")]
    HooksNotReady(String),
}

/// The answer to an accepted `execute`.
#[derive(Debug)]
pub enum Accepted {
    /// Running now. Events for the job are held back until this value is dropped, so a
    /// caller can send its reply first and the client sees reply → started → output.
    Started {
        job_id: JobId,
        pid: u32,
        pgid: i32,
        _gate: oneshot::Sender<()>,
    },
    /// Waiting behind `position - 1` other jobs.
    Queued { job_id: JobId, position: usize },
    /// Could not be spawned; its terminal `failed` event is on its way.
    Failed { job_id: JobId, error: String },
}

impl Accepted {
    pub fn job_id(&self) -> &JobId {
        match self {
            Accepted::Started { job_id, .. }
            | Accepted::Queued { job_id, .. }
            | Accepted::Failed { job_id, .. } => job_id,
        }
    }

    /// The `execute` result as the wire shows it.
    pub fn to_result(&self) -> ExecuteResult {
        match self {
            Accepted::Started {
                job_id, pid, pgid, ..
            } => ExecuteResult::Started {
                job_id: job_id.clone(),
                pid: *pid,
                pgid: *pgid,
            },
            Accepted::Queued { job_id, position } => ExecuteResult::Queued {
                job_id: job_id.clone(),
                position: *position,
            },
            Accepted::Failed { job_id, error } => ExecuteResult::Failed {
                job_id: job_id.clone(),
                error: error.clone(),
            },
        }
    }
}

/// Who is asking, for hooks and logs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub session_id: Arc<str>,
    pub job_id: JobId,
}

/// What the pre-hooks decided.
pub enum PreVerdict {
    /// Run `request` (possibly changed); `info` goes into `process.started` (`None`: no
    /// pre-hook ran).
    Allow {
        request: JobRequest,
        info: Option<PreHooks>,
    },
    Deny {
        hook: String,
        reason: String,
    },
}

/// The pre-hook chain's answer, with warnings about hooks that failed.
pub struct PreResult {
    pub verdict: PreVerdict,
    pub warnings: Vec<HookWarning>,
}

/// The post-hook chain's reports (for `process.completed.hooks`) and warnings.
#[derive(Default)]
pub struct PostResult {
    pub reports: Vec<HookReport>,
    pub warnings: Vec<HookWarning>,
}

/// The hook points: before a job starts and after it ends. The executor takes one snapshot
/// per job, so a reload applies to jobs that start after it.
pub trait Hooks: Send + Sync + 'static {
    fn pre<'a>(&'a self, ctx: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult>;
    fn post<'a>(
        &'a self,
        ctx: &'a JobContext,
        request: &'a JobRequest,
        outcome: &'a ProcessOutcome,
    ) -> BoxFuture<'a, PostResult>;
    /// Bytes of each stream's end the post-hooks want (0: none, so none are kept).
    fn tail_bytes(&self) -> usize {
        0
    }
}

/// No hooks: allow everything, annotate nothing.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn pre<'a>(&'a self, _: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult> {
        Box::pin(async move {
            PreResult {
                verdict: PreVerdict::Allow {
                    request,
                    info: None,
                },
                warnings: Vec::new(),
            }
        })
    }

    fn post<'a>(
        &'a self,
        _: &'a JobContext,
        _: &'a JobRequest,
        _: &'a ProcessOutcome,
    ) -> BoxFuture<'a, PostResult> {
        Box::pin(async { PostResult::default() })
    }
}

/// One per process: the current configuration and hook set, and job counters.
pub struct Executor {
    config: RwLock<Arc<ExecConfig>>,
    hooks: RwLock<Arc<dyn Hooks>>,
    next_job: AtomicU64,
    running: AtomicUsize,
}

impl Executor {
    pub fn new(config: ExecConfig, hooks: Arc<dyn Hooks>) -> Arc<Executor> {
        Arc::new(Executor {
            config: RwLock::new(Arc::new(config)),
            hooks: RwLock::new(hooks),
            next_job: AtomicU64::new(1),
            running: AtomicUsize::new(0),
        })
    }

    /// An executor whose hooks are still loading (interim: runs without hooks until
    /// [`Executor::set_generation`]).
    pub fn loading(config: ExecConfig) -> Arc<Executor> {
        Executor::new(config, Arc::new(NoHooks))
    }

    /// Makes `config` and `hooks` the generation jobs starting from now use.
    pub fn set_generation(&self, config: ExecConfig, hooks: Option<Arc<dyn Hooks>>) {
        self.set_config(config);
        if let Some(h) = hooks {
            self.set_hooks(h);
        }
    }

    /// The configuration jobs starting now will use.
    pub fn config(&self) -> Arc<ExecConfig> {
        self.config.read().expect("config lock").clone()
    }

    /// Applies to jobs that start after the call.
    pub fn set_config(&self, config: ExecConfig) {
        *self.config.write().expect("config lock") = Arc::new(config);
    }

    pub fn hooks(&self) -> Arc<dyn Hooks> {
        self.hooks.read().expect("hooks lock").clone()
    }

    /// Applies to jobs that start after the call.
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) {
        *self.hooks.write().expect("hooks lock") = hooks;
    }

    /// Processes running right now, across sessions.
    pub fn running_jobs(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Opens a session whose events go to `events`. A full channel slows the session's own
    /// jobs (their pipes fill), never anyone else's.
    pub fn session(self: &Arc<Self>, session_id: Arc<str>, events: mpsc::Sender<Event>) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                exec: self.clone(),
                id: session_id,
                events,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn new_job_id(&self) -> JobId {
        format!("j{}", self.next_job.fetch_add(1, Ordering::Relaxed)).into()
    }
}

/// A connection's jobs. Cheap to clone; [`Session::close`] ends them.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    exec: Arc<Executor>,
    id: Arc<str>,
    events: mpsc::Sender<Event>,
    /// An async mutex: starting a job runs pre-hooks while holding it, which keeps
    /// "is anything running?" and "start it" one step, so jobs never overlap or reorder.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    queue: VecDeque<Queued>,
    closed: bool,
}

struct Running {
    job_id: JobId,
    pid: u32,
    pgid: i32,
    command: String,
    started: std::time::Instant,
    paused: bool,
    ctrl: mpsc::Sender<Control>,
    /// Closes when the job's task has sent its terminal event and let go of the session.
    done: watch::Receiver<()>,
}

struct Queued {
    job_id: JobId,
    request: JobRequest,
}

enum Start {
    Started {
        pid: u32,
        pgid: i32,
        gate: oneshot::Sender<()>,
    },
    Denied {
        hook: String,
        reason: String,
    },
    Failed {
        error: String,
    },
}

impl Session {
    pub fn id(&self) -> &Arc<str> {
        &self.inner.id
    }

    /// Starts `request` now if the session is idle, else queues it behind the others.
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
        let job_id = self.inner.exec.new_job_id();
        let mut st = self.inner.state.lock().await;
        if st.closed {
            return Err(ExecError::Closed);
        }
        if st.running.is_none() && st.queue.is_empty() {
            match start(&self.inner, &mut st, job_id.clone(), request).await {
                Start::Started { pid, pgid, gate } => Ok(Accepted::Started {
                    job_id,
                    pid,
                    pgid,
                    _gate: gate,
                }),
                Start::Denied { hook, reason } => Err(ExecError::Denied {
                    job_id,
                    hook,
                    reason,
                }),
                Start::Failed { error } => Ok(Accepted::Failed { job_id, error }),
            }
        } else if st.queue.len() >= cfg.max_queue {
            Err(ExecError::QueueFull(st.queue.len()))
        } else {
            st.queue.push_back(Queued {
                job_id: job_id.clone(),
                request,
            });
            Ok(Accepted::Queued {
                job_id,
                position: st.queue.len(),
            })
        }
    }

    /// Pauses, resumes or cancels the running job (`job_id: None`) or the named one; a
    /// queued job can only be canceled, which removes it from the queue.
    pub async fn control(
        &self,
        kind: ControlType,
        job_id: Option<&str>,
    ) -> Result<JobId, ExecError> {
        let mut st = self.inner.state.lock().await;
        let target_is_running = match (job_id, &st.running) {
            (None, Some(_)) => true,
            (None, None) => return Err(ExecError::NoSuchJob("no job is running".into())),
            (Some(id), Some(r)) if &*r.job_id == id => true,
            (Some(_), _) => false,
        };
        if !target_is_running {
            let id = job_id.expect("a named job");
            let Some(pos) = st.queue.iter().position(|q| &*q.job_id == id) else {
                return Err(ExecError::NoSuchJob(format!(
                    "no job {id} on this connection"
                )));
            };
            if kind != ControlType::Cancel {
                return Err(ExecError::NoSuchJob(format!(
                    "job {id} is queued, not running: only CANCEL applies"
                )));
            }
            let q = st.queue.remove(pos).expect("position is in range");
            drop(st);
            self.inner
                .emit(Event::Canceled(JobNote {
                    job_id: q.job_id.clone(),
                    status: NoteStatus::Canceled,
                }))
                .await;
            self.inner
                .emit(Event::Completed(Completion::without_process(
                    q.job_id.clone(),
                    JobStatus::Canceled,
                )))
                .await;
            return Ok(q.job_id);
        }
        let running = st.running.as_mut().expect("checked above");
        let (tx, rx) = oneshot::channel();
        let id = running.job_id.clone();
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
                Ok(running.job_id.clone())
            }
            Ok(Err(msg)) => Err(ExecError::NoSuchJob(msg)),
            Err(_) => Err(ended()),
        }
    }

    /// The running and queued jobs.
    pub async fn status(&self) -> SessionStatus {
        let st = self.inner.state.lock().await;
        SessionStatus {
            session_id: self.inner.id.to_string(),
            running: st.running.as_ref().map(|r| RunningStatus {
                job_id: r.job_id.clone(),
                command: r.command.clone(),
                pid: r.pid,
                pgid: r.pgid,
                state: if r.paused { "paused" } else { "running" }.to_string(),
                elapsed: r.started.elapsed().as_secs_f64(),
            }),
            queued: st
                .queue
                .iter()
                .enumerate()
                .map(|(i, q)| QueuedStatus {
                    job_id: q.job_id.clone(),
                    command: q.request.command.clone(),
                    position: i + 1,
                })
                .collect(),
        }
    }

    /// Ends the session: queued jobs are dropped (each with its terminal event), the running
    /// one is canceled, and this returns once its terminal event has been sent.
    pub async fn close(&self) {
        let running = {
            let mut st = self.inner.state.lock().await;
            st.closed = true;
            let queued: Vec<Queued> = st.queue.drain(..).collect();
            for q in queued {
                self.inner
                    .emit(Event::Completed(Completion::without_process(
                        q.job_id,
                        JobStatus::Canceled,
                    )))
                    .await;
            }
            st.running
                .as_ref()
                .map(|r| (r.ctrl.clone(), r.done.clone()))
        };
        if let Some((ctrl, mut done)) = running {
            let (tx, _rx) = oneshot::channel();
            let _ = ctrl
                .send(Control {
                    kind: ControlType::Cancel,
                    reply: tx,
                })
                .await;
            while done.changed().await.is_ok() {}
        }
    }
}

impl SessionInner {
    /// Sends an event; a session whose receiver is gone simply stops hearing.
    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Sends each hook warning as its own event.
    async fn emit_warnings(&self, warnings: Vec<HookWarning>) {
        for warning in warnings {
            self.emit(Event::HookWarning(warning)).await;
        }
    }
}

/// Runs the pre-hooks and spawns the job's process. Boxed: a finished job starts the next
/// one from its own task, which makes the future types recursive.
fn start<'a>(
    inner: &'a Arc<SessionInner>,
    st: &'a mut State,
    job_id: JobId,
    request: JobRequest,
) -> BoxFuture<'a, Start> {
    Box::pin(async move {
        let exec = &inner.exec;
        let cfg = exec.config();
        let hooks = exec.hooks();
        let ctx = JobContext {
            session_id: inner.id.clone(),
            job_id: job_id.clone(),
        };
        // Hooks see the timeout that will apply, default included.
        let mut request = request;
        request.timeout = Some(request.timeout.unwrap_or(cfg.default_timeout));
        let pre = hooks.pre(&ctx, request).await;
        let (request, info) = match pre.verdict {
            PreVerdict::Deny { hook, reason } => {
                inner.emit_warnings(pre.warnings).await;
                info!(job = %job_id, %hook, %reason, "denied by hook");
                return Start::Denied { hook, reason };
            }
            PreVerdict::Allow { request, info } => (request, info),
        };
        let timeout = request
            .timeout
            .unwrap_or(cfg.default_timeout)
            .min(cfg.max_timeout);
        let spec = ProcessSpec {
            shell: cfg.shell.clone(),
            command: request.command.clone(),
            cwd: request.cwd.as_ref().map(PathBuf::from),
            env: child_env(&cfg, &request.env),
            timeout,
            kill_grace: cfg.kill_grace,
            tail_bytes: hooks.tail_bytes(),
        };
        let process = match jobs::spawn(&spec) {
            Ok(p) => p,
            Err(e) => {
                let error = match &request.cwd {
                    Some(cwd) => format!("cannot start `{}` in `{cwd}`: {e}", cfg.shell),
                    None => format!("cannot start `{}`: {e}", cfg.shell),
                };
                warn!(job = %job_id, %error, "spawn failed");
                inner.emit_warnings(pre.warnings).await;
                let mut c = Completion::without_process(job_id, JobStatus::Failed);
                c.error = Some(error.clone());
                inner.emit(Event::Completed(c)).await;
                return Start::Failed { error };
            }
        };
        let (pid, pgid) = (process.pid, process.pgid);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(8);
        let (gate_tx, gate_rx) = oneshot::channel();
        let (done_tx, done_rx) = watch::channel(());
        exec.running.fetch_add(1, Ordering::Relaxed);
        st.running = Some(Running {
            job_id: job_id.clone(),
            pid,
            pgid,
            command: request.command.clone(),
            started: std::time::Instant::now(),
            paused: false,
            ctrl: ctrl_tx,
            done: done_rx,
        });
        let started_info = Started {
            job_id: job_id.clone(),
            status: Default::default(),
            pid,
            pgid,
            command: request.command.clone(),
            cwd: request.cwd.clone(),
            timeout: timeout.as_secs_f64(),
            hooks: info,
        };
        let span = info_span!("job", job = %job_id, session = %inner.id, pid);
        let job = JobTask {
            inner: inner.clone(),
            ctx,
            request,
            process,
            hooks,
            warnings: pre.warnings,
            started_info,
        };
        tokio::spawn(job.run(ctrl_rx, gate_rx, done_tx).instrument(span));
        Start::Started {
            pid,
            pgid,
            gate: gate_tx,
        }
    })
}

/// Everything a running job's task owns.
struct JobTask {
    inner: Arc<SessionInner>,
    ctx: JobContext,
    request: JobRequest,
    process: Process,
    hooks: Arc<dyn Hooks>,
    warnings: Vec<HookWarning>,
    started_info: Started,
}

impl JobTask {
    async fn run(
        self,
        ctrl: mpsc::Receiver<Control>,
        gate: oneshot::Receiver<()>,
        done: watch::Sender<()>,
    ) {
        let JobTask {
            inner,
            ctx,
            request,
            process,
            hooks,
            warnings,
            started_info,
        } = self;
        let job_id = ctx.job_id.clone();
        // Wait until the caller has sent its reply (or dropped it).
        let _ = gate.await;
        inner.emit_warnings(warnings).await;
        let (pid, pgid) = (process.pid, process.pgid);
        inner.emit(Event::Started(started_info)).await;
        info!(command = %request.command, "started");
        let outcome = process
            .run(job_id.clone(), inner.events.clone(), ctrl)
            .await;
        inner.exec.running.fetch_sub(1, Ordering::Relaxed);
        let post = hooks.post(&ctx, &request, &outcome).await;
        inner.emit_warnings(post.warnings).await;
        info!(status = ?outcome.status, exit_code = ?outcome.exit_code, signal = ?outcome.signal,
            secs = outcome.duration.as_secs_f64(), "ended");
        inner
            .emit(Event::Completed(Completion {
                job_id: job_id.clone(),
                status: outcome.status,
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                execution_time: outcome.duration.as_secs_f64(),
                stdout_bytes: outcome.stdout_bytes,
                stderr_bytes: outcome.stderr_bytes,
                pid: Some(pid),
                pgid: Some(pgid),
                error: None,
                hook: None,
                reason: None,
                hooks: post.reports,
            }))
            .await;
        // Hand the session over to the next queued job.
        let mut st = inner.state.lock().await;
        st.running = None;
        drop(done);
        advance(&inner, &mut st).await;
    }
}

/// Starts queued jobs until one runs or the queue is empty.
async fn advance(inner: &Arc<SessionInner>, st: &mut State) {
    while !st.closed && st.running.is_none() {
        let Some(next) = st.queue.pop_front() else {
            break;
        };
        let job_id = next.job_id.clone();
        match start(inner, st, next.job_id, next.request).await {
            Start::Started { .. } => break,
            Start::Failed { .. } => {}
            Start::Denied { hook, reason } => {
                let mut c = Completion::without_process(job_id, JobStatus::Denied);
                c.hook = Some(hook);
                c.reason = Some(reason);
                inner.emit(Event::Completed(c)).await;
            }
        }
    }
}

/// The child's environment: the passed-through server variables, the configured ones, then
/// the request's.
fn child_env(cfg: &ExecConfig, request_env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = if cfg.pass_env.iter().any(|k| k == "*") {
        std::env::vars().collect()
    } else {
        cfg.pass_env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect()
    };
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(request_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}
