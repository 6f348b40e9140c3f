//! The wire protocol: JSON-RPC 2.0 over WebSocket text frames, as ccx speaks it. Every message
//! in either direction is a Rust type here, used by the server to encode and by the client to
//! decode; `docs/protocol.schema.json` is generated from these types (see [`schema`]). Pure
//! data and parsing; no I/O.
//!
//! # Layout
//! - [`frame`]: the JSON-RPC envelope — parsing a request frame (strictly, naming what is
//!   wrong), encoding replies and notifications, decoding a server frame on the client side.
//! - [`methods`]: each method's params and result, tied together by [`Method`].
//! - [`notify`]: every notification and its params ([`Notification`]); a job's events are
//!   these same types (`crate::events::Event`).
//! - [`schema`]: the JSON Schema of all of the above.
//!
//! Method and notification names and the error codes are those of the Python server ccx
//! replaces, so its clients can switch by changing the URL only.
//!
//! # Error codes
//! One table, mirrored in the README; later features extend it here.
//!
//! | code | variant | meaning |
//! |---|---|---|
//! | -32700 | [`RpcError::Parse`] | the frame is not JSON |
//! | -32600 | [`RpcError::InvalidRequest`] | not a JSON-RPC 2.0 request (batch, bad `id`, oversize frame …) |
//! | -32601 | [`RpcError::MethodNotFound`] | unknown method |
//! | -32602 | [`RpcError::InvalidParams`] | params missing, unknown or out of range (the message names the field) |
//! | -32603 | [`RpcError::Internal`] | the server failed; the cause is logged, never sent |
//! | -32001 | [`RpcError::CommandNotAllowed`] | a pre-hook denied the command; `data: {hook, reason}` |
//! | -32002 | [`RpcError::NoSuchJob`] | no such job (or it has ended) |
//! | -32003 | [`RpcError::SessionLimit`] | `max_sessions` connections are open |
//! | -32004 | [`RpcError::QueueFull`] | `max_queue` jobs already wait on this connection |
//! | -32005 | [`RpcError::SeqNotRetained`] | `attach`'s `after_seq` lies in output no longer kept; `data: {next_seq}` |
//! | -32006 | [`RpcError::HooksNotReady`] | the hooks of the configuration did not finish loading within `[sandbox] load_timeout` |
//! | -32007 | [`RpcError::DetachedLimit`] | `[state] max_detached` detached jobs already run |
//! | -32008 | [`RpcError::RegistryOff`] | the job registry is off (`[state] enabled = false`), or failed to open |

pub mod frame;
pub mod input;
pub mod jobs;
pub mod limits;
pub mod methods;
pub mod notify;
pub mod output;
pub mod schema;

pub use frame::{
    ErrorObject, JsonRpcVersion, Request, ServerFrame, encode_error, encode_notification,
    encode_reply, encode_request, parse_request,
};
pub use input::{Input, InputParams, InputResult, PtySize, Resize, ResizeParams};
pub use jobs::{
    Attach, AttachParams, AttachResult, Detach, DetachResult, GetJob, JobList, JobRecord, JobRef,
    JobState, ListJobs, ListJobsParams,
};
pub use limits::{LimitKind, Limits, Usage};
pub use methods::{
    Control, ControlParams, ControlResult, ControlType, Execute, ExecuteParams, ExecuteResult,
    HookStatus, HookStatusReport, Method, NoParams, Pong, QueuedStatus, RunningStatus,
    SessionStatus, Status,
};
pub use notify::{
    Completion, Connected, HookPatch, HookReport, HookWarning, JobId, JobNote, JobStatus,
    NoteStatus, Notification, Output, OutputCounts, OutputEncoding, OutputGap, PreHooks,
    ReceivedRequest, Started, Stream, Verdict,
};

use serde_json::{Value, json};

/// The JSON-RPC version string every message carries.
pub const JSONRPC: &str = "2.0";

/// Capabilities announced in the `connected` notification.
pub const CAPABILITIES: &[&str] = &[
    "execute", "control", "stream", "status", "hooks", "jobs", "attach", "base64", "limits",
    "input", "pty",
];

/// An error that goes back to the client as a JSON-RPC error object (codes: see the table in
/// the module docs).
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
    #[error("output after seq {after_seq} is no longer kept; the next kept seq is {next_seq}")]
    SeqNotRetained { after_seq: u64, next_seq: u64 },
    #[error("{0} detached jobs already run (`[state] max_detached`)")]
    DetachedLimit(usize),
    #[error("the job registry is unavailable: {0}")]
    RegistryOff(String),
    /// A cluster gateway (`ccx serve --nats`) cannot reach NATS JetStream.
    #[error("the cluster is unavailable: {0}")]
    ClusterUnavailable(String),
    /// The error a cluster worker answered with, passed on as it was.
    #[error("{}", .0.message)]
    Remote(ErrorObject),
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
            RpcError::SeqNotRetained { .. } => -32005,
            RpcError::HooksNotReady(_) => -32006,
            RpcError::DetachedLimit(_) => -32007,
            RpcError::RegistryOff(_) => -32008,
            RpcError::ClusterUnavailable(_) => -32009,
            RpcError::Remote(e) => e.code,
            RpcError::Internal => -32603,
        }
    }

    /// The JSON-RPC error object.
    pub fn to_object(&self) -> ErrorObject {
        if let RpcError::Remote(e) = self {
            return e.clone();
        }
        let data = match self {
            RpcError::CommandNotAllowed { hook, reason } => {
                Some(json!({ "hook": hook, "reason": reason }))
            }
            RpcError::SeqNotRetained { next_seq, .. } => Some(json!({ "next_seq": next_seq })),
            _ => None,
        };
        ErrorObject {
            code: self.code(),
            message: self.to_string(),
            data,
        }
    }

    /// The JSON-RPC error object as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.to_object()).expect("error objects serialize")
    }
}
