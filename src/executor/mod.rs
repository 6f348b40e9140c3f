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
mod job;
mod request;
mod session;
mod terminal;

pub use hook_chain::HookChain;
pub use hook_port::{Hooks, JobContext, NoHooks, PostResult, PreResult, PreVerdict};
pub use request::{Accepted, ExecError, JobRequest};
pub use session::Session;

use crate::config::ExecConfig;
use crate::events::{Event, JobId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    next_job: AtomicU64,
    /// Processes running across sessions; a job's task decrements it through a drop guard,
    /// so a panic cannot leave it high.
    running: AtomicUsize,
}

impl Executor {
    /// An executor whose hooks are ready.
    pub fn new(config: ExecConfig, hooks: Arc<dyn Hooks>) -> Arc<Executor> {
        Executor::with(config, Some(hooks))
    }

    /// An executor whose hooks are still loading: jobs wait until
    /// [`Executor::set_generation`] brings some.
    pub fn loading(config: ExecConfig) -> Arc<Executor> {
        Executor::with(config, None)
    }

    fn with(config: ExecConfig, hooks: Option<Arc<dyn Hooks>>) -> Arc<Executor> {
        let (generation, _) = watch::channel(Arc::new(Generation {
            config: Arc::new(config),
            hooks,
        }));
        Arc::new(Executor {
            generation,
            next_job: AtomicU64::new(1),
            running: AtomicUsize::new(0),
        })
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

    /// Opens a session whose events go to `events`. A full channel slows the session's own
    /// jobs (their pipes fill), never anyone else's.
    pub fn session(self: &Arc<Self>, session_id: Arc<str>, events: mpsc::Sender<Event>) -> Session {
        Session::new(self.clone(), session_id, events)
    }

    fn new_job_id(&self) -> JobId {
        format!("j{}", self.next_job.fetch_add(1, Ordering::Relaxed)).into()
    }
}
