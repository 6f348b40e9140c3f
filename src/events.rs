//! What a job reports while it runs. Jobs and the executor put [`Event`]s into a session's
//! bounded channel; whoever holds the other end (the WebSocket session, the MCP tools, a test)
//! passes them on. An event *is* the notification a client receives (one type on both ends of
//! the wire, see [`crate::protocol::notify`]); the executor emits every variant except
//! `connected`, which belongs to the session. Nothing here knows about sockets.

pub use crate::protocol::notify::{
    Completion, HookReport, HookWarning, JobId, JobNote, JobStatus, NoteStatus, Output, PreHooks,
    Started, Stream,
};

/// One event of one job; see [`crate::protocol::Notification`] for the order they come in.
pub type Event = crate::protocol::Notification;
