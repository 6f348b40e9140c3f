//! The output stage through a real server, a real WebSocket and the real `output-test` guest
//! (`hooks/output-test`, its behaviour chosen by config): what clients, the record and the
//! replay see; line granularity and its flush; a hook that ends the job; failures under both
//! policies, with another connection served meanwhile.

use crate::util::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

async fn start(hooks: &str) -> AppServer {
    AppServer::with_config(0.05, hooks).await
}

fn named<'a>(events: &'a [Value], method: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["method"] == method).collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_and_dropped_output_reaches_no_client_record_or_replay() {
    let server = start(
        r#"
[[hooks]]
name = "shout"
path = "{output-test}"
config = { mode = "upper" }

[[hooks]]
name = "quiet"
path = "{output-test}"
config = { mode = "drop-stderr" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (resp, events) = ws
        .run(json!({"command": "printf 'secret here'; printf 'err' >&2", "detach": true}))
        .await;
    let job = resp["result"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(output(&events, "stdout"), "SECRET HERE");
    assert_eq!(output(&events, "stderr"), "");
    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout_bytes"], 11);
    assert_eq!(done["stdout_raw_bytes"], 11);
    assert_eq!(done["stderr_bytes"], 0);
    assert_eq!(done["stderr_raw_bytes"], 3);
    assert_eq!(done["stdout_sha256"], sha256(b"SECRET HERE"));
    let shout = report(done, "shout");
    assert_eq!(shout["stage"], "output");
    assert_eq!(shout["output"]["chunks_changed"], 2, "{shout}");
    assert_eq!(report(done, "quiet")["output"]["chunks_changed"], 1);

    // The replay is what the client got: the spool never saw the raw bytes.
    let r = ws.call("attach", json!({"job_id": job})).await;
    assert!(r["result"].is_object(), "{r}");
    let replay = ws.collect(&job).await;
    assert_eq!(output(&replay, "stdout"), "SECRET HERE");
    assert_eq!(output(&replay, "stderr"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_sees_the_whole_job_and_releases_what_it_held_at_the_end() {
    let server = start(
        r#"
[[hooks]]
name = "hold"
path = "{output-test}"
config = { mode = "hold" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "printf one; sleep 0.1; printf two; printf e >&2"}))
        .await;
    assert_eq!(output(&events, "stdout"), "[held 6]onetwo");
    assert_eq!(output(&events, "stderr"), "[held 1]e");
    assert_eq!(completion(&events)["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_granularity_delivers_whole_lines_and_flushes_a_prompt() {
    let server = start(
        r#"
[[hooks]]
name = "tag"
path = "{output-test}"
output = { granularity = "line", flush_ms = 400 }
config = { mode = "tag" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    // Two lines written in three pieces, then a prompt that never gets its newline while the
    // job waits: it must still appear, after `flush_ms`.
    let (_, events) = ws
        .run(json!({"command": "printf 'ab'; sleep 0.05; printf 'c\\nde'; sleep 0.05; printf 'f\\n'; printf 'name? '; sleep 1.5"}))
        .await;
    let chunks: Vec<String> = named(&events, "process.output")
        .iter()
        .map(|e| e["params"]["data"].as_str().unwrap().to_string())
        .collect();
    let all = chunks.concat();
    // `<seq:len>` per delivery: the lines `abc\n` (4) and `def\n` (4), then the prompt (6).
    let lens: Vec<&str> = all
        .split('<')
        .filter(|s| !s.is_empty())
        .map(|s| s.split(':').nth(1).unwrap().trim_end_matches('>'))
        .collect();
    assert_eq!(lens, ["4", "4", "6"], "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_end_the_job_and_withholds_everything_after() {
    let server = start(
        r#"
[[hooks]]
name = "stopper"
path = "{output-test}"
config = { mode = "end-on", needle = "STOP" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let started = Instant::now();
    let (_, events) = ws
        .run(json!({"command": "echo before; sleep 0.2; echo STOP; sleep 0.2; echo after; sleep 30"}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the job was not ended"
    );
    assert_eq!(output(&events, "stdout"), "before\n");
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("stopper") && error.contains("saw `STOP`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_hook_is_cut_at_its_deadline_under_both_policies() {
    // Fails closed by default: the job ends `failed`, nothing past the failure is sent.
    let server = start(
        r#"
[[hooks]]
name = "spinner"
path = "{output-test}"
timeout_ms = 100
fuel = 0
match = { programs = ["echo"] }
config = { mode = "spin" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let mut other = server.connect().await;
    let job = ws
        .call("execute", json!({"command": "echo leak; sleep 5"}))
        .await;
    let job = job["result"]["job_id"].as_str().unwrap().to_string();
    // Meanwhile another connection is served at once.
    let t = Instant::now();
    let (_, quick) = other.run(json!({"command": "true"})).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(completion(&quick)["status"], "completed");
    let events = ws.collect(&job).await;
    assert_eq!(output(&events, "stdout"), "");
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("deadline of 100 ms"),
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
config = { mode = "alloc", mb = "8" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.02; done"}))
        .await;
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("hoarder") && error.contains("memory"),
        "{error}"
    );
    // What went out before the failure went out whole; nothing after it. (Each chunk costs
    // 8 MB, so the fourth fails; on a loaded machine one chunk may carry several lines.)
    let out = output(&events, "stdout");
    let all = "1\n2\n3\n4\n5\n6\n7\n8\n";
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
async fn the_jobs_fuel_budget_ends_the_hook_and_its_policy_decides() {
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
