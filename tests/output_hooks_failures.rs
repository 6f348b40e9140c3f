//! Output hooks that fail, through a real server and the real `output-test` guest: a hook
//! spinning past its deadline while another connection is served, the job-long instance's
//! memory limit, a hook that cannot start, the job's fuel budget under both policies.

use crate::output_hooks::{named, start};
use crate::util::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_hook_is_cut_at_its_deadline_under_both_policies() {
    // Fails closed by default: the job ends `failed`, nothing past the failure is sent. The
    // deadline is long, so that other connections can be seen served while the hook spins.
    let server = start(
        r#"
[[hooks]]
name = "spinner"
path = "{output-test}"
timeout_ms = 3000
fuel = 0
match = { programs = ["echo"] }
config = { mode = "spin" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let mut other = server.connect().await;
    let r = ws
        .call("execute", json!({"command": "echo leak; sleep 5"}))
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    loop {
        let e = ws.next().await;
        if e["method"] == "process.started" && e["params"]["job_id"] == job {
            break;
        }
    }
    // The hook spins from the first read, `leak\n`, written as the process starts.
    let spinning = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another connection's jobs (no output hook matches them) run at once, each.
    for _ in 0..3 {
        let t = Instant::now();
        let (_, quick) = other.run(json!({"command": "printf ok"})).await;
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(completion(&quick)["status"], "completed");
        assert_eq!(output(&quick, "stdout"), "ok");
    }
    // … while the spinner's job is still held by its hook.
    let rec = other.call("get_job", json!({"job_id": job})).await;
    assert_eq!(rec["result"]["status"], "running", "{rec}");
    let events = ws.collect(&job).await;
    assert!(
        spinning.elapsed() > Duration::from_millis(2500),
        "the hook was cut after {:?}, before its deadline",
        spinning.elapsed()
    );
    assert_eq!(output(&events, "stdout"), "");
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("deadline of 3000 ms"),
        "{done}"
    );
    drop(ws);
    drop(other);
    server.stop().await;

    // `on_failure = "allow"`: the chunk passes unchanged, a warning says why, and the rest
    // of the output goes past the failed hook.
    let server = start(
        r#"
[[hooks]]
name = "spinner"
path = "{output-test}"
timeout_ms = 100
fuel = 0
on_failure = "allow"
config = { mode = "spin" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "echo one; sleep 0.1; echo two"}))
        .await;
    assert_eq!(output(&events, "stdout"), "one\ntwo\n");
    let warnings = named(&events, "hook.warning");
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0]["params"]["stage"], "output");
    assert_eq!(warnings[0]["params"]["kind"], "timeout");
    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_long_instance_stays_within_its_memory_limit() {
    let server = start(
        r#"
[[hooks]]
name = "hoarder"
path = "{output-test}"
memory_mb = 32
config = { mode = "alloc", mb = "12" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    // 0.2 s apart, so that even a loaded machine makes at least three reads of five lines.
    let (_, events) = ws
        .run(json!({"command": "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done"}))
        .await;
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("hoarder") && error.contains("memory"),
        "{error}"
    );
    // What went out before the failure went out whole; nothing after it. (Each chunk costs
    // 12 MiB, so the third fails; on a loaded machine one chunk may carry several lines.)
    let out = output(&events, "stdout");
    let all = "1\n2\n3\n4\n5\n";
    assert!(
        out.len() < all.len() && all.starts_with(&out) && (out.is_empty() || out.ends_with('\n')),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_cannot_start_keeps_the_job_from_running_when_it_fails_closed() {
    let server = start(
        r#"
[[hooks]]
name = "broken"
path = "{output-test}"
config = { mode = "fail-start" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let dir = scratch();
    let marker = dir.path().join("ran");
    let err = ws
        .call(
            "execute",
            json!({"command": format!("touch {}", marker.display())}),
        )
        .await;
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(err["error"]["data"]["hook"], "broken");
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_fuel_budget_ends_the_hook_and_allow_passes_the_rest() {
    // `upper` burns some fuel per chunk; a budget for a few chunks runs out mid-job.
    let server = start(
        r#"
[[hooks]]
name = "budgeted"
path = "{output-test}"
output = { job_fuel = 30_000 }
on_failure = "allow"
config = { mode = "upper" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "for i in $(seq 1 40); do echo line$i; sleep 0.01; done"}))
        .await;
    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{done}");
    let out = output(&events, "stdout");
    // Upper case until the budget ran out, then the rest passed the failed hook unchanged.
    assert!(
        out.starts_with("LINE1\n") && out.ends_with("line40\n"),
        "{out}"
    );
    let warnings = named(&events, "hook.warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["params"]["kind"], "fuel");
    let r = report(done, "budgeted");
    assert!(r["error"].as_str().unwrap().contains("fuel budget"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_fuel_budget_fails_the_job_closed_by_default() {
    // The same budget under the stage's default policy, `deny`.
    let server = start(
        r#"
[[hooks]]
name = "budgeted"
path = "{output-test}"
output = { job_fuel = 30_000 }
config = { mode = "upper" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "for i in $(seq 1 40); do echo line$i; sleep 0.01; done"}))
        .await;
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("budgeted") && error.contains("fuel budget"),
        "{error}"
    );
    // Upper case up to the cut and nothing after it: no line went past the failed hook.
    let out = output(&events, "stdout");
    let all: String = (1..=40).map(|i| format!("LINE{i}\n")).collect();
    assert!(
        out.starts_with("LINE1\n") && out.len() < all.len() && all.starts_with(&out),
        "{out}"
    );
    assert!(named(&events, "hook.warning").is_empty(), "{events:?}");
    let r = report(done, "budgeted");
    assert!(r["error"].as_str().unwrap().contains("fuel budget"), "{r}");
}
