//! Hooks through the whole server: a real config file, real components, a real WebSocket.
//! Covers the executor's two hook points, failure policies on the wire, `hook_status`, `/hooks`,
//! hot reload and the `ccx hooks` commands.
//!
//! Over 500 lines: one module per area of the suite (see `tests/tests.rs`).

use crate::util::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A server on a config (in a scratch dir of its own) polled every 50 ms, with `hooks`
/// (`[[hooks]]` entries) appended; also returns the config file's path.
async fn start(hooks: &str) -> (AppServer, PathBuf) {
    let server = AppServer::with_config(0.05, hooks).await;
    let path = server.config_path().to_path_buf();
    (server, path)
}

fn events_named<'a>(events: &'a [Value], method: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["method"] == method).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_is_an_error_with_the_hook_and_its_reason() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "guard"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "rm -rf" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let err = ws
        .call("execute", json!({"command": "echo hi; rm -rf /tmp/x"}))
        .await;
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(err["error"]["data"]["hook"], "guard");
    assert_eq!(err["error"]["data"]["reason"], "command contains `rm -rf`");
    // An allowed command runs, and `process.started` says what the pre-hooks decided.
    let (_, events) = ws.run(json!({"command": "echo fine"})).await;
    assert_eq!(output(&events, "stdout"), "fine\n");
    let started = &events[0]["params"];
    assert_eq!(started["hooks"]["reports"][0]["hook"], "guard");
    assert_eq!(started["hooks"]["reports"][0]["decision"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_that_is_denied_ends_with_a_denied_completion() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "guard"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "forbidden" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let first = ws.call("execute", json!({"command": "sleep 0.3"})).await;
    assert_eq!(first["result"]["status"], "started");
    let second = ws
        .call("execute", json!({"command": "echo forbidden"}))
        .await;
    assert_eq!(second["result"]["status"], "queued");
    let third = ws.call("execute", json!({"command": "echo after"})).await;
    let second_job = second["result"]["job_id"].as_str().unwrap().to_string();
    let third_job = third["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&second_job).await;
    assert_eq!(events.len(), 1, "a denied job never starts: {events:?}");
    let done = completion(&events);
    assert_eq!(done["status"], "denied");
    assert_eq!(done["hook"], "guard");
    assert_eq!(done["reason"], "command contains `forbidden`");
    let events = ws.collect(&third_job).await;
    assert_eq!(output(&events, "stdout"), "after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modification_is_seen_by_the_next_hook_and_by_the_command() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "rewrite"
path = "{test-hook}"
config = { mode = "modify", command = "echo rewritten $ADDED", set_env = "ADDED=by-hook" }

[[hooks]]
name = "audit"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "forbidden-after-rewrite" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": "echo original"})).await;
    assert_eq!(output(&events, "stdout"), "rewritten by-hook\n");
    let started = &events[0]["params"];
    assert_eq!(started["command"], "echo rewritten $ADDED");
    assert_eq!(started["hooks"]["modified_by"], json!(["rewrite"]));
    drop(ws);
    server.stop().await;

    // The second hook judges the command as the first one left it.
    let (server, _) = start(
        r#"
[[hooks]]
name = "rewrite"
path = "{test-hook}"
config = { mode = "modify", command = "echo rewritten" }

[[hooks]]
name = "audit"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "rewritten" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let err = ws
        .call("execute", json!({"command": "echo original"}))
        .await;
    assert_eq!(err["error"]["data"]["hook"], "audit", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrite_history_keeps_the_request_as_received_and_each_patch_in_order() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "first"
path = "{test-hook}"
config = { mode = "modify", command = "echo one $ADDED", set_env = "ADDED=by-first" }

[[hooks]]
name = "judge"
path = "{test-hook}"

[[hooks]]
name = "second"
path = "{test-hook}"
config = { mode = "modify", command = "echo two $ADDED", set_env = "DEPLOY_TOKEN=s3cret" }

[[hooks]]
name = "trial"
path = "{test-hook}"
mode = "warn"
config = { mode = "modify", command = "echo never" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let request = json!({
        "command": "echo original",
        "cwd": "/tmp",
        "timeout": 30,
        "env": {"A": "1", "MY_TOKEN": "hunter2"},
    });
    let (resp, events) = ws.run(request).await;
    let job = resp["result"]["job_id"].clone();
    assert_eq!(output(&events, "stdout"), "two by-first\n");
    let started = &events_named(&events, "process.started")[0]["params"];
    assert_eq!(started["command"], "echo two $ADDED");
    let hooks = &started["hooks"];
    assert_eq!(
        hooks["received"],
        json!({
            "command": "echo original",
            "cwd": "/tmp",
            "timeout": 30.0,
            "env": {"A": "1", "MY_TOKEN": "***"},
        }),
        "{hooks}"
    );
    assert_eq!(hooks["modified_by"], json!(["first", "second"]));
    let patches: Vec<&Value> = hooks["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["patch"])
        .collect();
    assert_eq!(
        patches,
        [
            &json!({"command": "echo one $ADDED", "set_env": {"ADDED": "by-first"}}),
            &Value::Null,
            &json!({"command": "echo two $ADDED", "set_env": {"DEPLOY_TOKEN": "***"}}),
            &json!({"command": "echo never"}),
        ],
        "{hooks}"
    );
    assert_eq!(hooks["reports"][3]["mode"], "warn");
    // The record keeps the same history; post-hooks see the request as received and as run.
    let rec = ws.call("get_job", json!({"job_id": job})).await;
    assert_eq!(rec["result"]["pre_hooks"], *hooks, "{rec}");
    let done = completion(&events);
    let notes = &report(done, "judge")["annotations"];
    assert_eq!(notes["received_command"], "echo original", "{done}");
    assert_eq!(notes["command"], "echo two $ADDED", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_hooks_annotate_and_judge_the_completion() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "judge"
path = "{test-hook}"
config = { post_mode = "annotate", "note.team" = "infra", fail_on_exit_nonzero = true }

[[hooks]]
name = "second"
path = "{test-hook}"
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": "echo out; exit 3"})).await;
    let done = completion(&events);
    assert_eq!(done["status"], "failed");
    let hooks = done["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{done}");
    assert_eq!(hooks[0]["hook"], "judge");
    assert_eq!(hooks[0]["annotations"]["team"], "infra");
    assert_eq!(hooks[0]["annotations"]["exit_code"], "3");
    assert_eq!(hooks[0]["annotations"]["stdout_tail_len"], "4");
    assert_eq!(hooks[0]["verdict"], json!({"fail": "exit code 3"}));
    assert!(hooks[0]["duration_us"].as_u64().is_some());
    assert!(hooks[0]["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(hooks[1]["hook"], "second");
    assert_eq!(hooks[1]["verdict"], Value::Null);

    let (_, events) = ws.run(json!({"command": "true"})).await;
    assert_eq!(completion(&events)["hooks"][0]["verdict"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_that_fails_open_warns_and_the_job_runs() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "crashy"
path = "{test-hook}"
on_failure = "allow"
config = { mode = "panic" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": "echo ran"})).await;
    let warnings = events_named(&events, "hook.warning");
    assert_eq!(warnings.len(), 1, "{events:?}");
    let w = &warnings[0]["params"];
    assert_eq!(w["hook"], "crashy");
    assert_eq!(w["stage"], "pre");
    assert_eq!(w["kind"], "trap");
    assert!(w["message"].as_str().unwrap().contains("crashy"));
    assert_eq!(output(&events, "stdout"), "ran\n");
    assert_eq!(completion(&events)["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_that_fails_closed_denies_with_the_failure() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "spinner"
path = "{test-hook}"
on_failure = "deny"
fuel = 1000000
config = { mode = "loop" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let err = ws.call("execute", json!({"command": "echo never"})).await;
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(err["error"]["data"]["hook"], "spinner");
    let reason = err["error"]["data"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("fuel") && reason.contains("1000000"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_hook_is_never_called() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "off"
path = "{test-hook}"
enabled = false
config = { mode = "deny" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": "echo allowed"})).await;
    assert_eq!(output(&events, "stdout"), "allowed\n");
    let status = ws.call("hook_status", json!({})).await;
    let hook = &status["result"]["hooks"][0];
    assert_eq!(hook["name"], "off");
    assert_eq!(hook["state"], "disabled");
    assert_eq!(hook["stats"]["calls"], 0, "{hook}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_status_and_the_hooks_page_report_counters() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "counted"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "nope" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    for cmd in ["true", "true", "echo nope"] {
        let _ = ws.run_or_error(json!({"command": cmd})).await;
    }
    let status = ws.call("hook_status", json!({})).await["result"].clone();
    assert_eq!(status["enabled"], true);
    assert_eq!(status["hooks_configured"], 1);
    let hook = &status["hooks"][0];
    assert_eq!(hook["state"], "loaded");
    assert_eq!(hook["stages"], json!(["pre", "post"]));
    let stats = &hook["stats"];
    // Three pre calls; the denied job never reaches the post stage.
    assert_eq!(stats["calls"], 5, "{stats}");
    assert_eq!(stats["pre_calls"], 3);
    assert_eq!(
        (stats["allow"].as_u64(), stats["deny"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(stats["latency_p50_us"].as_u64().is_some());
    let page = server.get("/hooks").await;
    assert_eq!(page["hooks"][0]["name"], "counted");
    let health = server.get("/health").await;
    assert_eq!(health["hooks"]["loaded"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_enables_and_disables_a_hook_on_a_live_server() {
    let (server, path) = start(
        r#"
[[hooks]]
name = "gate"   # the hook under test
path = "{test-hook}"
enabled = false
config = { mode = "deny", reason = "gate closed" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": "echo open"})).await;
    assert_eq!(output(&events, "stdout"), "open\n");

    let toggle = |what: &str| {
        let out = Command::new(CCX)
            .args(["hooks", what, "gate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    toggle("enable");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("# the hook under test"),
        "comments are kept:\n{text}"
    );
    wait_for_generation(&mut ws, 2).await;
    let err = ws.call("execute", json!({"command": "echo open"})).await;
    assert_eq!(err["error"]["data"]["reason"], "gate closed", "{err}");

    toggle("disable");
    wait_for_generation(&mut ws, 3).await;
    let (_, events) = ws.run(json!({"command": "echo open again"})).await;
    assert_eq!(output(&events, "stdout"), "open again\n");

    // A broken config is refused and the running generation stays.
    std::fs::write(&path, "[[hooks]]\nname = 3\n").unwrap();
    let start = Instant::now();
    loop {
        let status = ws.call("hook_status", json!({})).await["result"].clone();
        if status["reload_error"].is_string() {
            assert_eq!(status["generation"], 3);
            assert!(
                status["reload_error"]
                    .as_str()
                    .unwrap()
                    .contains("ccx.toml")
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "the bad config was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, events) = ws.run(json!({"command": "echo still serving"})).await;
    assert_eq!(output(&events, "stdout"), "still serving\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_fails_to_load_on_reload_leaves_the_previous_set() {
    let (server, path) = start(
        r#"
[[hooks]]
name = "guard"
path = "{test-hook}"
config = { mode = "deny-if-contains", needle = "bad" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let broken = path.parent().unwrap().join("broken.wasm");
    std::fs::write(&broken, b"\0asm definitely not a component").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[[hooks]]\nname = \"broken\"\npath = \"broken.wasm\"\n"),
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        let status = ws.call("hook_status", json!({})).await["result"].clone();
        if status["reload_error"].is_string() {
            break status;
        }
        assert!(start.elapsed() < WAIT, "the broken hook was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status["reload_error"].as_str().unwrap().contains("broken"),
        "{status}"
    );
    assert_eq!(status["generation"], 1);
    let err = ws.call("execute", json!({"command": "echo bad"})).await;
    assert_eq!(
        err["error"]["data"]["hook"], "guard",
        "previous set still active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_spinning_on_one_connection_does_not_delay_another() {
    let (server, _) = start(
        r#"
[[hooks]]
name = "spin-on-demand"
path = "{test-hook}"
fuel = 1000000000000000
timeout_ms = 3000
config = { mode = "loop", when = "SPIN" }
"#,
    )
    .await;
    let mut slow = server.connect().await;
    let mut fast = server.connect().await;
    let slow_started = Instant::now();
    let slow_id = slow.send("execute", json!({"command": "echo SPIN"})).await;
    // Give the spinning call time to start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fast_started = Instant::now();
    for _ in 0..3 {
        let (_, events) = fast.run(json!({"command": "echo quick"})).await;
        assert_eq!(output(&events, "stdout"), "quick\n");
    }
    let fast_took = fast_started.elapsed();
    // The slow connection's job starts only after its hook hit the deadline (fail-open).
    let reply = slow.response(json!(slow_id)).await;
    let slow_took = slow_started.elapsed();
    assert_eq!(reply["result"]["status"], "started", "{reply}");
    assert!(slow_took >= Duration::from_millis(2900), "{slow_took:?}");
    assert!(
        fast_took < slow_took,
        "the other connection finished its jobs while the hook spun ({fast_took:?} vs {slow_took:?})"
    );
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let events = slow.collect(&job).await;
    let warning = events_named(&events, "hook.warning")[0]["params"].clone();
    assert_eq!(warning["kind"], "timeout", "{warning}");
    assert!(warning["message"].as_str().unwrap().contains("3000"));
}

#[test]
fn hooks_check_names_every_problem() {
    let dir = scratch();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not wasm at all").unwrap();
    let path = write_config(
        dir.path(),
        0.0,
        "[[hooks]]\nname = \"good\"\npath = \"{test-hook}\"\n\n\
         [[hooks]]\nname = \"bad\"\npath = \"broken.wasm\"\nenabled = false\n\n\
         [[hooks]]\nname = \"gone\"\npath = \"missing.wasm\"\n",
    );
    let out = Command::new(CCX)
        .args(["hooks", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`bad`") && err.contains("broken.wasm"),
        "{err}"
    );
    assert!(
        err.contains("`gone`") && err.contains("missing.wasm"),
        "{err}"
    );
    assert!(!err.contains("`good`"), "{err}");

    let list = Command::new(CCX)
        .args(["hooks", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("good") && text.contains("pre+post"), "{text}");
    assert!(text.contains("disabled"), "{text}");
}

#[test]
fn hooks_run_prints_the_answer_fuel_and_output() {
    let hook = component("test-hook");
    let out = Command::new(CCX)
        .args(["hooks", "run"])
        .arg(hook)
        .args(["--pre", r#"{"command":"rm -rf /"}"#])
        .args([
            "--config",
            "mode=deny-if-contains",
            "--config",
            "needle=rm -rf",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["answer"],
        json!({"deny": "command contains `rm -rf`"})
    );
    assert!(report["fuel_used"].as_u64().unwrap() > 0);

    let out = Command::new(CCX)
        .args(["hooks", "run"])
        .arg(hook)
        .args([
            "--post",
            r#"{"request":{"command":"ls"},"status":"completed","exit_code":0}"#,
        ])
        .args(["--config", "post_mode=log"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["stdout"]
            .as_str()
            .unwrap()
            .contains("post stdout line 0"),
        "{report}"
    );

    let out = Command::new(CCX)
        .args(["hooks", "run"])
        .arg(hook)
        .args(["--pre", r#"{"command":"x"}"#, "--fuel", "100000"])
        .args(["--config", "mode=loop"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["kind"], "fuel", "{report}");
}

async fn wait_for_generation(ws: &mut Ws, generation: u64) {
    let start = Instant::now();
    loop {
        let status = ws.call("hook_status", json!({})).await["result"].clone();
        if status["generation"].as_u64() >= Some(generation) {
            assert!(status["reload_error"].is_null(), "{status}");
            return;
        }
        assert!(start.elapsed() < WAIT, "reload never happened: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sighup_reloads_a_server_that_does_not_poll() {
    let dir = scratch();
    // No polling: only the signal can make it notice the change.
    let path = write_config(
        dir.path(),
        0.0,
        "[[hooks]]\nname = \"gate\"\npath = \"{test-hook}\"\nenabled = false\nconfig = { mode = \"deny\", reason = \"closed by SIGHUP\" }\n",
    );
    let (child, addr, _) = spawn_ccx_serve(CCX, &path, &[]);
    let child = KillOnDrop(child);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
        let out = Command::new(CCX)
            .args(["hooks", "enable", "gate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = ws.call("hook_status", json!({})).await;
        assert_eq!(
            status["result"]["generation"], 1,
            "no polling, no reload yet"
        );
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        wait_for_generation(&mut ws, 2).await;
        let err = ws.call("execute", json!({"command": "true"})).await;
        assert_eq!(err["error"]["data"]["reason"], "closed by SIGHUP", "{err}");
    });
}
