//! Hooks as admission control, through the built binary: matchers evaluated by the host on its
//! parse (a hook that does not match is never called; a dynamic command meets every matcher),
//! `warn` and `dry-run` modes, and the parse a 0.2.0 hook sees. Failures outside `enforce`
//! and the chain's re-parse after a rewrite are in `modes`.

mod modes;

use crate::jobs::serve;
use crate::util::{Ws, scratch};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The `/hooks` entry of hook `name` once the whole set is ready and that hook loaded.
pub(super) async fn hook_stats(url: &str, name: &str) -> Value {
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let deadline = std::time::Instant::now() + crate::util::WAIT;
    loop {
        let (_, body) = crate::util::http(addr, "GET", "/hooks", &[], "").await;
        let status: Value = serde_json::from_str(&body).unwrap();
        let hook = status["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .cloned();
        // During the first load a hook that finished early is listed as `loaded` with only
        // its name and path; its digest and stages appear once the whole set is ready.
        if let Some(h) = hook.filter(|h| h["state"] == "loaded" && status["state"] == "ready") {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub(super) fn reports(events: &[Value]) -> Vec<Value> {
    let started = events
        .iter()
        .find(|e| e["method"] == "process.started")
        .unwrap();
    started["params"]["hooks"]["reports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_keeps_a_slow_hook_off_other_commands() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "git-guard"
path = "{test-hook}"
timeout_ms = 5000
match = { programs = ["git"], commands = ["make deploy*"] }
config = { mode = "sleep", ms = "1000" }
"#;
    let (_server, url) = serve(dir.path(), config, &[]);
    hook_stats(&url, "git-guard").await;
    let mut ws = Ws::connect(&url).await;
    // Not instantiated at all for `echo hi`: its round trip is far below the hook's second.
    let start = Instant::now();
    let (_, events) = ws.run(json!({"command": "echo hi"})).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(500), "echo hi took {took:?}");
    assert!(reports(&events).is_empty(), "{events:?}");
    assert_eq!(hook_stats(&url, "git-guard").await["stats"]["calls"], 0);
    // Met by `git push` (it need not succeed), by `git` anywhere in the line, by a command
    // glob, and by a dynamic program; each then waits out the hook's second.
    for (command, rule) in [
        (
            "git push --dry-run origin main >/dev/null 2>&1 || true",
            "program git",
        ),
        (
            "echo a; git --version >/dev/null 2>&1 || true",
            "program git",
        ),
        (
            "make deploy-docs 2>/dev/null || true",
            "command make deploy*",
        ),
        (
            "$(echo git) --version >/dev/null 2>&1 || true",
            "dynamic command",
        ),
    ] {
        let start = Instant::now();
        let (_, events) = ws.run(json!({"command": command})).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(1), "{command} took {took:?}");
        let r = reports(&events);
        assert_eq!(r.len(), 1, "{command}: {events:?}");
        let matched = r[0]["matched"].as_str().unwrap();
        assert!(matched.starts_with(rule), "{command}: {matched}");
    }
    // Pre and post: the same matcher decides both.
    let stats = hook_stats(&url, "git-guard").await["stats"].clone();
    assert_eq!(
        (stats["pre_calls"].as_u64(), stats["post_calls"].as_u64()),
        (Some(4), Some(4)),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_and_dry_run_record_decisions_without_applying_them() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "warner"
path = "{test-hook}"
mode = "warn"
config = { mode = "deny-if-contains", needle = "risky" }

[[hooks]]
name = "dry"
path = "{test-hook}"
mode = "dry-run"
config = { mode = "modify", command = "echo replaced" }
"#;
    let (_server, url) = serve(dir.path(), config, &[]);
    hook_stats(&url, "dry").await;
    let mut ws = Ws::connect(&url).await;
    let (_, events) = ws.run(json!({"command": "echo risky"})).await;
    // The job ran unchanged.
    assert_eq!(crate::util::output(&events, "stdout"), "risky\n");
    assert_eq!(crate::util::completion(&events)["status"], "completed");
    // `warn`: one warning, kind deny; `dry-run`: none.
    let warnings: Vec<&Value> = events
        .iter()
        .filter(|e| e["method"] == "hook.warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    let w = &warnings[0]["params"];
    assert_eq!(
        (w["hook"].as_str(), w["kind"].as_str(), w["mode"].as_str()),
        (Some("warner"), Some("deny"), Some("warn")),
        "{w}"
    );
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .contains("command contains `risky`"),
        "{w}"
    );
    let r = reports(&events);
    assert_eq!(r[0]["decision"], "deny");
    assert_eq!(r[1]["decision"], "modify");
    assert_eq!(r[1]["mode"], "dry-run");
    let dry = hook_stats(&url, "dry").await;
    assert_eq!(dry["stats"]["would_modify"], 1, "{dry}");
    assert_eq!(dry["stats"]["modify"], 0, "{dry}");
    assert_eq!(hook_stats(&url, "warner").await["stats"]["would_deny"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_sees_the_hosts_parse() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "describe"
path = "{test-hook}"
config = { mode = "describe" }
"#;
    let (_server, url) = serve(dir.path(), config, &[]);
    hook_stats(&url, "describe").await;
    let mut ws = Ws::connect(&url).await;
    let r = ws
        .call(
            "execute",
            json!({"command": "ls -la | grep x; $(echo rm) -rf /"}),
        )
        .await;
    let reason = r["error"]["data"]["reason"].as_str().unwrap().to_string();
    for part in [
        r#"argv: ["ls", "-la"]"#,
        r#"argv: ["grep", "x"]"#,
        "stage: 1",
        r#"argv: ["$(echo rm)", "-rf", "/"]"#,
        "dynamic: true",
        r#"argv: ["echo", "rm"]"#,
        "Context::CommandSubstitution",
        "unparsed=None",
    ] {
        assert!(reason.contains(part), "{part} not in {reason}");
    }
    let r = ws
        .call("execute", json!({"command": "echo \"unterminated"}))
        .await;
    let reason = r["error"]["data"]["reason"].as_str().unwrap();
    assert!(reason.contains("commands=[] unparsed=Some("), "{reason}");
}

/// The decision log's lines, each parsed.
pub(super) fn logged(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_logged_with_secrets_masked() {
    let dir = scratch();
    let log = dir.path().join("decisions.jsonl");
    std::fs::write(dir.path().join("broken.wasm"), b"\0asm not a component").unwrap();
    // The first lines land in the harness's `[sandbox]` table.
    let hooks = format!(
        r#"decision_log = "{}"

[[hooks]]
name = "modifier"
path = "{{test-hook}}"
config = {{ mode = "modify", set_env = "ADDED=1" }}

[[hooks]]
name = "guard"
path = "{{test-hook}}"
config = {{ mode = "deny-if-contains", needle = "forbidden" }}

[[hooks]]
name = "crasher"
path = "{{test-hook}}"
config = {{ mode = "panic" }}
"#,
        log.display()
    );
    // `broken` fails to load: at start it stays, failed, and is logged where it is met.
    let config = format!("{hooks}\n[[hooks]]\nname = \"broken\"\npath = \"broken.wasm\"\n");
    let (server, url) = serve(dir.path(), &config, &[]);
    hook_stats(&url, "crasher").await;
    let mut ws = Ws::connect(&url).await;
    ws.run(json!({"command": "echo ok", "env": {"API_TOKEN": "s3cret-value"}}))
        .await;
    let r = ws
        .call("execute", json!({"command": "echo forbidden"}))
        .await;
    assert_eq!(r["error"]["data"]["hook"], "guard", "{r}");

    let mut lines = Vec::new();
    let complete = crate::util::eventually(crate::util::WAIT, || {
        lines = logged(&log);
        // Post-hook calls are logged too: wait for the six pre-stage ones.
        lines.iter().filter(|l| l["stage"] == "pre").count() >= 6
    })
    .await;
    assert!(complete, "{lines:?}");
    let pre: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["stage"] == "pre")
        .map(|l| {
            (
                l["hook"].as_str().unwrap().into(),
                l["decision"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("modifier", "modify"),
        ("guard", "allow"),
        ("crasher", "failed"),
        ("broken", "failed"),
        ("modifier", "modify"),
        ("guard", "deny"),
    ];
    assert_eq!(
        pre,
        want.map(|(h, d)| (h.to_string(), d.to_string())).to_vec()
    );
    let first = &lines[0];
    assert_eq!(
        first["patch"]["set_env"],
        json!([["ADDED", "1"]]),
        "{first}"
    );
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64, "{first}");
    assert_eq!(first["mode"], "enforce");
    assert_eq!(first["request"]["command"], "echo ok");
    assert!(
        first["request"]["commands"][0]["argv"] == json!(["echo", "ok"]),
        "{first}"
    );
    // The first generation decided all of them.
    assert!(lines.iter().all(|l| l["generation"] == 1), "{lines:?}");
    let crash = lines.iter().find(|l| l["hook"] == "crasher").unwrap();
    assert_eq!(
        (crash["decision"].as_str(), crash["failure"].as_str()),
        (Some("failed"), Some("trap")),
        "{crash}"
    );
    let broken = lines.iter().find(|l| l["hook"] == "broken").unwrap();
    assert_eq!(broken["failure"], "load", "{broken}");
    assert!(broken.get("sha256").is_none(), "{broken}");
    assert_eq!(broken["request"]["command"], "echo ok", "{broken}");
    let deny = lines.iter().find(|l| l["decision"] == "deny").unwrap();
    assert_eq!(deny["reason"], "command contains `forbidden`");
    // The secret's value reached the hooks, not the log.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("s3cret-value"));
    assert!(text.contains(r#"["API_TOKEN","***"]"#), "{text}");

    // A reload (without `broken`: a set with a load error is refused) is generation 2.
    crate::util::write_config(dir.path(), 0.0, &hooks);
    // SAFETY: kill(2) on the server this test started; it is still running.
    unsafe { libc::kill(server.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + crate::util::WAIT;
    loop {
        let status = ws.call("hook_status", json!({})).await["result"].clone();
        if status["generation"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no reload: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ws.run(json!({"command": "echo again"})).await;
    let again = crate::util::eventually(crate::util::WAIT, || {
        lines = logged(&log);
        lines
            .iter()
            .any(|l| l["request"]["command"] == "echo again" && l["hook"] == "crasher")
    })
    .await;
    assert!(again, "{lines:?}");
    for line in lines
        .iter()
        .filter(|l| l["request"]["command"] == "echo again")
    {
        assert_eq!(line["generation"], 2, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_hook_loads_only_with_its_digest() {
    use sha2::{Digest, Sha256};
    let file = crate::util::component("pre-only");
    let digest: String = Sha256::digest(std::fs::read(file).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = scratch();
    let config = format!(
        r#"
[[hooks]]
name = "pinned"
path = "{{pre-only}}"
sha256 = "{digest}"

[[hooks]]
name = "wrong"
path = "{{pre-only}}"
sha256 = "{}"
"#,
        "0".repeat(64)
    );
    let (_server, url) = serve(dir.path(), &config, &[]);
    let pinned = hook_stats(&url, "pinned").await;
    assert_eq!(pinned["sha256"], digest.as_str(), "{pinned}");
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (_, body) = crate::util::http(addr, "GET", "/hooks", &[], "").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    let wrong = status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "wrong")
        .unwrap()
        .clone();
    assert_eq!(wrong["state"], "failed", "{wrong}");
    let error = wrong["error"].as_str().unwrap();
    assert!(
        error.contains("pinned to sha256 0000") && error.contains(&digest),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_passes_through_check_input_first() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "input-guard"
path = "{input-guard}"
"#;
    let (_server, url) = serve(dir.path(), config, &[]);
    hook_stats(&url, "input-guard").await;
    let mut ws = Ws::connect(&url).await;
    let r = ws
        .call("execute", json!({"command": "cat", "stdin_open": true}))
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = ws
        .call("input", json!({"job_id": job, "data": "hello\n"}))
        .await;
    assert_eq!(r["result"]["bytes"], 6, "{r}");
    // Refused bytes never reach the job; the job goes on.
    let r = ws
        .call("input", json!({"job_id": job, "data": "rm -rf /\n"}))
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(r["error"]["data"]["hook"], "input-guard", "{r}");
    assert_eq!(
        r["error"]["data"]["reason"], "input contains `rm -rf`",
        "{r}"
    );
    let r = ws
        .call(
            "input",
            json!({"job_id": job, "data": "bye\n", "eof": true}),
        )
        .await;
    assert_eq!(r["result"]["bytes"], 4, "{r}");
    let events = ws.collect(&job).await;
    assert_eq!(crate::util::output(&events, "stdout"), "hello\nbye\n");

    // `stdin` text given with the request passes the same stage, before the job starts.
    let r = ws
        .call(
            "execute",
            json!({"command": "sh", "stdin": "rm -rf /tmp/x\n"}),
        )
        .await;
    assert_eq!(r["error"]["data"]["hook"], "input-guard", "{r}");

    // The hook sees the job's request: a label can close a terminal to typing.
    let r = ws
        .call(
            "execute",
            json!({"command": "sleep 30", "pty": {"rows": 24, "cols": 80},
                   "labels": {"interactive": "no"}}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = ws.call("input", json!({"job_id": job, "data": "x"})).await;
    assert!(
        r["error"]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("takes no input"),
        "{r}"
    );
    ws.call("control", json!({"type": "CANCEL", "job_id": job}))
        .await;
    ws.collect(&job).await;
}
