//! `ccx worker`: takes jobs from the work queue and runs each with this process's executor —
//! its own config, hooks, containment and limits — publishing every event the executor emits
//! to the job's subject.
//!
//! A worker pulls from one durable consumer per route it serves (each subset of its labels),
//! one message per pull and only while it has room (`max_jobs`), so a busy worker leaves jobs
//! to idle ones. For each job it claims the record (`queued → running`, compare-and-swap), runs
//! the job in a session of its own, keeps the queue message in progress while the job runs,
//! and ends by writing the record and acknowledging the message. A message whose record is not
//! `queued` any more (the gateway gave up on it, or another worker has it) is acknowledged
//! without running anything: a job runs at most once.

use super::{
    ClusterOptions, JobMessage, JobRecord, RecordState, Streams, control_subject, job_subject, now,
    routes,
};
use crate::events::{Completion, Event, JobStatus};
use crate::executor::{Accepted, Closing, ExecError, Executor, JobRequest, Origin};
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long a taken job's message may go without a sign of progress before JetStream gives
/// it to another worker; a running job sends one every third of it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one pull waits for a job before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Event publishes in flight per job before the worker waits for JetStream's acks.
const PUBLISH_WINDOW: usize = 64;

/// What `ccx worker` was started with.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub cluster: ClusterOptions,
    /// Names this worker in `process.started` and in job records.
    pub name: String,
    /// The labels it offers; a job runs here only if it requires a subset of them.
    pub labels: Vec<String>,
    /// Jobs run at once, at most.
    pub max_jobs: usize,
}

/// Runs jobs from the queue until `stop`, then cancels those still running and returns once
/// each has published its end. Errors: a NATS that cannot be reached at all.
pub async fn run_worker(
    exec: Arc<Executor>,
    opts: WorkerOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let refused = super::LastError::default();
    let client = opts
        .cluster
        .connect(&format!("ccx worker {}", opts.name), refused.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let streams = loop {
        match Streams::open(client.clone(), &opts.cluster).await {
            Ok(s) => break s,
            Err(e) => {
                let nats = refused.lock().expect("lock").clone();
                warn!(cause = %e, nats = nats.as_deref(), "JetStream is not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
        }
    };
    let worker = Arc::new(Worker {
        exec,
        client,
        streams,
        name: opts.name.clone(),
        room: Arc::new(Semaphore::new(opts.max_jobs.max(1))),
        tracker: TaskTracker::new(),
    });
    let beating = CancellationToken::new();
    tokio::spawn(heartbeat(worker.clone(), opts.clone(), beating.clone()));
    let pullers = TaskTracker::new();
    for route in routes(&opts.labels) {
        // `=` cannot be in a label, so two routes never share a consumer name.
        let name = format!("ccx-jobs-{}", route.replace('.', "="));
        let consumer = worker
            .streams
            .jobs
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: job_subject(&route),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("JetStream consumer {name}: {e}"))?;
        pullers.spawn(worker.clone().pull(consumer, stop.clone()));
    }
    info!(worker = %opts.name, labels = ?opts.labels, max_jobs = opts.max_jobs, "taking jobs");
    pullers.close();
    pullers.wait().await;
    // Stopping: what still runs is canceled, and its end published.
    worker.exec.shutdown().await;
    worker.tracker.close();
    worker.tracker.wait().await;
    beating.cancel();
    // Gone on purpose: nobody needs to wait for this worker's silence.
    let gone = worker.streams.workers.delete(&worker.name);
    let _ = tokio::time::timeout(Duration::from_secs(2), gone).await;
    Ok(())
}

/// Says every `heartbeat` that this worker is alive (its entry in the workers bucket), with
/// its labels and load, until `stop`.
async fn heartbeat(worker: Arc<Worker>, opts: WorkerOptions, stop: CancellationToken) {
    let mut tick = tokio::time::interval(opts.cluster.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Also answers a gateway that asks whether this worker is still there: on its own, never
    // behind a slow heartbeat write.
    match worker
        .client
        .subscribe(super::ping_subject(&worker.name))
        .await
    {
        Ok(mut pings) => {
            let (client, stop) = (worker.client.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let ping = tokio::select! {
                        p = pings.next() => p,
                        _ = stop.cancelled() => return,
                    };
                    let Some(ping) = ping else { return };
                    if let Some(to) = ping.reply {
                        let _ = client.publish(to, bytes::Bytes::new()).await;
                    }
                }
            });
        }
        Err(e) => warn!(cause = %e, "cannot answer pings"),
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let running = opts.max_jobs - worker.room.available_permits().min(opts.max_jobs);
        let beat = serde_json::json!({
            "labels": opts.labels,
            "max_jobs": opts.max_jobs,
            "running": running,
            "at": now(),
        });
        if let Err(e) = worker
            .streams
            .workers
            .put(&worker.name, beat.to_string().into())
            .await
        {
            debug!(cause = %e, "heartbeat not written");
        }
    }
}

struct Worker {
    exec: Arc<Executor>,
    client: async_nats::Client,
    streams: Streams,
    name: String,
    /// One permit per job running here (`max_jobs`).
    room: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl Worker {
    /// Takes jobs from one route's consumer while there is room, until `stop`.
    async fn pull(
        self: Arc<Self>,
        consumer: async_nats::jetstream::consumer::Consumer<pull::Config>,
        stop: CancellationToken,
    ) {
        loop {
            let permit = tokio::select! {
                p = self.room.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.cancelled() => return,
            };
            let pull = consumer
                .batch()
                .max_messages(1)
                .expires(PULL_EXPIRES)
                .messages();
            // With NATS gone the pull request waits for its timeout; a stop does not.
            let batch = tokio::select! {
                b = pull => b,
                _ = stop.cancelled() => return,
            };
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    warn!(cause = %e, "pulling a job failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            let next = tokio::select! {
                n = batch.next() => n,
                _ = stop.cancelled() => return,
            };
            match next {
                Some(Ok(msg)) => {
                    let me = self.clone();
                    self.tracker
                        .spawn(async move { me.take(msg, permit).await });
                }
                Some(Err(e)) => debug!(cause = %e, "pull ended"),
                None => {}
            }
        }
    }

    /// Claims and runs one job from its queue message.
    async fn take(self: Arc<Self>, msg: Message, _permit: OwnedSemaphorePermit) {
        let job: JobMessage = match serde_json::from_slice(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                warn!(cause = %e, "a queue message that is not a job; dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = info_span!("job", job = %job.job_id, worker = %self.name);
        self.run(job, Arc::new(msg)).instrument(span).await
    }

    async fn run(&self, job: JobMessage, msg: Arc<Message>) {
        let job_id = job.job_id.clone();
        let claimed = match self.claim(&job_id).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // Not claimed: JetStream will offer it again.
                warn!(cause = %e, "cannot claim the job");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        let Some(claim) = claimed else {
            debug!("the job is not queued any more; skipped");
            let _ = msg.ack().await;
            return;
        };
        let done = CancellationToken::new();
        let _stop_helpers = done.clone().drop_guard();
        tokio::spawn(keep_in_progress(msg.clone(), done.clone()));
        match self.client.subscribe(control_subject(&job_id)).await {
            Ok(sub) => {
                tokio::spawn(super::control::answer_control(
                    self.exec.clone(),
                    self.client.clone(),
                    sub,
                    job_id.clone(),
                    done.clone(),
                ));
            }
            Err(e) => warn!(cause = %e, "cannot take control requests for the job"),
        }

        let status = self.execute(job, claim, &done).await;
        if let Err(e) = msg.double_ack().await {
            warn!(cause = %e, "cannot acknowledge the job's queue message");
        }
        info!(?status, "ended");
    }

    /// Claims a job: only a `queued` record may become ours (`running` here). `Ok(None)`: it
    /// is not queued any more, or another worker claimed it first. A record changed
    /// otherwise meanwhile (`detach`) is read again.
    async fn claim(&self, job_id: &str) -> Result<Option<(JobRecord, u64)>, String> {
        loop {
            let Some((mut record, revision)) = self.streams.record(job_id).await? else {
                return Ok(None);
            };
            if record.state != RecordState::Queued {
                return Ok(None);
            }
            record.state = RecordState::Running;
            record.worker = Some(self.name.clone());
            record.started = Some(now());
            record.attempts += 1;
            if let Some(revision) = self.streams.swap(&record, revision).await? {
                return Ok(Some((record, revision)));
            }
        }
    }

    /// Writes the job's final record, if it is still ours: `false` when a gateway declared the
    /// job `lost` meanwhile (this worker was silent too long), in which case its own end must
    /// not be published — the job already has one. Other changes made while it ran (`detach`)
    /// are kept: the record is read again and the end written over it.
    async fn finish(&self, completion: &Completion, claim: &(JobRecord, u64)) -> bool {
        let (mut record, mut revision) = claim.clone();
        // The worker's own registry record of the job, read once.
        let detail = self
            .exec
            .registry()
            .get(&record.job_id)
            .await
            .ok()
            .map(|mut d| {
                d.worker = Some(self.name.clone());
                Box::new(d)
            });
        loop {
            record.state = RecordState::Ended;
            record.ended = Some(now());
            record.status = Some(completion.status);
            record.exit_code = completion.exit_code;
            record.error = completion.error.clone();
            record.detail.clone_from(&detail);
            match self.streams.swap(&record, revision).await {
                Ok(Some(_)) => return true,
                Ok(None) => {}
                Err(e) => {
                    warn!(cause = %e, "cannot write the job's final record");
                    return true;
                }
            }
            // Changed by someone else meanwhile: still running here?
            match self.streams.record(&record.job_id).await {
                Ok(Some((now, rev)))
                    if now.state == RecordState::Running
                        && now.worker.as_deref() == Some(self.name.as_str()) =>
                {
                    (record, revision) = (now, rev);
                }
                Ok(_) => {
                    warn!("the job was declared lost while it ran here; its end is not published");
                    return false;
                }
                Err(e) => {
                    warn!(cause = %e, "cannot write the job's final record");
                    return true;
                }
            }
        }
    }

    /// Runs the job in a session of its own and publishes its events, the last one once its
    /// record says it ended; returns its status.
    /// `control_done` is cancelled once the record says the job ended, before its end is
    /// published: a client that sees the end and sends `control` finds the record, not a
    /// worker that still answers for the job.
    async fn execute(
        &self,
        job: JobMessage,
        claim: (JobRecord, u64),
        control_done: &CancellationToken,
    ) -> JobStatus {
        let job_id: crate::events::JobId = job.job_id.as_str().into();
        let refused = |status: JobStatus, error: String| {
            let mut c = Completion::without_process(job_id.clone(), status);
            c.error = Some(error);
            c
        };
        let (tx, mut rx) = mpsc::channel::<Event>(64);
        let origin = Origin {
            peer: job.peer.clone(),
            token_label: job.token_label.clone(),
        };
        let session = self.exec.session(job_id.clone(), tx, origin);
        let accepted = match JobRequest::from_params(job.params) {
            Ok(mut request) => {
                request.job_id = Some(job_id.clone());
                // The gateway that queued it already held the key for it (a retried run
                // must not find its own first run here).
                request.idempotency_key = None;
                session.execute(request).await
            }
            Err(e) => Err(e),
        };
        let completion = match accepted {
            Err(ExecError::Denied { hook, reason, .. }) => {
                let mut c = Completion::without_process(job_id.clone(), JobStatus::Denied);
                c.hook = Some(hook);
                c.reason = Some(reason);
                Some(c)
            }
            Err(e) => Some(refused(JobStatus::Failed, e.to_string())),
            Ok(Accepted::Existing { job_id: first }) => Some(refused(
                JobStatus::Failed,
                format!("the idempotency key names job {first} on this worker"),
            )),
            Ok(accepted) => {
                // Lets the job's events flow (the executor holds them until then).
                drop(accepted);
                None
            }
        };
        let mut acks = VecDeque::new();
        let completion = match completion {
            Some(c) => c,
            None => loop {
                let Some(mut event) = rx.recv().await else {
                    // The session dropped its sender without an end: cannot happen while
                    // we hold the session, but never hang on it.
                    break refused(JobStatus::Failed, "the job's events ended early".into());
                };
                if let Event::Completed(c) = event {
                    break c;
                }
                if let Event::Started(s) = &mut event {
                    s.worker = Some(self.name.clone());
                }
                self.publish(&event, &mut acks).await;
            },
        };
        let ours = self.finish(&completion, &claim).await;
        control_done.cancel();
        if ours {
            self.publish(&Event::Completed(completion.clone()), &mut acks)
                .await;
        }
        for ack in acks {
            if let Err(e) = ack.await {
                warn!(cause = %e, "an event of the job was not stored");
            }
        }
        session.close(Closing::Everything).await;
        completion.status
    }

    /// Publishes one event, keeping at most [`PUBLISH_WINDOW`] unacknowledged.
    async fn publish(
        &self,
        event: &Event,
        acks: &mut VecDeque<async_nats::jetstream::context::PublishAckFuture>,
    ) {
        match self.streams.send_event(event).await {
            Ok(ack) => acks.push_back(ack),
            Err(e) => warn!(cause = %e, "cannot publish an event of the job"),
        }
        while acks.len() > PUBLISH_WINDOW {
            if let Some(ack) = acks.pop_front()
                && let Err(e) = ack.await
            {
                warn!(cause = %e, "an event of the job was not stored");
            }
        }
    }
}

/// Tells JetStream the job is still being worked on, every third of [`ACK_WAIT`], until `done`.
async fn keep_in_progress(msg: Arc<Message>, done: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ACK_WAIT / 3) => {}
            _ = done.cancelled() => return,
        }
        if let Err(e) = msg.ack_with(AckKind::Progress).await {
            debug!(cause = %e, "progress acknowledgement failed");
        }
    }
}
