//! The MCP tools (`execute`, `execute_task_list`, `hook_status`), written once against a
//! [`Backend`]. A tool call drives its jobs to their end and, while they run, sends progress
//! notifications when the client asked for them; the request's cancellation cancels the job.

use super::backend::{Backend, JobError, JobProgress, JobReport, JobSpec};
use crate::config::McpConfig;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, NotificationMetaObject, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Arguments of `execute`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteArgs {
    /// The command line. The server's shell runs it (`sh -c`) in its own process group,
    /// with stdin from /dev/null.
    pub command: String,
    /// Wall-clock limit in seconds; the server's default applies when absent. At the limit
    /// the process group gets SIGTERM, then SIGKILL.
    pub timeout: Option<f64>,
    /// Working directory on the server (default: the server's own).
    pub cwd: Option<String>,
    /// Environment variables for the command, on top of the server's child environment.
    pub env: Option<BTreeMap<String, String>>,
}

/// Arguments of `execute_task_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListArgs {
    /// Command lines to run one after another, each like `execute`'s `command`.
    pub tasks: Vec<String>,
    /// Go on after a task fails, is denied or times out (default: stop there and skip the
    /// rest).
    pub continue_on_error: Option<bool>,
    /// Wall-clock limit in seconds for each task; the server's default applies when absent.
    pub timeout_per_task: Option<f64>,
}

/// The MCP server: one value per MCP connection (cheap to clone).
#[derive(Clone)]
pub struct CcxTools {
    backend: Arc<dyn Backend>,
    config: McpConfig,
    /// Tool calls in flight, so a stdio server can let their jobs end before it exits.
    calls: TaskTracker,
    tool_router: ToolRouter<CcxTools>,
    /// `execute` calls run as tasks for clients that declare the tasks extension.
    tasks: rmcp::task_manager::TaskManager,
    /// The server's session permit an HTTP MCP session holds while it lives (`max_sessions`).
    _permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Key of the job facts carried in each progress notification's `_meta`.
pub const PROGRESS_META_KEY: &str = "ccx/job";

#[tool_router]
impl CcxTools {
    pub fn new(backend: Arc<dyn Backend>, config: McpConfig) -> CcxTools {
        CcxTools {
            backend,
            config,
            calls: TaskTracker::new(),
            tool_router: Self::tool_router() + Self::job_router(),
            tasks: rmcp::task_manager::TaskManager::new(),
            _permit: None,
        }
    }

    /// The same tools, holding `permit` until the last clone is dropped (the MCP session
    /// ends).
    pub fn holding(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> CcxTools {
        self._permit = Some(Arc::new(permit));
        self
    }

    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub(super) fn tasks(&self) -> &rmcp::task_manager::TaskManager {
        &self.tasks
    }

    /// `execute`'s arguments as a job.
    pub(super) fn job_spec(&self, args: &ExecuteArgs) -> JobSpec {
        JobSpec {
            command: args.command.clone(),
            timeout: args.timeout,
            cwd: args.cwd.clone(),
            env: args.env.clone().unwrap_or_default(),
            output_limit: self.config.max_output_bytes,
            stdin_open: false,
            traceparent: None,
        }
    }

    /// Tool calls still running.
    pub fn calls(&self) -> &TaskTracker {
        &self.calls
    }

    #[tool(
        description = "Run one shell command on the ccx server and wait for it to end. \
            Pre-hooks may deny or change the command (a denial is a tool error naming the hook \
            and its reason); post-hooks may annotate the result. Returns the exit status and \
            the output: stdout and stderr separately, each cut to its first and last part when \
            long, with the number of bytes left out stated. Structured content carries status \
            (completed, failed, timed_out, canceled), exit_code, signal, execution_time, byte \
            counts, pid/pgid and the hooks' reports. A non-zero exit is a normal result, not a \
            tool error. Progress notifications are sent while it runs; canceling the request \
            kills the command's process group."
    )]
    async fn execute(
        &self,
        Parameters(args): Parameters<ExecuteArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let _call = self.calls.token();
        let spec = self.job_spec(&args);
        let command = spec.command.clone();
        let result = self.run_job(spec, &ctx, Instant::now(), "").await;
        Ok(execute_result(&command, result))
    }

    #[tool(
        description = "Run several shell commands one after another on the ccx server (each \
            as `execute` would, hooks and limits included) and return one result per task. By \
            default the list stops at the first task that does not complete with exit code 0 \
            (failed, timed out, denied by a hook, refused) and the remaining tasks are \
            reported as skipped; set continue_on_error to run them all. Each task's output \
            is cut to a share of the output limit. Canceling the request cancels the running \
            task and skips the rest."
    )]
    async fn execute_task_list(
        &self,
        Parameters(args): Parameters<TaskListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let _call = self.calls.token();
        if args.tasks.is_empty() {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "`tasks` is empty: give at least one command",
            )]));
        }
        let n = args.tasks.len();
        let keep_going = args.continue_on_error.unwrap_or(false);
        // The whole list's text stays near one command's limit.
        let limit = (self.config.max_output_bytes / n).max(1024);
        let started = Instant::now();
        let mut results = Vec::with_capacity(n);
        let mut text = String::new();
        let (mut ok, mut failed, mut skipped) = (0, 0, 0);
        let mut stop = false;
        for (i, command) in args.tasks.into_iter().enumerate() {
            let head = format!("task {}/{n}", i + 1);
            if stop || ctx.ct.is_cancelled() {
                skipped += 1;
                let _ = writeln!(text, "## {head}: skipped\n$ {command}\n");
                results.push(json!({"index": i, "command": command, "status": "skipped"}));
                continue;
            }
            let spec = JobSpec {
                command: command.clone(),
                timeout: args.timeout_per_task,
                cwd: None,
                env: BTreeMap::new(),
                output_limit: limit,
                stdin_open: false,
                traceparent: None,
            };
            let (entry, success) = match self.run_job(spec, &ctx, started, &head).await {
                Ok(report) => {
                    let _ = writeln!(text, "## {head}\n{}", report_text(&command, &report));
                    let success = report.status == "completed";
                    let mut v = to_json(&report);
                    v["index"] = json!(i);
                    v["command"] = json!(command);
                    (v, success)
                }
                Err(e) => {
                    let _ = writeln!(text, "## {head}\n$ {command}\n{e}\n");
                    let mut v = refusal_json(&e);
                    v["index"] = json!(i);
                    v["command"] = json!(command);
                    (v, false)
                }
            };
            results.push(entry);
            if success {
                ok += 1;
            } else {
                failed += 1;
                stop = !keep_going;
            }
        }
        let summary = format!(
            "{n} tasks: {ok} completed, {failed} failed, {skipped} skipped ({:.2} s)",
            started.elapsed().as_secs_f64()
        );
        let mut r =
            CallToolResult::success(vec![ContentBlock::text(format!("{summary}\n\n{text}"))]);
        r.structured_content = Some(json!({
            "summary": {"total": n, "completed": ok, "failed": failed, "skipped": skipped},
            "all_succeeded": ok == n,
            "tasks": results,
        }));
        Ok(r)
    }

    #[tool(
        description = "The ccx server's hooks: each hook's state (loaded, failed, disabled), \
            stages, limits and counters (calls, denials, failures, fuel and time used), plus \
            the hook set's generation and the last reload error.",
        annotations(read_only_hint = true)
    )]
    async fn hook_status(&self) -> Result<CallToolResult, McpError> {
        Ok(match self.backend.hook_status().await {
            Ok(status) => {
                let status = serde_json::to_value(&status).unwrap_or_default();
                let text = serde_json::to_string_pretty(&status).unwrap_or_default();
                let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
                r.structured_content = Some(status);
                r
            }
            Err(e) => refusal(&e),
        })
    }
}

// `call_tool` and `get_info` are written out below (tasks); the macro adds `list_tools` and
// `get_tool` from the router.
#[tool_handler(router = self.tool_router)]
impl ServerHandler for CcxTools {
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, McpError> {
        if let Some(task) = self.execute_as_task(&request, &context) {
            return task;
        }
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
    }

    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new(
            "ccx",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(INSTRUCTIONS.to_string())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, McpError> {
        self.task_status(&request.task_id)
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel_task(&request.task_id)
    }
}

/// What the server tells a client about itself when it connects.
const INSTRUCTIONS: &str = "ccx runs shell commands on its host, each in its own process \
    group, through sandboxed pre/post hooks that may deny, change or annotate them. Use \
    `execute` for one command (a task, for clients that support tasks), `execute_task_list` \
    for a sequence, `hook_status` to see the hooks. For anything long, `job_start` returns a \
    job id at once; then `job_output`, `job_wait`, `job_cancel` and `job_list`.";

/// The result of an `execute` call: the report as text and structured content, or the refusal.
pub(super) fn execute_result(command: &str, result: Result<JobReport, JobError>) -> CallToolResult {
    match result {
        Ok(report) => {
            let text = report_text(command, &report);
            let mut r = if report.error.is_some() {
                CallToolResult::error(vec![ContentBlock::text(text)])
            } else {
                CallToolResult::success(vec![ContentBlock::text(text)])
            };
            r.structured_content = Some(to_json(&report));
            r
        }
        Err(e) => refusal(&e),
    }
}

impl CcxTools {
    /// Runs one job, sending progress notifications (if the request carried a progress
    /// token) at most once per `progress_interval`: when output arrives, and as a heartbeat
    /// while the job is quiet. `progress` is seconds since `started`, so it only grows.
    async fn run_job(
        &self,
        mut spec: JobSpec,
        ctx: &RequestContext<RoleServer>,
        started: Instant,
        label: &str,
    ) -> Result<JobReport, JobError> {
        if spec.traceparent.is_none() {
            spec.traceparent = traceparent(ctx);
        }
        let (tx, mut rx) = watch::channel(JobProgress::default());
        let job = self.backend.execute(spec, tx, ctx.ct.clone());
        let Some(token) = ctx.meta.get_progress_token() else {
            return job.await;
        };
        tokio::pin!(job);
        let interval = self.config.progress_interval;
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent: Option<Instant> = None;
        let mut watching = true;
        loop {
            let due = tokio::select! {
                report = &mut job => return report,
                _ = heartbeat.tick() => true,
                changed = rx.changed(), if watching => match changed {
                    Ok(()) => last_sent.is_none_or(|t| t.elapsed() >= interval),
                    Err(_) => {
                        watching = false;
                        false
                    }
                },
            };
            if !due {
                continue;
            }
            let p = rx.borrow_and_update().clone();
            let param = progress_param(&token, started, label, &p);
            if let Err(e) = ctx.peer.notify_progress(param).await {
                debug!(cause = %e, "progress notification not sent");
            }
            last_sent = Some(Instant::now());
            heartbeat.reset();
        }
    }
}

fn progress_param(
    token: &ProgressToken,
    started: Instant,
    label: &str,
    p: &JobProgress,
) -> ProgressNotificationParam {
    let elapsed = started.elapsed().as_secs_f64();
    let mut msg = String::new();
    if !label.is_empty() {
        let _ = write!(msg, "{label}: ");
    }
    match (&p.job_id, p.pgid) {
        (Some(j), Some(g)) => {
            let _ = write!(msg, "job {j} running (pgid {g})");
        }
        _ => msg.push_str("starting"),
    }
    let _ = write!(
        msg,
        ", {elapsed:.1} s, {} B stdout, {} B stderr",
        p.stdout_bytes, p.stderr_bytes
    );
    if let Some(line) = &p.last_line {
        let _ = write!(msg, "; last: {line}");
    }
    let mut meta = NotificationMetaObject::new();
    meta.insert(
        PROGRESS_META_KEY.into(),
        json!({
            "job_id": p.job_id,
            "pid": p.pid,
            "pgid": p.pgid,
            "stdout_bytes": p.stdout_bytes,
            "stderr_bytes": p.stderr_bytes,
        }),
    );
    let mut param = ProgressNotificationParam::new(token.clone(), elapsed).with_message(msg);
    param.meta = Some(meta);
    param
}

fn to_json(report: &JobReport) -> Value {
    serde_json::to_value(report).unwrap_or(Value::Null)
}

/// A job that never ran, as structured content.
fn refusal_json(e: &JobError) -> Value {
    match e {
        JobError::Denied { hook, reason } => {
            json!({"status": "denied", "hook": hook, "reason": reason, "error": e.to_string()})
        }
        JobError::Refused(msg) => json!({"status": "refused", "error": msg}),
        JobError::Unavailable(msg) => json!({"status": "unavailable", "error": msg}),
    }
}

/// A job that never ran, as a tool error the agent can read.
fn refusal(e: &JobError) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(e.to_string())]);
    r.structured_content = Some(refusal_json(e));
    r
}

/// The text an agent reads: what ran, how it ended, its output, what the hooks said.
fn report_text(command: &str, r: &JobReport) -> String {
    let mut t = format!("$ {command}\n");
    let how = match (r.exit_code, r.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "no exit status".to_string(),
    };
    let _ = write!(
        t,
        "{} ({how}) after {:.2} s",
        r.status.replace('_', " "),
        r.execution_time
    );
    if let Some(e) = &r.error {
        let _ = write!(t, ": {e}");
    }
    if let (Some(h), Some(why)) = (&r.hook, &r.reason) {
        let _ = write!(t, ": denied by hook `{h}`: {why}");
    }
    t.push('\n');
    for (name, text, total, omitted) in [
        ("stdout", &r.stdout, r.stdout_bytes, r.stdout_omitted_bytes),
        ("stderr", &r.stderr, r.stderr_bytes, r.stderr_omitted_bytes),
    ] {
        if total == 0 {
            continue;
        }
        let _ = write!(t, "--- {name} ({total} bytes");
        if omitted > 0 {
            let _ = write!(t, ", {omitted} left out in the middle");
        }
        t.push_str(") ---\n");
        t.push_str(text);
        if !text.ends_with('\n') {
            t.push('\n');
        }
    }
    let hooks = &r.hooks;
    let pre = hooks
        .pre
        .as_ref()
        .map(|p| p.reports.as_slice())
        .unwrap_or_default();
    if !pre.is_empty() || !hooks.post.is_empty() || !hooks.warnings.is_empty() {
        t.push_str("--- hooks ---\n");
        let line = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
        for item in pre {
            let _ = writeln!(t, "pre: {}", line(serde_json::to_string(item)));
        }
        for item in &hooks.post {
            let _ = writeln!(t, "post: {}", line(serde_json::to_string(item)));
        }
        for item in &hooks.warnings {
            let _ = writeln!(t, "warning: {}", line(serde_json::to_string(item)));
        }
    }
    t
}

/// The W3C `traceparent` a client put in a request's `_meta` (SEP-414), if any.
pub(super) fn traceparent(ctx: &RequestContext<RoleServer>) -> Option<String> {
    ctx.meta.get_traceparent().map(str::to_owned)
}
