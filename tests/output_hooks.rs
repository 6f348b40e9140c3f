//! The output stage through a real server, a real WebSocket and the real `output-test` guest
//! (`hooks/output-test`, its behaviour chosen by config): what clients, the record and the
//! replay see; `seq` gaps; line granularity, its flush and its line limit; a hook that ends
//! the job. Failures are in `output_hooks_failures`.

use crate::util::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

pub(crate) async fn start(hooks: &str) -> AppServer {
    AppServer::with_config(0.05, hooks).await
}

pub(crate) fn named<'a>(events: &'a [Value], method: &str) -> Vec<&'a Value> {
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

    // So is the job's record.
    let rec = ws.call("get_job", json!({"job_id": job})).await["result"].clone();
    assert_eq!(rec["stdout_bytes"], 11, "{rec}");
    assert_eq!(rec["stdout_sha256"], sha256(b"SECRET HERE"), "{rec}");
    assert_eq!(rec["stderr_bytes"], 0, "{rec}");
    assert_eq!(rec["stderr_sha256"], sha256(b""), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_chunk_leaves_a_gap_in_seq() {
    let server = start(
        r#"
[[hooks]]
name = "odd"
path = "{output-test}"
config = { mode = "drop-odd" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (_, events) = ws
        .run(json!({"command": "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.05; done"}))
        .await;
    assert_eq!(completion(&events)["status"], "completed");
    let seqs: Vec<u64> = named(&events, "process.output")
        .iter()
        .filter(|e| e["params"]["data"] != "")
        .map(|e| e["params"]["seq"].as_u64().unwrap())
        .collect();
    // Reads are numbered from 1; the odd ones were dropped and their numbers are not reused.
    assert!(seqs.len() >= 2, "{events:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs.iter().all(|s| s % 2 == 0), "{seqs:?}");
    let out = output(&events, "stdout");
    assert!(!out.contains("1\n"), "the first read was dropped: {out:?}");
    assert!(out.lines().count() < 8, "{out:?}");
    let changed = report(completion(&events), "odd")["output"]["chunks_changed"].clone();
    assert!(changed.as_u64() >= Some(1), "{changed}");
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

/// Runs a command to its end and returns the `tag` mode's deliveries, `<seq:LEN>` each, as
/// (LEN, when it arrived), and when `process.completed` arrived.
async fn tagged_deliveries(ws: &mut Ws, command: &str) -> (Vec<(usize, Duration)>, Duration) {
    let t0 = Instant::now();
    let r = ws.call("execute", json!({"command": command})).await;
    let job = r["result"]["job_id"].as_str().expect("job id").to_string();
    let mut got = Vec::new();
    loop {
        let e = ws.next().await;
        if e["params"]["job_id"] != job {
            continue;
        }
        if e["method"] == "process.completed" {
            assert_eq!(e["params"]["status"], "completed", "{e}");
            return (got, t0.elapsed());
        }
        if e["method"] == "process.output" && e["params"]["data"] != "" {
            // One delivery per event: `<SEQ:LEN>`.
            let data = e["params"]["data"].as_str().unwrap();
            let len = data
                .strip_prefix('<')
                .and_then(|d| d.strip_suffix('>'))
                .and_then(|d| d.split_once(':'))
                .and_then(|(_, len)| len.parse().ok())
                .unwrap_or_else(|| panic!("not one tag: {data}"));
            got.push((len, t0.elapsed()));
        }
    }
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
    // job waits 2 s: it must appear after `flush_ms`, long before the job ends.
    let (got, done) = tagged_deliveries(
        &mut ws,
        "printf 'ab'; sleep 0.05; printf 'c\\nde'; sleep 0.05; printf 'f\\n'; printf 'name? '; sleep 2",
    )
    .await;
    // The lines `abc\n` (4) and `def\n` (4), then the prompt (6).
    let lens: Vec<usize> = got.iter().map(|(len, _)| *len).collect();
    assert_eq!(lens, [4, 4, 6], "{got:?}");
    let (line, prompt) = (got[1].1, got[2].1);
    let waited = prompt - line;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1400),
        "the prompt came {waited:?} after the line before it (flush_ms = 400)"
    );
    assert!(
        done > prompt + Duration::from_secs(1),
        "the prompt came at {prompt:?}, the end at {done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_longer_than_the_limit_goes_at_the_limit_without_its_newline() {
    // `flush_ms` is long: only the line limit can let a partial line go early.
    let server = start(
        r#"
[[hooks]]
name = "tag"
path = "{output-test}"
output = { granularity = "line", max_line_bytes = 8, flush_ms = 10000 }
config = { mode = "tag" }
"#,
    )
    .await;
    let mut ws = server.connect().await;
    let (got, done) = tagged_deliveries(
        &mut ws,
        "printf '0123456789abcdefXY'; sleep 1; printf 'Z\\n'",
    )
    .await;
    // Sixteen bytes (twice the limit) at once; `XY` waits for its newline and goes with it.
    let lens: Vec<usize> = got.iter().map(|(len, _)| *len).collect();
    assert_eq!(lens, [16, 4], "{got:?}");
    assert!(
        got[1].1 - got[0].1 > Duration::from_millis(700),
        "the cut part did not go before the newline: {got:?}"
    );
    assert!(done < Duration::from_secs(8), "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_end_the_job_and_withholds_everything_after() {
    let server = start(
        r#"
[[hooks]]
name = "stopper"
path = "{output-test}"
config = { mode = "end-on", needle = "STOP", pad_kb = "1024" }
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
    // The hook's 1 MiB reason is cut to the 4 KiB every reason gets.
    assert!(error.len() < 4096 + 200, "{}", error.len());
}
