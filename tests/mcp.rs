//! The MCP interface through a real MCP client (rmcp's client side), over each transport: stdio
//! to the built `ccx mcp --config` (executor in that process), stdio to `ccx mcp --url` (which
//! forwards to a running server) and Streamable HTTP to a server's `/mcp`. Real config files,
//! real hook components, real processes. Each scenario is its own test per transport, so one
//! failure does not hide the others.
//!
//! Over 500 lines: one module per area of the suite (see `tests/tests.rs`), each scenario once
//! per transport.

use crate::mcp_jobs::job_tools_work;
use crate::util::*;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, NotificationMetaObject,
    ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Quick progress and a small output limit.
const MCP: &str = "[mcp]\nprogress_interval = 0.2\nmax_output_bytes = 1024\n";

/// A hook that denies commands containing `forbidden`, and annotates every job.
const GUARD: &str = r#"
[[hooks]]
name = "guard"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "forbidden", "note.checked" = "yes" }
"#;

/// An MCP client that hands every progress notification to the test.
pub(crate) struct Recorder {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        context: NotificationContext<RoleClient>,
    ) {
        // rmcp 3.11.0 leaves a notification's `_meta` in the context's extensions (its
        // `context.meta` comes out empty), so look there first.
        params.meta = context
            .extensions
            .get::<NotificationMetaObject>()
            .cloned()
            .or(Some(context.meta));
        let _ = self.progress.send(params);
    }
}

pub(crate) type Client = RunningService<RoleClient, Recorder>;

fn recorder() -> (Recorder, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Recorder { progress: tx }, rx)
}

/// `ccx mcp --config <path>` as a child process, initialized.
async fn stdio_client(
    config: &Path,
) -> (Client, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let mut cmd = tokio::process::Command::new(CCX);
    cmd.arg("mcp").arg("--config").arg(config);
    let transport = TokioChildProcess::new(cmd).expect("ccx mcp starts");
    let (handler, rx) = recorder();
    let client = tokio::time::timeout(WAIT, handler.serve(transport))
        .await
        .expect("initialized in time")
        .expect("initialize succeeds");
    (client, rx)
}

/// A client of `/mcp` on `addr`.
pub(crate) async fn http_client(
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> Result<(Client, mpsc::UnboundedReceiver<ProgressNotificationParam>), String> {
    let mut config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("http://{addr}/mcp"),
        );
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    let (handler, rx) = recorder();
    match tokio::time::timeout(WAIT, handler.serve(transport)).await {
        Ok(Ok(client)) => Ok((client, rx)),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => panic!("initialize timed out"),
    }
}

fn call(tool: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(args.as_object().unwrap().clone())
}

pub(crate) async fn call_tool(client: &Client, tool: &'static str, args: Value) -> CallToolResult {
    tokio::time::timeout(WAIT, client.peer().call_tool(call(tool, args)))
        .await
        .expect("tool answered in time")
        .expect("tool call succeeds")
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

pub(crate) fn structured(r: &CallToolResult) -> &Value {
    r.structured_content.as_ref().expect("structured content")
}

async fn lists_the_three_tools_with_schemas(session: &mut Session) {
    let client = &session.client;
    let tools = client.peer().list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "execute",
            "execute_task_list",
            "hook_status",
            "job_cancel",
            "job_input",
            "job_list",
            "job_output",
            "job_start",
            "job_wait"
        ]
    );
    let tool = |name: &str| tools.iter().find(|t| t.name == name).unwrap();
    let execute = tool("execute");
    assert!(
        execute
            .description
            .as_deref()
            .unwrap()
            .contains("process group")
    );
    let schema = Value::Object((*execute.input_schema).clone());
    assert_eq!(schema["required"], json!(["command"]), "{schema}");
    for key in ["command", "timeout", "cwd", "env"] {
        assert!(
            schema["properties"][key]["description"].is_string(),
            "{key}: {schema}"
        );
    }
    let list = Value::Object((*tool("execute_task_list").input_schema).clone());
    assert_eq!(list["properties"]["tasks"]["type"], "array", "{list}");
}

async fn names_itself_and_lists_the_three_tools(session: &mut Session) {
    let info = session.client.peer().peer_info().expect("server info");
    assert_eq!(info.server_info.as_ref().unwrap().name, "ccx");
    lists_the_three_tools_with_schemas(session).await;
}

async fn a_command_runs_and_reports_status_output_and_hooks(session: &mut Session) {
    let client = &session.client;
    let r = call_tool(
        client,
        "execute",
        json!({"command": "echo hello; echo oops >&2; exit 3", "env": {"X": "1"}}),
    )
    .await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = structured(&r);
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["exit_code"], 3);
    assert_eq!(s["stdout"], "hello\n");
    assert_eq!(s["stderr"], "oops\n");
    assert_eq!(
        (s["stdout_bytes"].as_u64(), s["stderr_bytes"].as_u64()),
        (Some(6), Some(5))
    );
    assert!(s["execution_time"].is_number());
    assert!(s["pgid"].is_number());
    // Pre-hook verdict and post-hook annotations are both there.
    assert_eq!(s["hooks"]["pre"]["reports"][0]["hook"], "guard", "{s}");
    assert_eq!(s["hooks"]["post"][0]["hook"], "guard", "{s}");
    assert!(s["hooks"]["post"][0].to_string().contains("checked"), "{s}");
    let t = text(&r);
    assert!(t.contains("exit code 3"), "{t}");
    assert!(t.contains("hello") && t.contains("oops"), "{t}");
}

async fn long_output_keeps_head_and_tail(session: &mut Session) {
    let client = &session.client;
    let r = call_tool(
        client,
        "execute",
        json!({"command": "echo FIRST; seq 1 5000; echo LAST"}),
    )
    .await;
    let s = structured(&r);
    let out = s["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("FIRST\n") && out.ends_with("LAST\n"),
        "{out}"
    );
    let omitted = s["stdout_omitted_bytes"].as_u64().unwrap();
    assert_eq!(omitted + 1024, s["stdout_bytes"].as_u64().unwrap());
    assert!(
        out.contains(&format!("[… {omitted} bytes left out …]")),
        "{out}"
    );
    assert!(
        text(&r).contains(&format!("{omitted} left out")),
        "{}",
        text(&r)
    );
}

async fn a_denied_command_is_a_tool_error_naming_hook_and_reason(session: &mut Session) {
    let client = &session.client;
    let r = call_tool(client, "execute", json!({"command": "echo forbidden"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let t = text(&r);
    assert!(
        t.contains("guard") && t.contains("command contains `forbidden`"),
        "{t}"
    );
    let s = structured(&r);
    assert_eq!(s["status"], "denied");
    assert_eq!(s["hook"], "guard");
    assert_eq!(s["reason"], "command contains `forbidden`");
}

async fn a_task_list_stops_at_the_failing_task_unless_told_to_go_on(session: &mut Session) {
    let client = &session.client;
    let tasks = json!(["echo one", "echo two; exit 7", "echo three"]);
    let r = call_tool(client, "execute_task_list", json!({"tasks": tasks})).await;
    let s = structured(&r);
    let statuses: Vec<&str> = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "failed", "skipped"], "{s}");
    assert_eq!(s["tasks"][1]["exit_code"], 7);
    assert_eq!(s["tasks"][0]["stdout"], "one\n");
    assert_eq!(s["all_succeeded"], false);
    assert!(
        text(&r).contains("1 completed, 1 failed, 1 skipped"),
        "{}",
        text(&r)
    );

    let r = call_tool(
        client,
        "execute_task_list",
        json!({"tasks": tasks, "continue_on_error": true, "timeout_per_task": 10}),
    )
    .await;
    let s = structured(&r);
    assert_eq!(
        s["summary"],
        json!({"total": 3, "completed": 2, "failed": 1, "skipped": 0})
    );
    assert_eq!(s["tasks"][2]["stdout"], "three\n");
}

async fn progress_is_reported_while_a_command_runs(session: &mut Session) {
    let (client, progress) = (&session.client, &mut session.progress);
    while progress.try_recv().is_ok() {}
    let r = call_tool(
        client,
        "execute",
        json!({"command": "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done"}),
    )
    .await;
    assert_eq!(structured(&r)["status"], "completed");
    let mut seen = Vec::new();
    while let Ok(p) = progress.try_recv() {
        seen.push(p);
    }
    assert!(seen.len() >= 2, "progress notifications: {seen:?}");
    // rmcp's client handles each notification in its own task: they may arrive out of order.
    seen.sort_by(|a, b| a.progress.total_cmp(&b.progress));
    // Progress only grows, and each notification names the job.
    assert!(
        seen.windows(2).all(|w| w[0].progress < w[1].progress),
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert!(
        last.message.as_deref().unwrap().contains("tick"),
        "{last:?}"
    );
    let meta = last.meta.as_ref().expect("meta");
    assert!(meta.get("ccx/job").unwrap()["pgid"].is_number(), "{meta:?}");
}

/// Starts `echo $$; sleep 300`, learns its process group from a progress notification, cancels
/// the request, and checks that the group is gone.
async fn a_canceled_call_kills_the_process_group(session: &mut Session) {
    let (client, progress) = (&session.client, &mut session.progress);
    while progress.try_recv().is_ok() {}
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call(
        "execute",
        json!({"command": "echo $$; sleep 300"}),
    )));
    let handle = client
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let pgid = loop {
        let p = tokio::time::timeout(Duration::from_secs(15), progress.recv())
            .await
            .expect("progress in time")
            .expect("progress channel open");
        let meta = p.meta.as_ref().and_then(|m| m.get("ccx/job").cloned());
        if let Some(pgid) = meta.and_then(|m| m["pgid"].as_i64()) {
            // The shell's own pid, printed first, is its process group.
            if p.message
                .as_deref()
                .unwrap_or("")
                .ends_with(&format!("last: {pgid}"))
            {
                break pgid;
            }
        }
    };
    assert!(!group_members(pgid).is_empty(), "the job is running");
    handle.cancel(Some("test".into())).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || group_members(pgid).is_empty()).await,
        "process group {pgid} still has {:?}",
        group_members(pgid)
    );
    // The connection is still usable afterwards.
    let r = call_tool(client, "execute", json!({"command": "echo after"})).await;
    assert_eq!(structured(&r)["stdout"], "after\n");
}

async fn hook_status_lists_the_hooks(session: &mut Session) {
    let client = &session.client;
    let r = call_tool(client, "hook_status", json!({})).await;
    let s = structured(&r);
    assert_eq!(s["hooks_configured"], 1, "{s}");
    assert_eq!(s["hooks"][0]["name"], "guard", "{s}");
    assert!(text(&r).contains("guard"));
}

/// A connected MCP client, its progress notifications, and what must live as long as it.
pub(crate) struct Session {
    pub(crate) client: Client,
    progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
    /// The server behind `/mcp` or `ccx mcp --url`.
    server: Option<AppServer>,
    /// The directory of `ccx mcp --config`'s config file.
    _dir: Option<TempDir>,
}

impl Session {
    /// `ccx mcp --config` with [`MCP`] and [`GUARD`]: the executor and the hooks run in that
    /// process.
    async fn stdio_local() -> Session {
        let dir = scratch();
        let config = write_config(dir.path(), 0.0, &format!("{MCP}{GUARD}"));
        let (client, progress) = stdio_client(&config).await;
        Session {
            client,
            progress,
            server: None,
            _dir: Some(dir),
        }
    }

    /// `ccx mcp --url`, forwarding to a running server with [`MCP`] and [`GUARD`].
    async fn stdio_remote() -> Session {
        let server = AppServer::with_config(0.0, &format!("{MCP}{GUARD}")).await;
        let mut cmd = tokio::process::Command::new(CCX);
        cmd.arg("mcp")
            .arg("--url")
            .arg(format!("ws://{}/ws", server.addr))
            .env_remove("CCX_CONFIG");
        let (handler, progress) = recorder();
        let client =
            tokio::time::timeout(WAIT, handler.serve(TokioChildProcess::new(cmd).unwrap()))
                .await
                .expect("initialized in time")
                .expect("initialize succeeds");
        Session {
            client,
            progress,
            server: Some(server),
            _dir: None,
        }
    }

    /// Streamable HTTP at the `/mcp` of a server with [`MCP`] and [`GUARD`].
    async fn http() -> Session {
        let server = AppServer::with_config(0.0, &format!("{MCP}{GUARD}")).await;
        let (client, progress) = http_client(server.addr, None).await.unwrap();
        Session {
            client,
            progress,
            server: Some(server),
            _dir: None,
        }
    }

    /// Closes the client (for stdio: closes its stdin and ends the child), then stops the server.
    async fn close(self) {
        self.client.cancel().await.unwrap();
        if let Some(server) = self.server {
            server.stop().await;
        }
    }
}

/// Declares one test per `name: scenario` pair: it opens a session with `$open`, runs the
/// scenario on it and closes it.
macro_rules! scenarios {
    ($open:path { $($name:ident: $scenario:ident,)* }) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let mut session = $open().await;
            $scenario(&mut session).await;
            session.close().await;
        }
    )*};
}

scenarios!(Session::stdio_local {
    stdio_local_names_itself_and_lists_the_three_tools_with_schemas:
        names_itself_and_lists_the_three_tools,
    stdio_local_runs_a_command_and_reports_status_output_and_hooks:
        a_command_runs_and_reports_status_output_and_hooks,
    stdio_local_keeps_the_head_and_tail_of_long_output: long_output_keeps_head_and_tail,
    stdio_local_denies_with_a_tool_error_naming_hook_and_reason:
        a_denied_command_is_a_tool_error_naming_hook_and_reason,
    stdio_local_task_list_stops_at_the_failing_task_unless_told_to_go_on:
        a_task_list_stops_at_the_failing_task_unless_told_to_go_on,
    stdio_local_reports_progress_while_a_command_runs: progress_is_reported_while_a_command_runs,
    stdio_local_cancellation_kills_the_process_group: a_canceled_call_kills_the_process_group,
    stdio_local_hook_status_lists_the_hooks: hook_status_lists_the_hooks,
    stdio_local_job_tools_start_page_wait_and_cancel: job_tools_work,
});

scenarios!(Session::http {
    http_lists_the_three_tools_with_schemas: lists_the_three_tools_with_schemas,
    http_runs_a_command_and_reports_status_output_and_hooks:
        a_command_runs_and_reports_status_output_and_hooks,
    http_denies_with_a_tool_error_naming_hook_and_reason:
        a_denied_command_is_a_tool_error_naming_hook_and_reason,
    http_task_list_stops_at_the_failing_task_unless_told_to_go_on:
        a_task_list_stops_at_the_failing_task_unless_told_to_go_on,
    http_reports_progress_while_a_command_runs: progress_is_reported_while_a_command_runs,
    http_cancellation_kills_the_process_group: a_canceled_call_kills_the_process_group,
    http_hook_status_lists_the_hooks: hook_status_lists_the_hooks,
    http_job_tools_start_page_wait_and_cancel: job_tools_work,
});

scenarios!(Session::stdio_remote {
    stdio_remote_runs_a_command_and_reports_status_output_and_hooks:
        a_command_runs_and_reports_status_output_and_hooks,
    stdio_remote_denies_with_a_tool_error_naming_hook_and_reason:
        a_denied_command_is_a_tool_error_naming_hook_and_reason,
    stdio_remote_task_list_stops_at_the_failing_task_unless_told_to_go_on:
        a_task_list_stops_at_the_failing_task_unless_told_to_go_on,
    stdio_remote_reports_progress_at_the_default_interval:
        progress_is_reported_while_a_command_runs_remote,
    stdio_remote_cancellation_kills_the_process_group: a_canceled_call_kills_the_process_group,
    stdio_remote_hook_status_lists_the_hooks: hook_status_lists_the_hooks,
    stdio_remote_job_tools_start_page_wait_and_cancel: job_tools_work,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sits_behind_the_servers_auth() {
    let mut cfg = test_config();
    cfg.server.token = Some("s3cret".into());
    let server = TestServer::start(cfg).await;
    let err = http_client(server.addr, None).await.err().expect("refused");
    assert!(
        err.contains("401") || err.to_lowercase().contains("auth"),
        "{err}"
    );
    let err = http_client(server.addr, Some("wrong"))
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("401") || err.to_lowercase().contains("auth"),
        "{err}"
    );
    let (client, _) = http_client(server.addr, Some("s3cret")).await.unwrap();
    let r = call_tool(&client, "execute", json!({"command": "echo ok"})).await;
    assert_eq!(structured(&r)["stdout"], "ok\n");
    client.cancel().await.unwrap();
    server.shutdown().await;
}

/// With `--url` the progress interval is the default (1 s), so a longer command.
async fn progress_is_reported_while_a_command_runs_remote(session: &mut Session) {
    let (client, progress) = (&session.client, &mut session.progress);
    while progress.try_recv().is_ok() {}
    let r = call_tool(
        client,
        "execute",
        json!({"command": "for i in 1 2 3 4 5; do echo tick $i; sleep 0.5; done"}),
    )
    .await;
    assert_eq!(structured(&r)["status"], "completed");
    let mut seen = Vec::new();
    while let Ok(p) = progress.try_recv() {
        seen.push(p);
    }
    assert!(seen.len() >= 2, "progress notifications: {seen:?}");
    // rmcp's client handles each notification in its own task: they may arrive out of order.
    seen.sort_by(|a, b| a.progress.total_cmp(&b.progress));
    assert!(
        seen.windows(2).all(|w| w[0].progress < w[1].progress),
        "{seen:?}"
    );
}

/// The stdio shutdown MCP clients use (close stdin, then SIGTERM) ends a running job too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_local_closing_the_server_kills_its_running_jobs() {
    let dir = scratch();
    let config = write_config(dir.path(), 0.0, MCP);
    let (client, mut progress) = stdio_client(&config).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(call(
        "execute",
        json!({"command": "sleep 300"}),
    )));
    let _handle = client
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let pgid = loop {
        let p = tokio::time::timeout(Duration::from_secs(15), progress.recv())
            .await
            .expect("progress in time")
            .expect("progress channel open");
        let meta = p.meta.as_ref().and_then(|m| m.get("ccx/job").cloned());
        if let Some(pgid) = meta.and_then(|m| m["pgid"].as_i64()) {
            break pgid;
        }
    };
    assert!(!group_members(pgid).is_empty(), "the job is running");
    client.cancel().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || group_members(pgid).is_empty()).await,
        "process group {pgid} outlived the MCP server: {:?}",
        group_members(pgid)
    );
}
