// Over 500 lines: the JSON strategies and one property per method's params; tests only.
//! Property tests of the request parser and of every method's params, on stable Rust
//! (proptest): arbitrary text and bytes, arbitrary JSON, structurally valid frames with hostile
//! values (huge numbers, deep nesting, long strings, NUL, every Unicode plane) and raw JSON
//! text that `Value` cannot express (lone surrogates, numbers out of range). Nothing may panic;
//! a frame parses or is refused with a code of the table in [`crate::protocol`], and each
//! method's params are accepted or refused with -32602.
//!
//! Each property runs 256 cases by default (the whole file takes seconds). A long run sets the
//! number of cases per property (six properties: 170000 each is over a million, about 4 min):
//!
//! ```text
//! CCX_FUZZ_CASES=170000 cargo test --lib fuzz_tests -- --test-threads 1
//! ```

use crate::executor::JobRequest;
use crate::protocol::frame::{params, parse_request};
use crate::protocol::{
    AttachParams, ControlParams, ExecuteParams, InputParams, JobRef, ListJobsParams, NoParams,
    ResizeParams, RpcError,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Number, Value};

/// Every method `Session::call` knows, with the params type it decodes (`None`: params are
/// ignored).
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
];

/// The field names of every params type (and a few near misses), so generated objects hit
/// the typed paths and not only `deny_unknown_fields`.
const FIELDS: &[&str] = &[
    "command",
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
    "memory_mb",
    "pids",
    "cpu_seconds",
    "open_files",
    "file_size_mb",
    "",
    "Command",
    "command\u{0}",
];

/// Strings a params type gives meaning to.
const WORDS: &[&str] = &[
    "PAUSE",
    "RESUME",
    "CANCEL",
    "pause",
    "utf8",
    "base64",
    "running",
    "completed",
    "timed_out",
    "queued",
    "true",
    "echo ok",
    "/",
    "/nonexistent",
    "PATH",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-0000000000000000-00",
    "AAEC",
    "====",
    "2.0",
];

/// `ProptestConfig` for each property: 256 cases, or `CCX_FUZZ_CASES`.
fn config() -> ProptestConfig {
    let cases = std::env::var("CCX_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// A character from every Unicode plane (0 to 16), surrogates excluded by `char`.
fn any_plane_char() -> impl Strategy<Value = char> {
    (0u32..17, 0u32..0x1_0000).prop_filter_map("not a scalar value", |(plane, low)| {
        char::from_u32((plane << 16) | low)
    })
}

/// Strings: arbitrary, from every plane, with NULs and controls, long, and meaningful ones.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => prop::collection::vec(any_plane_char(), 0..16).prop_map(|v| v.into_iter().collect()),
        1 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => prop::sample::select(METHODS).prop_map(str::to_string),
        1 => Just("\0".to_string()),
        1 => "[\\x00-\\x1f\\x7f\\x{202e}\\x{feff}\\x{fffd}\\x{ffff}\\x{10ffff}a]{0,8}",
        1 => (
            prop_oneof![9 => 0usize..5_000, 1 => Just(70_000usize)],
            prop::sample::select(&['x', '\0', 'é', '😀', '\u{10FFFF}'][..]),
        )
            .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
    ]
}

/// Numbers: the integer extremes, huge and tiny floats, and small values that are valid.
fn hostile_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        prop::sample::select(
            &[
                i64::MIN as f64,
                u64::MAX as f64,
                1e308,
                -1e308,
                f64::MAX,
                f64::MIN_POSITIVE,
                5e-324,
                -0.0,
                0.5,
                1e9,
                65535.5,
            ][..]
        )
        .prop_filter_map("finite", Number::from_f64),
        prop::sample::select(
            &[
                i64::MIN,
                i64::MAX,
                -1,
                0,
                1,
                24,
                80,
                1000,
                1001,
                65535,
                65536
            ][..]
        )
        .prop_map(Number::from),
        Just(Number::from(u64::MAX)),
        (-3i64..70_000).prop_map(Number::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number().prop_map(Value::Number),
        hostile_string().prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => hostile_string(),
    ]
}

/// Arbitrary JSON, depth and size bounded, with hostile leaves.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Params-shaped objects: mostly known fields with hostile or plausible values.
fn params_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

/// A method name: every real one, near misses and arbitrary strings.
fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(METHODS).prop_map(str::to_string),
        1 => prop::sample::select(METHODS).prop_map(|m| m.to_uppercase()),
        1 => hostile_string(),
    ]
}

/// A usable `id`: a string, a number or null.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        hostile_number().prop_map(Value::Number),
        hostile_string().prop_map(Value::String),
    ]
}

/// Raw JSON fragments that `Value` cannot produce: lone surrogates, numbers out of range,
/// nesting past serde_json's limit, malformed tokens.
fn raw_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                r#""\ud800""#,
                r#""\udfff""#,
                r#""\udc00\ud800""#,
                r#""\ud83d\ude00""#,
                r#""\u0000""#,
                r#""a\u0000b""#,
                r#""\uFFFF""#,
                r#""\x""#,
                r#""\"#,
                "1e400",
                "-1e400",
                "1e308",
                "1e-400",
                "18446744073709551616",
                "-9223372036854775809",
                "123456789012345678901234567890",
                "0.000000000000000000000000000000000000000000000001",
                "-0",
                "01",
                "1.",
                ".5",
                "+1",
                "NaN",
                "Infinity",
                "nul",
                "[1,]",
                "{\"a\":1,}",
                "{\"a\":1,\"a\":2}",
                "\"\u{0}\"",
                "\"\u{1f}\"",
            ][..]
        )
        .prop_map(str::to_string),
        (1usize..400).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..400).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        (1usize..400).prop_map(|n| "[".repeat(n)),
        json().prop_map(|v| v.to_string()),
    ]
}

/// The codes `parse_request` and `params` may answer with.
fn assert_code(err: &RpcError) {
    let code = err.code();
    assert!(
        matches!(code, -32700 | -32600 | -32601 | -32602),
        "unexpected code {code}: {err}"
    );
    // The error must encode as a reply.
    let _ = crate::protocol::encode_error(&Value::Null, err);
}

/// Parses `text`; a refusal has a parser code and an id that can be echoed.
fn check_frame(text: &str) -> Option<crate::protocol::Request> {
    match parse_request(text) {
        Ok(req) => {
            if let Some(id) = &req.id {
                assert!(id.is_string() || id.is_number() || id.is_null(), "{id}");
            }
            assert!(req.params.is_object(), "{}", req.params);
            Some(req)
        }
        Err((id, err)) => {
            assert!(id.is_string() || id.is_number() || id.is_null(), "{id}");
            assert!(matches!(err.code(), -32700 | -32600 | -32602), "{err}");
            assert_code(&err);
            None
        }
    }
}

/// Decodes `params` as `method`'s type (as `Session::call` does), then runs the pure checks
/// the session makes before anything is spawned. A refusal must be -32602.
fn check_params(method: &str, p: Value) {
    fn decode<T: serde::de::DeserializeOwned>(p: Value) -> Option<T> {
        match params::<T>(p) {
            Ok(t) => Some(t),
            Err(err) => {
                assert_eq!(err.code(), -32602, "{err}");
                assert_code(&err);
                None
            }
        }
    }
    match method {
        "execute" => {
            if let Some(p) = decode::<ExecuteParams>(p) {
                if let Some(pty) = p.pty {
                    let _ = pty.check();
                }
                if let Some(t) = &p.traceparent {
                    let _ = crate::trace::TraceParent::parse(t);
                }
                if let Some(labels) = &p.labels {
                    let _ = JobRequest::check_labels(labels);
                }
                let _ = JobRequest::new(p.command, p.timeout, p.cwd, p.env.unwrap_or_default());
            }
        }
        "attach" => {
            decode::<AttachParams>(p);
        }
        "detach" | "get_job" => {
            decode::<JobRef>(p);
        }
        "list_jobs" => {
            decode::<ListJobsParams>(p);
        }
        "control" => {
            decode::<ControlParams>(p);
        }
        "input" => {
            if let Some(p) = decode::<InputParams>(p) {
                let _ = crate::protocol::input::decode(&p.data, p.encoding);
            }
        }
        "resize" => {
            decode::<ResizeParams>(p);
        }
        "status" | "hook_status" => {
            decode::<NoParams>(p);
        }
        _ => {}
    }
}

/// What `parse_request` should make of a JSON value, by the JSON-RPC 2.0 rules ccx applies:
/// `Ok` or the error code.
fn expected(v: &Value) -> Result<(), i64> {
    let Value::Object(obj) = v else {
        return Err(-32600);
    };
    if let Some(id) = obj.get("id")
        && !(id.is_string() || id.is_number() || id.is_null())
    {
        return Err(-32600);
    }
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(-32600);
    }
    if !obj.get("method").is_some_and(Value::is_string) {
        return Err(-32600);
    }
    if !matches!(
        obj.get("params"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        return Err(-32602);
    }
    if obj
        .keys()
        .any(|k| !matches!(k.as_str(), "id" | "jsonrpc" | "method" | "params"))
    {
        return Err(-32600);
    }
    Ok(())
}

/// A frame object: the four members (each sometimes missing or wrong), sometimes an extra one.
fn frame_object() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, prop_oneof![4 => id(), 1 => json()]),
        prop::option::weighted(
            0.9,
            prop_oneof![6 => Just(Value::String("2.0".into())), 1 => json()],
        ),
        prop::option::weighted(
            0.9,
            prop_oneof![6 => method().prop_map(Value::String), 1 => json()],
        ),
        prop::option::weighted(0.8, prop_oneof![4 => params_object(), 1 => json()]),
        prop::option::weighted(0.1, (key(), json())),
    )
        .prop_map(|(id, jsonrpc, method, params, extra)| {
            let mut obj = Map::new();
            if let Some((k, v)) = extra {
                obj.insert(k, v);
            }
            for (k, v) in [
                ("id", id),
                ("jsonrpc", jsonrpc),
                ("method", method),
                ("params", params),
            ] {
                if let Some(v) = v {
                    obj.insert(k.into(), v);
                }
            }
            Value::Object(obj)
        })
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text: never a panic; a refusal has a parser code.
    #[test]
    fn fuzz_arbitrary_text(text in any::<String>()) {
        check_frame(&text);
    }

    /// Arbitrary bytes, as a lossy UTF-8 text frame.
    #[test]
    fn fuzz_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_frame(&String::from_utf8_lossy(&bytes));
    }

    /// Arbitrary JSON: parsed exactly as the JSON-RPC rules say, the id echoed.
    #[test]
    fn fuzz_arbitrary_json(v in prop_oneof![1 => json(), 3 => frame_object()]) {
        let text = v.to_string();
        // The model reads the text with the same JSON parser (floats need not round-trip).
        let v: Value = serde_json::from_str(&text).unwrap();
        match (parse_request(&text), expected(&v)) {
            (Ok(req), Ok(())) => {
                prop_assert_eq!(req.id.as_ref(), v.get("id"));
                prop_assert_eq!(Some(req.method.as_str()), v["method"].as_str());
                check_params(&req.method, req.params);
            }
            (Err((id, err)), Err(code)) => {
                prop_assert_eq!(err.code(), code, "{}", err);
                // A string or number id is echoed whenever the frame is an object; anything
                // else is answered with `null`.
                let echoed = match v.get("id") {
                    Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
                    _ => Value::Null,
                };
                prop_assert_eq!(id, echoed);
            }
            (got, want) => {
                prop_assert!(false, "{text}: got {:?}, want {want:?}", got.map(|r| r.method));
            }
        }
    }

    /// Structurally valid frames with hostile ids, methods and params: always parsed, and
    /// every method's params accepted or refused with -32602.
    #[test]
    fn fuzz_valid_frames(id in id(), method in method(), p in params_object()) {
        let frame = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p});
        let text = frame.to_string();
        let frame: Value = serde_json::from_str(&text).unwrap();
        let req = check_frame(&text).expect("a well-formed frame parses");
        prop_assert_eq!(req.id.as_ref(), Some(&frame["id"]));
        prop_assert_eq!(&req.method, &method);
        prop_assert_eq!(&req.params, &frame["params"]);
        check_params(&method, req.params);
    }

    /// Every method's params type against hostile objects and arbitrary JSON.
    #[test]
    fn fuzz_every_methods_params(p in prop_oneof![3 => params_object(), 1 => json()]) {
        for method in METHODS {
            check_params(method, p.clone());
        }
    }

    /// Raw JSON text spliced into frames where `Value` cannot go: lone surrogates, numbers
    /// out of range, nesting past the limit, malformed tokens; as id, method, a param, or the
    /// whole frame.
    #[test]
    fn fuzz_raw_tokens(
        token in raw_token(),
        method in prop::sample::select(METHODS),
        field in prop::sample::select(FIELDS),
        place in 0u8..5,
    ) {
        let field = serde_json::to_string(field).unwrap();
        let text = match place {
            0 => format!(r#"{{"jsonrpc":"2.0","id":{token},"method":"{method}"}}"#),
            1 => format!(r#"{{"jsonrpc":"2.0","id":1,"method":{token}}}"#),
            2 => format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{{field}:{token}}}}}"#),
            3 => format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{token}}}"#),
            _ => token,
        };
        if let Some(req) = check_frame(&text) {
            check_params(&req.method, req.params);
        }
    }
}

/// Regular cases the properties found worth pinning: deep nesting stops at serde_json's
/// recursion limit with -32700, whatever the depth.
#[test]
fn deep_nesting_is_a_parse_error() {
    for n in [129, 10_000, 1_000_000] {
        let arrays = "[".repeat(n);
        assert_eq!(parse_request(&arrays).unwrap_err().1.code(), -32700);
        let objects = format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert_eq!(parse_request(&objects).unwrap_err().1.code(), -32700);
        let in_params = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"execute","params":{{"env":{}}}}}"#,
            "[".repeat(n)
        );
        assert_eq!(parse_request(&in_params).unwrap_err().1.code(), -32700);
    }
}

#[test]
fn lone_surrogates_and_huge_numbers_are_answered() {
    let lone = r#"{"jsonrpc":"2.0","id":"\ud800","method":"status"}"#;
    assert_eq!(parse_request(lone).unwrap_err().1.code(), -32700);
    let huge = r#"{"jsonrpc":"2.0","id":1e400,"method":"status"}"#;
    assert_eq!(parse_request(huge).unwrap_err().1.code(), -32700);
    let big = r#"{"jsonrpc":"2.0","id":1,"method":"resize","params":{"job_id":"j","rows":18446744073709551616,"cols":1}}"#;
    let req = parse_request(big).unwrap();
    assert_eq!(
        params::<ResizeParams>(req.params).unwrap_err().code(),
        -32602
    );
}
