//! `execute` as an MCP task (the Tasks extension, SEP-2663) for a client that declares it,
//! through rmcp's client over stdio to the built `ccx mcp`: a task handle at once, `tasks/get`
//! until it ends with the tool's result, and `tasks/cancel` ending the job.

use crate::util::{CCX, WAIT, scratch, write_config};
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, ClientCapabilities, ClientConfig,
    GetTaskParams, Implementation, TaskPayload, TaskStatus,
};
use rmcp::transport::TokioChildProcess;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_runs_as_a_task_for_clients_that_support_tasks() {
    let dir = scratch();
    let config = write_config(dir.path(), 0.0, "");
    let mut cmd = tokio::process::Command::new(CCX);
    cmd.arg("mcp").arg("--config").arg(&config);
    let transport = TokioChildProcess::new(cmd).expect("ccx mcp starts");
    let info = ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::from_build_env(),
    );
    let client = tokio::time::timeout(WAIT, info.serve(transport))
        .await
        .expect("connected in time")
        .expect("connects");
    let call = |command: &str| {
        CallToolRequestParams::new("execute")
            .with_arguments(serde_json::from_value(json!({"command": command})).unwrap())
    };
    let task_of = |r: CallToolResponse| match r {
        CallToolResponse::Task(t) => t.task,
        other => panic!("expected a task handle, got {other:?}"),
    };
    let wait_terminal = |id: String| {
        let client = &client;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let got = client
                    .peer()
                    .get_task(GetTaskParams::new(id.clone()))
                    .await
                    .unwrap();
                if got.task.status().is_terminal() {
                    return got.task;
                }
                assert!(tokio::time::Instant::now() < deadline, "task ends in time");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let task = task_of(
        client
            .call_tool_once(call("sleep 0.3; echo from-a-task"))
            .await
            .unwrap(),
    );
    assert_eq!(task.status, TaskStatus::Working);
    let done = wait_terminal(task.task_id.clone()).await;
    let TaskPayload::Completed { result } = done.payload else {
        panic!("completed: {:?}", done.payload);
    };
    assert_eq!(
        result["structuredContent"]["stdout"], "from-a-task\n",
        "{result:?}"
    );
    assert_eq!(result["structuredContent"]["status"], "completed");

    let task = task_of(client.call_tool_once(call("sleep 60")).await.unwrap());
    client
        .peer()
        .cancel_task(CancelTaskParams::new(task.task_id.clone()))
        .await
        .unwrap();
    let done = wait_terminal(task.task_id.clone()).await;
    assert_eq!(done.status(), TaskStatus::Cancelled, "{done:?}");
    client.cancel().await.unwrap();
}
