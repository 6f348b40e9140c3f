//! Where an MCP tool call's jobs run: in this process, through the one [`Executor`] every
//! front end shares ([`Local`]), or on a ccx server reached over its WebSocket protocol
//! ([`Remote`], for `ccx mcp --url`). The tools are written once, against [`Backend`].
//!
//! Both sides turn what a job reports into the same [`JobReport`] through a [`Collector`],
//! which keeps each stream's head and tail only, so memory stays bounded.

use super::job_ops::JobOps;
use super::output::HeadTail;
use crate::client::{Client, ClientError};
use crate::events::{Completion, Event, HookReport, HookWarning, PreHooks, Started, Stream};
use crate::executor::{Closing, ExecError, Executor, JobRequest, Origin, Session};
use crate::protocol::{ControlType, ExecuteParams, HookStatus, HookStatusReport, NoParams};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// One command an agent asked for.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub command: String,
    /// Seconds; `None`: the server's default.
    pub timeout: Option<f64>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Bytes of each stream kept for the report (head half + tail half).
    pub output_limit: usize,
    /// Keep stdin open for `job_input`.
    pub stdin_open: bool,
    /// W3C `traceparent` from the tool call's `_meta`, if the client sent one.
    pub traceparent: Option<String>,
}

impl JobSpec {
    /// The `execute` params that ask a server for this job.
    pub fn params(self) -> ExecuteParams {
        ExecuteParams {
            command: self.command,
            timeout: self.timeout,
            cwd: self.cwd,
            env: (!self.env.is_empty()).then_some(self.env),
            stdin_open: self.stdin_open,
            traceparent: self.traceparent,
            ..Default::default()
        }
    }

    /// The job as the executor takes it; errors are meant for the client.
    pub fn request(self) -> Result<JobRequest, JobError> {
        let refused = |e: String| JobError::Refused(e);
        let mut request = JobRequest::new(self.command, self.timeout, self.cwd, self.env)
            .map_err(|e| refused(e.to_string()))?;
        request.stdin_open = self.stdin_open;
        request.trace = self
            .traceparent
            .as_deref()
            .map(crate::trace::TraceParent::parse)
            .transpose()
            .map_err(refused)?;
        Ok(request)
    }
}

/// What a running job has shown so far; the tools turn it into progress notifications.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobProgress {
    pub job_id: Option<String>,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The last non-empty line of output, cut to a readable length.
    pub last_line: Option<String>,
}

/// How a job ended, as an agent sees it (also the tools' structured content).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobReport {
    pub job_id: String,
    /// `completed` (exit 0), `failed`, `timed_out`, `canceled` or `denied`.
    pub status: String,
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// Seconds from spawn to the end of the output.
    pub execution_time: f64,
    /// Bytes sent (after output hooks, when any ran): `stdout` and `stderr` below are cut
    /// from these.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Bytes the job wrote, when output hooks ran (they may differ from what was sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_raw_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_raw_bytes: Option<u64>,
    /// SHA-256 (hex) of all the stdout bytes sent, for a job that ran: lets an agent check a
    /// whole output it only sees the head and tail of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_sha256: Option<String>,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    /// Why the command could not be started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `denied`: the hook that refused, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The start and end of stdout; a marker line in the middle counts what was left out.
    pub stdout: String,
    pub stdout_omitted_bytes: u64,
    pub stderr: String,
    pub stderr_omitted_bytes: u64,
    /// What the hooks said: pre-hook verdicts (and which hooks changed the request),
    /// post-hook annotations and verdicts, and warnings about hooks that failed.
    pub hooks: HookNotes,
}

/// Hook annotations and verdicts for one job.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct HookNotes {
    /// `process.started`'s `hooks`: `{modified_by, reports}` from the pre-hooks.
    pub pre: Option<PreHooks>,
    /// One report per post-hook that ran.
    pub post: Vec<HookReport>,
    pub warnings: Vec<HookWarning>,
}

/// Why a job did not run to a report.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("denied by hook `{hook}`: {reason}")]
    Denied { hook: String, reason: String },
    /// The request was refused before it ran (bad parameters, full queue …).
    #[error("{0}")]
    Refused(String),
    /// The executor or the remote server went away.
    #[error("{0}")]
    Unavailable(String),
}

/// Runs jobs for the MCP tools (and, through [`JobOps`], handles detached ones).
pub trait Backend: JobOps + Send + Sync + 'static {
    /// Runs `spec` to its end. `progress` is updated as the job shows signs of life; when
    /// `cancel` fires the job is canceled (its process group killed) and the report, with
    /// status `canceled`, is returned once the job has ended.
    fn execute(
        &self,
        spec: JobSpec,
        progress: watch::Sender<JobProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobReport, JobError>>;

    /// The hooks' state and counters.
    fn hook_status(&self) -> BoxFuture<'_, Result<HookStatusReport, JobError>>;
}

/// Turns one job's events, wherever they come from, into a [`JobReport`].
pub struct Collector {
    stdout: HeadTail,
    stderr: HeadTail,
    hooks: HookNotes,
    progress: watch::Sender<JobProgress>,
}

/// Longest `last_line` shown in progress messages.
const LAST_LINE_CHARS: usize = 120;

impl Collector {
    pub fn new(limit: usize, progress: watch::Sender<JobProgress>) -> Collector {
        Collector {
            stdout: HeadTail::new(limit),
            stderr: HeadTail::new(limit),
            hooks: HookNotes::default(),
            progress,
        }
    }

    pub fn started(&mut self, started: Started) {
        self.progress.send_modify(|p| {
            p.job_id = Some(started.job_id.to_string());
            p.pid = Some(started.pid);
            p.pgid = Some(started.pgid);
        });
        self.hooks.pre = started.hooks;
    }

    pub fn output(&mut self, stream: Stream, data: &str) {
        let buf = match stream {
            Stream::Stdout | Stream::Pty => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        buf.push(data.as_bytes());
        let (out, err) = (self.stdout.total(), self.stderr.total());
        let line = data
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.chars().take(LAST_LINE_CHARS).collect::<String>());
        self.progress.send_modify(|p| {
            p.stdout_bytes = out;
            p.stderr_bytes = err;
            if line.is_some() {
                p.last_line = line;
            }
        });
    }

    pub fn warning(&mut self, warning: HookWarning) {
        self.hooks.warnings.push(warning);
    }

    /// Takes in one of the job's events; returns its completion when this was the last.
    pub fn event(&mut self, event: Event) -> Option<Completion> {
        match event {
            Event::Started(s) => self.started(s),
            Event::Output(o) => self.output(o.stream, &o.data),
            Event::HookWarning(w) => self.warning(w),
            Event::Completed(c) => return Some(c),
            Event::Connected(_)
            | Event::Paused(_)
            | Event::Resumed(_)
            | Event::Canceled(_)
            | Event::OutputGap(_) => {}
        }
        None
    }

    /// The report, from the terminal `process.completed`.
    pub fn finish(self, c: Completion) -> JobReport {
        let mut hooks = self.hooks;
        hooks.post = c.hooks;
        JobReport {
            job_id: c.job_id.to_string(),
            status: serde_json::to_value(c.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            exit_code: c.exit_code,
            signal: c.signal,
            execution_time: c.execution_time,
            stdout_bytes: c.stdout_bytes,
            stderr_bytes: c.stderr_bytes,
            stdout_raw_bytes: c.stdout_raw_bytes,
            stderr_raw_bytes: c.stderr_raw_bytes,
            stdout_sha256: c.stdout_sha256,
            stderr_sha256: c.stderr_sha256,
            pid: c.pid.or(self.progress.borrow().pid),
            pgid: c.pgid.or(self.progress.borrow().pgid),
            error: c.error,
            hook: c.hook,
            reason: c.reason,
            stdout: self.stdout.render(),
            stdout_omitted_bytes: self.stdout.omitted(),
            stderr: self.stderr.render(),
            stderr_omitted_bytes: self.stderr.omitted(),
            hooks,
        }
    }
}

/// Where the hooks' state comes from (the app's, when hooks are configured). The faces call it
/// for `hook_status`, `/hooks` and `/health`; they know nothing of wasm.
pub type HookStatusFn = Arc<dyn Fn() -> HookStatusReport + Send + Sync>;

/// Jobs run by this process's executor: one executor [`Session`] per tool call, closed when
/// the call ends (or its future is dropped), so a call's jobs never outlive it.
pub struct Local {
    exec: Arc<Executor>,
    hook_status: Option<HookStatusFn>,
}

impl Local {
    pub(super) fn exec(&self) -> &Arc<Executor> {
        &self.exec
    }

    pub fn new(exec: Arc<Executor>, hook_status: Option<HookStatusFn>) -> Local {
        Local { exec, hook_status }
    }
}

/// Closes a session when dropped before [`SessionGuard::close`] ran: a tool call whose
/// future is dropped mid-way still cancels its job.
struct SessionGuard(Option<Session>);

impl SessionGuard {
    async fn close(mut self) {
        if let Some(s) = self.0.take() {
            s.close(Closing::Disconnect).await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { s.close(Closing::Disconnect).await });
        }
    }
}

/// Events buffered between the executor and a tool call.
const EVENT_BUFFER: usize = 64;

impl Backend for Local {
    fn execute(
        &self,
        spec: JobSpec,
        progress: watch::Sender<JobProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobReport, JobError>> {
        Box::pin(async move {
            let output_limit = spec.output_limit;
            let request = spec.request()?;
            let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
            let id: Arc<str> = format!("mcp-{}", uuid::Uuid::new_v4().simple()).into();
            let session = self.exec.session(id, tx, Origin::default());
            let guard = SessionGuard(Some(session.clone()));
            let accepted = match session.execute(request).await {
                Ok(a) => a,
                Err(e) => {
                    guard.close().await;
                    return Err(match e {
                        ExecError::Denied { hook, reason, .. } => JobError::Denied { hook, reason },
                        ExecError::Closed => JobError::Unavailable(e.to_string()),
                        other => JobError::Refused(other.to_string()),
                    });
                }
            };
            let job_id = accepted.job_id().clone();
            // Lets the job's events flow (the executor holds them until the answer is out).
            drop(accepted);
            let mut collector = Collector::new(output_limit, progress);
            let mut cancel_sent = false;
            let completion = loop {
                let event = tokio::select! {
                    e = rx.recv() => e,
                    _ = cancel.cancelled(), if !cancel_sent => {
                        cancel_sent = true;
                        debug!(job = %job_id, "tool call canceled; canceling the job");
                        // From its own task: `control` waits for the job, which may be waiting
                        // for room in the channel this loop drains.
                        let (s, j) = (session.clone(), job_id.clone());
                        tokio::spawn(async move {
                            let _ = s.control(ControlType::Cancel, Some(&j)).await;
                        });
                        continue;
                    }
                };
                let Some(event) = event else {
                    return Err(JobError::Unavailable(
                        "the executor dropped the session".into(),
                    ));
                };
                if event.job_id() != Some(&job_id) {
                    continue;
                }
                if let Some(c) = collector.event(event) {
                    break c;
                }
            };
            guard.close().await;
            Ok(collector.finish(completion))
        })
    }

    fn hook_status(&self) -> BoxFuture<'_, Result<HookStatusReport, JobError>> {
        Box::pin(async move {
            Ok(match &self.hook_status {
                Some(f) => f(),
                None => HookStatusReport {
                    state: "ready".into(),
                    ..HookStatusReport::default()
                },
            })
        })
    }
}

/// Jobs run by a ccx server over its WebSocket protocol: one connection per tool call, so a
/// call's job is that session's only job and ends with it.
pub struct Remote {
    url: String,
    token: Option<String>,
}

impl Remote {
    pub fn new(url: String, token: Option<String>) -> Remote {
        Remote { url, token }
    }

    pub(super) async fn connect(&self) -> Result<Client, JobError> {
        Client::connect(&self.url, self.token.as_deref())
            .await
            .map_err(remote_error)
    }
}

/// A client failure as the tools report it: a refusal names the hook when a hook denied.
pub(super) fn remote_error(e: ClientError) -> JobError {
    match e {
        ClientError::Refused(obj) => {
            let data = obj.data.as_ref();
            let field = |k: &str| data.and_then(|d| d.get(k)).and_then(|v| v.as_str());
            match (field("hook"), field("reason")) {
                (Some(hook), Some(reason)) => JobError::Denied {
                    hook: hook.into(),
                    reason: reason.into(),
                },
                _ => JobError::Refused(obj.message),
            }
        }
        other => JobError::Unavailable(other.to_string()),
    }
}

impl Backend for Remote {
    fn execute(
        &self,
        spec: JobSpec,
        progress: watch::Sender<JobProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<JobReport, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let limit = spec.output_limit;
            let params = spec.params();
            let mut job = client.execute(&params).await.map_err(remote_error)?;
            let canceller = job.canceller();
            let mut collector = Collector::new(limit, progress);
            let mut cancel_sent = false;
            loop {
                let event = tokio::select! {
                    e = job.next() => e.map_err(remote_error)?,
                    _ = cancel.cancelled(), if !cancel_sent => {
                        cancel_sent = true;
                        canceller.cancel().await.map_err(remote_error)?;
                        continue;
                    }
                };
                let Some(event) = event else {
                    return Err(JobError::Unavailable(
                        "the job ended without process.completed".into(),
                    ));
                };
                if let Some(c) = collector.event(event) {
                    return Ok(collector.finish(c));
                }
            }
        })
    }

    fn hook_status(&self) -> BoxFuture<'_, Result<HookStatusReport, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            client
                .call::<HookStatus>(&NoParams {})
                .await
                .map_err(remote_error)
        })
    }
}
