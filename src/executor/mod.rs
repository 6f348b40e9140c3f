//! The one place that runs a job end to end: per-session queue, waiting for the hooks of the
//! generation in force, pre-hooks, spawn, output pump, timeout and cancel, post-hooks, and
//! exactly one terminal event.
//!
//! The WebSocket session, `ccx mcp` and the tests all drive this API; none re-implements it.
//! A [`Session`] is a connection's view: its jobs run strictly one after another in the order
//! they were sent, while different sessions run in parallel.
//!
//! Layout, by how long things live:
//! - this file: [`Executor`] (one per process) and the [`Generation`] it hands to each job
//!   (config and hook set, swapped together by a reload);
//! - `request`: what a client asks and is answered ([`JobRequest`], [`Accepted`], [`ExecError`]);
//! - `hook_port`: the [`Hooks`] trait jobs call and its verdicts; `hook_chain` fills it with a
//!   wasm hook set;
//! - `session`: a connection's jobs ([`Session`]): the queue, `control`, `status`, `close`;
//! - `job`: one job's task, from "next in line" to its end, run under a supervisor that
//!   survives a panic in it;
//! - `terminal`: how a job ended, and the one place `process.completed` is
//!   built and sent.

mod hook_chain;
mod hook_port;
mod input;
mod job;
mod request;
mod session;
mod tap;
mod terminal;

pub use hook_chain::HookChain;
pub use hook_port::{
    Hooks, JobContext, JobOutputStage, NoHooks, OutputStart, PostResult, PreResult, PreVerdict,
};
pub use request::{Accepted, ExecError, JobRequest};
pub use session::{Closing, Origin, Session};

use crate::audit::AuditLog;
use crate::config::ExecConfig;
use crate::containment::Containment;
use crate::events::{Event, JobId};
use crate::metrics::Metrics;
use crate::protocol::ControlType;
use crate::registry::Registry;
use session::SessionInner;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};

/// What one configuration load produced: the executor settings and the hook set that belong
/// together. A job takes one snapshot of it, so it never runs with one reload's config and
/// another's hooks.
pub struct Generation {
    pub config: Arc<ExecConfig>,
    /// `None`: this generation's hooks are still loading; jobs wait for them (bounded by
    /// `config.hooks_load_timeout`) before their pre-hooks run.
    pub hooks: Option<Arc<dyn Hooks>>,
}

/// One per process: the current generation, and job counters.
pub struct Executor {
    /// The generation jobs starting now will use. A `watch` so a job waiting for hooks wakes
    /// when a generation with hooks arrives; `send_replace` works with no job listening.
    generation: watch::Sender<Arc<Generation>>,
    /// Every job's record and output; off when `[state]` says so.
    registry: Registry,
    /// The session each job not ended yet belongs to, so any connection can `control`,
    /// `detach` or find it.
    jobs: Mutex<HashMap<JobId, Weak<SessionInner>>>,
    /// Processes running across sessions; a job's task decrements it through a drop guard,
    /// so a panic cannot leave it high.
    running: AtomicUsize,
    /// Holds each job's processes together (cgroup or process group).
    containment: Arc<Containment>,
    /// Counters for `/metrics`: jobs' ends, spawn latency, refusals.
    metrics: Arc<Metrics>,
    /// The audit log, when `[audit]` is on: refusals are written to it (jobs' records come
    /// from the registry).
    audit: std::sync::OnceLock<AuditLog>,
}

impl Executor {
    /// An executor whose hooks are ready.
    pub fn new(config: ExecConfig, hooks: Arc<dyn Hooks>) -> Arc<Executor> {
        Executor::with(config, Some(hooks), Registry::default())
    }

    /// An executor whose hooks are still loading: jobs wait until
    /// [`Executor::set_generation`] brings some.
    pub fn loading(config: ExecConfig, registry: Registry) -> Arc<Executor> {
        Executor::with(config, None, registry)
    }

    /// A server's executor: hooks still loading, jobs recorded in `registry` and contained
    /// by `containment` (see [`Containment::start`]).
    pub fn serving(
        config: ExecConfig,
        registry: Registry,
        containment: Arc<Containment>,
    ) -> Arc<Executor> {
        Executor::build(config, None, registry, containment)
    }

    /// An executor with `hooks` (`None`: still loading) that records jobs in `registry`; its
    /// jobs are process groups ([`Containment::plain`]).
    pub fn with(
        config: ExecConfig,
        hooks: Option<Arc<dyn Hooks>>,
        registry: Registry,
    ) -> Arc<Executor> {
        Executor::build(config, hooks, registry, Containment::plain())
    }

    fn build(
        config: ExecConfig,
        hooks: Option<Arc<dyn Hooks>>,
        registry: Registry,
        containment: Arc<Containment>,
    ) -> Arc<Executor> {
        let (generation, _) = watch::channel(Arc::new(Generation {
            config: Arc::new(config),
            hooks,
        }));
        Arc::new(Executor {
            generation,
            registry,
            jobs: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            containment,
            metrics: Arc::new(Metrics::new()),
            audit: std::sync::OnceLock::new(),
        })
    }

    /// How jobs' processes are contained.
    pub fn containment(&self) -> &Arc<Containment> {
        &self.containment
    }

    /// Swaps in a new generation (config and hooks at once); it applies to jobs that start
    /// after the call. `hooks: None` means they are still loading: jobs that start meanwhile
    /// wait for a later call with `Some`.
    pub fn set_generation(&self, config: ExecConfig, hooks: Option<Arc<dyn Hooks>>) {
        self.generation.send_replace(Arc::new(Generation {
            config: Arc::new(config),
            hooks,
        }));
    }

    /// The generation jobs starting now will use.
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.borrow().clone()
    }

    /// The configuration jobs starting now will use.
    pub fn config(&self) -> Arc<ExecConfig> {
        self.generation.borrow().config.clone()
    }

    /// Whether the current generation's hooks have loaded (jobs start without waiting).
    pub fn hooks_ready(&self) -> bool {
        self.generation.borrow().hooks.is_some()
    }

    /// Processes running right now, across sessions.
    pub fn running_jobs(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Jobs accepted that have not ended, running or not.
    pub fn open_jobs(&self) -> usize {
        self.jobs.lock().expect("lock").len()
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Sets the audit log refusals are written to (once; a second call is ignored).
    pub fn set_audit(&self, log: AuditLog) {
        let _ = self.audit.set(log);
    }

    /// The audit log, when one is on.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.get()
    }

    /// Records a request refused before a job existed: counted for `/metrics` as `reason`
    /// and, with the audit log on, written as a `refused` record (`peer` is `ip:port`, or
    /// absent for a local client; `body` gives the details).
    pub fn refused(&self, reason: &'static str, peer: Option<&str>, mut body: serde_json::Value) {
        self.metrics.refused(reason);
        let Some(audit) = self.audit() else { return };
        let ip = peer
            .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        body["reason"] = reason.into();
        body["peer"] = peer.into();
        audit.refused(ip, body);
    }

    /// Opens a session whose events go to `events`. A full channel slows the session's own
    /// jobs (their pipes fill), never anyone else's. `origin` says who submits its jobs.
    pub fn session(
        self: &Arc<Self>,
        session_id: Arc<str>,
        events: mpsc::Sender<Event>,
        origin: Origin,
    ) -> Session {
        Session::new(self.clone(), session_id, events, origin)
    }

    /// The job registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A new job id: a UUIDv7, so ids sort by creation time across restarts.
    fn new_job_id(&self) -> JobId {
        uuid::Uuid::now_v7().to_string().into()
    }

    fn job_session(&self, job_id: &str) -> Option<Session> {
        let jobs = self.jobs.lock().expect("lock");
        jobs.get(job_id)
            .and_then(Weak::upgrade)
            .map(Session::from_inner)
    }

    fn track(&self, job_id: &JobId, session: &Arc<SessionInner>) {
        self.jobs
            .lock()
            .expect("lock")
            .insert(job_id.clone(), Arc::downgrade(session));
    }

    fn untrack(&self, job_id: &str) {
        self.jobs.lock().expect("lock").remove(job_id);
    }

    /// Pauses, resumes or cancels any job on the server that has not ended, whichever
    /// connection started it.
    pub async fn control(&self, kind: ControlType, job_id: &str) -> Result<JobId, ExecError> {
        match self.job_session(job_id) {
            Some(s) => s.control(kind, Some(job_id)).await,
            None => Err(self.not_live(job_id).await),
        }
    }

    /// Lets a job outlive the connection that started it. Errors: no such job (or ended),
    /// `max_detached` reached, registry off.
    pub async fn detach(&self, job_id: &str) -> Result<JobId, ExecError> {
        match self.job_session(job_id) {
            Some(s) => s.detach(job_id).await,
            None => Err(self.not_live(job_id).await),
        }
    }

    async fn not_live(&self, job_id: &str) -> ExecError {
        match self.registry.get(job_id).await {
            Ok(r) => ExecError::NoSuchJob(format!(
                "job {job_id} has already ended ({})",
                r.status.as_str()
            )),
            Err(_) => ExecError::NoSuchJob(format!("no job {job_id} on this server")),
        }
    }

    /// Ends every job still running or queued, detached ones included (a graceful stop), and
    /// returns once each has sent its terminal event.
    pub async fn shutdown(&self) {
        let sessions: Vec<Session> = {
            let jobs = self.jobs.lock().expect("lock");
            let mut seen = std::collections::HashSet::new();
            jobs.values()
                .filter_map(Weak::upgrade)
                .filter(|s| seen.insert(Arc::as_ptr(s) as usize))
                .map(Session::from_inner)
                .collect()
        };
        for s in sessions {
            s.close(Closing::Everything).await;
        }
    }
}
