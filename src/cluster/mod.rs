//! Many machines behind one endpoint, on NATS JetStream: `ccx worker` runs jobs taken from a
//! work queue with the same executor a single server drives; `ccx serve --nats` (the gateway)
//! puts its clients' jobs on that queue and relays their events. `docs/cluster.md` has the
//! whole picture; in short:
//!
//! - **Work queue** (stream [`JOBS_STREAM`], work-queue retention): a job is one [`JobMessage`]
//!   on `ccx.jobs.<route>`, where the route is the job's sorted `requires` labels joined by
//!   `.` ([`ANY_ROUTE`] for none). Each route has one durable pull consumer, shared by every
//!   worker whose labels include the route's, so a job goes to exactly one capable worker. A
//!   worker keeps the message in progress (`+WPI`) while the job runs and acknowledges it at
//!   the end.
//! - **Events** (stream [`EVENTS_STREAM`], kept for `events_max_age`): the worker publishes
//!   each of the job's notifications, exactly as a single server would send it, on
//!   `ccx.ev.<job_id>`; any gateway replays or follows them with an ordered consumer.
//! - **Records** (key-value bucket [`JOBS_BUCKET`]): one [`JobRecord`] per job. Every change
//!   of state is a compare-and-swap on its revision, so a job is claimed at most once: a
//!   worker claims `queued → running`, and a gateway that gives up waiting (`queue_timeout`,
//!   or its client left) moves `queued → failed`/`canceled`; whoever loses the race backs off.
//! - **Control**: a worker answers requests on `ccx.ctl.<job_id>` while it runs that job.
//! - **Liveness**: a worker writes a heartbeat to [`WORKERS_BUCKET`] every `heartbeat`; a
//!   gateway following a running job whose worker has been silent for 1.5 heartbeats asks it
//!   directly (`ccx.worker.<name>.ping`) and, without an answer, ends the job `lost` (a
//!   compare-and-swap `running → ended`, so the worker's own late end is not published).
//!
//! Nothing here is used unless `--nats` is given: a single server never connects.

mod control;
pub mod gateway;
mod job_ops;
mod liveness;
mod relay;
mod streams;
pub mod worker;

use crate::events::{Completion, Event, JobStatus};
use crate::protocol::{ControlType, ExecuteParams};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use gateway::Gateway;
pub use streams::Streams;
pub use worker::{WorkerOptions, run_worker};

/// The work-queue stream of jobs waiting for a worker.
pub const JOBS_STREAM: &str = "CCX_JOBS";
/// The stream that keeps every job's events.
pub const EVENTS_STREAM: &str = "CCX_EVENTS";
/// The key-value bucket of job records.
pub const JOBS_BUCKET: &str = "ccx_jobs";
/// The key-value bucket of worker heartbeats (key: worker name).
pub const WORKERS_BUCKET: &str = "ccx_workers";
/// The route of a job that requires no label.
pub const ANY_ROUTE: &str = "_any";
/// Most labels a request may require (a worker's consumers grow as 2^labels).
pub const MAX_REQUIRES: usize = 8;

/// How to reach NATS, and how long the cluster keeps things.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// How long a finished job's events and record are kept.
    pub events_max_age: Duration,
    /// How long a job may wait for a worker before it ends `failed`.
    pub queue_timeout: Duration,
    /// How often a worker says it is alive; a running job whose worker has been silent for
    /// 1.5 of these ends `lost` (so within two of them).
    pub heartbeat: Duration,
    /// Credentials and TLS (`[cluster]` of the config file).
    pub access: crate::config::ClusterConfig,
}

/// The last problem the NATS connection reported (authorization refused, TLS failed, …),
/// cleared on connecting; for `/health` and `-32009` messages.
pub type LastError = Arc<Mutex<Option<String>>>;

impl ClusterOptions {
    /// Defaults for everything but the address: events kept a day, a job waits at most five
    /// minutes for a worker.
    pub fn new(url: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            url: url.into(),
            events_max_age: Duration::from_secs(24 * 3600),
            queue_timeout: Duration::from_secs(300),
            heartbeat: Duration::from_secs(5),
            access: crate::config::ClusterConfig::default(),
        }
    }

    /// Connects with the configured credentials and TLS. The client keeps trying in the
    /// background when NATS is not up yet (a gateway serves and reports it; a worker waits);
    /// what NATS or TLS refused goes to `last_error`. Errors: a creds file that cannot be
    /// read or parsed.
    pub async fn connect(
        &self,
        name: &str,
        last_error: LastError,
    ) -> Result<async_nats::Client, String> {
        use crate::config::NatsAuth;
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let last_error = last_error.clone();
                async move {
                    let mut last = last_error.lock().expect("lock");
                    match event {
                        async_nats::Event::Connected => *last = None,
                        async_nats::Event::ServerError(e) => *last = Some(e.to_string()),
                        async_nats::Event::ClientError(e) => *last = Some(e.to_string()),
                        _ => {}
                    }
                }
            });
        let access = &self.access;
        options = match &access.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(t) => options.token(t.clone()),
            NatsAuth::Nkey(seed) => options.nkey(seed.clone()),
            NatsAuth::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| format!("NATS creds file {}: {e}", path.display()))?,
        };
        if let Some(ca) = &access.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &access.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options
            .require_tls(access.tls_required)
            .connect(&self.url)
            .await
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", self.url))
    }
}

/// One job on the work queue: what the client asked for and who asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: String,
    pub params: ExecuteParams,
    /// The client's address as the gateway saw it.
    pub peer: Option<String>,
    pub token_label: Option<String>,
    /// The gateway that queued it.
    pub gateway: String,
}

/// Where a job is in its life, as its record in [`JOBS_BUCKET`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    Queued,
    Running,
    /// Ended: `status` says how.
    Ended,
}

/// A job's record in [`JOBS_BUCKET`]; each change is a compare-and-swap on its revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: RecordState,
    pub command: String,
    pub requires: Vec<String>,
    /// How its `process.output` carries bytes (what its events in the stream hold).
    #[serde(default)]
    pub output_encoding: crate::protocol::OutputEncoding,
    pub gateway: String,
    /// The worker that claimed it.
    #[serde(default)]
    pub worker: Option<String>,
    /// Unix time, seconds.
    pub created: f64,
    #[serde(default)]
    pub started: Option<f64>,
    #[serde(default)]
    pub ended: Option<f64>,
    /// The final status (`completed`, `failed`, …) once ended.
    #[serde(default)]
    pub status: Option<crate::events::JobStatus>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    /// Set by `detach` (or the request's `detach`): the job outlives its client.
    #[serde(default)]
    pub detached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Runs begun so far (more than one when `retry_lost` re-queued it after its worker died).
    #[serde(default)]
    pub attempts: u32,
    /// The worker's registry record of the job, written when it ends (absent when the
    /// worker keeps no registry, or the job never reached one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<crate::protocol::JobRecord>>,
}

impl JobRecord {
    /// The record `get_job` and `list_jobs` give: the worker's own for an ended job that has
    /// one, else what the cluster's record knows.
    pub fn to_protocol(&self) -> crate::protocol::JobRecord {
        use crate::protocol::JobState;
        let state = match (self.state, self.status) {
            (RecordState::Queued, _) => JobState::Queued,
            (RecordState::Running, _) => JobState::Running,
            (RecordState::Ended, status) => status.map_or(JobState::Lost, JobState::from),
        };
        let mut r = match (&self.detail, self.state) {
            (Some(d), RecordState::Ended) => (**d).clone(),
            _ => {
                let mut r = crate::protocol::JobRecord::new(
                    self.job_id.as_str().into(),
                    state,
                    self.created,
                    self.command.clone(),
                );
                r.started_at = self.started;
                r.ended_at = self.ended;
                r.exit_code = self.exit_code;
                r.error.clone_from(&self.error);
                r
            }
        };
        r.status = state;
        r.output_encoding = self.output_encoding;
        r.detached |= self.detached;
        r.worker.clone_from(&self.worker);
        r.idempotency_key.clone_from(&self.idempotency_key);
        if r.error.is_none() {
            r.error.clone_from(&self.error);
        }
        r
    }
}

/// A request to the worker running a job, on `ccx.ctl.<job_id>` (core request/reply).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlMessage {
    /// `control`: pause, resume or cancel.
    Control {
        #[serde(rename = "type")]
        kind: ControlType,
    },
    /// `input` as the client sent it: bytes for its stdin or terminal, then end of input if
    /// `eof`.
    Input {
        data: String,
        encoding: Option<crate::protocol::OutputEncoding>,
        eof: bool,
    },
    /// `resize`: its terminal's new size.
    Resize { rows: u16, cols: u16 },
    /// `get_job`: its record in the worker's registry, as it is now.
    GetJob,
}

/// The worker's answer on `ccx.ctl.<job_id>`: the result (`null`, the bytes `input` took, or
/// the record), or the error as the client is to see it.
pub type ControlReply = Result<serde_json::Value, crate::protocol::ErrorObject>;

/// Checks `requires` and gives the job's route: the labels sorted, without repeats, joined
/// by `.`; [`ANY_ROUTE`] for none. Errors are meant for the client.
pub fn route(requires: &[String]) -> Result<String, String> {
    let mut labels: Vec<&str> = requires.iter().map(String::as_str).collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.len() > MAX_REQUIRES {
        return Err(format!(
            "`requires`: {} labels (at most {MAX_REQUIRES})",
            labels.len()
        ));
    }
    if let Some(bad) = labels.iter().find(|l| !valid_label(l)) {
        return Err(format!(
            "`requires`: `{bad}` is not a worker label of 1 to 32 of [A-Za-z0-9_-]"
        ));
    }
    Ok(if labels.is_empty() {
        ANY_ROUTE.to_string()
    } else {
        labels.join(".")
    })
}

/// A worker label: 1 to 32 of `[A-Za-z0-9_-]` (a NATS subject token), not [`ANY_ROUTE`].
pub fn valid_label(label: &str) -> bool {
    (1..=32).contains(&label.len())
        && label != ANY_ROUTE
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every route a worker with `labels` serves: one per subset of them (the empty one is
/// [`ANY_ROUTE`]).
pub fn routes(labels: &[String]) -> Vec<String> {
    let mut sorted: Vec<&str> = labels.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    (0u32..(1 << sorted.len()))
        .map(|mask| {
            let subset: Vec<&str> = (0..sorted.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| sorted[i])
                .collect();
            if subset.is_empty() {
                ANY_ROUTE.to_string()
            } else {
                subset.join(".")
            }
        })
        .collect()
}

/// The `process.completed` of a job that ended without a process of its own here (refused,
/// never claimed, canceled in the queue, lost), with `error` saying why.
pub fn end_event(job_id: &str, status: JobStatus, error: Option<String>) -> Event {
    let mut c = Completion::without_process(job_id.into(), status);
    c.error = error;
    Event::Completed(c)
}

/// The subject a job on `route` is published to.
pub fn job_subject(route: &str) -> String {
    format!("ccx.jobs.{route}")
}

/// The subject a job's events are published to.
pub fn event_subject(job_id: &str) -> String {
    format!("ccx.ev.{job_id}")
}

/// The subject the worker running a job answers `control` on.
pub fn control_subject(job_id: &str) -> String {
    format!("ccx.ctl.{job_id}")
}

/// The subject a worker answers "are you there?" on, with an empty reply.
pub fn ping_subject(worker: &str) -> String {
    format!("ccx.worker.{worker}.ping")
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_every_subset_and_match_route() {
        let labels = vec!["linux".to_string(), "gpu".to_string()];
        let mut all = routes(&labels);
        all.sort();
        assert_eq!(all, ["_any", "gpu", "gpu.linux", "linux"]);
        assert_eq!(route(&[]).unwrap(), "_any");
        assert_eq!(
            route(&["linux".into(), "gpu".into(), "gpu".into()]).unwrap(),
            "gpu.linux"
        );
        assert!(route(&["a.b".into()]).unwrap_err().contains("`a.b`"));
        assert!(route(&["_any".into()]).is_err());
        let many: Vec<String> = (0..9).map(|i| format!("l{i}")).collect();
        assert!(route(&many).unwrap_err().contains("at most 8"));
    }
}
