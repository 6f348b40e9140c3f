//! The gateway (`ccx serve --nats`): the WebSocket face's `execute` and `control` go to the
//! cluster instead of this process's executor.
//!
//! `execute` checks the request, writes the job's record (`queued`) and answers `queued` at
//! once; a task per job then waits for the session's previous job to end (a connection's jobs
//! run one after another, as on a single server), puts the job on the work queue and relays
//! its events from the events stream until `process.completed`. It ends the job itself only
//! while nobody has claimed it, by compare-and-swap on the record: `failed` after
//! `queue_timeout`, `canceled` when its connection closed (a detached job is left to run) or a
//! client canceled it.

use super::liveness::{self, Liveness};
use super::relay::Relay;
use super::{
    ClusterOptions, JobMessage, JobRecord, RecordState, Streams, event_subject, now, route,
};
use crate::events::{Event, JobId};
use crate::executor::{JobRequest, Origin};
use crate::protocol::{
    AttachParams, AttachResult, ControlType, ExecuteParams, ExecuteResult, JobState, RpcError,
};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

/// How long a gateway waits for a worker's answer to `control`.
pub(super) const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a gateway's first connection to NATS.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// One per gateway process: the NATS connection and the streams, opened on first use (so a
/// gateway starts, and says what is wrong, while NATS is down).
pub struct Gateway {
    pub(super) opts: ClusterOptions,
    /// Names this gateway in job records.
    pub(super) name: String,
    pub(super) client: async_nats::Client,
    streams: tokio::sync::Mutex<Option<Streams>>,
    /// When each worker's heartbeat last arrived here.
    liveness: Liveness,
    /// What NATS last refused, if anything.
    last_error: super::LastError,
}

/// The gateway's state for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayHealth {
    pub nats: String,
    /// `connected`, `disconnected` or `pending` (never connected yet).
    pub state: String,
    /// What NATS last refused while not connected (authorization, TLS), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Gateway {
    /// Starts connecting to NATS (in the background: a NATS that is down is reported by
    /// [`Gateway::health`] and by each `execute`, not here).
    pub async fn connect(opts: ClusterOptions, name: String) -> Result<Arc<Gateway>, String> {
        let last_error = super::LastError::default();
        let client = opts
            .connect(&format!("ccx gateway {name}"), last_error.clone())
            .await?;
        let gateway = Arc::new(Gateway {
            opts,
            name,
            client,
            streams: tokio::sync::Mutex::new(None),
            liveness: Arc::default(),
            last_error,
        });
        // Opened now when NATS is up (so the sweeper runs before the first request), else
        // by the first request.
        let opening = gateway.clone();
        tokio::spawn(async move {
            let _ = opening.streams().await;
        });
        Ok(gateway)
    }

    pub fn health(&self) -> GatewayHealth {
        let state = match self.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Disconnected => "disconnected",
            async_nats::connection::State::Pending => "pending",
        };
        GatewayHealth {
            nats: self.opts.url.clone(),
            state: state.into(),
            error: self.refused(),
        }
    }

    /// What NATS last refused, while this gateway is not connected.
    fn refused(&self) -> Option<String> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            return None;
        }
        self.last_error.lock().expect("lock").clone()
    }

    /// The streams, opened on first use. Errors (`-32009`) say what is unreachable.
    pub(super) async fn streams(&self) -> Result<Streams, RpcError> {
        use async_nats::connection::State;
        // Never connected yet (a gateway that has just started): give it a moment. A
        // connection that was lost fails at once.
        let waiting = Instant::now();
        while self.client.connection_state() == State::Pending
            && waiting.elapsed() < FIRST_CONNECT_WAIT
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.client.connection_state() != State::Connected {
            let why = self.refused().map(|e| format!(": {e}")).unwrap_or_default();
            return Err(RpcError::ClusterUnavailable(format!(
                "not connected to NATS at {}{why}",
                self.opts.url
            )));
        }
        let mut slot = self.streams.lock().await;
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let s = Streams::open(self.client.clone(), &self.opts)
            .await
            .map_err(RpcError::ClusterUnavailable)?;
        // Every worker's last heartbeat first, then each new one.
        let beats = s
            .workers
            .watch_with_history(">")
            .await
            .map_err(|e| RpcError::ClusterUnavailable(format!("watching heartbeats: {e}")))?;
        liveness::follow_heartbeats(beats, Arc::downgrade(&self.liveness));
        tokio::spawn(liveness::sweep(
            s.clone(),
            self.client.clone(),
            Arc::downgrade(&self.liveness),
            self.opts.heartbeat,
        ));
        *slot = Some(s.clone());
        Ok(s)
    }

    /// A connection's view of the cluster: its jobs, one after another.
    pub fn session(
        self: &Arc<Self>,
        events: mpsc::Sender<Event>,
        origin: Origin,
    ) -> GatewaySession {
        GatewaySession {
            gw: self.clone(),
            events,
            origin,
            last: Mutex::new(None),
            pending: Arc::new(AtomicUsize::new(0)),
            current: Arc::new(Mutex::new(None)),
            closing: CancellationToken::new(),
        }
    }
}

/// One connection's jobs on the cluster.
pub struct GatewaySession {
    gw: Arc<Gateway>,
    events: mpsc::Sender<Event>,
    origin: Origin,
    /// Set when the session's newest job has ended; the next job waits for it.
    last: Mutex<Option<watch::Receiver<bool>>>,
    /// The session's jobs not ended yet.
    pending: Arc<AtomicUsize>,
    /// The job of this session on the queue or running now (for `control` without a job id).
    current: Arc<Mutex<Option<JobId>>>,
    /// Cancelled when the connection closes.
    closing: CancellationToken,
}

impl GatewaySession {
    /// The cluster this session's jobs go to (for what concerns any job: `get_job`, …).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Queues a job on the cluster. Answers `queued` (the job's events follow once the
    /// returned gate is dropped, so the reply goes first). Errors: bad params (`-32602`),
    /// NATS unreachable (`-32009`).
    pub async fn execute(
        &self,
        p: ExecuteParams,
    ) -> Result<(ExecuteResult, oneshot::Sender<()>), RpcError> {
        let requires = p.requires.clone().unwrap_or_default();
        let route = route(&requires).map_err(RpcError::InvalidParams)?;
        // The worker checks again, against its own limits; this catches the plain mistakes.
        let request = JobRequest::from_params(p.clone())
            .map_err(|e| RpcError::InvalidParams(e.to_string()))?;
        let streams = self.gw.streams().await?;
        let job_id: JobId = uuid::Uuid::now_v7().to_string().into();
        if let Some(key) = &request.idempotency_key
            && let Some(first) = streams
                .claim_key(key, &request.fingerprint(), &job_id)
                .await?
        {
            // Nothing runs: the reply names the first job (`attach` follows it).
            let (gate, _) = oneshot::channel();
            return Ok((
                ExecuteResult::Existing {
                    job_id: first.into(),
                },
                gate,
            ));
        }
        let record = JobRecord {
            job_id: job_id.to_string(),
            state: RecordState::Queued,
            command: request.command,
            requires,
            output_encoding: request.output_encoding,
            gateway: self.gw.name.clone(),
            worker: None,
            created: now(),
            started: None,
            ended: None,
            status: None,
            exit_code: None,
            error: None,
            detached: p.detach,
            idempotency_key: request.idempotency_key.clone(),
            attempts: 0,
            detail: None,
        };
        let body = serde_json::to_vec(&record).expect("records serialize");
        streams
            .records
            .create(&*job_id, body.into())
            .await
            .map_err(|e| RpcError::ClusterUnavailable(format!("writing the job's record: {e}")))?;
        let message = JobMessage {
            job_id: job_id.to_string(),
            params: p,
            peer: self.origin.peer.clone(),
            token_label: self.origin.token_label.clone(),
            gateway: self.gw.name.clone(),
        };
        let (done_tx, done_rx) = watch::channel(false);
        let before = self.last.lock().expect("lock").replace(done_rx);
        let position = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        let (gate, opened) = oneshot::channel();
        let relay = Relay {
            streams,
            client: self.gw.client.clone(),
            liveness: self.gw.liveness.clone(),
            heartbeat: self.gw.opts.heartbeat,
            queue_timeout: self.gw.opts.queue_timeout,
            message,
            route,
            events: self.events.clone(),
            closing: self.closing.clone(),
            current: self.current.clone(),
        };
        let pending = self.pending.clone();
        let span = info_span!("cluster_job", job = %job_id);
        tokio::spawn(
            async move {
                let _ = opened.await;
                relay.run(before).await;
                pending.fetch_sub(1, Ordering::Relaxed);
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        Ok((ExecuteResult::Queued { job_id, position }, gate))
    }

    /// `control` of the named job (any in the cluster), or without one of the session's job
    /// on the queue or running now.
    pub async fn control(
        &self,
        kind: ControlType,
        job_id: Option<&str>,
    ) -> Result<JobId, RpcError> {
        let current = self.current.lock().expect("lock").clone();
        match job_id.or(current.as_deref()) {
            Some(job_id) => self.gw.control(kind, job_id).await,
            None => Err(RpcError::NoSuchJob(
                "no job is running on this connection".into(),
            )),
        }
    }

    /// `attach` through the gateway: any job of the cluster, replayed from the events stream
    /// (from the start, or the output after `after_seq`) and followed to its end. The replay
    /// waits until the returned gate is dropped, so the reply goes first. Errors: no such job
    /// (`-32002`), an encoding other than the job's own (`-32602`: the stream holds the
    /// bytes as the job's events carried them), NATS unreachable (`-32009`).
    pub async fn attach(
        &self,
        p: AttachParams,
    ) -> Result<(AttachResult, oneshot::Sender<()>), RpcError> {
        let streams = self.gw.streams().await?;
        let Some((record, _)) = streams
            .record(&p.job_id)
            .await
            .map_err(RpcError::ClusterUnavailable)?
        else {
            return Err(RpcError::NoSuchJob(format!(
                "no job {} in the cluster",
                p.job_id
            )));
        };
        if p.output_encoding
            .is_some_and(|e| e != record.output_encoding)
        {
            return Err(RpcError::InvalidParams(format!(
                "through a cluster gateway, `attach` replays output in the job's own encoding ({:?})",
                record.output_encoding
            )));
        }
        let status = match (record.state, record.status) {
            (RecordState::Queued, _) => JobState::Queued,
            (RecordState::Running, _) => JobState::Running,
            (RecordState::Ended, status) => status.map_or(JobState::Lost, JobState::from),
        };
        let after = p.after_seq;
        let result = AttachResult {
            job_id: record.job_id.as_str().into(),
            status,
            next_seq: after.unwrap_or(0) + 1,
            last_seq: 0,
        };
        let consumer = streams
            .events
            .create_consumer(pull::OrderedConfig {
                filter_subject: event_subject(&record.job_id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| RpcError::ClusterUnavailable(format!("reading the job's events: {e}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| RpcError::ClusterUnavailable(format!("reading the job's events: {e}")))?;
        let (gate, opened) = oneshot::channel::<()>();
        let events = self.events.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let _ = opened.await;
            loop {
                let next = tokio::select! {
                    n = messages.next() => n,
                    _ = closing.cancelled() => return,
                };
                let Some(Ok(msg)) = next else { return };
                let Ok(event) = serde_json::from_slice::<Event>(&msg.payload) else {
                    continue;
                };
                let skip = match (&event, after) {
                    (Event::Started(_), Some(_)) => true,
                    (Event::Output(o), Some(after)) => o.seq <= after,
                    _ => false,
                };
                if skip {
                    continue;
                }
                let last = matches!(event, Event::Completed(_));
                if events.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok((result, gate))
    }

    /// The connection closed: jobs not detached are canceled (queued ones never start).
    pub fn close(&self) {
        self.closing.cancel();
    }
}
