//! `execute` as a task (the MCP Tasks extension, SEP-2663, `io.modelcontextprotocol/tasks`,
//! which rmcp 3.11 speaks at revision 2026-07-28): a client that declares the extension gets a
//! task handle at once and polls `tasks/get` for the result, so a long command never holds one
//! request open; `tasks/cancel` cancels the job. Clients without it get the plain tool result.

use super::tools::{CcxTools, ExecuteArgs, execute_result};
use rmcp::ErrorData as McpError;
use rmcp::RoleServer;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CreateTaskResult, GetTaskResult};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskExit, TaskOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a task's client is told to poll, in milliseconds.
const POLL_MS: u64 = 250;

impl CcxTools {
    /// `execute` started as a task, when the call is `execute` and the client declared the
    /// tasks extension; `None` otherwise (the call goes to the tool router).
    pub(super) fn execute_as_task(
        &self,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Result<CallToolResponse, McpError>> {
        let wants_task = context
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks());
        if request.name != "execute" || !wants_task {
            return None;
        }
        let args: ExecuteArgs = match serde_json::from_value(serde_json::Value::Object(
            request.arguments.clone().unwrap_or_default(),
        )) {
            Ok(a) => a,
            Err(e) => return Some(Err(McpError::invalid_params(e.to_string(), None))),
        };
        let tools = self.clone();
        let options = TaskOptions::new()
            .with_poll_interval_ms(POLL_MS)
            .with_status_message(format!("running: {}", args.command));
        let task = self.tasks().spawn(options, move |ctx| {
            Box::pin(async move {
                let _call = tools.calls().token();
                let cancel = CancellationToken::new();
                let job = {
                    let cancel = cancel.clone();
                    let tools = tools.clone();
                    async move {
                        let spec = tools.job_spec(&args);
                        let command = spec.command.clone();
                        let (progress, _) = watch::channel(Default::default());
                        let report = tools.backend().execute(spec, progress, cancel).await;
                        execute_result(&command, report)
                    }
                };
                tokio::pin!(job);
                tokio::select! {
                    r = &mut job => Ok(r),
                    _ = ctx.cancelled() => {
                        // The job ends canceled (its group killed) before the task settles.
                        cancel.cancel();
                        let _ = job.await;
                        Err(TaskExit::Cancelled)
                    }
                }
            })
        });
        Some(Ok(CallToolResponse::Task(CreateTaskResult::new(task))))
    }

    pub(super) fn task_status(&self, task_id: &str) -> Result<GetTaskResult, McpError> {
        Ok(GetTaskResult::new(self.tasks().get_task(task_id)?))
    }
}
