//! The methods a client may call: each one's params and result, tied together by [`Method`]
//! so the client can call `execute` and get an [`ExecuteResult`] back, typed on both ends.

use super::notify::{JobId, JobNote, OutputEncoding};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One JSON-RPC method: its name, what it takes and what it answers.
pub trait Method {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned;
    type Result: Serialize + DeserializeOwned;
}

/// `execute`: run a command (after the connection's running and queued jobs).
pub struct Execute;
impl Method for Execute {
    const NAME: &'static str = "execute";
    type Params = ExecuteParams;
    type Result = ExecuteResult;
}

/// `control`: pause, resume or cancel a job.
pub struct Control;
impl Method for Control {
    const NAME: &'static str = "control";
    type Params = ControlParams;
    type Result = JobNote;
}

/// `status`: the connection's running and queued jobs.
pub struct Status;
impl Method for Status {
    const NAME: &'static str = "status";
    type Params = NoParams;
    type Result = SessionStatus;
}

/// `hook_status`: the hooks' state and counters.
pub struct HookStatus;
impl Method for HookStatus {
    const NAME: &'static str = "hook_status";
    type Params = NoParams;
    type Result = HookStatusReport;
}

/// `pong` (or `ping`): a keep-alive; answered with `{}` when it has an id.
pub struct Pong;
impl Method for Pong {
    const NAME: &'static str = "pong";
    type Params = NoParams;
    type Result = NoParams;
}

/// `execute` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteParams {
    /// Run as `<shell> -c <command>`.
    pub command: String,
    /// Seconds, integer or fraction; absent: the server's `default_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Working directory; absent: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables set on top of the server's child environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Keep running after this connection closes (`attach` finds it again). Absent or
    /// `false`: the job is canceled when its connection closes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
    /// How `process.output` carries bytes; absent: `utf8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<OutputEncoding>,
    /// A retried `execute` with the same key (within retention) does not run the command
    /// again: it answers `existing` with the first job's id. The same key with a different
    /// request is `-32602`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Text written to the command's stdin, which is then closed; absent: stdin is
    /// `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Both streams on one pipe, as `process.output {type: "stdout"}`: the exact order in
    /// which the command wrote them (two pipes give read order only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge_stderr: bool,
    /// Resource limits for this job, each at most the server's maximum
    /// (`[execution.limits.max]`; above it is `-32602`); an absent field takes the server's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::Limits>,
    /// Keep stdin open (after `stdin`, if given) for `input`; absent: stdin is closed after
    /// `stdin`, or is `/dev/null`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// Run on a pseudo-terminal of this size: stdin, stdout and stderr are the terminal,
    /// output comes as `process.output {type: "pty"}` in exactly the order shown, `input`
    /// types into it and `resize` changes its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<super::PtySize>,
    /// Labels for hooks and policies (`{"team": "infra"}`): at most 32, keys of 1 to 64 of
    /// `[A-Za-z0-9._/-]`, values of at most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// W3C Trace Context `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): the job joins this
    /// trace with a span of its own, and its processes get `TRACEPARENT` naming that span.
    /// A malformed value is `-32602`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Worker labels the job needs (`["gpu"]`): a cluster gateway (`ccx serve --nats`) gives
    /// it only to a worker started with all of them. At most 8, each 1 to 32 of
    /// `[A-Za-z0-9_-]`. A single server has no workers: a non-empty list is `-32602` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Vec<String>>,
    /// On a cluster gateway: when the worker running the job dies, run it again on another
    /// worker (at most 3 runs in all) instead of ending it `lost`. Commands are not
    /// idempotent, so this needs an `idempotency_key` (`-32602` without one): the client
    /// says the command may run twice. A single server has no other machine to retry on;
    /// there it has no effect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_lost: bool,
}

/// The `execute` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ExecuteResult {
    /// Running now; `process.started` follows.
    Started { job_id: JobId, pid: u32, pgid: i32 },
    /// Waiting behind `position - 1` other jobs of this connection.
    Queued { job_id: JobId, position: usize },
    /// Could not be spawned; its `process.completed` (status `failed`) follows.
    Failed { job_id: JobId, error: String },
    /// The `idempotency_key` names this earlier job; nothing was run. `attach` to follow it.
    Existing { job_id: JobId },
}

impl ExecuteResult {
    pub fn job_id(&self) -> &JobId {
        match self {
            ExecuteResult::Started { job_id, .. }
            | ExecuteResult::Queued { job_id, .. }
            | ExecuteResult::Failed { job_id, .. }
            | ExecuteResult::Existing { job_id } => job_id,
        }
    }
}

/// What `control` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ControlType {
    Pause,
    Resume,
    Cancel,
}

/// `control` params.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlParams {
    #[serde(rename = "type")]
    pub kind: ControlType,
    /// Absent: the connection's running job. Any job on the server may be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// The `control` result (the same shape as the notification it causes).
pub type ControlResult = JobNote;

/// Params of methods that take none (anything present is a mistake worth reporting), and the
/// empty `{}` result of `pong`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// The `status` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionStatus {
    pub session_id: String,
    pub running: Option<RunningStatus>,
    pub queued: Vec<QueuedStatus>,
}

/// The running job in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunningStatus {
    pub job_id: JobId,
    pub command: String,
    pub pid: u32,
    pub pgid: i32,
    /// `running` or `paused`.
    pub state: String,
    /// Seconds since it started.
    pub elapsed: f64,
}

/// A queued job in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueuedStatus {
    pub job_id: JobId,
    pub command: String,
    /// 1 for the next to run.
    pub position: usize,
}

/// The `hook_status` result (also `GET /hooks`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HookStatusReport {
    /// Whether any hook is loaded and enabled.
    pub enabled: bool,
    /// `starting` while the first generation's hooks load, then `ready`.
    #[serde(default)]
    pub state: String,
    pub hooks_configured: usize,
    /// Increases with every applied reload; 0 while the first one loads.
    #[serde(default)]
    pub generation: u64,
    /// When the generation in force was loaded, seconds since the Unix epoch.
    #[serde(default)]
    pub loaded_at: f64,
    /// Why the newest reload was refused, if it was.
    #[serde(default)]
    pub reload_error: Option<String>,
    /// Config sections that changed in the file but need a restart to apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_required: Vec<String>,
    #[serde(default)]
    pub config_file: Option<String>,
    /// Whether the pooling allocator is in use.
    #[serde(default)]
    pub pooling: bool,
    #[serde(default)]
    pub cache_dir: Option<String>,
    /// Linear memory the spare hook instances hold now, in bytes (each hook's `spares` says
    /// how many it has ready).
    #[serde(default)]
    pub spare_memory_bytes: u64,
    /// The spare instances' memory budget (`[sandbox] spare_memory_mb`), in bytes.
    #[serde(default)]
    pub spare_memory_budget_bytes: u64,
    /// One entry per configured hook: name, path, `state` (`loading`, `loaded`, `failed`,
    /// `disabled`), limits, load time and counters; see docs/hooks.md. Kept open here: its
    /// shape belongs to the hook runtime.
    pub hooks: Vec<Value>,
}
