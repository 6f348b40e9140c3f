//! The job registry's methods: `attach`, `detach`, `list_jobs` and `get_job`, and the record
//! they return. A job can be found with these from any connection, for as long as the
//! registry keeps it (`[state] retain_jobs`, `retain_days`).

use super::methods::Method;
use super::notify::{HookReport, JobId, OutputEncoding, OutputGap, PreHooks};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `attach`: replay a job's output after `after_seq`, then follow it live to its
/// `process.completed`.
pub struct Attach;
impl Method for Attach {
    const NAME: &'static str = "attach";
    type Params = AttachParams;
    type Result = AttachResult;
}

/// `detach`: let a running or queued job outlive the connection that started it.
pub struct Detach;
impl Method for Detach {
    const NAME: &'static str = "detach";
    type Params = JobRef;
    type Result = DetachResult;
}

/// `list_jobs`: registry records, newest first.
pub struct ListJobs;
impl Method for ListJobs {
    const NAME: &'static str = "list_jobs";
    type Params = ListJobsParams;
    type Result = JobList;
}

/// `get_job`: one registry record.
pub struct GetJob;
impl Method for GetJob {
    const NAME: &'static str = "get_job";
    type Params = JobRef;
    type Result = JobRecord;
}

/// `attach` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    pub job_id: String,
    /// Replay the output after this `seq`; absent: from the start, beginning with
    /// `process.started`. Inside output no longer kept: `-32005` with `data: {next_seq}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// Absent: the encoding the job was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<OutputEncoding>,
}

/// The `attach` result; the replay follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttachResult {
    pub job_id: JobId,
    pub status: JobState,
    /// The `seq` of the first `process.output` the replay can bring.
    pub next_seq: u64,
    /// The last `seq` read from the job so far (what a client that does not follow waits for).
    #[serde(default)]
    pub last_seq: u64,
}

/// Params naming one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    pub job_id: String,
}

/// The `detach` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DetachResult {
    pub job_id: JobId,
    pub detached: bool,
}

/// `list_jobs` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobsParams {
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobState>,
    /// At most this many (default 100, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The `list_jobs` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
}

/// Where a job is in its life, as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    TimedOut,
    Canceled,
    Denied,
    Lost,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Paused
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::TimedOut => "timed_out",
            JobState::Canceled => "canceled",
            JobState::Denied => "denied",
            JobState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

impl From<super::JobStatus> for JobState {
    fn from(s: super::JobStatus) -> JobState {
        use super::JobStatus as S;
        match s {
            S::Completed => JobState::Completed,
            S::Failed => JobState::Failed,
            S::TimedOut => JobState::TimedOut,
            S::Canceled => JobState::Canceled,
            S::Denied => JobState::Denied,
            S::Lost => JobState::Lost,
        }
    }
}

/// One job as the registry keeps it (`get_job`, `list_jobs`). Times are seconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    pub job_id: JobId,
    pub status: JobState,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// The command as requested.
    pub command: String,
    /// The command as run, after pre-hooks (absent until it starts).
    pub command_run: Option<String>,
    pub cwd: Option<String>,
    /// The request's variables; values of `[execution] secret_env` names are `***`.
    pub env: BTreeMap<String, String>,
    /// The client's address, and the label of the token it presented.
    pub peer: Option<String>,
    pub token_label: Option<String>,
    pub session_id: Option<String>,
    pub detached: bool,
    pub output_encoding: OutputEncoding,
    pub idempotency_key: Option<String>,
    pub timeout: Option<f64>,
    pub pid: Option<u32>,
    pub pgid: Option<i32>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it could not run, or what was lost.
    pub error: Option<String>,
    /// The pre-hooks' account (as in `process.started`), and for `denied` the hook and reason.
    pub pre_hooks: Option<PreHooks>,
    pub denied_by: Option<String>,
    pub denied_reason: Option<String>,
    /// The post-hooks' reports (as in `process.completed`).
    #[serde(default)]
    pub post_hooks: Vec<HookReport>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_sha256: Option<String>,
    pub stderr_sha256: Option<String>,
    /// Seconds from spawn to the end of its output.
    pub execution_time: Option<f64>,
    /// The last `seq` of its output so far.
    pub last_seq: u64,
    /// The part of its output no longer kept, if any.
    pub output_gap: Option<OutputGap>,
    /// Why its output could not be spooled to disk, if it could not.
    pub spool_error: Option<String>,
    /// Processes it left running that were killed at its end (see `process.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leftovers_killed: Option<u64>,
    /// The resource limits it ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<super::Limits>,
    /// Its terminal, when it ran on one (its output is then `pty`, kept as stdout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<super::PtySize>,
    /// The limit that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<super::LimitKind>,
    /// What its processes used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<super::Usage>,
    /// The cluster worker that ran it (`ccx worker --name`); absent on a single server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl JobRecord {
    /// A record with only its id, state, creation time and command; everything else empty.
    pub fn new(job_id: JobId, status: JobState, created_at: f64, command: String) -> JobRecord {
        JobRecord {
            job_id,
            status,
            created_at,
            started_at: None,
            ended_at: None,
            command,
            command_run: None,
            cwd: None,
            env: BTreeMap::new(),
            peer: None,
            token_label: None,
            session_id: None,
            detached: false,
            output_encoding: OutputEncoding::Utf8,
            idempotency_key: None,
            timeout: None,
            pid: None,
            pgid: None,
            exit_code: None,
            signal: None,
            error: None,
            pre_hooks: None,
            denied_by: None,
            denied_reason: None,
            post_hooks: Vec::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_sha256: None,
            stderr_sha256: None,
            execution_time: None,
            last_seq: 0,
            output_gap: None,
            spool_error: None,
            leftovers_killed: None,
            limits: None,
            pty: None,
            limit: None,
            usage: None,
            worker: None,
        }
    }
}
