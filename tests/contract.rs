//! The hook contract's versions through the built binary: a hook built against
//! `ccx:hooks@0.1.0` (`pre-only`) loads and behaves as before, beside 0.2.0 hooks; a 0.2.0
//! pre-hook sees the job's stdin mode, terminal, limits, labels and submitter, and may change
//! the limits, never past the server's maxima.

use crate::jobs::serve;
use crate::util::{Ws, output, scratch};
use serde_json::{Value, json};

const MAX: &str = "[execution.limits.max]\nopen_files = 1000\nmemory_mb = 4096\n";

fn hooks(describe_when: &str, modify_when: &str, limit: &str) -> String {
    format!(
        r#"
[[server.tokens]]
label = "agent"
token = "tok-agent"

[[hooks]]
name = "old"
path = "{{pre-only}}"

[[hooks]]
name = "describe"
path = "{{test-hook}}"
config = {{ mode = "describe", when = "{describe_when}" }}

[[hooks]]
name = "lower"
path = "{{test-hook}}"
config = {{ mode = "modify", when = "{modify_when}", "limit.open_files" = "{limit}" }}

{MAX}"#
    )
}

/// `GET /hooks` once every hook has loaded.
async fn health_hooks(url: &str) -> Value {
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let auth = [("Authorization", "Bearer tok-agent")];
    let deadline = std::time::Instant::now() + crate::util::WAIT;
    loop {
        let (_, body) = crate::util::http(addr, "GET", "/hooks", &auth, "").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        if status["state"] == "ready" || std::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_hooks_load_and_new_ones_see_and_lower_limits() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), &hooks("describe-me", "lower-me", "20"), &[]);
    let status = health_hooks(&url).await;
    let contract = |name: &str| {
        status["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["contract"].clone())
            .unwrap()
    };
    assert_eq!(contract("old"), "0.1.0", "{status}");
    assert_eq!(contract("describe"), "0.2.0", "{status}");

    let mut ws = Ws::connect(&format!("{url}?token=tok-agent")).await;
    // The 0.1.0 hook still denies what it denied.
    let r = ws.call("execute", json!({"command": "rm -rf /"})).await;
    assert_eq!(r["error"]["data"]["hook"], "old", "{r}");

    // A 0.2.0 hook sees what 0.1.0 has no words for.
    let r = ws
        .call(
            "execute",
            json!({"command": "echo describe-me", "pty": {"rows": 30, "cols": 90},
                   "limits": {"memory_mb": 100}, "labels": {"team": "infra"}}),
        )
        .await;
    let reason = r["error"]["data"]["reason"].as_str().unwrap().to_string();
    for part in [
        "stdin=StdinMode::Terminal",
        "terminal=Some(TerminalSize { rows: 30, cols: 90 })",
        "memory-mb: Some(100)",
        "open-files: Some(1000)",
        "labels=[(\"team\", \"infra\")]",
        "token-label: Some(\"agent\")",
        "peer: Some(\"127.0.0.1:",
    ] {
        assert!(reason.contains(part), "{part} not in {reason}");
    }
    let r = ws
        .call(
            "execute",
            json!({"command": "echo describe-me", "stdin_open": true}),
        )
        .await;
    assert!(
        r["error"]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("stdin=StdinMode::Open"),
        "{r}"
    );

    // A 0.2.0 hook lowers a limit: the job runs with it, and `process.started` says so.
    let (_, events) = ws.run(json!({"command": "ulimit -n # lower-me"})).await;
    assert_eq!(output(&events, "stdout"), "20\n");
    let started = events
        .iter()
        .find(|e| e["method"] == "process.started")
        .unwrap();
    assert_eq!(started["params"]["limits"]["open_files"], 20, "{started}");
    assert_eq!(started["params"]["hooks"]["modified_by"], json!(["lower"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_cannot_raise_a_limit_past_the_maximum() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), &hooks("never", "raise-me", "999999"), &[]);
    let mut ws = Ws::connect(&format!("{url}?token=tok-agent")).await;
    let (_, events) = ws
        .run(json!({"command": "ulimit -n # raise-me", "limits": {"open_files": 64}}))
        .await;
    assert_eq!(output(&events, "stdout"), "1000\n");
}
