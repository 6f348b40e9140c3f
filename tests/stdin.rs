//! A job's stdin and its merged streams, through the built binary: `stdin` text reaches the
//! command and is closed; text larger than a pipe reaches a command that reads it all, and
//! does not hold up one that never reads; `merge_stderr` keeps the exact write order.

use crate::jobs::serve;
use crate::util::{Ws, scratch};
use serde_json::{Value, json};

fn stream(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["method"] == "process.output" && e["params"]["type"] == kind)
        .map(|e| e["params"]["data"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_text_reaches_the_command_and_is_closed() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;

    // `cat` ends only when stdin closes.
    let events = ws
        .run_or_error(json!({"command": "cat", "stdin": "hello\nworld\n"}))
        .await
        .unwrap();
    assert_eq!(stream(&events, "stdout"), "hello\nworld\n");

    // More than a pipe holds (64 KiB).
    let big = "x".repeat(300_000);
    let events = ws
        .run_or_error(json!({"command": "wc -c", "stdin": big}))
        .await
        .unwrap();
    assert_eq!(stream(&events, "stdout").trim(), "300000");

    // A command that never reads: it still ends, and the server goes on.
    let events = ws
        .run_or_error(json!({"command": "echo ignored", "stdin": big}))
        .await
        .unwrap();
    assert_eq!(stream(&events, "stdout"), "ignored\n");
    let done = events.last().unwrap();
    assert_eq!(done["params"]["status"], "completed", "{done}");

    // Without `stdin`, it is /dev/null: `cat` ends at once.
    let events = ws.run_or_error(json!({"command": "cat"})).await.unwrap();
    assert_eq!(stream(&events, "stdout"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_stderr_keeps_the_order_of_writes() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    let cmd = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let events = ws
        .run_or_error(json!({"command": cmd, "merge_stderr": true}))
        .await
        .unwrap();
    let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(stream(&events, "stdout"), expected);
    assert_eq!(stream(&events, "stderr"), "");
    let done = events.last().unwrap();
    assert_eq!(done["params"]["stderr_bytes"], 0, "{done}");
}

/// Reads the job's output until `want` has appeared (output is concatenated, stream
/// `kind`), returning everything read.
pub(crate) async fn read_until(ws: &mut Ws, job_id: &str, kind: &str, want: &str) -> String {
    let mut got = String::new();
    while !got.contains(want) {
        let m = ws.next().await;
        assert_ne!(
            m["method"], "process.completed",
            "ended before {want:?}: {got:?} {m}"
        );
        if m["method"] == "process.output" && m["params"]["job_id"] == job_id {
            assert_eq!(m["params"]["type"], kind, "{m}");
            got.push_str(m["params"]["data"].as_str().unwrap());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_open_takes_input_until_eof_and_is_bounded() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;

    let r = ws
        .call(
            "execute",
            json!({"command": "cat", "stdin": "first\n", "stdin_open": true}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    read_until(&mut ws, &job, "stdout", "first\n").await;
    let r = ws
        .call("input", json!({"job_id": job, "data": "second\n"}))
        .await;
    assert_eq!(r["result"], json!({"job_id": job, "bytes": 7}), "{r}");
    read_until(&mut ws, &job, "stdout", "second\n").await;
    // Bytes in base64, then the end of input: `cat` ends.
    let r = ws
        .call(
            "input",
            json!({"job_id": job, "data": "dGhpcmQK", "encoding": "base64", "eof": true}),
        )
        .await;
    assert_eq!(r["result"]["bytes"], 6, "{r}");
    let events = ws.collect(&job).await;
    assert_eq!(stream(&events, "stdout"), "third\n");
    assert_eq!(events.last().unwrap()["params"]["status"], "completed");
    let r = ws
        .call("input", json!({"job_id": job, "data": "late"}))
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");

    // A job without `stdin_open` takes no input; a bad encoding is refused.
    let r = ws.call("execute", json!({"command": "sleep 5"})).await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = ws.call("input", json!({"job_id": job, "data": "x"})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stdin_open"),
        "{r}"
    );
    ws.call("control", json!({"type": "CANCEL", "job_id": job}))
        .await;
    ws.collect(&job).await;

    // A command that never reads: 1 MiB waits for it, the next byte is refused, and the
    // connection keeps answering.
    let r = ws
        .call(
            "execute",
            json!({"command": "sleep 30", "stdin_open": true}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let half = "x".repeat(512 * 1024);
    for _ in 0..2 {
        let r = ws.call("input", json!({"job_id": job, "data": half})).await;
        assert_eq!(r["result"]["bytes"], 512 * 1024, "{r}");
    }
    let r = ws.call("input", json!({"job_id": job, "data": "y"})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input buffer full"),
        "{r}"
    );
    let r = ws.call("status", json!({})).await;
    assert_eq!(r["result"]["running"]["job_id"], job.as_str(), "{r}");
    ws.call("control", json!({"type": "CANCEL", "job_id": job}))
        .await;
    let events = ws.collect(&job).await;
    assert_eq!(events.last().unwrap()["params"]["status"], "canceled");
}
