//! The JSON-RPC 2.0 envelope: parsing a request frame strictly (every fault named, the `id`
//! echoed whenever it could be read), encoding replies and notifications on the server, and
//! decoding a server frame on the client.
//!
//! Source: the JSON-RPC 2.0 specification, <https://www.jsonrpc.org/specification>.

use super::notify::Notification;
use super::{JSONRPC, RpcError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `"jsonrpc": "2.0"` member; deserializing anything else is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JsonRpcVersion {
    #[default]
    #[serde(rename = "2.0")]
    V2,
}

/// A JSON-RPC error object: `code` from the table in [`super`], a message for a person, and
/// for some codes structured `data` (e.g. `{hook, reason}` with -32001).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl std::fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(data) = &self.data {
            write!(f, " {data}")?;
        }
        Ok(())
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

/// A request frame, as a client sends it: `{"jsonrpc":"2.0","id":…,"method":…,"params":…}`.
#[derive(Serialize)]
struct RequestFrame<'a, P: Serialize> {
    jsonrpc: JsonRpcVersion,
    id: u64,
    method: &'a str,
    params: &'a P,
}

/// Encodes a request with a numeric `id` (the client's ids count up from 1).
pub fn encode_request<P: Serialize>(id: u64, method: &str, params: &P) -> String {
    serde_json::to_string(&RequestFrame {
        jsonrpc: JsonRpcVersion::V2,
        id,
        method,
        params,
    })
    .expect("requests serialize")
}

/// A successful reply frame: `{"jsonrpc":"2.0","id":…,"result":…}`.
#[derive(Serialize)]
struct Reply<'a, R: Serialize> {
    jsonrpc: JsonRpcVersion,
    id: &'a Value,
    result: &'a R,
}

/// An error reply frame: `{"jsonrpc":"2.0","id":…,"error":{code,message,data?}}`.
#[derive(Serialize)]
struct ErrorReply<'a> {
    jsonrpc: JsonRpcVersion,
    id: &'a Value,
    error: ErrorObject,
}

/// Encodes the reply to request `id`.
pub fn encode_reply<R: Serialize>(id: &Value, result: &R) -> String {
    serde_json::to_string(&Reply {
        jsonrpc: JsonRpcVersion::V2,
        id,
        result,
    })
    .expect("replies serialize")
}

/// Encodes an error reply to request `id` (`null` when the id could not be read).
pub fn encode_error(id: &Value, err: &RpcError) -> String {
    serde_json::to_string(&ErrorReply {
        jsonrpc: JsonRpcVersion::V2,
        id,
        error: err.to_object(),
    })
    .expect("errors serialize")
}

/// Encodes a notification: `{"jsonrpc":"2.0","method":…,"params":…}`.
pub fn encode_notification(note: &Notification) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        jsonrpc: JsonRpcVersion,
        #[serde(flatten)]
        note: &'a Notification,
    }
    serde_json::to_string(&Frame {
        jsonrpc: JsonRpcVersion::V2,
        note,
    })
    .expect("notifications serialize")
}

/// A frame from the server, as a client reads it.
// A notification is most of what a client reads, so boxing it would cost an allocation per
// frame to save a move of ~400 bytes, once, into a channel.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// The answer to the request with this `id` (`null` for errors about unreadable frames).
    Reply {
        id: Value,
        result: Result<Value, ErrorObject>,
    },
    Notification(Notification),
}

impl ServerFrame {
    /// Decodes one text frame. A notification whose method this client does not know is an
    /// error naming it, as is a frame that is neither a reply nor a notification.
    pub fn parse(text: &str) -> Result<ServerFrame, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[allow(dead_code)]
            jsonrpc: JsonRpcVersion,
            #[serde(default)]
            id: Option<Value>,
            #[serde(default)]
            result: Option<Value>,
            #[serde(default)]
            error: Option<ErrorObject>,
            #[serde(default)]
            method: Option<String>,
            #[serde(default)]
            params: Option<Value>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("invalid frame: {e}"))?;
        match (raw.method, raw.result, raw.error) {
            (Some(method), None, None) => {
                let note = serde_json::json!({"method": method, "params": raw.params});
                serde_json::from_value(note)
                    .map(ServerFrame::Notification)
                    .map_err(|e| format!("invalid `{method}` notification: {e}"))
            }
            (None, Some(result), None) => Ok(ServerFrame::Reply {
                id: raw.id.unwrap_or(Value::Null),
                result: Ok(result),
            }),
            (None, None, Some(error)) => Ok(ServerFrame::Reply {
                id: raw.id.unwrap_or(Value::Null),
                result: Err(error),
            }),
            _ => Err("a frame must carry exactly one of `method`, `result`, `error`".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExecuteParams;
    use serde_json::json;

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
