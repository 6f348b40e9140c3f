//! The JetStream streams and key-value buckets every gateway and worker uses
//! ([`Streams`]): opened (created when missing), and the record and event operations on them.

use super::{
    ClusterOptions, EVENTS_STREAM, JOBS_BUCKET, JOBS_STREAM, JobRecord, RecordState,
    WORKERS_BUCKET, event_subject, now,
};
use crate::protocol::RpcError;
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// The streams and bucket every gateway and worker uses, created when missing (an existing
/// one is used as it is).
#[derive(Clone)]
pub struct Streams {
    pub js: jetstream::Context,
    pub jobs: stream::Stream,
    pub events: stream::Stream,
    pub records: kv::Store,
    pub workers: kv::Store,
}

impl Streams {
    /// Finds or creates them. Errors name what failed (NATS down, JetStream not enabled).
    pub async fn open(
        client: async_nats::Client,
        opts: &ClusterOptions,
    ) -> Result<Streams, String> {
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(5));
        let stream = |name: &'static str, subject: &str, retention| {
            js.get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                retention,
                storage: stream::StorageType::File,
                max_age: opts.events_max_age,
                ..Default::default()
            })
        };
        let jobs = stream(
            JOBS_STREAM,
            "ccx.jobs.>",
            stream::RetentionPolicy::WorkQueue,
        )
        .await
        .map_err(|e| format!("JetStream stream {JOBS_STREAM}: {e}"))?;
        let events = stream(EVENTS_STREAM, "ccx.ev.>", stream::RetentionPolicy::Limits)
            .await
            .map_err(|e| format!("JetStream stream {EVENTS_STREAM}: {e}"))?;
        let bucket = |name: &'static str, storage| {
            let js = js.clone();
            async move {
                match js.get_key_value(name).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_key_value(kv::Config {
                            bucket: name.into(),
                            history: 1,
                            max_age: opts.events_max_age,
                            storage,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("JetStream bucket {name}: {e}")),
                }
            }
        };
        let records = bucket(JOBS_BUCKET, stream::StorageType::File).await?;
        // Heartbeats matter only while they are fresh.
        let workers = bucket(WORKERS_BUCKET, stream::StorageType::Memory).await?;
        Ok(Streams {
            js,
            jobs,
            events,
            records,
            workers,
        })
    }

    /// A job's record and its revision; `None` when there is none.
    pub async fn record(&self, job_id: &str) -> Result<Option<(JobRecord, u64)>, String> {
        let entry = self
            .records
            .entry(job_id)
            .await
            .map_err(|e| format!("reading job record {job_id}: {e}"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
    }

    /// Replaces a record if it is still at `revision`, giving the new revision; `Ok(None)`:
    /// someone changed it first.
    pub async fn swap(&self, record: &JobRecord, revision: u64) -> Result<Option<u64>, String> {
        let body = serde_json::to_vec(record).expect("records serialize");
        match self
            .records
            .update(&record.job_id, body.into(), revision)
            .await
        {
            Ok(new) => Ok(Some(new)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(format!("updating job record {}: {e}", record.job_id)),
        }
    }

    /// Moves a record that is still in state `from` (and, given `worker`, still that
    /// worker's) to ended with `status` and `error` (compare-and-swap, read again after a
    /// change that kept its state); `Ok(false)`: it had moved on (a worker claimed it, or it
    /// ended).
    pub async fn end_if(
        &self,
        job_id: &str,
        from: RecordState,
        worker: Option<&str>,
        status: crate::events::JobStatus,
        error: &str,
    ) -> Result<bool, String> {
        loop {
            let Some((mut record, revision)) = self.record(job_id).await? else {
                return Ok(false);
            };
            if record.state != from || worker.is_some_and(|w| record.worker.as_deref() != Some(w)) {
                return Ok(false);
            }
            record.state = RecordState::Ended;
            record.ended = Some(now());
            record.status = Some(status);
            record.error = Some(error.to_string());
            if self.swap(&record, revision).await?.is_some() {
                return Ok(true);
            }
            // Changed meanwhile: claimed or ended (checked above), or only marked detached.
        }
    }

    /// Publishes one event of a job to its subject; the returned future resolves once
    /// JetStream has stored it.
    pub async fn send_event(
        &self,
        event: &crate::events::Event,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let job_id = event.job_id().map(|j| j.to_string()).unwrap_or_default();
        let body = serde_json::to_vec(event).expect("events serialize");
        self.js
            .publish(event_subject(&job_id), body.into())
            .await
            .map_err(|e| format!("publishing an event of job {job_id}: {e}"))
    }

    /// Publishes one event of a job and waits for JetStream to store it.
    pub async fn publish_event(&self, event: &crate::events::Event) -> Result<(), String> {
        self.send_event(event)
            .await?
            .await
            .map(|_| ())
            .map_err(|e| format!("storing an event of a job: {e}"))
    }

    /// Claims idempotency key `key` for `job_id` (an entry `key.<sha256 of key>` in the
    /// records bucket, made only if absent, so two gateways cannot both claim it).
    /// `Ok(None)`: the key is new, now `job_id`'s; `Ok(Some(id))`: job `id` holds it for the
    /// same request (`request_hash`); `-32602` when it holds it for another request.
    pub async fn claim_key(
        &self,
        key: &str,
        request_hash: &str,
        job_id: &str,
    ) -> Result<Option<String>, RpcError> {
        use sha2::{Digest, Sha256};
        let hex: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entry_key = format!("{KEY_PREFIX}{hex}");
        let unavailable = |e: String| RpcError::ClusterUnavailable(format!("idempotency key: {e}"));
        let held = KeyHolder {
            job_id: job_id.to_string(),
            request: request_hash.to_string(),
        };
        let body = serde_json::to_vec(&held).expect("serializes");
        match self.records.create(&entry_key, body.into()).await {
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(e.to_string())),
        }
        let entry = self
            .records
            .get(&entry_key)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable("its entry vanished".into()))?;
        let holder: KeyHolder =
            serde_json::from_slice(&entry).map_err(|e| unavailable(e.to_string()))?;
        if holder.request == request_hash {
            Ok(Some(holder.job_id))
        } else {
            Err(RpcError::InvalidParams(format!(
                "`idempotency_key` `{key}` was used for a different request (job {})",
                holder.job_id
            )))
        }
    }
}

/// Keys of the records bucket that hold an idempotency key's job, not a job record.
pub const KEY_PREFIX: &str = "key.";

/// The job an idempotency key names, and the fingerprint of the request it was used with.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyHolder {
    job_id: String,
    request: String,
}
