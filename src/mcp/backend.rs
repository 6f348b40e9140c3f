//! Where an MCP tool call's jobs run: in this process, through the one [`Executor`] every
//! front end shares ([`Local`]), or on a ccx server reached over its WebSocket protocol
//! ([`Remote`], for `ccx mcp --url`). The tools are written once, against [`Backend`].
//!
//! Both sides turn what a job reports into the same [`JobReport`] through a [`Collector`],
//! which keeps each stream's head and tail only, so memory stays bounded.

use super::output::HeadTail;
use crate::client::Client;
use crate::events::{Event, Stream};
use crate::executor::{ExecError, Executor, JobRequest, Session};
use crate::protocol::ControlType;
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

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
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
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
    pub pre: Option<Value>,
    /// One report per post-hook that ran.
    pub post: Vec<Value>,
    pub warnings: Vec<Value>,
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

/// Runs jobs for the MCP tools.
pub trait Backend: Send + Sync + 'static {
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
    fn hook_status(&self) -> BoxFuture<'_, Result<Value, JobError>>;
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

    pub fn started(&mut self, job_id: &str, pid: Option<u32>, pgid: Option<i32>, info: &Value) {
        if let Some(h) = info.get("hooks").filter(|h| !h.is_null()) {
            self.hooks.pre = Some(h.clone());
        }
        self.progress.send_modify(|p| {
            p.job_id = Some(job_id.to_string());
            p.pid = pid;
            p.pgid = pgid;
        });
    }

    pub fn output(&mut self, stream: Stream, data: &str) {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
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

    pub fn warning(&mut self, warning: Value) {
        self.hooks.warnings.push(warning);
    }

    /// The report, from the terminal `process.completed` params.
    pub fn finish(self, c: &Value) -> JobReport {
        let int = |k: &str| c.get(k).and_then(Value::as_i64);
        let text = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut hooks = self.hooks;
        if let Some(post) = c.get("hooks").and_then(Value::as_array) {
            hooks.post = post.clone();
        }
        let p = self.progress.borrow().clone();
        JobReport {
            job_id: text("job_id").or(p.job_id).unwrap_or_default(),
            status: text("status").unwrap_or_else(|| "failed".into()),
            exit_code: int("exit_code").map(|n| n as i32),
            signal: int("signal").map(|n| n as i32),
            execution_time: c
                .get("execution_time")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            stdout_bytes: c
                .get("stdout_bytes")
                .and_then(Value::as_u64)
                .unwrap_or(self.stdout.total()),
            stderr_bytes: c
                .get("stderr_bytes")
                .and_then(Value::as_u64)
                .unwrap_or(self.stderr.total()),
            pid: int("pid").map(|n| n as u32).or(p.pid),
            pgid: int("pgid").map(|n| n as i32).or(p.pgid),
            error: text("error"),
            hook: text("hook"),
            reason: text("reason"),
            stdout: self.stdout.render(),
            stdout_omitted_bytes: self.stdout.omitted(),
            stderr: self.stderr.render(),
            stderr_omitted_bytes: self.stderr.omitted(),
            hooks,
        }
    }
}

/// Source of the hook status JSON (the app's, when hooks are configured).
pub type HookStatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Jobs run by this process's executor: one executor [`Session`] per tool call, closed when
/// the call ends (or its future is dropped), so a call's jobs never outlive it.
pub struct Local {
    exec: Arc<Executor>,
    hook_status: Option<HookStatusFn>,
}

impl Local {
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
            s.close().await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { s.close().await });
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
            let request = JobRequest::new(spec.command, spec.timeout, spec.cwd, spec.env)
                .map_err(|e| JobError::Refused(e.to_string()))?;
            let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
            let id: Arc<str> = format!("mcp-{}", uuid::Uuid::new_v4().simple()).into();
            let session = self.exec.session(id, tx);
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
            let mut collector = Collector::new(spec.output_limit, progress);
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
                if event.job_id() != &job_id {
                    continue;
                }
                match event {
                    Event::Started {
                        pid, pgid, info, ..
                    } => collector.started(&job_id, Some(pid), Some(pgid), &info),
                    Event::Output { stream, data, .. } => collector.output(stream, &data),
                    Event::HookWarning { warning, .. } => collector.warning(warning),
                    Event::Completed(c) => {
                        break serde_json::to_value(&c).unwrap_or(Value::Null);
                    }
                    Event::Paused { .. } | Event::Resumed { .. } | Event::Canceled { .. } => {}
                }
            };
            guard.close().await;
            Ok(collector.finish(&completion))
        })
    }

    fn hook_status(&self) -> BoxFuture<'_, Result<Value, JobError>> {
        Box::pin(async move {
            Ok(match &self.hook_status {
                Some(f) => f(),
                None => json!({"enabled": false, "hooks_configured": 0, "hooks": []}),
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

    async fn connect(&self) -> Result<Client, JobError> {
        Client::connect(&self.url, self.token.as_deref())
            .await
            .map_err(|e| JobError::Unavailable(format!("{e:#}")))
    }
}

fn lost(e: anyhow::Error) -> JobError {
    JobError::Unavailable(format!("{e:#}"))
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
            let mut params = json!({"command": spec.command});
            if let Some(t) = spec.timeout {
                params["timeout"] = json!(t);
            }
            if let Some(cwd) = &spec.cwd {
                params["cwd"] = json!(cwd);
            }
            if !spec.env.is_empty() {
                params["env"] = json!(spec.env);
            }
            let id = client.send("execute", params).await.map_err(lost)?;
            let mut collector = Collector::new(spec.output_limit, progress);
            let mut job_id: Option<String> = None;
            let mut cancel_sent = false;
            loop {
                let msg = tokio::select! {
                    m = client.next_message() => m.map_err(lost)?,
                    _ = cancel.cancelled(), if !cancel_sent => {
                        cancel_sent = true;
                        let mut p = json!({"type": "CANCEL"});
                        if let Some(j) = &job_id {
                            p["job_id"] = json!(j);
                        }
                        client.send("control", p).await.map_err(lost)?;
                        continue;
                    }
                };
                if msg.get("id").and_then(Value::as_u64) == Some(id) {
                    if let Some(e) = msg.get("error") {
                        let data = &e["data"];
                        return Err(match (data["hook"].as_str(), data["reason"].as_str()) {
                            (Some(hook), Some(reason)) => JobError::Denied {
                                hook: hook.into(),
                                reason: reason.into(),
                            },
                            _ => JobError::Refused(
                                e["message"].as_str().unwrap_or("refused").to_string(),
                            ),
                        });
                    }
                    job_id = msg["result"]["job_id"].as_str().map(str::to_owned);
                    continue;
                }
                let params = &msg["params"];
                if let Some(j) = &job_id
                    && params.get("job_id").and_then(Value::as_str) != Some(j)
                {
                    continue;
                }
                match msg["method"].as_str() {
                    Some("process.started") => collector.started(
                        params["job_id"].as_str().unwrap_or_default(),
                        params["pid"].as_u64().map(|n| n as u32),
                        params["pgid"].as_i64().map(|n| n as i32),
                        params,
                    ),
                    Some("process.output") => {
                        let stream = if params["type"] == "stderr" {
                            Stream::Stderr
                        } else {
                            Stream::Stdout
                        };
                        collector.output(stream, params["data"].as_str().unwrap_or_default());
                    }
                    Some("hook.warning") => collector.warning(params.clone()),
                    Some("process.completed") => return Ok(collector.finish(params)),
                    Some(other) => debug!(method = other, "ignored notification"),
                    None => warn!(%msg, "unexpected message from the server"),
                }
            }
        })
    }

    fn hook_status(&self) -> BoxFuture<'_, Result<Value, JobError>> {
        Box::pin(async move {
            let mut client = self.connect().await?;
            let id = client.send("hook_status", json!({})).await.map_err(lost)?;
            loop {
                let msg = client.next_message().await.map_err(lost)?;
                if msg.get("id").and_then(Value::as_u64) == Some(id) {
                    return match msg.get("error") {
                        Some(e) => Err(JobError::Refused(
                            e["message"].as_str().unwrap_or("refused").to_string(),
                        )),
                        None => Ok(msg["result"].clone()),
                    };
                }
            }
        })
    }
}
