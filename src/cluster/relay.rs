//! One job's path through the cluster as its gateway sees it ([`Relay`]): wait for the
//! connection's previous job, queue the job, relay its events to the end, and end it itself
//! while nobody has claimed it (queue timeout, cancel) or once its worker is gone (`lost`).

use super::gateway::CONTROL_TIMEOUT;
use super::liveness::{self, Liveness};
use super::{
    ControlMessage, EVENTS_STREAM, JobMessage, RecordState, Streams, control_subject, end_event,
    event_subject, job_subject,
};
use crate::events::{Event, JobId, JobStatus};
use crate::protocol::ControlType;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most runs of a `retry_lost` job (the first included).
const MAX_RUNS: u32 = 3;

/// How long a job's relay goes on after its client left and it was canceled.
const AFTER_CANCEL: Duration = Duration::from_secs(30);

/// Ends a job nobody has claimed (its record still `queued`) with `status`, and publishes its
/// `process.completed`. `false`: a worker claimed it first, or it had ended.
pub(super) async fn end_unclaimed(
    streams: &Streams,
    job_id: &str,
    status: JobStatus,
    error: Option<String>,
) -> bool {
    end_job(streams, job_id, RecordState::Queued, status, error).await
}

/// Ends a job whose record is still in state `from` with `status`, and publishes its
/// `process.completed`. `false`: the record had moved on.
async fn end_job(
    streams: &Streams,
    job_id: &str,
    from: RecordState,
    status: JobStatus,
    error: Option<String>,
) -> bool {
    let text = error.clone().unwrap_or_default();
    match streams.end_if(job_id, from, None, status, &text).await {
        Ok(true) => {
            if let Err(e) = streams
                .publish_event(&end_event(job_id, status, error))
                .await
            {
                warn!(job = job_id, cause = %e, "cannot publish the job's end");
            }
            true
        }
        Ok(false) => false,
        Err(e) => {
            warn!(job = job_id, cause = %e, "cannot end the unclaimed job");
            false
        }
    }
}

/// One job's path through the cluster, as its gateway sees it.
pub(super) struct Relay {
    pub(super) streams: Streams,
    pub(super) client: async_nats::Client,
    pub(super) liveness: Liveness,
    pub(super) heartbeat: Duration,
    pub(super) queue_timeout: Duration,
    pub(super) message: JobMessage,
    pub(super) route: String,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) closing: CancellationToken,
    pub(super) current: Arc<Mutex<Option<JobId>>>,
}

impl Relay {
    pub(super) async fn run(self, before: Option<watch::Receiver<bool>>) {
        let job_id = self.message.job_id.clone();
        // The session's previous job first.
        if let Some(mut before) = before {
            tokio::select! {
                _ = before.wait_for(|ended| *ended) => {}
                _ = self.closing.cancelled() => {}
            }
        }
        if self.closing.is_cancelled() && !self.detached().await {
            end_unclaimed(&self.streams, &job_id, JobStatus::Canceled, None).await;
            return;
        }
        *self.current.lock().expect("lock") = Some(job_id.as_str().into());
        self.follow().await;
        let mut current = self.current.lock().expect("lock");
        if current.as_deref() == Some(job_id.as_str()) {
            *current = None;
        }
    }

    /// Puts the job's message on the work queue and waits for JetStream to store it.
    async fn queue(&self) -> Result<(), String> {
        let body = serde_json::to_vec(&self.message).expect("jobs serialize");
        match self
            .streams
            .js
            .publish(job_subject(&self.route), body.into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Queues the job and relays its events until its end.
    async fn follow(&self) {
        let job_id = self.message.job_id.as_str();
        let queued = self.queue().await;
        if let Err(e) = queued {
            let error = format!("cannot queue the job: {e}");
            end_unclaimed(
                &self.streams,
                job_id,
                JobStatus::Failed,
                Some(error.clone()),
            )
            .await;
            let end = end_event(job_id, JobStatus::Failed, Some(error));
            let _ = self.events.send(end).await;
            return;
        }
        let consumer = self
            .streams
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: event_subject(job_id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => return self.lost_sight(&format!("{e}")).await,
            },
            Err(e) => return self.lost_sight(&format!("{e}")).await,
        };
        let mut queue_deadline = tokio::time::Instant::now() + self.queue_timeout;
        let mut started = false;
        let mut canceled_at: Option<tokio::time::Instant> = None;
        // Its client left, and it is detached: followed to its end all the same.
        let mut spared = false;
        // The worker running it, and when the relay saw it start.
        let mut running_on: Option<(String, Instant)> = None;
        let mut check = tokio::time::interval(self.heartbeat / 4);
        loop {
            tokio::select! {
                m = messages.next() => {
                    let msg = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            debug!(cause = %e, "event stream hiccup");
                            continue;
                        }
                        None => return self.lost_sight("the event stream ended").await,
                    };
                    let event: Event = match serde_json::from_slice(&msg.payload) {
                        Ok(e) => e,
                        Err(e) => {
                            warn!(cause = %e, "an event that does not parse; skipped");
                            continue;
                        }
                    };
                    if let Event::Started(s) = &event {
                        started = true;
                        running_on = s.worker.clone().map(|w| (w, Instant::now()));
                    }
                    let last = matches!(event, Event::Completed(_));
                    // A client that left gets nothing more; the job is followed to its end.
                    let _ = self.events.send(event).await;
                    if last {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(queue_deadline), if !started => {
                    started = true;
                    let error = format!(
                        "no worker took the job within {} s (`queue_timeout`); requires {:?}",
                        self.queue_timeout.as_secs_f64(),
                        self.message.params.requires.clone().unwrap_or_default()
                    );
                    // Its `process.completed` arrives through the stream like any other event.
                    end_unclaimed(&self.streams, job_id, JobStatus::Failed, Some(error)).await;
                }
                _ = self.closing.cancelled(), if canceled_at.is_none() && !spared => {
                    if self.detached().await {
                        spared = true;
                        continue;
                    }
                    canceled_at = Some(tokio::time::Instant::now());
                    if !end_unclaimed(&self.streams, job_id, JobStatus::Canceled, None).await {
                        let body = serde_json::to_vec(&ControlMessage::Control { kind: ControlType::Cancel })
                            .expect("serializes");
                        let answer = tokio::time::timeout(
                            CONTROL_TIMEOUT,
                            self.client.request(control_subject(job_id), body.into()),
                        )
                        .await;
                        debug!(?answer, "canceled at disconnect");
                    }
                }
                _ = check.tick(), if running_on.is_some() => {
                    let (worker, since) = running_on.clone().expect("checked");
                    if let Some(silent) = self.silent(&worker, since)
                        && !self.answers(&worker).await
                    {
                        running_on = None;
                        let error = format!(
                            "worker {worker} stopped sending heartbeats ({:.1} s silent, heartbeat {} s) while the job ran",
                            silent.as_secs_f64(),
                            self.heartbeat.as_secs_f64()
                        );
                        if self.message.params.retry_lost && self.requeue(&worker).await {
                            warn!(job = job_id, %worker, "{error}; queued again (`retry_lost`)");
                            started = false;
                            queue_deadline = tokio::time::Instant::now() + self.queue_timeout;
                            continue;
                        }
                        end_job(&self.streams, job_id, RecordState::Running, JobStatus::Lost, Some(error)).await;
                    }
                }
                _ = sleep_until_some(canceled_at.map(|t| t + AFTER_CANCEL)) => return,
            }
        }
    }

    /// Whether the job is detached (by its request, or by `detach` through any gateway since).
    async fn detached(&self) -> bool {
        self.message.params.detach
            || matches!(self.streams.record(&self.message.job_id).await, Ok(Some((r, _))) if r.detached)
    }

    /// Puts a job whose worker died back on the queue (`retry_lost`), if its record still
    /// says that worker runs it and it has had fewer than [`MAX_RUNS`] runs. `false`: it
    /// is to end `lost` instead.
    async fn requeue(&self, worker: &str) -> bool {
        let job_id = self.message.job_id.as_str();
        loop {
            let Ok(Some((mut record, revision))) = self.streams.record(job_id).await else {
                return false;
            };
            if record.state != RecordState::Running
                || record.worker.as_deref() != Some(worker)
                || record.attempts >= MAX_RUNS
            {
                return false;
            }
            record.state = RecordState::Queued;
            record.worker = None;
            record.started = None;
            match self.streams.swap(&record, revision).await {
                Ok(Some(_)) => break,
                Ok(None) => continue,
                Err(_) => return false,
            }
        }
        if let Err(e) = self.queue().await {
            // Queued in its record only: the queue timeout ends it.
            warn!(job = job_id, cause = %e, "cannot queue the job again");
        }
        true
    }

    /// How long `worker` has been silent, if that is more than 1.5 heartbeats (`since`: when
    /// the job started; a gateway that lost NATS itself hears nobody and judges nobody).
    fn silent(&self, worker: &str, since: Instant) -> Option<Duration> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Counted again from when this gateway hears the cluster again.
            liveness::saw(&self.liveness, worker);
            return None;
        }
        let last = liveness::last_seen(&self.liveness, worker).map_or(since, |t| t.max(since));
        let silent = last.elapsed();
        (silent > self.heartbeat * 3 / 2).then_some(silent)
    }

    /// Asks a worker whose heartbeats stopped arriving whether it is there after all.
    async fn answers(&self, worker: &str) -> bool {
        liveness::answers(&self.client, &self.liveness, worker, self.heartbeat).await
    }

    /// The events of the job can no longer be read: the client hears so, as the job's end.
    async fn lost_sight(&self, cause: &str) {
        warn!(job = %self.message.job_id, cause, "cannot follow the job's events in {EVENTS_STREAM}");
        let error = format!("the gateway lost the job's events: {cause}");
        let end = end_event(&self.message.job_id, JobStatus::Lost, Some(error));
        let _ = self.events.send(end).await;
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
