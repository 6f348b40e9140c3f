//! What a job reports while it runs. Jobs and the executor put [`Event`]s into a session's
//! bounded channel; whoever holds the other end (the WebSocket session, the MCP bridge, a test)
//! turns them into whatever it speaks. Nothing here knows about sockets.

use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// A job's id, unique on this server.
pub type JobId = Arc<str>;

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Exit code 0.
    Completed,
    /// Non-zero exit, killed by a signal it was not sent by ccx, or could not be spawned.
    Failed,
    /// Killed by ccx at its wall-clock timeout.
    TimedOut,
    /// Canceled by the client, a disconnect or server shutdown.
    Canceled,
    /// A pre-hook refused it; it never started.
    Denied,
}

/// The one terminal event of a job.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub job_id: JobId,
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Seconds from spawn to the end of the output.
    pub execution_time: f64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// Why the job could not run (spawn failure), for `failed` without an exit code.
    pub error: Option<String>,
    /// For `denied`: the hook that refused and its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Post-hook reports, one per hook that ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Value>,
}

impl Completion {
    /// A completion for a job that never ran a process.
    pub fn without_process(job_id: JobId, status: JobStatus) -> Completion {
        Completion {
            job_id,
            status,
            exit_code: None,
            signal: None,
            execution_time: 0.0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            pid: None,
            pgid: None,
            error: None,
            hook: None,
            reason: None,
            hooks: Vec::new(),
        }
    }
}

/// Everything a session hears about its jobs, in the order it happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The process is running; `info` says what ran (after pre-hooks) and what they decided.
    Started {
        job_id: JobId,
        pid: u32,
        pgid: i32,
        info: Value,
    },
    /// A piece of output. `seq` increases per job across both streams.
    Output {
        job_id: JobId,
        stream: Stream,
        data: String,
        seq: u64,
    },
    Paused {
        job_id: JobId,
    },
    Resumed {
        job_id: JobId,
    },
    /// A cancel was accepted; the terminal [`Event::Completed`] follows.
    Canceled {
        job_id: JobId,
    },
    /// A hook failed and execution went on (or was refused, per its policy).
    HookWarning {
        job_id: JobId,
        warning: Value,
    },
    /// Exactly one per job, always last.
    Completed(Completion),
}

impl Event {
    pub fn job_id(&self) -> &JobId {
        match self {
            Event::Started { job_id, .. }
            | Event::Output { job_id, .. }
            | Event::Paused { job_id }
            | Event::Resumed { job_id }
            | Event::Canceled { job_id }
            | Event::HookWarning { job_id, .. } => job_id,
            Event::Completed(c) => &c.job_id,
        }
    }
}
