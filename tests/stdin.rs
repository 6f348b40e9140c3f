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
