//! The server through a real WebSocket on 127.0.0.1:0 with real child processes.
//!
//! Over 500 lines: one module per area of the suite (see `tests/tests.rs`).

use crate::util::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_announces_session_and_capabilities() {
    let server = TestServer::start(test_config()).await;
    let ws = server.connect().await;
    let p = &ws.hello["params"];
    assert!(p["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    let caps: Vec<&str> = p["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in ["execute", "control", "stream"] {
        assert!(caps.contains(&c), "{caps:?}");
    }
}

/// A job's `process.completed` means its session is free: an `execute` sent the moment it
/// arrives starts at once (a soak once saw one queued behind the job that had just ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_sent_on_a_completion_starts_at_once() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    for i in 0..300 {
        let reply = ws.call("execute", json!({"command": "true"})).await;
        assert_eq!(reply["result"]["status"], "started", "job {i}: {reply}");
        let job = reply["result"]["job_id"].as_str().unwrap().to_string();
        let events = ws.collect(&job).await;
        assert_eq!(completion(&events)["status"], "completed", "job {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_then_started_then_output_then_exactly_one_completion() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let id = ws
        .send(
            "execute",
            json!({"command": "echo one; echo two >&2; exit 3"}),
        )
        .await;
    // The very next message is the reply.
    let reply = ws.next().await;
    assert_eq!(reply["id"], id, "{reply}");
    let result = &reply["result"];
    assert_eq!(result["status"], "started");
    let job = result["job_id"].as_str().unwrap().to_string();
    assert!(result["pid"].as_u64().unwrap() > 0);
    assert_eq!(result["pid"], result["pgid"]);

    let events = ws.collect(&job).await;
    assert_eq!(events[0]["method"], "process.started");
    assert_eq!(events[0]["params"]["pid"], result["pid"]);
    assert_eq!(output(&events, "stdout"), "one\n");
    assert_eq!(output(&events, "stderr"), "two\n");
    let done = completion(&events);
    assert_eq!(done["status"], "failed");
    assert_eq!(done["exit_code"], 3);
    assert_eq!(done["signal"], Value::Null);
    assert_eq!(done["stdout_bytes"], 4);
    assert_eq!(done["stderr_bytes"], 4);
    assert!(done["execution_time"].as_f64().unwrap() >= 0.0);
    let completions = events
        .iter()
        .filter(|e| e["method"] == "process.completed")
        .count();
    assert_eq!(completions, 1);

    // Nothing more arrives for that job: the next message is the reply to `status`.
    let status = ws.call("status", json!({})).await;
    assert_eq!(status["result"]["running"], Value::Null);
    let (_, events) = ws.run(json!({"command": "true"})).await;
    assert_eq!(completion(&events)["status"], "completed");
    assert_eq!(completion(&events)["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_megabytes_arrive_byte_exact() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    // ~200 MB of varied, deterministic text; the same command run here gives the reference.
    let cmd = "seq 1 23000000";
    let expected = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap()
        .stdout;
    assert!(expected.len() > 190_000_000, "{}", expected.len());

    let reply = ws.call("execute", json!({"command": cmd})).await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut last_seq = 0;
    let mut largest = 0;
    loop {
        let msg = ws.next().await;
        match msg["method"].as_str() {
            Some("process.output") => {
                let data = msg["params"]["data"].as_str().unwrap();
                let seq = msg["params"]["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "seq must increase");
                last_seq = seq;
                largest = largest.max(data.len());
                received += data.len();
                hasher.update(data.as_bytes());
            }
            Some("process.completed") => {
                assert_eq!(msg["params"]["job_id"], job.as_str());
                assert_eq!(msg["params"]["status"], "completed");
                assert_eq!(msg["params"]["stdout_bytes"], expected.len());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(received, expected.len());
    assert_eq!(hasher.finalize()[..], Sha256::digest(&expected)[..]);
    assert!(
        largest <= 64 * 1024,
        "chunks are at most 64 KiB, saw {largest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_stdout_and_stderr_are_reconstructed_by_seq() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    // A pause after each write lets the server read it before the next one is written (0.1 s:
    // on a loaded 2-core machine 20 ms was sometimes not enough).
    let cmd = "i=1; while [ $i -le 25 ]; do echo out$i; sleep 0.1; echo err$i >&2; sleep 0.1; i=$((i+1)); done";
    let (_, events) = ws.run(json!({"command": cmd})).await;
    let mut outputs: Vec<&Value> = events
        .iter()
        .filter(|e| e["method"] == "process.output")
        .map(|e| &e["params"])
        .collect();
    // Whatever order they were delivered in, seq restores the order they were read.
    outputs.sort_by_key(|p| p["seq"].as_u64().unwrap());
    let merged: String = outputs
        .iter()
        .map(|p| p["data"].as_str().unwrap())
        .collect();
    let expected: String = (1..=25).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(merged, expected);
    let seqs: Vec<u64> = outputs.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "seq values are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_is_never_split_and_invalid_bytes_are_replaced() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    // 70,000 three-byte characters: more than one 64 KiB chunk, so a boundary falls inside
    // a character unless the server holds it back; then one invalid byte.
    let cmd = "python3 -c \"import sys; sys.stdout.buffer.write('€'.encode()*70000 + b'\\xff!')\"";
    let (_, events) = ws.run(json!({"command": cmd})).await;
    assert_eq!(completion(&events)["status"], "completed");
    let out = output(&events, "stdout");
    assert_eq!(out, format!("{}\u{FFFD}!", "€".repeat(70000)));
    for e in events.iter().filter(|e| e["method"] == "process.output") {
        assert!(
            !e["params"]["data"]
                .as_str()
                .unwrap()
                .starts_with('\u{FFFD}')
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_group_and_keeps_partial_output() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let (reply, events) = ws
        .run(json!({"command": "echo partial; sleep 300 & sleep 300", "timeout": 0.5}))
        .await;
    let pgid = reply["result"]["pgid"].as_i64().unwrap();
    let done = completion(&events);
    assert_eq!(done["status"], "timed_out");
    assert_eq!(done["signal"], 15);
    assert_eq!(output(&events, "stdout"), "partial\n");
    assert!(done["execution_time"].as_f64().unwrap() < 30.0);
    assert!(
        eventually(Duration::from_secs(5), || group_members(pgid).is_empty()).await,
        "left running: {:?}",
        group_members(pgid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_escalates_to_kill_when_term_is_ignored() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let (reply, events) = ws
        .run(json!({"command": "trap '' TERM; echo ready; sleep 300 & wait", "timeout": 0.5}))
        .await;
    let done = completion(&events);
    assert_eq!(done["status"], "timed_out");
    assert_eq!(done["signal"], 9);
    let pgid = reply["result"]["pgid"].as_i64().unwrap();
    assert!(eventually(Duration::from_secs(5), || group_members(pgid).is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_group_with_a_terminal_event() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let reply = ws
        .call(
            "execute",
            json!({"command": "echo started; sleep 300 & sleep 300"}),
        )
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let pgid = reply["result"]["pgid"].as_i64().unwrap();
    // Wait for the output so the job is surely running.
    loop {
        let m = ws.next().await;
        if m["method"] == "process.output" {
            break;
        }
    }
    let ack = ws.call("control", json!({"type": "CANCEL"})).await;
    assert_eq!(ack["result"]["status"], "canceled", "{ack}");
    assert_eq!(ack["result"]["job_id"], job.as_str());
    let events = ws.collect(&job).await;
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["process.canceled", "process.completed"]);
    assert_eq!(completion(&events)["status"], "canceled");
    assert!(eventually(Duration::from_secs(5), || group_members(pgid).is_empty()).await);

    // Nothing runs now: control has nothing to act on.
    let err = ws.call("control", json!({"type": "CANCEL"})).await;
    assert_eq!(err["error"]["code"], -32002, "{err}");
    let err = ws
        .call("control", json!({"type": "PAUSE", "job_id": "nope"}))
        .await;
    assert_eq!(err["error"]["code"], -32002, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_the_group_and_resume_continues_it() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    // The job waits for a file rather than a time, so that a slow machine cannot end it
    // before the PAUSE arrives.
    let dir = scratch();
    let go = dir.path().join("go");
    let reply = ws
        .call(
            "execute",
            json!({"command": format!(
                "while [ ! -e {} ]; do sleep 0.02; done; echo finished",
                go.display()
            )}),
        )
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let pid = reply["result"]["pid"].as_i64().unwrap();
    let ack = ws
        .call("control", json!({"type": "PAUSE", "job_id": job}))
        .await;
    assert_eq!(ack["result"]["status"], "paused", "{ack}");
    // Stopped: `T`, or `D` when the stop caught dash (/bin/sh) waiting for a `vfork` child
    // that the same group stop halted before its `execve`.
    let stopped = || matches!(process_state(pid).as_deref(), Some("T" | "D"));
    assert!(
        eventually(Duration::from_secs(5), stopped).await,
        "state {:?}",
        process_state(pid)
    );
    let status = ws.call("status", json!({})).await;
    assert_eq!(status["result"]["running"]["state"], "paused");
    // What it waits for is there, but it stays stopped: no output.
    std::fs::write(&go, "").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stopped(), "state {:?}", process_state(pid));
    let ack = ws.call("control", json!({"type": "RESUME"})).await;
    assert_eq!(ack["result"]["status"], "resumed");
    let events = ws.collect(&job).await;
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods[0], "process.started");
    let at = |m: &str| {
        methods
            .iter()
            .position(|x| *x == m)
            .unwrap_or_else(|| panic!("no {m}: {methods:?}"))
    };
    assert!(at("process.paused") < at("process.resumed"), "{methods:?}");
    assert!(at("process.resumed") < at("process.output"), "{methods:?}");
    assert_eq!(output(&events, "stdout"), "finished\n");
    assert_eq!(completion(&events)["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_kills_running_and_queued_jobs() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let dir = scratch();
    let marker = dir.path().join("queued-job-ran");
    let reply = ws
        .call("execute", json!({"command": "sleep 300 & sleep 300"}))
        .await;
    let pgid = reply["result"]["pgid"].as_i64().unwrap();
    let queued = ws
        .call(
            "execute",
            json!({"command": format!("touch {}", marker.display())}),
        )
        .await;
    assert_eq!(queued["result"]["status"], "queued");
    assert!(!group_members(pgid).is_empty());
    ws.ws.close(None).await.unwrap();
    drop(ws);
    assert!(
        eventually(Duration::from_secs(5), || group_members(pgid).is_empty()).await,
        "{:?}",
        group_members(pgid)
    );
    assert!(eventually(Duration::from_secs(5), || server.exec.running_jobs() == 0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "queued job must not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_run_one_at_a_time_in_order() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let first = ws
        .call("execute", json!({"command": "sleep 0.3; echo 1"}))
        .await;
    assert_eq!(first["result"]["status"], "started");
    let mut jobs = vec![first["result"]["job_id"].as_str().unwrap().to_string()];
    for (i, cmd) in ["echo 2", "echo 3"].iter().enumerate() {
        let r = ws.call("execute", json!({"command": cmd})).await;
        assert_eq!(r["result"]["status"], "queued", "{r}");
        assert_eq!(r["result"]["position"], i + 1);
        jobs.push(r["result"]["job_id"].as_str().unwrap().to_string());
    }
    let status = ws.call("status", json!({})).await;
    assert_eq!(status["result"]["queued"].as_array().unwrap().len(), 2);
    // Read everything up to the last job's completion, in arrival order.
    let mut seen = Vec::new();
    loop {
        let m = ws.next().await;
        let done = m["method"] == "process.completed" && m["params"]["job_id"] == jobs[2].as_str();
        seen.push(m);
        if done {
            break;
        }
    }
    let trace: Vec<String> = seen
        .iter()
        .filter(|m| m["method"] != "process.output")
        .map(|m| {
            format!(
                "{} {}",
                m["method"].as_str().unwrap(),
                m["params"]["job_id"].as_str().unwrap()
            )
        })
        .collect();
    let expected: Vec<String> = jobs
        .iter()
        .flat_map(|j| {
            [
                format!("process.started {j}"),
                format!("process.completed {j}"),
            ]
        })
        .collect();
    assert_eq!(trace, expected);
    let out: String = seen
        .iter()
        .filter(|m| m["method"] == "process.output")
        .map(|m| m["params"]["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "1\n2\n3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_and_a_queued_job_can_be_canceled() {
    let mut cfg = test_config();
    cfg.execution.max_queue = 1;
    let server = TestServer::start(cfg).await;
    let mut ws = server.connect().await;
    let first = ws.call("execute", json!({"command": "sleep 0.5"})).await;
    let first_job = first["result"]["job_id"].as_str().unwrap().to_string();
    let second = ws.call("execute", json!({"command": "echo second"})).await;
    let second_job = second["result"]["job_id"].as_str().unwrap().to_string();
    let third = ws.call("execute", json!({"command": "echo third"})).await;
    assert_eq!(third["error"]["code"], -32004, "{third}");
    let ack = ws
        .call("control", json!({"type": "PAUSE", "job_id": second_job}))
        .await;
    assert_eq!(ack["error"]["code"], -32002, "{ack}");
    let ack = ws
        .call("control", json!({"type": "CANCEL", "job_id": second_job}))
        .await;
    assert_eq!(ack["result"]["status"], "canceled");
    let events = ws.collect(&second_job).await;
    assert_eq!(completion(&events)["status"], "canceled");
    let events = ws.collect(&first_job).await;
    assert_eq!(completion(&events)["status"], "completed");
    let status = ws.call("status", json!({})).await;
    assert_eq!(status["result"]["queued"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_running_job_finishes() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let reply = ws
        .call("execute", json!({"command": "sleep 0.5; echo survived"}))
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();

    let cases: Vec<(Message, i64)> = vec![
        (Message::Text("{not json".into()), -32700),
        (Message::Text("[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}]".into()), -32600),
        (Message::Text("42".into()), -32600),
        (Message::Text("{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"status\"}".into()), -32600),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1}".into()), -32600),
        (Message::Binary(vec![0u8, 1, 2].into()), -32600),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"nope\"}".into()), -32601),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"execute\",\"params\":{}}".into()), -32602),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"execute\",\"params\":{\"command\":\"x\",\"bogus\":1}}".into()), -32602),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"execute\",\"params\":{\"command\":\"x\",\"timeout\":-1}}".into()), -32602),
        (Message::Text("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"control\",\"params\":{\"type\":\"STOP\"}}".into()), -32602),
        // Over max_frame_bytes (1 MiB) but under the hard limit: answered, not fatal.
        (Message::Text(format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)).into()), -32600),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}").chars().take(80).collect::<String>();
        ws.ws.send(frame).await.unwrap();
        let mut err = ws.next().await;
        while err.get("method").is_some() {
            err = ws.next().await; // job notifications may interleave
        }
        assert_eq!(err["error"]["code"], code, "{shown} -> {err}");
        assert!(err["error"]["message"].as_str().unwrap().len() > 5);
    }
    let events = ws.collect(&job).await;
    assert_eq!(output(&events, "stdout"), "survived\n");
    assert_eq!(completion(&events)["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_closes_only_that_connection() {
    let mut cfg = test_config();
    cfg.server.max_frame_bytes = 4096;
    let server = TestServer::start(cfg).await;
    let mut other = server.connect().await;
    let reply = other
        .call("execute", json!({"command": "sleep 0.3; echo fine"}))
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();

    let mut ws = server.connect().await;
    let huge = "y".repeat(4096 * 32);
    let _ = ws.ws.send(Message::Text(huge.into())).await;
    let mut close = None;
    while let Ok(Some(msg)) =
        tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws.ws)).await
    {
        match msg {
            Ok(Message::Close(f)) => {
                close = f;
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let frame = close.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.contains("too large"));

    let events = other.collect(&job).await;
    assert_eq!(output(&events, "stdout"), "fine\n");
    let (_, events) = other.run(json!({"command": "echo still"})).await;
    assert_eq!(output(&events, "stdout"), "still\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_and_env_are_honoured_and_server_secrets_stay_out() {
    // SAFETY: set before any child is spawned by this test's server; other tests don't read it.
    unsafe { std::env::set_var("CCX_TEST_SECRET", "hunter2") };
    let mut cfg = test_config();
    cfg.execution.env.insert("FROM_CONFIG".into(), "cfg".into());
    let server = TestServer::start(cfg).await;
    let mut ws = server.connect().await;
    let dir = scratch();
    let (_, events) = ws
        .run(json!({
            "command": "pwd; echo \"$GREETING $FROM_CONFIG [$CCX_TEST_SECRET]\"; test -n \"$PATH\"",
            "cwd": dir.path(),
            "env": {"GREETING": "hello"},
        }))
        .await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    let canonical = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        output(&events, "stdout"),
        format!("{}\nhello cfg []\n", canonical.display())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_still_gets_a_terminal_event() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let reply = ws
        .call("execute", json!({"command": "true", "cwd": "/no/such/dir"}))
        .await;
    assert_eq!(reply["result"]["status"], "failed", "{reply}");
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&job).await;
    let done = completion(&events);
    assert_eq!(done["status"], "failed");
    assert!(done["error"].as_str().unwrap().contains("/no/such/dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_is_reported() {
    let mut cfg = test_config();
    cfg.server.max_sessions = 1;
    let server = TestServer::start(cfg).await;
    let _first = server.connect().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let msg = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], -32003, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_connections_run_in_parallel() {
    let server = TestServer::start(test_config()).await;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            let (_, events) = ws.run(json!({"command": "sleep 1"})).await;
            assert_eq!(completion(&events)["status"], "completed");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Ten one-second sleeps one after another would take ten seconds.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_cancels_jobs_with_terminal_events() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let reply = ws.call("execute", json!({"command": "sleep 300"})).await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let pgid = reply["result"]["pgid"].as_i64().unwrap();
    let queued = ws.call("execute", json!({"command": "echo never"})).await;
    let queued_job = queued["result"]["job_id"].as_str().unwrap().to_string();
    let stopping = tokio::spawn(server.shutdown());
    let mut statuses = std::collections::HashMap::new();
    while statuses.len() < 2 {
        let m = ws.next().await;
        if m["method"] == "process.completed" {
            statuses.insert(
                m["params"]["job_id"].as_str().unwrap().to_string(),
                m["params"]["status"].as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(statuses[&job], "canceled");
    assert_eq!(statuses[&queued_job], "canceled");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown within the grace period")
        .unwrap();
    assert!(group_members(pgid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_sessions_jobs_and_limits() {
    let server = TestServer::start(test_config()).await;
    let mut ws = server.connect().await;
    let _ = ws.call("execute", json!({"command": "sleep 0.5"})).await;
    let body = http_get(server.addr, "/health").await;
    let (status, json) = body;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["active_sessions"], 1);
    assert_eq!(v["running_jobs"], 1);
    assert_eq!(v["limits"]["max_queue"], 16);
    let (status, json) = http_get(server.addr, "/healthz").await;
    assert_eq!((status, json.as_str()), (200, "{\"status\":\"ok\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_missing_or_wrong_tokens_and_foreign_origins() {
    let mut cfg = test_config();
    cfg.server.token = Some("s3cret".into());
    cfg.server.allowed_origins = vec!["https://ok.example".into()];
    let server = TestServer::start(cfg).await;
    let url = server.url();

    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 0,
    };
    assert_eq!(refused(connect(&url, &[]).await), 401);
    assert_eq!(
        refused(connect(&url, &[("Authorization", "Bearer wrong")]).await),
        401
    );
    assert_eq!(
        refused(connect(&format!("{url}?token=wrong"), &[]).await),
        401
    );
    assert_eq!(
        refused(
            connect(
                &url,
                &[
                    ("Authorization", "Bearer s3cret"),
                    ("Origin", "https://evil.example")
                ]
            )
            .await
        ),
        403
    );
    assert!(
        connect(&url, &[("Authorization", "Bearer s3cret")])
            .await
            .is_ok()
    );
    assert!(connect(&format!("{url}?token=s3cret"), &[]).await.is_ok());
    assert!(
        connect(
            &url,
            &[
                ("Authorization", "Bearer s3cret"),
                ("Origin", "https://ok.example")
            ]
        )
        .await
        .is_ok()
    );
    assert_eq!(http_get(server.addr, "/health").await.0, 401);
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn without_a_token_only_loopback_is_served() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let cfg = test_config();
    let exec = ccx::Executor::new(
        cfg.execution.clone(),
        std::sync::Arc::new(ccx::executor::NoHooks),
    );
    let state = ccx::server::ServerState::new(exec, cfg.server.clone(), None, None);
    let err = ccx::server::serve(listener, state, async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without an auth token"), "{err}");
}

async fn connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v).unwrap();
        req.headers_mut().insert(name, value);
    }
    tokio_tungstenite::connect_async(req).await.map(|_| ())
}
