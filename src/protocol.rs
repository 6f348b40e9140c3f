//! JSON-RPC 2.0 messages as ccx speaks them: requests in, responses and notifications out, and
//! the error enum whose variants map to wire codes. Pure data and parsing; no I/O.
//!
//! Method and notification names and the error codes are those of the Python server ccx
//! replaces, so its clients can switch by changing the URL only.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The JSON-RPC version string every message carries.
pub const JSONRPC: &str = "2.0";

/// Capabilities announced in the `connected` notification.
pub const CAPABILITIES: &[&str] = &["execute", "control", "stream", "status", "hooks"];

/// An error that goes back to the client as a JSON-RPC error object.
///
/// Messages are written for the person reading the client's log; internal causes never reach
/// the wire (see [`RpcError::Internal`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("command not allowed: {reason}")]
    CommandNotAllowed { hook: String, reason: String },
    #[error("{0}")]
    NoSuchJob(String),
    #[error("session limit reached ({0} sessions)")]
    SessionLimit(usize),
    #[error("queue full: {0} jobs already queued on this connection")]
    QueueFull(usize),
    #[error("hooks not ready: {0}")]
    HooksNotReady(String),
    /// The server failed; the cause is logged, never sent.
    #[error("internal error")]
    Internal,
}

impl RpcError {
    /// The wire code: the standard JSON-RPC ones, and the predecessor's `-3200x` codes.
    pub fn code(&self) -> i64 {
        match self {
            RpcError::Parse(_) => -32700,
            RpcError::InvalidRequest(_) => -32600,
            RpcError::MethodNotFound(_) => -32601,
            RpcError::InvalidParams(_) => -32602,
            RpcError::CommandNotAllowed { .. } => -32001,
            RpcError::NoSuchJob(_) => -32002,
            RpcError::SessionLimit(_) => -32003,
            RpcError::QueueFull(_) => -32004,
            RpcError::HooksNotReady(_) => -32006,
            RpcError::Internal => -32603,
        }
    }

    fn data(&self) -> Option<Value> {
        match self {
            RpcError::CommandNotAllowed { hook, reason } => {
                Some(json!({ "hook": hook, "reason": reason }))
            }
            _ => None,
        }
    }

    /// The JSON-RPC error object.
    pub fn to_value(&self) -> Value {
        let mut err = json!({ "code": self.code(), "message": self.to_string() });
        if let Some(data) = self.data() {
            err["data"] = data;
        }
        err
    }
}

/// A request as it arrived: `id` is kept verbatim and echoed whatever its type.
#[derive(Debug, Clone)]
pub struct Request {
    /// `None` for a notification-style request (no reply is sent).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// Parses one text frame into a request. On failure returns the error and the id to answer
/// with (`null` when the id could not be read).
pub fn parse_request(text: &str) -> Result<Request, (Value, RpcError)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (Value::Null, RpcError::Parse(format!("invalid JSON: {e}"))))?;
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err((
                Value::Null,
                RpcError::InvalidRequest("batch requests are not supported".into()),
            ));
        }
        other => {
            return Err((
                Value::Null,
                RpcError::InvalidRequest(format!(
                    "expected a JSON object, got {}",
                    json_kind(&other)
                )),
            ));
        }
    };
    let id = obj.remove("id");
    let reply_id = id.clone().unwrap_or(Value::Null);
    if let Some(bad) = id
        .as_ref()
        .filter(|id| !(id.is_string() || id.is_number() || id.is_null()))
    {
        return Err((
            Value::Null,
            RpcError::InvalidRequest(format!(
                "`id` must be a string, number or null, got {}",
                json_kind(bad)
            )),
        ));
    }
    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == JSONRPC => {}
        Some(_) => {
            return Err((
                reply_id,
                RpcError::InvalidRequest("`jsonrpc` must be \"2.0\"".into()),
            ));
        }
        None => {
            return Err((
                reply_id,
                RpcError::InvalidRequest("missing `jsonrpc: \"2.0\"`".into()),
            ));
        }
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(other) => {
            return Err((
                reply_id,
                RpcError::InvalidRequest(format!(
                    "`method` must be a string, got {}",
                    json_kind(&other)
                )),
            ));
        }
        None => {
            return Err((
                reply_id,
                RpcError::InvalidRequest("missing `method`".into()),
            ));
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(other) => {
            return Err((
                reply_id,
                RpcError::InvalidParams(format!(
                    "`params` must be an object, got {}",
                    json_kind(&other)
                )),
            ));
        }
    };
    if let Some(key) = obj.keys().next() {
        return Err((
            reply_id,
            RpcError::InvalidRequest(format!("unknown member `{key}`")),
        ));
    }
    Ok(Request { id, method, params })
}

/// Decodes a method's params, naming the offending field on failure.
pub fn params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::InvalidParams(e.to_string()))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A successful response.
pub fn response(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": JSONRPC, "id": id, "result": result })
}

/// An error response.
pub fn error_response(id: Value, err: &RpcError) -> Value {
    json!({ "jsonrpc": JSONRPC, "id": id, "error": err.to_value() })
}

/// A notification (no id, no reply expected).
pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": JSONRPC, "method": method, "params": params })
}

/// `execute` params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteParams {
    pub command: String,
    /// Seconds, integer or fraction.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// What `control` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ControlType {
    Pause,
    Resume,
    Cancel,
}

/// `control` params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlParams {
    #[serde(rename = "type")]
    pub kind: ControlType,
    #[serde(default)]
    pub job_id: Option<String>,
}

/// Params of methods that take none: anything present is a mistake worth reporting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_have_the_right_codes() {
        assert_eq!(parse_request("{").unwrap_err().1.code(), -32700);
        assert_eq!(parse_request("[]").unwrap_err().1.code(), -32600);
        assert_eq!(parse_request("3").unwrap_err().1.code(), -32600);
        assert_eq!(
            parse_request(r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#)
                .unwrap_err()
                .1
                .code(),
            -32600
        );
        let (id, err) =
            parse_request(r#"{"jsonrpc":"2.0","id":"a","method":"x","params":[1]}"#).unwrap_err();
        assert_eq!(id, json!("a"));
        assert_eq!(err.code(), -32602);
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        let r = parse_request(r#"{"jsonrpc":"2.0","id":{"x":1},"method":"status"}"#);
        assert_eq!(r.unwrap_err().1.code(), -32600);
        let r = parse_request(r#"{"jsonrpc":"2.0","id":1.5,"method":"status"}"#).unwrap();
        assert_eq!(r.id, Some(json!(1.5)));
        let r = parse_request(r#"{"jsonrpc":"2.0","method":"pong"}"#).unwrap();
        assert_eq!(r.id, None);
    }

    #[test]
    fn unknown_execute_params_are_named() {
        let err = params::<ExecuteParams>(json!({"command": "true", "cwdd": "/"})).unwrap_err();
        assert!(err.to_string().contains("cwdd"), "{err}");
    }
}
