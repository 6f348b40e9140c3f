//! Hostile frames through a real server: one connection sends a few hundred generated text
//! frames (garbage, deep nesting, hostile ids, methods and params, frames at and just over
//! `max_frame_bytes`) while a second connection runs commands. Every frame is answered exactly
//! once (with its id when it had a usable one, `null` otherwise), or not at all when it is a
//! well-formed notification; the server never dies. The parser's own properties are in
//! `src/fuzz_tests.rs`.
//!
//! Deterministic: the frames come from a fixed seed. A longer run:
//! `CCX_FUZZ_FRAMES=20000 CCX_FUZZ_SEED=7 cargo test --test integration fuzz_frames`.

use crate::frame_gen::{Rng, expected_reply, frame};
use crate::util::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Reads the next reply (skipping notifications), or `Err` with the close frame.
async fn next_reply(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.ws.next())
            .await
            .expect("the server answers in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("the server sends JSON");
                if v.get("method").is_none() {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(f))) => return Err(format!("{f:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read error: {e}")),
            None => return Err("stream ended".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_each_answered_once_and_the_server_lives() {
    let seed: u64 = std::env::var("CCX_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE);
    let count: usize = std::env::var("CCX_FUZZ_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let max_frame = 32 * 1024;
    let mut cfg = test_config();
    cfg.server.max_frame_bytes = max_frame;
    cfg.execution.max_queue = 4;
    let server = TestServer::start(cfg).await;

    // A well-behaved client running commands all along.
    let mut good = server.connect().await;
    let url = server.url();
    let behaved = tokio::spawn(async move {
        let mut runs = 0;
        for _ in 0..5 {
            let (_, events) = good.run(json!({"command": "echo ok"})).await;
            assert_eq!(output(&events, "stdout"), "ok\n");
            assert_eq!(completion(&events)["status"], "completed");
            runs += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        runs
    });

    let mut rng = Rng(seed | 1);
    let mut frames: Vec<String> = (0..count).map(|n| frame(&mut rng, n)).collect();
    // At the limit (answered normally) and one byte over (refused with -32600, id `null`).
    let pad = |len: usize| {
        let head = r#"{"jsonrpc":"2.0","id":"edge","method":"ping","params":{"p":""}}"#;
        let fill = "x".repeat(len - head.len());
        format!(r#"{{"jsonrpc":"2.0","id":"edge","method":"ping","params":{{"p":"{fill}"}}}}"#)
    };
    frames.insert(count / 3, pad(max_frame));
    frames.insert(2 * count / 3, pad(max_frame + 1));
    assert_eq!(frames[count / 3].len(), max_frame);

    let mut ws = Ws::connect(&url).await;
    let (mut answered, mut silent, mut closes) = (0, 0, 0);
    for (n, text) in frames.iter().enumerate() {
        let shown: String = text.chars().take(120).collect();
        let want = expected_reply(text, max_frame);
        ws.send_raw(text).await;
        // A sentinel after each frame: every reply before it belongs to the frame.
        let sentinel = json!(format!("sentinel-{n}"));
        ws.send_raw(&json!({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}).to_string())
            .await;
        let mut replies = Vec::new();
        loop {
            match next_reply(&mut ws).await {
                Ok(reply) if reply["id"] == sentinel => break,
                Ok(reply) => replies.push(reply),
                Err(close) => {
                    // Allowed, if cleanly done: count it and carry on on a new connection.
                    assert!(close.contains("CloseFrame"), "frame {n} {shown}: {close}");
                    closes += 1;
                    ws = Ws::connect(&url).await;
                    break;
                }
            }
        }
        match want {
            None => {
                assert!(replies.is_empty(), "frame {n} {shown}: {replies:?}");
                silent += 1;
            }
            Some(id) => {
                if replies.is_empty() && closes > 0 {
                    continue;
                }
                assert_eq!(replies.len(), 1, "frame {n} {shown}: {replies:?}");
                let reply = &replies[0];
                assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
                assert_eq!(reply["id"], id, "frame {n} {shown}: {reply}");
                if let Some(err) = reply.get("error") {
                    let code = err["code"].as_i64().expect("an integer code");
                    assert!(
                        matches!(code, -32700 | -32600 | -32601 | -32602 | -32008..=-32001),
                        "frame {n} {shown}: {reply}"
                    );
                    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
                } else {
                    assert!(reply.get("result").is_some(), "{reply}");
                }
                answered += 1;
            }
        }
    }
    eprintln!(
        "{} frames (seed {seed:#x}): {answered} answered, {silent} notifications, {closes} closes",
        frames.len()
    );
    assert_eq!(closes, 0, "no generated frame is over the hard limit");
    assert!(answered > frames.len() / 2);

    assert_eq!(behaved.await.unwrap(), 5);
    // The fuzzed connection still answers (its jobs may be paused, so no command there), and
    // a new one runs a command.
    let status = ws.call("status", json!({})).await;
    assert!(status["result"]["session_id"].is_string(), "{status}");
    let mut fresh = server.connect().await;
    let (_, events) = fresh.run(json!({"command": "echo ok"})).await;
    assert_eq!(output(&events, "stdout"), "ok\n");
    server.shutdown().await;
}
