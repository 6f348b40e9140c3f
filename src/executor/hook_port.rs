//! The hook port: what the executor asks of hooks before a job starts and after it ends
//! ([`Hooks`]), the answers ([`PreVerdict`], [`PreResult`], [`PostResult`]), and [`NoHooks`].
//! The wasm hook set fills it through [`super::HookChain`]; tests fill it with plain Rust.

use super::JobRequest;
use crate::events::{HookReport, HookWarning, JobId, PreHooks};
use crate::jobs::{OutputStage, ProcessOutcome};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Who is asking, for hooks and logs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub session_id: Arc<str>,
    pub job_id: JobId,
    /// Who submitted the job.
    pub origin: super::Origin,
    /// The request as the client sent it (with the timeout and limits that apply filled in),
    /// for post-hooks.
    pub received: JobRequest,
}

/// What the pre-hooks decided.
pub enum PreVerdict {
    /// Run `request` (possibly changed); `info` goes into `process.started` (`None`: no
    /// pre-hook ran).
    Allow {
        request: Box<JobRequest>,
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
    /// One `hook.warning` per hook that failed, addressed to the job.
    pub warnings: Vec<HookWarning>,
}

/// The post-hook chain's reports (for `process.completed.hooks`) and warnings.
#[derive(Default)]
pub struct PostResult {
    pub reports: Vec<HookReport>,
    pub warnings: Vec<HookWarning>,
}

/// A job's output stage, with what its hooks did (for `process.completed.hooks`).
pub trait JobOutputStage: OutputStage {
    fn reports(&self) -> Vec<HookReport>;
}

/// The output stage of a job about to start ([`Hooks::start_output`]).
#[derive(Default)]
pub struct OutputStart {
    /// `None`: no output hook takes part.
    pub stage: Option<Box<dyn JobOutputStage>>,
    /// One `hook.warning` per output hook that failed to start and was left out.
    pub warnings: Vec<HookWarning>,
}

/// The hook points: before a job starts and after it ends. Each job takes one snapshot of the
/// executor's [`super::Generation`] (config and hooks together), so a reload applies to jobs
/// that start after it.
///
/// A panic in either method ends that job `failed` (its one `process.completed` says the
/// job's task failed internally); the session goes on with its next job.
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
    /// Whether bytes for a job's stdin or terminal must pass [`Hooks::check_input`].
    fn checks_input(&self) -> bool {
        false
    }
    /// The input stage: may `data` reach the job `request` (as it runs)? Errors: the refusing
    /// hook and its reason.
    fn check_input<'a>(
        &'a self,
        _ctx: &'a JobContext,
        _request: &'a JobRequest,
        _data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), (String, String)>> {
        Box::pin(async { Ok(()) })
    }
    /// The output stage for the job `request` (as it will run), started before the process.
    /// Errors: the hook that fails closed and could not start, and why (the job must not run).
    fn start_output<'a>(
        &'a self,
        _ctx: &'a JobContext,
        _request: &'a JobRequest,
    ) -> BoxFuture<'a, Result<OutputStart, (String, String)>> {
        Box::pin(async { Ok(OutputStart::default()) })
    }
}

/// No hooks: allow everything, annotate nothing.
pub struct NoHooks;

impl Hooks for NoHooks {
    fn pre<'a>(&'a self, _: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult> {
        Box::pin(async move {
            PreResult {
                verdict: PreVerdict::Allow {
                    request: Box::new(request),
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
