//! Behaviour added with the core's restructuring (issue 9): `ccx exec` on a closed pipe and
//! with several words, concurrent config edits, a server that listens before its hooks are
//! loaded, `/mcp` sharing `max_sessions` and the Origin check, and restart-only settings
//! named on reload.

use crate::util::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn serve(config: &str) -> (tempfile::TempDir, KillOnDrop, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ccx.toml");
    std::fs::write(&cfg, config).unwrap();
    let (child, addr, _) = spawn_ccx_serve(CCX, &cfg, &[]);
    (dir, KillOnDrop(child), addr)
}

/// Processes whose command line contains `needle`.
fn processes_named(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("ccx") {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn exec_cancels_the_remote_job_when_its_stdout_is_closed() {
    let (_dir, _server, addr) = serve("[execution]\nkill_grace = 0.3\n");
    let marker = format!("yes ccx-broken-pipe-{}", std::process::id());
    let mut child = Command::new(CCX)
        .args(["exec", "--url", &format!("ws://{addr}/ws"), "--", &marker])
        .env_remove("CCX_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read two lines, then close the pipe, as `| head -2` does.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .next()
            .unwrap()
            .unwrap()
            .starts_with("ccx-broken-pipe")
    );
    assert!(
        lines
            .next()
            .unwrap()
            .unwrap()
            .starts_with("ccx-broken-pipe")
    );
    drop(lines);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < WAIT,
            "ccx exec kept running after its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(141), "exit code on a broken pipe");
    let needle = marker.trim_start_matches("yes ").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_named(&needle).is_empty() {
        assert!(Instant::now() < deadline, "the remote `yes` kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_keeps_each_argument_one_word_and_passes_one_argument_through() {
    let (_dir, _server, addr) = serve("[execution]\nkill_grace = 0.3\n");
    let run = |args: &[&str]| {
        Command::new(CCX)
            .args(["exec", "--url", &format!("ws://{addr}/ws"), "--"])
            .args(args)
            .env_remove("CCX_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&["printf", "[%s]\\n", "a b", "it's", "$HOME"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[a b]\n[it's]\n[$HOME]\n"
    );
    let out = run(&["echo one | tr a-z A-Z"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ONE\n");
}

#[test]
fn concurrent_hook_toggles_all_land_and_never_corrupt_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ccx.toml");
    let mut text = String::from("# a comment that must survive\n");
    for i in 0..8 {
        text.push_str(&format!(
            "[[hooks]]\nname = \"h{i}\"\npath = \"h{i}.wasm\"\nenabled = true\n\n"
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(CCX)
                .args(["hooks", "disable", &format!("h{i}"), "--config"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        after.starts_with("# a comment that must survive"),
        "{after}"
    );
    let cfg = ccx::config::Config::parse(&after, Some(&cfg)).expect("still a valid config");
    assert!(
        cfg.hooks.iter().all(|h| !h.enabled),
        "every disable landed: {after}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "ccx.toml")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

const MCP_INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
const MCP_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

#[tokio::test]
async fn mcp_sessions_count_against_max_sessions_and_share_the_origin_check() {
    let mut cfg = test_config();
    cfg.server.max_sessions = 1;
    cfg.server.allowed_origins = vec!["http://ok.example".into()];
    let server = TestServer::start(cfg).await;
    let addr = server.addr.to_string();

    // A page from another origin is refused on /mcp as on /ws.
    let mut h = MCP_HEADERS.to_vec();
    h.push(("Origin", "http://evil.example"));
    let (status, _) = http(&addr, "POST", "/mcp", &h, MCP_INIT).await;
    assert_eq!(status, 403);

    // The one session slot taken by a WebSocket: an MCP session is refused.
    let ws = server.connect().await;
    let (status, body) = http(&addr, "POST", "/mcp", MCP_HEADERS, MCP_INIT).await;
    assert!(
        status >= 400,
        "MCP session accepted over max_sessions: {status} {body}"
    );
    drop(ws);

    // Once it is free, an MCP session takes it, and a WebSocket is refused with -32003.
    let mut status = 0;
    for _ in 0..100 {
        status = http(&addr, "POST", "/mcp", MCP_HEADERS, MCP_INIT).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "MCP initialize once the slot is free");
    let mut client = ccx::client::Client::connect(&server.url(), None).await;
    // The refusal arrives as the first frame, an error, instead of `connected`.
    match &mut client {
        Err(ccx::client::ClientError::Refused(e)) => assert_eq!(e.code, -32003, "{e}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(c) => panic!(
            "a WebSocket session got in beside the MCP one: {:?}",
            c.hello
        ),
    }
    server.shutdown().await;
}

/// `dir/ccx.toml` loading the built `hooks` with a private, empty artifact cache (so they
/// compile at start) and the given `[sandbox] load_timeout` in seconds.
fn cold_start_config(
    dir: &std::path::Path,
    load_timeout: f64,
    hooks: &[&str],
) -> std::path::PathBuf {
    let mut text = format!(
        "[server]\nwatch_interval = 0\n[execution]\nkill_grace = 0.3\n\
         [sandbox]\ncache_dir = \"{}\"\nload_timeout = {load_timeout}\n\n",
        dir.join("cache").display(),
    );
    for name in hooks {
        text.push_str(&format!(
            "[[hooks]]\nname = \"{name}\"\npath = \"{}\"\n\n",
            component(name).display()
        ));
    }
    let cfg = dir.join("ccx.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[tokio::test]
async fn serve_listens_before_its_hooks_are_loaded_and_jobs_wait_for_them() {
    // A cold cache: the Python example takes seconds to compile (a minute and more in a debug
    // build on a loaded 2-core machine, hence the generous load_timeout).
    let dir = tempfile::tempdir().unwrap();
    let cfg = cold_start_config(dir.path(), 600.0, &["agent-result-check", "deny-dangerous"]);
    let started = Instant::now();
    let (child, addr, to_listen) = spawn_ccx_serve(CCX, &cfg, &[]);
    let _server = KillOnDrop(child);
    let (status, body) = http(&addr, "GET", "/health", &[], "").await;
    let answered = started.elapsed();
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "starting", "{health}");
    assert!(
        answered < Duration::from_secs(2),
        "/health answered after {answered:?} (listening after {to_listen:?})"
    );
    let states: Vec<&str> = health["hooks"]["each"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"loading"), "{health}");

    // A job sent now waits for the hooks: the deny comes from the Rust hook.
    let refused = {
        let url = format!("ws://{addr}/ws");
        let mut client = ccx::client::Client::connect(&url, None).await.unwrap();
        let params = ccx::protocol::ExecuteParams {
            command: "rm -rf /".into(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(600), client.execute(&params)).await {
            Ok(Err(ccx::client::ClientError::Refused(e))) => e,
            Ok(Ok(job)) => panic!("ran without its hooks: {:?}", job.accepted),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no answer while the hooks loaded"),
        }
    };
    assert_eq!(refused.code, -32001, "{refused}");
    assert_eq!(
        refused.data.as_ref().unwrap()["hook"],
        "deny-dangerous",
        "{refused}"
    );
    let (_, body) = http(&addr, "GET", "/health", &[], "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["hooks"]["loaded"], 2, "{health}");
}

#[tokio::test]
async fn a_job_that_outwaits_load_timeout_is_refused_with_hooks_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cold_start_config(dir.path(), 0.2, &["secret-scan"]);
    let (child, addr, _) = spawn_ccx_serve(CCX, &cfg, &[]);
    let _server = KillOnDrop(child);
    let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
    let reply = ws.call("execute", json!({"command": "true"})).await;
    assert_eq!(reply["error"]["code"], -32006, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("hooks not ready"), "{reply}");
}

#[tokio::test]
async fn a_reload_names_the_settings_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ccx.toml");
    std::fs::write(&cfg, "[server]\nwatch_interval = 0.05\nmax_sessions = 10\n").unwrap();
    let server = AppServer::start(&cfg).await;
    std::fs::write(
        &cfg,
        "[server]\nwatch_interval = 0.05\nmax_sessions = 20\n[execution]\nmax_queue = 3\n",
    )
    .unwrap();
    let mut health = Value::Null;
    for _ in 0..200 {
        health = server.get("/health").await;
        if health["hooks"]["restart_required"] != json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        health["hooks"]["restart_required"],
        json!(["server.max_sessions"]),
        "{health}"
    );
    // What can apply did apply, in the same generation.
    assert_eq!(health["limits"]["max_queue"], 3, "{health}");
    server.stop().await;
}

#[tokio::test]
async fn the_client_streams_one_jobs_typed_events_and_cancels_it() {
    use ccx::client::Client;
    use ccx::protocol::{ExecuteParams, ExecuteResult, JobStatus, Notification, Status};
    let server = TestServer::start(test_config()).await;
    let mut client = Client::connect(&server.url(), None).await.unwrap();
    assert!(client.hello.capabilities.iter().any(|c| c == "execute"));
    let params = ExecuteParams {
        command: "echo out; echo err >&2".into(),
        ..Default::default()
    };
    let mut job = client.execute(&params).await.unwrap();
    assert!(
        matches!(job.accepted, ExecuteResult::Started { .. }),
        "{:?}",
        job.accepted
    );
    let mut seen = Vec::new();
    while let Some(event) = job.next().await.unwrap() {
        seen.push(event);
    }
    assert!(matches!(seen.first(), Some(Notification::Started(s)) if s.command == params.command));
    let out: String = seen
        .iter()
        .filter_map(|e| match e {
            Notification::Output(o) => Some(o.data.as_str()),
            _ => None,
        })
        .collect();
    assert!(out.contains("out\n") && out.contains("err\n"), "{out}");
    match seen.last() {
        Some(Notification::Completed(c)) => assert_eq!(c.status, JobStatus::Completed),
        other => panic!("{other:?}"),
    }

    // A canceller moved to another task ends a running job.
    let params = ExecuteParams {
        command: "sleep 30".into(),
        ..Default::default()
    };
    let mut job = client.execute(&params).await.unwrap();
    let canceller = job.canceller();
    tokio::spawn(async move { canceller.cancel().await.unwrap() });
    let mut last = None;
    while let Some(event) = tokio::time::timeout(WAIT, job.next())
        .await
        .unwrap()
        .unwrap()
    {
        last = Some(event);
    }
    match last {
        Some(Notification::Completed(c)) => assert_eq!(c.status, JobStatus::Canceled),
        other => panic!("{other:?}"),
    }
    let status = client.call::<Status>(&Default::default()).await.unwrap();
    assert!(
        status.running.is_none() && status.queued.is_empty(),
        "{status:?}"
    );
    server.shutdown().await;
}
