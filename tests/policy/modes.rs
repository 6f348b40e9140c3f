//! What `warn` and `dry-run` do with a failing hook and with a deny (the job runs; only `warn`
//! tells the client; the decision log has it all), and the re-parse after a rewrite: a later
//! hook's matcher judges the command as modified.

use super::{hook_stats, logged, reports};
use crate::jobs::serve;
use crate::util::{Ws, scratch};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_enforce_a_failure_or_a_deny_is_recorded_and_the_job_runs() {
    let dir = scratch();
    let log = dir.path().join("decisions.jsonl");
    // Each hook alone would refuse the job in `enforce`: two fail closed, one denies.
    let config = format!(
        r#"decision_log = "{}"

[[hooks]]
name = "warn-crash"
path = "{{test-hook}}"
mode = "warn"
on_failure = "deny"
config = {{ mode = "panic" }}

[[hooks]]
name = "dry-crash"
path = "{{test-hook}}"
mode = "dry-run"
on_failure = "deny"
config = {{ mode = "panic" }}

[[hooks]]
name = "dry-deny"
path = "{{test-hook}}"
mode = "dry-run"
config = {{ mode = "deny", reason = "not today" }}
"#,
        log.display()
    );
    let (_server, url) = serve(dir.path(), &config, &[]);
    hook_stats(&url, "dry-deny").await;
    let mut ws = Ws::connect(&url).await;
    let (_, events) = ws.run(json!({"command": "echo hi"})).await;
    assert_eq!(crate::util::output(&events, "stdout"), "hi\n");
    assert_eq!(crate::util::completion(&events)["status"], "completed");
    // One warning, from the warn-mode failure; dry-run tells the client nothing.
    let warnings: Vec<&Value> = events
        .iter()
        .filter(|e| e["method"] == "hook.warning")
        .map(|e| &e["params"])
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    let w = warnings[0];
    assert_eq!(
        (w["hook"].as_str(), w["kind"].as_str(), w["mode"].as_str()),
        (Some("warn-crash"), Some("trap"), Some("warn")),
        "{w}"
    );
    let r = reports(&events);
    let modes: Vec<(&str, &str)> = r
        .iter()
        .map(|r| (r["hook"].as_str().unwrap(), r["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        modes,
        [
            ("warn-crash", "warn"),
            ("dry-crash", "dry-run"),
            ("dry-deny", "dry-run")
        ],
        "{r:?}"
    );
    assert!(
        r[0]["error"].is_string() && r[1]["error"].is_string(),
        "{r:?}"
    );
    assert_eq!(r[2]["decision"], "deny", "{r:?}");
    assert_eq!(hook_stats(&url, "dry-deny").await["stats"]["would_deny"], 1);

    // The decision log has each, with its mode.
    let mut lines = Vec::new();
    let complete = crate::util::eventually(crate::util::WAIT, || {
        lines = logged(&log);
        lines.iter().filter(|l| l["stage"] == "pre").count() >= 3
    })
    .await;
    assert!(complete, "{lines:?}");
    let pre: Vec<[&str; 4]> = lines
        .iter()
        .filter(|l| l["stage"] == "pre")
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("-");
            [s("hook"), s("mode"), s("decision"), s("failure")]
        })
        .collect();
    assert_eq!(
        pre,
        [
            ["warn-crash", "warn", "failed", "trap"],
            ["dry-crash", "dry-run", "failed", "trap"],
            ["dry-deny", "dry-run", "deny", "-"],
        ]
    );
    let deny = lines.iter().find(|l| l["hook"] == "dry-deny").unwrap();
    assert_eq!(deny["reason"], "not today", "{deny}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_hooks_matcher_sees_the_command_as_rewritten() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "rewriter"
path = "{test-hook}"
config = { mode = "modify", command = "git --version" }

[[hooks]]
name = "git-only"
path = "{test-hook}"
match = { programs = ["git"] }
"#;
    let (_server, url) = serve(dir.path(), config, &[]);
    hook_stats(&url, "git-only").await;
    let mut ws = Ws::connect(&url).await;
    // `echo x` alone would not meet `git-only`; rewritten to `git --version`, it does.
    let (_, events) = ws.run(json!({"command": "echo x"})).await;
    let r = reports(&events);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        (r[0]["hook"].as_str(), r[0]["decision"].as_str()),
        (Some("rewriter"), Some("modify")),
        "{r:?}"
    );
    assert_eq!(
        (r[1]["hook"].as_str(), r[1]["matched"].as_str()),
        (Some("git-only"), Some("program git")),
        "{r:?}"
    );
}
