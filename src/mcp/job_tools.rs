//! The MCP tools over job handles, so an agent never waits inside one call: `job_start`
//! answers at once, `job_output` pages through the output by byte offset, `job_wait` returns
//! at the job's end or a timeout, `job_cancel` and `job_list`. Jobs started here are detached:
//! they outlive the MCP session's calls and are found again by id.

use super::backend::JobError;
use super::tools::CcxTools;
use crate::events::Event;
use crate::protocol::{JobRecord, JobState};
use base64::Engine;
use futures_util::StreamExt;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ErrorData as McpError, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `job_output`'s default and largest page, in bytes.
const PAGE_BYTES: usize = 64 * 1024;
const MAX_PAGE_BYTES: usize = 1 << 20;
/// `job_wait`'s longest wait, seconds.
const MAX_WAIT_S: f64 = 3600.0;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStartArgs {
    /// The command line, run by the server's shell (`sh -c`) in its own process group.
    pub command: String,
    /// Wall-clock limit in seconds; the server's default applies when absent.
    pub timeout: Option<f64>,
    /// Working directory on the server.
    pub cwd: Option<String>,
    /// Environment variables for the command.
    pub env: Option<BTreeMap<String, String>>,
    /// Keep the command's stdin open, to send it text with job_input (for programs that
    /// ask questions or read commands); absent or false: stdin is empty.
    pub stdin_open: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInputArgs {
    pub job_id: String,
    /// Text for the command's stdin (add "\n" to end a line).
    pub data: String,
    /// Close stdin after the text (the command then sees the end of its input).
    pub eof: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOutputArgs {
    pub job_id: String,
    /// Byte position in the job's output (stdout and stderr together, in the order they were
    /// read) to start from; 0 or absent: the start. Pass the previous answer's `next_offset`.
    pub offset: Option<u64>,
    /// Most bytes to return (default 65536, at most 1048576).
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobWaitArgs {
    pub job_id: String,
    /// Seconds to wait at most (at most 3600).
    pub timeout_s: f64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobIdArgs {
    pub job_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListArgs {
    /// At most this many, newest first (default 20).
    pub limit: Option<usize>,
}

fn ok(text: String, structured: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(structured);
    r
}

fn error(e: &JobError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_string())])
}

fn summary(r: &JobRecord) -> Value {
    json!({
        "job_id": r.job_id,
        "status": r.status,
        "exit_code": r.exit_code,
        "signal": r.signal,
        "command": r.command,
        "created_at": r.created_at,
        "ended_at": r.ended_at,
        "stdout_bytes": r.stdout_bytes,
        "stderr_bytes": r.stderr_bytes,
    })
}

#[tool_router(router = job_router, vis = "pub(super)")]
impl CcxTools {
    #[tool(
        description = "Start a shell command on the ccx server and return its job id at once, \
            without waiting (pre-hooks still run first and may deny it). The job keeps running \
            after this call; follow it with job_output (its output, by byte offset), job_wait \
            (until it ends or a timeout) and job_cancel. Use this for anything that may take \
            longer than a few seconds."
    )]
    async fn job_start(
        &self,
        Parameters(args): Parameters<JobStartArgs>,
        ctx: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let spec = super::backend::JobSpec {
            command: args.command,
            timeout: args.timeout,
            cwd: args.cwd,
            env: args.env.unwrap_or_default(),
            output_limit: 0,
            stdin_open: args.stdin_open.unwrap_or(false),
            traceparent: super::tools::traceparent(&ctx),
        };
        Ok(match self.backend().start(spec).await {
            Ok(job_id) => ok(
                format!("started job {job_id}"),
                json!({"job_id": job_id, "status": "started"}),
            ),
            Err(e) => error(&e),
        })
    }

    #[tool(
        description = "Output of a job started with job_start (or any job on the server), \
            from a byte offset in its stdout and stderr together, in the order they were read. \
            Returns at once with what there is: the text (invalid UTF-8 replaced), next_offset \
            to pass next time, the job's status and, once it has ended, its exit code. When the \
            middle of a very long output was not kept, the answer says how many bytes are \
            missing.",
        annotations(read_only_hint = true)
    )]
    async fn job_output(
        &self,
        Parameters(args): Parameters<JobOutputArgs>,
    ) -> Result<CallToolResult, McpError> {
        let max = args
            .max_bytes
            .unwrap_or(PAGE_BYTES)
            .clamp(1, MAX_PAGE_BYTES);
        let from = args.offset.unwrap_or(0);
        Ok(match self.page(&args.job_id, from, max).await {
            Ok(page) => {
                let text = if page.output.is_empty() {
                    format!("(no output after offset {from}; job {})", page.status)
                } else {
                    page.output.clone()
                };
                ok(
                    text,
                    json!({
                        "job_id": args.job_id,
                        "output": page.output,
                        "offset": from,
                        "next_offset": page.next_offset,
                        "missing_bytes": page.missing,
                        "status": page.status,
                        "exit_code": page.exit_code,
                        "done": page.done,
                    }),
                )
            }
            Err(e) => error(&e),
        })
    }

    #[tool(
        description = "Wait until a job ends, or at most timeout_s seconds, and return its \
            status (running, completed, failed, timed_out, canceled, denied, lost) and exit \
            code. Waiting again after a timeout is fine: the job goes on meanwhile.",
        annotations(read_only_hint = true)
    )]
    async fn job_wait(
        &self,
        Parameters(args): Parameters<JobWaitArgs>,
    ) -> Result<CallToolResult, McpError> {
        if !args.timeout_s.is_finite() || args.timeout_s < 0.0 {
            return Ok(error(&JobError::Refused(
                "`timeout_s` must be a number of seconds, 0 or more".into(),
            )));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_s.min(MAX_WAIT_S));
        let mut pause = Duration::from_millis(20);
        loop {
            let record = match self.backend().record(args.job_id.clone()).await {
                Ok(r) => r,
                Err(e) => return Ok(error(&e)),
            };
            let done = record.status.is_final();
            if done || Instant::now() >= deadline {
                let text = match record.exit_code {
                    Some(c) if done => format!(
                        "job {} {} (exit code {c})",
                        record.job_id,
                        record.status.as_str()
                    ),
                    _ => format!("job {} {}", record.job_id, record.status.as_str()),
                };
                let mut v = summary(&record);
                v["done"] = json!(done);
                return Ok(ok(text, v));
            }
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    #[tool(
        description = "Send text to the stdin of a job started with job_start and \
            stdin_open: true (an interactive program, a prompt waiting for an answer); eof: true \
            closes its stdin afterwards. Answers at once; the output comes through job_output."
    )]
    async fn job_input(
        &self,
        Parameters(args): Parameters<JobInputArgs>,
    ) -> Result<CallToolResult, McpError> {
        let eof = args.eof.unwrap_or(false);
        let sent = self
            .backend()
            .input(args.job_id.clone(), args.data.into_bytes(), eof)
            .await;
        Ok(match sent {
            Ok(bytes) => ok(
                format!("sent {bytes} bytes to job {}", args.job_id),
                json!({"job_id": args.job_id, "bytes": bytes, "eof": eof}),
            ),
            Err(e) => error(&e),
        })
    }

    #[tool(description = "Cancel a job: its process group gets SIGTERM, then SIGKILL.")]
    async fn job_cancel(
        &self,
        Parameters(args): Parameters<JobIdArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(match self.backend().cancel(args.job_id.clone()).await {
            Ok(()) => ok(
                format!("canceled job {}", args.job_id),
                json!({"job_id": args.job_id, "status": "canceled"}),
            ),
            Err(e) => error(&e),
        })
    }

    #[tool(
        description = "The server's newest jobs with their status and exit code.",
        annotations(read_only_hint = true)
    )]
    async fn job_list(
        &self,
        Parameters(args): Parameters<JobListArgs>,
    ) -> Result<CallToolResult, McpError> {
        let limit = args.limit.unwrap_or(20).clamp(1, 1000);
        Ok(match self.backend().list(limit).await {
            Ok(jobs) => {
                let text = jobs
                    .iter()
                    .map(|j| format!("{} {} {}", j.job_id, j.status.as_str(), j.command))
                    .collect::<Vec<_>>()
                    .join("\n");
                let list: Vec<Value> = jobs.iter().map(summary).collect();
                ok(text, json!({"jobs": list}))
            }
            Err(e) => error(&e),
        })
    }
}

/// One `job_output` answer.
struct Page {
    output: String,
    next_offset: u64,
    missing: u64,
    status: &'static str,
    exit_code: Option<i32>,
    done: bool,
}

impl CcxTools {
    /// Reads the job's replay up to what it had written when asked (a running job's newer
    /// output waits for the next call), skipping to `from` and keeping at most `max` bytes.
    async fn page(&self, job_id: &str, from: u64, max: usize) -> Result<Page, JobError> {
        let (result, mut events) = self.backend().events(job_id.to_string()).await?;
        let snapshot = (!result.status.is_final()).then_some(result.last_seq);
        let mut page = Page {
            output: String::new(),
            next_offset: from,
            missing: 0,
            status: result.status.as_str(),
            exit_code: None,
            done: false,
        };
        if snapshot == Some(0) {
            return Ok(page);
        }
        let mut bytes = Vec::new();
        let mut pos = 0u64;
        while let Some(event) = events.next().await {
            match event {
                Event::Output(o) => {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&o.data)
                        .unwrap_or_default();
                    let end = pos + data.len() as u64;
                    if end > from {
                        let skip = from.saturating_sub(pos) as usize;
                        let room = max - bytes.len();
                        let take = (data.len() - skip).min(room);
                        bytes.extend_from_slice(&data[skip..skip + take]);
                        page.next_offset = pos + (skip + take) as u64;
                    }
                    pos = end;
                    if bytes.len() >= max || snapshot.is_some_and(|last| o.seq >= last) {
                        break;
                    }
                }
                Event::OutputGap(g) => {
                    if pos + g.bytes > from {
                        page.missing += pos + g.bytes - from.max(pos);
                        page.next_offset = page.next_offset.max(pos + g.bytes);
                    }
                    pos += g.bytes;
                }
                Event::Completed(c) => {
                    page.status = JobState::from(c.status).as_str();
                    page.exit_code = c.exit_code;
                    page.done = page.next_offset >= pos;
                    break;
                }
                _ => {}
            }
        }
        page.output = String::from_utf8_lossy(&bytes).into_owned();
        Ok(page)
    }
}
