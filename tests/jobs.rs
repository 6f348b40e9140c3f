//! Jobs that outlive their connection, through the built binary and real sockets: detach,
//! attach with exact replay (base64, from the middle, two at once, after the end), a bounded
//! spool's gap and `-32005`, `kill -9` of the server, an unusable state directory.
//! `jobs_admin` has the rest of the registry: retries, control, records, retention, the CLI.

use crate::util::{KillOnDrop, WAIT, Ws, scratch, spawn_ccx_serve, write_config};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server on its own state directory (`dir/state`, or `state` when given).
pub(crate) fn serve(dir: &Path, rest: &str, env: &[(&str, &str)]) -> (KillOnDrop, String) {
    let config = write_config(dir, 0.0, rest);
    let (child, addr, _) = spawn_ccx_serve(crate::util::CCX, &config, env);
    (KillOnDrop(child), format!("ws://{addr}/ws"))
}

/// What a replay (or a live stream) delivered for one job.
#[derive(Default, Debug)]
struct Received {
    stdout: Sha256,
    stdout_bytes: u64,
    /// (seq, offset, len) of each stdout output, in arrival order.
    chunks: Vec<(u64, u64, usize)>,
    gaps: Vec<Value>,
    started: bool,
    completion: Value,
}

/// Reads notifications about `job_id` until its `process.completed`, decoding base64 output.
async fn receive(ws: &mut Ws, job_id: &str) -> Received {
    let mut got = Received::default();
    loop {
        let msg = ws.next().await;
        if msg["params"]["job_id"] != job_id {
            continue;
        }
        let p = &msg["params"];
        match msg["method"].as_str().unwrap() {
            "process.started" => got.started = true,
            "process.output" if p["type"] == "stdout" => {
                let data = p["data"].as_str().unwrap();
                let bytes = match p["encoding"].as_str() {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                    _ => data.as_bytes().to_vec(),
                };
                let (seq, offset) = (p["seq"].as_u64().unwrap(), p["offset"].as_u64().unwrap());
                if let Some(&(last_seq, last_off, last_len)) = got.chunks.last() {
                    assert!(seq > last_seq, "seq increases: {last_seq} then {seq}");
                    if got.gaps.is_empty() {
                        assert_eq!(offset, last_off + last_len as u64, "offsets are contiguous");
                    }
                }
                got.stdout.update(&bytes);
                got.stdout_bytes += bytes.len() as u64;
                got.chunks.push((seq, offset, bytes.len()));
            }
            "process.output_gap" => got.gaps.push(p.clone()),
            "process.completed" => {
                got.completion = p.clone();
                return got;
            }
            _ => {}
        }
    }
}

/// 50 MB with invalid UTF-8 in it: random bytes, after a pause long enough for the
/// submitting connection to close first.
const FIFTY_MB: &str = "sleep 0.5; head -c 50000000 /dev/urandom";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_job_is_replayed_exactly_from_the_start_the_middle_and_after_its_end() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);

    // Submit detached, then hang up at once.
    let job_id = {
        let mut ws = Ws::connect(&url).await;
        let r = ws
            .call(
                "execute",
                json!({"command": FIFTY_MB, "detach": true, "output_encoding": "base64"}),
            )
            .await;
        assert_eq!(r["result"]["status"], "started", "{r}");
        r["result"]["job_id"].as_str().unwrap().to_string()
    };
    assert_eq!(job_id.len(), 36, "a UUID: {job_id}");

    // Two attachers at once, from the start, while the job runs.
    let (mut a, mut b) = (Ws::connect(&url).await, Ws::connect(&url).await);
    let ra = a.call("attach", json!({"job_id": job_id})).await;
    let rb = b.call("attach", json!({"job_id": job_id})).await;
    assert_eq!(ra["result"]["next_seq"], 1, "{ra}");
    assert!(
        ["running", "queued"].contains(&ra["result"]["status"].as_str().unwrap()),
        "{ra}"
    );
    assert!(rb["result"].is_object(), "{rb}");
    let (got_a, got_b) = tokio::join!(receive(&mut a, &job_id), receive(&mut b, &job_id));
    for got in [&got_a, &got_b] {
        assert!(got.started, "the replay begins with process.started");
        assert!(got.gaps.is_empty(), "{:?}", got.gaps);
        assert_eq!(got.stdout_bytes, 50_000_000);
        assert_eq!(got.completion["status"], "completed", "{}", got.completion);
        let sha = hex(&got.stdout.clone().finalize());
        assert_eq!(
            got.completion["stdout_sha256"], sha,
            "every byte exactly once"
        );
    }

    // After its end: the record, and a replay from the middle.
    let rec = a.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(rec["detached"], true);
    assert_eq!(rec["stdout_bytes"], 50_000_000);
    assert_eq!(rec["stdout_sha256"], got_a.completion["stdout_sha256"]);
    let (mid_seq, mid_off, mid_len) = got_a.chunks[got_a.chunks.len() / 2];
    let r = a
        .call("attach", json!({"job_id": job_id, "after_seq": mid_seq}))
        .await;
    assert_eq!(r["result"]["status"], "completed", "{r}");
    assert_eq!(r["result"]["next_seq"], mid_seq + 1);
    let rest = receive(&mut a, &job_id).await;
    assert!(
        !rest.started,
        "a replay from the middle starts at the output"
    );
    assert_eq!(
        rest.chunks[0].1,
        mid_off + mid_len as u64,
        "it resumes at the next byte"
    );
    assert_eq!(rest.stdout_bytes, 50_000_000 - (mid_off + mid_len as u64));
    assert_eq!(
        rest.completion["stdout_sha256"],
        got_a.completion["stdout_sha256"]
    );

    // Unknown job.
    let r = a.call("attach", json!({"job_id": "no-such-job"})).await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_spool_keeps_head_and_tail_and_says_what_it_dropped() {
    let dir = scratch();
    let (_server, url) = serve(
        dir.path(),
        "[state]\nmax_output_bytes_per_job = 65536\n",
        &[],
    );
    let mut ws = Ws::connect(&url).await;
    // 1 MB in 1000-byte writes, far above the 64 KiB kept.
    let r = ws
        .call(
            "execute",
            json!({"command": "head -c 1000000 /dev/zero | tr '\\0' x"}),
        )
        .await;
    let job_id = r["result"]["job_id"].as_str().unwrap().to_string();
    let live = receive(&mut ws, &job_id).await;
    assert_eq!(
        live.stdout_bytes, 1_000_000,
        "a live client still gets every byte"
    );

    let r = ws.call("attach", json!({"job_id": job_id})).await;
    assert!(r["result"].is_object(), "{r}");
    let replay = receive(&mut ws, &job_id).await;
    assert_eq!(replay.gaps.len(), 1, "one gap between head and tail");
    let gap = &replay.gaps[0];
    let (after, next) = (
        gap["after_seq"].as_u64().unwrap(),
        gap["next_seq"].as_u64().unwrap(),
    );
    assert!(after < next, "{gap}");
    assert_eq!(
        replay.stdout_bytes + gap["bytes"].as_u64().unwrap(),
        1_000_000,
        "head + gap + tail = everything"
    );
    // The bound holds to within about one read (64 KiB) at each end of each half.
    assert!(replay.stdout_bytes <= 4 * 65536, "{}", replay.stdout_bytes);
    let rec = ws.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(rec["output_gap"]["next_seq"], next, "{rec}");

    // Inside the gap: -32005 naming the next kept seq; at its edge: fine.
    let r = ws
        .call("attach", json!({"job_id": job_id, "after_seq": after + 1}))
        .await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    assert_eq!(r["error"]["data"]["next_seq"], next, "{r}");
    let r = ws
        .call("attach", json!({"job_id": job_id, "after_seq": next - 1}))
        .await;
    assert_eq!(r["result"]["next_seq"], next, "{r}");
    let tail = receive(&mut ws, &job_id).await;
    assert!(tail.gaps.is_empty(), "{:?}", tail.gaps);
    assert_eq!(
        tail.chunks.first().map(|c| c.0),
        Some(next),
        "{tail:?} {gap}"
    );
}

/// The processes whose environment carries `CCX_JOB_ID=<job_id>`.
pub(crate) fn processes_of(job_id: &str) -> Vec<u32> {
    let needle = format!("CCX_JOB_ID={job_id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_next_start_kills_what_is_left_and_the_job_is_lost_but_attachable() {
    let dir = scratch();
    let (mut server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    // A background grandchild that would outlive everything, and some output first.
    let r = ws
        .call(
            "execute",
            json!({"command": "echo before-the-crash; (sleep 300 &); sleep 300", "detach": true}),
        )
        .await;
    let job_id = r["result"]["job_id"].as_str().unwrap().to_string();
    loop {
        let m = ws.next().await;
        if m["method"] == "process.output" {
            break;
        }
    }
    let deadline = Instant::now() + WAIT;
    while processes_of(&job_id).len() < 3 {
        assert!(Instant::now() < deadline, "the job's processes appear");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the first 10 ms, whose output a crash may lose (it is held in memory).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(ws);
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    assert!(
        processes_of(&job_id).len() >= 2,
        "a crash leaves them running"
    );

    // The new server settles the previous run's jobs before it listens; under a loaded test
    // run its own start can take seconds, so the 5 s count from when it is up.
    let (_server2, url) = serve(dir.path(), "", &[]);
    let restarted = Instant::now();
    while !processes_of(&job_id).is_empty() {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "left over: {:?}",
            processes_of(&job_id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ws = Ws::connect(&url).await;
    let rec = ws.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(rec["status"], "lost", "{rec}");
    let r = ws.call("attach", json!({"job_id": job_id})).await;
    assert_eq!(r["result"]["status"], "lost", "{r}");
    let mut text = String::new();
    loop {
        let m = ws.next().await;
        match m["method"].as_str().unwrap() {
            "process.output" => text.push_str(m["params"]["data"].as_str().unwrap()),
            "process.completed" => {
                assert_eq!(m["params"]["status"], "lost", "{m}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(text, "before-the-crash\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_cannot_be_written_leaves_jobs_running_and_health_says_why() {
    let dir = scratch();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    let state = file.join("state");
    let (_server, url) = serve(
        dir.path(),
        "",
        &[("CCX_STATE_DIR", state.to_str().unwrap())],
    );
    let mut ws = Ws::connect(&url).await;
    let events = ws
        .run_or_error(json!({"command": "echo still-runs"}))
        .await
        .unwrap();
    assert!(events.iter().any(|e| e["params"]["data"] == "still-runs\n"));
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (code, body) = crate::util::http(addr, "GET", "/health", &[], "").await;
    assert_eq!(code, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let why = health["state"]["error"].as_str().unwrap();
    assert!(why.contains("plain-file"), "{why}");
    let r = ws.call("list_jobs", json!({})).await;
    assert_eq!(r["error"]["code"], -32008, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_in_utf8_is_the_live_text_even_with_a_character_cut_off_at_the_end() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    // "a€b" whole, then a euro sign missing its last byte at the very end.
    let cmd = "printf 'a\\342\\202\\254b'; sleep 0.2; printf '\\342\\202'";
    let text = |events: &[Value]| -> String {
        events
            .iter()
            .filter(|e| e["method"] == "process.output")
            .map(|e| e["params"]["data"].as_str().unwrap())
            .collect()
    };
    let live = ws.run_or_error(json!({"command": cmd})).await.unwrap();
    let job_id = live[0]["params"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(text(&live), "a€b\u{FFFD}");
    let r = ws.call("attach", json!({"job_id": job_id})).await;
    assert!(r["result"].is_object(), "{r}");
    let replayed = ws.collect(&job_id).await;
    assert_eq!(text(&replayed), "a€b\u{FFFD}");
}
