//! Hostile frames through a real server: one connection sends a few hundred generated text
//! frames (garbage, deep nesting, hostile ids, methods and params, frames at and just over
//! `max_frame_bytes`) while a second connection runs commands. Every frame is answered exactly
//! once (with its id when it had a usable one, `null` otherwise), or not at all when it is a
//! well-formed notification; the server never dies. The parser's own properties are in
//! `src/protocol/fuzz_tests.rs`.
//!
//! Deterministic: the frames come from a fixed seed. A longer run:
//! `CCX_FUZZ_FRAMES=20000 CCX_FUZZ_SEED=7 cargo test --test integration fuzz_frames`.

use crate::util::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// xorshift64*: small, deterministic, good enough to pick among cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const METHODS: &[&str] = &[
    "execute",
    "attach",
    "detach",
    "list_jobs",
    "get_job",
    "control",
    "input",
    "resize",
    "status",
    "hook_status",
    "pong",
    "ping",
    "EXECUTE",
    "nope",
    "",
    "\u{0}",
    "rpc.discover",
];

/// Commands an `execute` may carry: each ends at once (a hostile string never reaches a shell).
const COMMANDS: &[&str] = &[
    "true",
    "echo fuzz",
    "exit 3",
    "",
    "   ",
    "\u{0}",
    "printf '\\0'",
];

const FIELDS: &[&str] = &[
    "timeout",
    "cwd",
    "env",
    "detach",
    "output_encoding",
    "idempotency_key",
    "stdin",
    "merge_stderr",
    "limits",
    "stdin_open",
    "pty",
    "labels",
    "traceparent",
    "job_id",
    "after_seq",
    "type",
    "status",
    "limit",
    "data",
    "encoding",
    "eof",
    "rows",
    "cols",
    "bogus",
];

fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "\0".into(),
        2 => "x".repeat(rng.below(1000) as usize),
        3 => (0..rng.below(12))
            .filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32))
            .collect(),
        4 => [
            "PAUSE", "CANCEL", "base64", "utf8", "running", "/", "PATH", "\u{202e}",
        ][rng.below(8) as usize]
            .into(),
        5 => "\u{10FFFF}\u{FFFF}\u{FEFF}😀\u{1}".into(),
        6 => (0..rng.below(16))
            .map(|_| char::from(rng.below(128) as u8))
            .collect(),
        _ => format!("job-{}", rng.below(1000)),
    }
}

fn hostile_leaf(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(i64::MIN),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => json!(-1e308),
        6 => json!(5e-324),
        7 => json!(rng.below(70_000) as i64 - 3),
        8 => json!(f64::from_bits(rng.next()) as f32 as f64),
        _ => json!(hostile_string(rng)),
    }
}

fn hostile_value(rng: &mut Rng, depth: u32) -> Value {
    if depth == 0 || rng.below(3) == 0 {
        return hostile_leaf(rng);
    }
    match rng.below(3) {
        0 => Value::Array(
            (0..rng.below(5))
                .map(|_| hostile_value(rng, depth - 1))
                .collect(),
        ),
        1 => json!({"rows": hostile_leaf(rng), "cols": hostile_leaf(rng)}),
        _ => Value::Object(
            (0..rng.below(5))
                .map(|_| {
                    let k = if rng.below(2) == 0 {
                        rng.pick(FIELDS).to_string()
                    } else {
                        hostile_string(rng)
                    };
                    (k, hostile_value(rng, depth - 1))
                })
                .collect(),
        ),
    }
}

fn hostile_id(rng: &mut Rng, n: usize) -> Option<Value> {
    match rng.below(10) {
        0 => None,
        1 => Some(Value::Null),
        2 => Some(json!([n])),
        3 => Some(json!({"n": n})),
        4 => Some(json!(true)),
        5 => Some(json!(format!("id-{n}-\u{0}-😀"))),
        6 => Some(json!(u64::MAX - n as u64)),
        7 => Some(json!(-(n as f64) - 0.5)),
        _ => Some(json!(n)),
    }
}

/// Frame `n`: garbage, deep nesting, or a frame object with hostile members.
fn frame(rng: &mut Rng, n: usize) -> String {
    match rng.below(20) {
        0 => (0..rng.below(64))
            .map(|_| char::from(rng.below(128) as u8))
            .collect(),
        1 => ["", " ", "{", "}", "null", "[]", "\"s\"", "-0", "1e400", "{\"jsonrpc\":\"2.0\""]
            [rng.below(10) as usize]
            .into(),
        2 => "[".repeat(10_000),
        3 => format!("{}1{}", "{\"a\":".repeat(2_000), "}".repeat(2_000)),
        4 => format!(
            r#"{{"jsonrpc":"2.0","id":{n},"method":"execute","params":{{"env":{}{}}}}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        ),
        5 => [
            r#"{"jsonrpc":"2.0","id":"\ud800","method":"status"}"#.to_string(),
            format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"status","params":{{"x":"\udfff"}}}}"#),
            r#"{"jsonrpc":"2.0","id":1e400,"method":"status"}"#.to_string(),
            format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"resize","params":{{"job_id":"j","rows":18446744073709551616,"cols":1}}}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":{n},"id":"dup","method":"ping"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":{n},"method":"ping",}}"#),
        ][rng.below(6) as usize]
            .clone(),
        _ => {
            let mut obj = serde_json::Map::new();
            if let Some(id) = hostile_id(rng, n) {
                obj.insert("id".into(), id);
            }
            if rng.below(12) != 0 {
                let v = if rng.below(10) == 0 {
                    hostile_leaf(rng)
                } else {
                    json!("2.0")
                };
                obj.insert("jsonrpc".into(), v);
            }
            let method = *rng.pick(METHODS);
            if rng.below(15) != 0 {
                obj.insert("method".into(), json!(method));
            }
            let mut params = match rng.below(8) {
                0 => Value::Null,
                1 => hostile_value(rng, 2),
                _ => {
                    let fields = (0..rng.below(4))
                        .map(|_| (rng.pick(FIELDS).to_string(), hostile_value(rng, 2)));
                    Value::Object(fields.collect())
                }
            };
            if method == "execute"
                && let Value::Object(p) = &mut params
            {
                // Never a generated string as a command: only ones that end at once.
                p.insert("command".into(), json!(rng.pick(COMMANDS)));
                if rng.below(2) == 0 {
                    p.remove("stdin_open");
                    p.remove("pty");
                }
            }
            if rng.below(6) != 0 {
                obj.insert("params".into(), params);
            }
            if rng.below(25) == 0 {
                obj.insert(hostile_string(rng), hostile_leaf(rng));
            }
            Value::Object(obj).to_string()
        }
    }
}

/// What the server must answer to `text`: `Some(id)` for exactly one reply with that id,
/// `None` for a well-formed notification (no reply).
fn expected_reply(text: &str, max_frame: usize) -> Option<Value> {
    if text.len() > max_frame {
        return Some(Value::Null);
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return Some(Value::Null); // not JSON, or not an object
    };
    match obj.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id.clone()),
        Some(_) => Some(Value::Null),
        // No id: answered (with `null`) only if the frame is refused before dispatch.
        None => ccx::protocol::parse_request(text)
            .is_err()
            .then_some(Value::Null),
    }
}

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
