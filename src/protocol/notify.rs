//! Notifications: what the server tells a client without being asked — the `connected`
//! greeting and the events of each job, in this order per job: `process.started`, any number
//! of `process.output`, `process.paused`/`process.resumed`/`process.canceled`, `hook.warning`,
//! and exactly one `process.completed`, always last.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A job's id: a UUIDv7 (time-ordered), unique across the server's lifetime and restarts.
pub type JobId = Arc<str>;

/// Every notification, tagged by its JSON-RPC `method`, its fields in `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", content = "params")]
pub enum Notification {
    /// The first frame of every session.
    #[serde(rename = "connected")]
    Connected(Connected),
    #[serde(rename = "process.started")]
    Started(Started),
    #[serde(rename = "process.output")]
    Output(Output),
    /// In a replay (`attach`): output between `after_seq` and `next_seq` was not kept.
    #[serde(rename = "process.output_gap")]
    OutputGap(OutputGap),
    #[serde(rename = "process.paused")]
    Paused(JobNote),
    #[serde(rename = "process.resumed")]
    Resumed(JobNote),
    /// A cancel was accepted; `process.completed` follows.
    #[serde(rename = "process.canceled")]
    Canceled(JobNote),
    /// A hook failed and execution went on (or was refused, per its `on_failure`).
    #[serde(rename = "hook.warning")]
    HookWarning(HookWarning),
    /// Exactly one per job, always its last event.
    #[serde(rename = "process.completed")]
    Completed(Completion),
}

impl Notification {
    /// The job this notification is about (`None` for `connected`).
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Notification::Connected(_) => None,
            Notification::Started(s) => Some(&s.job_id),
            Notification::Output(o) => Some(&o.job_id),
            Notification::OutputGap(g) => Some(&g.job_id),
            Notification::Paused(n) | Notification::Resumed(n) | Notification::Canceled(n) => {
                Some(&n.job_id)
            }
            Notification::HookWarning(w) => Some(&w.job_id),
            Notification::Completed(c) => Some(&c.job_id),
        }
    }
}

/// `connected`: the session's id, the server's version and what it can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Connected {
    pub session_id: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

/// Which pipe a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// A job's terminal (`execute {pty}`): stdout and stderr as the terminal shows them.
    /// Counted as stdout in byte counts and SHA-256.
    Pty,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// The server stopped without a graceful shutdown (a crash, `kill -9`) while the job ran;
    /// the next start killed what was left of it.
    Lost,
}

/// Always `"started"` in `process.started`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartedStatus {
    #[default]
    Started,
}

/// `process.started`: the process runs; what ran (after pre-hooks) and what they decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Started {
    pub job_id: JobId,
    #[serde(default)]
    pub status: StartedStatus,
    pub pid: u32,
    /// The job's process group (equal to `pid`).
    pub pgid: i32,
    /// The command line as run, after pre-hook changes.
    pub command: String,
    /// The working directory asked for (`null`: the server's).
    pub cwd: Option<String>,
    /// The timeout in force, in seconds.
    pub timeout: f64,
    /// What the pre-hooks did; absent when no pre-hook ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<PreHooks>,
    /// The resource limits in force (the request's, else the server's defaults); absent
    /// when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::Limits>,
    /// The job's terminal, when it runs on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<super::PtySize>,
    /// The cluster worker running it (`ccx worker --name`); absent on a single server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// The pre-hook chain's account in `process.started`: the request as the client sent it,
/// then each hook's report (with its patch, when it answered `modify`) in the order the
/// hooks ran; applying the patches of `modified_by`, in order, to `received` gives what ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreHooks {
    /// The request as received, before any hook (values of secret variables masked).
    /// Absent in records written before ccx recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Box<ReceivedRequest>>,
    /// Hooks whose changes were applied, in order.
    pub modified_by: Vec<String>,
    pub reports: Vec<HookReport>,
}

/// The parts of a request that pre-hooks may change, as the client sent them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReceivedRequest {
    pub command: String,
    pub cwd: Option<String>,
    /// The job's own variables (values of `[execution] secret_env` names as `***`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds; `null`: the server's default.
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::Limits>,
}

/// A pre-hook's change to the request, as it answered it (before the executor checks it and
/// lowers limits above the server's maxima).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HookPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables set (values of secret names as `***`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_env: Vec<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::Limits>,
}

/// What one hook did for one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HookReport {
    pub hook: String,
    /// `pre` or `post`.
    pub stage: String,
    /// Pre only: `allow`, `deny` or `modify`; `null` when the call failed.
    pub decision: Option<String>,
    /// Post only: the hook's notes, an object of strings (open: each hook names its own).
    #[serde(default)]
    pub annotations: Value,
    /// Post only: the verdict, or a failing one when a fail-closed hook failed.
    pub verdict: Option<Verdict>,
    /// The failure message when the call failed.
    pub error: Option<String>,
    /// Wall-clock time of the call, microseconds.
    pub duration_us: u64,
    /// WebAssembly fuel the call consumed.
    pub fuel_used: u64,
    /// `warn` or `dry-run` when the hook's decision was recorded, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The matcher rule that let the hook see the job (`program rm`, `dynamic command …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// Pre only: the hook's change when it answered `modify` (applied in `enforce` mode,
    /// only recorded in `warn` and `dry-run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<HookPatch>,
    /// Output only: what the hook did to the job's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputCounts>,
}

/// What an output hook did to one job's output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutputCounts {
    /// `filter-output` calls, end-of-stream calls included.
    pub calls: u64,
    /// Chunks it replaced or dropped (in `warn`/`dry-run`: would have).
    pub chunks_changed: u64,
    /// Bytes it was given, and bytes it let through.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A post-hook's judgement: `"pass"` or `{"fail": "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail(String),
}

/// How `process.output` carries bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputEncoding {
    /// UTF-8 text; invalid sequences become U+FFFD, and a character split between two reads
    /// is sent whole with the second.
    #[default]
    Utf8,
    /// Every byte exactly, as standard base64 (RFC 4648 section 4, padded).
    Base64,
}

impl OutputEncoding {
    pub fn is_utf8(&self) -> bool {
        *self == OutputEncoding::Utf8
    }
}

/// `process.output`: one read of up to 64 KiB from one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Output {
    pub job_id: JobId,
    #[serde(rename = "type")]
    pub stream: Stream,
    /// The bytes, as `encoding` says: UTF-8 text (invalid sequences replaced by U+FFFD, never
    /// splitting a character) or base64.
    pub data: String,
    /// Increases by one per read, per job, across both streams: sort by it to restore read
    /// order. (In `utf8` a read that holds only part of a character sends nothing, so a
    /// number can be skipped.)
    pub seq: u64,
    /// Position in its stream of the first byte in `data`.
    #[serde(default)]
    pub offset: u64,
    /// Absent: `utf8`.
    #[serde(default, skip_serializing_if = "OutputEncoding::is_utf8")]
    pub encoding: OutputEncoding,
}

/// `process.output_gap`: in a replay, the output after `after_seq` and before `next_seq`
/// (`bytes` of it, both streams) is no longer kept (`[state] max_output_bytes_per_job`) or
/// was never stored (the spool failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputGap {
    pub job_id: JobId,
    pub after_seq: u64,
    pub next_seq: u64,
    pub bytes: u64,
}

/// A job's state after `control`: the `process.paused`/`resumed`/`canceled` params and the
/// `control` result alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobNote {
    pub job_id: JobId,
    pub status: NoteStatus,
}

/// The state a `control` request put a job in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoteStatus {
    Paused,
    Resumed,
    Canceled,
}

/// `hook.warning`: a hook failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HookWarning {
    pub job_id: JobId,
    pub hook: String,
    /// `pre` or `post`.
    pub stage: String,
    /// `fuel`, `timeout`, `memory`, `trap`, `invalid` or `load`; for a `warn`-mode hook's
    /// decision, `deny` or `modify` (the job ran unchanged).
    pub kind: String,
    /// `warn` for a warn-mode hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub message: String,
}

/// `process.completed`: the one terminal event of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Completion {
    pub job_id: JobId,
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Seconds from spawn to the end of the output.
    pub execution_time: f64,
    /// Bytes sent to clients (after output hooks, when any ran).
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Bytes the job wrote to each stream, when output hooks ran (they may differ from what
    /// was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_raw_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_raw_bytes: Option<u64>,
    /// SHA-256 (hex) of the stdout bytes sent (as clients received them), for a job that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_sha256: Option<String>,
    /// SHA-256 (hex) of its stderr bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// Why the job could not run (spawn failure, hooks not ready, an internal failure).
    #[serde(default)]
    pub error: Option<String>,
    /// For `denied`: the hook that refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// For `denied`: its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Output-hook reports (stage `output`), then post-hook reports, one per hook that ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookReport>,
    /// How many processes the job had left running (`cmd &`, daemons) when its command
    /// ended, and that ccx killed then; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftovers_killed: Option<u64>,
    /// The resource limit that ended the job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<super::LimitKind>,
    /// What its processes used; present for every job that ran a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<super::Usage>,
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
            stdout_raw_bytes: None,
            stderr_raw_bytes: None,
            stdout_sha256: None,
            stderr_sha256: None,
            pid: None,
            pgid: None,
            error: None,
            hook: None,
            reason: None,
            hooks: Vec::new(),
            leftovers_killed: None,
            limit: None,
            usage: None,
        }
    }
}
