//! What a gateway does for any job of the cluster, wherever it runs: `control`, `input`,
//! `resize`, `detach`, `get_job` and `list_jobs`.
//!
//! A request for a running job goes to the worker running it (core request/reply on
//! `ccx.ctl.<job_id>`, answered with that worker's executor and registry); everything else is
//! read from, or changed in, the job's record in the records bucket.

use super::gateway::{CONTROL_TIMEOUT, Gateway};
use super::relay::end_unclaimed;
use super::{ControlMessage, ControlReply, JobRecord, RecordState, Streams, control_subject};
use crate::events::{JobId, JobStatus};
use crate::protocol::{self, ControlType, InputParams, JobState, RpcError};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// How long `list_jobs` may take to read the records bucket.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

impl Gateway {
    /// Asks the worker running `job_id`. `Ok(None)`: no worker runs it now (it is queued,
    /// has ended, or is unknown). Errors: the worker's own (as it gave them), or `-32009`
    /// when NATS or the worker cannot be reached.
    async fn ask(
        &self,
        streams: &Streams,
        job_id: &str,
        request: &ControlMessage,
    ) -> Result<Option<Value>, RpcError> {
        let body = serde_json::to_vec(request).expect("serializes");
        let asked = tokio::time::timeout(
            CONTROL_TIMEOUT,
            self.client.request(control_subject(job_id), body.into()),
        )
        .await;
        match asked {
            Ok(Ok(reply)) => {
                let reply: ControlReply = serde_json::from_slice(&reply.payload)
                    .map_err(|e| RpcError::ClusterUnavailable(format!("a worker's answer: {e}")))?;
                reply.map(Some).map_err(RpcError::Remote)
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
            Ok(Err(e)) => Err(RpcError::ClusterUnavailable(format!("control: {e}"))),
            // It may have ended just then; the record says.
            Err(_) => match record_state(streams, job_id).await {
                Some(RecordState::Ended) => Ok(None),
                _ => Err(RpcError::ClusterUnavailable(format!(
                    "the worker running job {job_id} did not answer within {} s",
                    CONTROL_TIMEOUT.as_secs()
                ))),
            },
        }
    }

    /// The error for a request that needs the job's worker when none answers for it.
    async fn not_running(&self, streams: &Streams, job_id: &str) -> RpcError {
        match streams.record(job_id).await {
            Err(e) => RpcError::ClusterUnavailable(e),
            Ok(None) => RpcError::NoSuchJob(format!("no job {job_id} in the cluster")),
            Ok(Some((r, _))) => match r.state {
                RecordState::Queued => {
                    RpcError::NoSuchJob(format!("job {job_id} has not started yet"))
                }
                RecordState::Running => RpcError::NoSuchJob(format!(
                    "no worker answers for job {job_id} (its worker {} may be gone)",
                    r.worker.as_deref().unwrap_or("?")
                )),
                RecordState::Ended => RpcError::NoSuchJob(format!(
                    "job {job_id} has already ended ({})",
                    r.to_protocol().status.as_str()
                )),
            },
        }
    }

    /// Pauses, resumes or cancels any job of the cluster, through the worker running it (or,
    /// for a cancel, the queue). Errors: no such job, ended, not started, NATS unreachable.
    pub async fn control(&self, kind: ControlType, job_id: &str) -> Result<JobId, RpcError> {
        let streams = self.streams().await?;
        if self
            .ask(&streams, job_id, &ControlMessage::Control { kind })
            .await?
            .is_some()
        {
            return Ok(job_id.into());
        }
        if kind == ControlType::Cancel
            && record_state(&streams, job_id).await == Some(RecordState::Queued)
        {
            if end_unclaimed(&streams, job_id, JobStatus::Canceled, None).await {
                return Ok(job_id.into());
            }
            // A worker claimed it meanwhile: ask it.
            return Box::pin(self.control(kind, job_id)).await;
        }
        Err(self.not_running(&streams, job_id).await)
    }

    /// `input` for a job running anywhere in the cluster: the bytes its worker took.
    pub async fn input(&self, p: InputParams) -> Result<u64, RpcError> {
        let streams = self.streams().await?;
        let request = ControlMessage::Input {
            data: p.data,
            encoding: p.encoding,
            eof: p.eof,
        };
        match self.ask(&streams, &p.job_id, &request).await? {
            Some(taken) => Ok(taken.as_u64().unwrap_or(0)),
            None => Err(self.not_running(&streams, &p.job_id).await),
        }
    }

    /// `resize` for a job running anywhere in the cluster.
    pub async fn resize(&self, job_id: &str, rows: u16, cols: u16) -> Result<(), RpcError> {
        let streams = self.streams().await?;
        let request = ControlMessage::Resize { rows, cols };
        match self.ask(&streams, job_id, &request).await? {
            Some(_) => Ok(()),
            None => Err(self.not_running(&streams, job_id).await),
        }
    }

    /// Marks a job detached in its record: the gateway following it does not cancel it when
    /// its client leaves. Errors: no such job, already ended, NATS unreachable.
    pub async fn detach(&self, job_id: &str) -> Result<JobId, RpcError> {
        let streams = self.streams().await?;
        loop {
            let (mut record, revision) = existing(&streams, job_id).await?;
            if record.state == RecordState::Ended {
                return Err(self.not_running(&streams, job_id).await);
            }
            if record.detached {
                return Ok(job_id.into());
            }
            record.detached = true;
            // Lost a race with a claim or an end: read it again.
            if streams
                .swap(&record, revision)
                .await
                .map_err(RpcError::ClusterUnavailable)?
                .is_some()
            {
                return Ok(job_id.into());
            }
        }
    }

    /// `get_job` for any job of the cluster: a running job's record from its worker's
    /// registry, as it is now; an ended one as its worker wrote it at the end; otherwise what
    /// the cluster's record knows.
    pub async fn get_job(&self, job_id: &str) -> Result<protocol::JobRecord, RpcError> {
        let streams = self.streams().await?;
        let (record, _) = existing(&streams, job_id).await?;
        if record.state == RecordState::Running
            && let Ok(Some(live)) = self.ask(&streams, job_id, &ControlMessage::GetJob).await
            && let Ok(mut live) = serde_json::from_value::<protocol::JobRecord>(live)
        {
            live.worker.clone_from(&record.worker);
            live.detached |= record.detached;
            return Ok(live);
        }
        Ok(record.to_protocol())
    }

    /// `list_jobs` over the whole cluster: every record in the bucket (kept for
    /// `events_max_age`), newest first, optionally of one state. `limit` as on a single
    /// server: default 100, at most 10000.
    pub async fn list_jobs(
        &self,
        status: Option<JobState>,
        limit: Option<usize>,
    ) -> Result<Vec<protocol::JobRecord>, RpcError> {
        let limit = limit.unwrap_or(100);
        if !(1..=10_000).contains(&limit) {
            return Err(RpcError::InvalidParams(format!(
                "`limit` must be between 1 and 10000, got {limit}"
            )));
        }
        let streams = self.streams().await?;
        let records = tokio::time::timeout(LIST_TIMEOUT, all_records(&streams))
            .await
            .map_err(|_| {
                RpcError::ClusterUnavailable(format!(
                    "reading the job records took over {} s",
                    LIST_TIMEOUT.as_secs()
                ))
            })??;
        let mut jobs: Vec<protocol::JobRecord> = records
            .iter()
            .map(JobRecord::to_protocol)
            .filter(|r| status.is_none_or(|s| s == r.status))
            .collect();
        jobs.sort_by(|a, b| b.created_at.total_cmp(&a.created_at));
        jobs.truncate(limit);
        Ok(jobs)
    }
}

/// A job's record and its revision. Errors: no such job (`-32002`), NATS unreachable.
async fn existing(streams: &Streams, job_id: &str) -> Result<(JobRecord, u64), RpcError> {
    streams
        .record(job_id)
        .await
        .map_err(RpcError::ClusterUnavailable)?
        .ok_or_else(|| RpcError::NoSuchJob(format!("no job {job_id} in the cluster")))
}

/// The state a job's record is in; `None`: no record, or it cannot be read.
async fn record_state(streams: &Streams, job_id: &str) -> Option<RecordState> {
    streams
        .record(job_id)
        .await
        .ok()
        .flatten()
        .map(|(r, _)| r.state)
}

/// Every job record in the bucket, read in one pass (the last value of each key).
pub(super) async fn all_records(streams: &Streams) -> Result<Vec<JobRecord>, RpcError> {
    let unavailable = |e: String| RpcError::ClusterUnavailable(format!("reading job records: {e}"));
    let mut records = Vec::new();
    let mut keys = streams
        .records
        .keys()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut ids = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| unavailable(e.to_string()))?;
        if !key.starts_with(super::streams::KEY_PREFIX) {
            ids.push(key);
        }
    }
    let mut reads = futures_util::stream::iter(ids)
        .map(|id| async move { streams.record(&id).await })
        .buffer_unordered(32);
    while let Some(read) = reads.next().await {
        if let Some((record, _)) = read.map_err(unavailable)? {
            records.push(record);
        }
    }
    Ok(records)
}
