//! The hostile-frame generator: garbage, deep nesting, frames with hostile ids, methods and
//! params, each with the reply the server owes it. Shared by `tests/fuzz_frames.rs` and the
//! live fuzzer (`benches/live_fuzz.rs`, which includes this file by path).
#![allow(dead_code)]

use serde_json::{Value, json};

/// xorshift64*: small, deterministic, good enough to pick among cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
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
pub fn frame(rng: &mut Rng, n: usize) -> String {
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
pub fn expected_reply(text: &str, max_frame: usize) -> Option<Value> {
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
