//! One WebSocket connection, as two tasks around the socket (as in axum's chat example): the
//! receive task parses requests and calls the executor; the send task owns the write half.
//! Two bounded channels feed the send task — replies, and the executor's events — and it
//! always takes a waiting reply first. That is what orders "execute reply → process.started":
//! the executor holds a started job's events until the reply is queued. It also means a
//! client's error replies never wait behind megabytes of its own output.

use super::ServerState;
use crate::cluster::gateway::GatewaySession;
use crate::events::{Event, JobId, JobNote, NoteStatus};
use crate::executor::{Closing, JobRequest, Origin, Session};
use crate::protocol::{
    self, AttachParams, Connected, ControlParams, DetachResult, ExecuteParams, JobList, JobRef,
    ListJobsParams, NoParams, Notification, RpcError,
};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

/// Events buffered per session before its jobs feel backpressure. With 64 KiB chunks this
/// bounds a session's queued output at about 4 MiB however slowly its client reads.
const EVENT_BUFFER: usize = 64;
/// Replies buffered per session; the receive task waits when they are not being sent.
const REPLY_BUFFER: usize = 16;
/// Frames above `max_frame_bytes` but below this many times it are read and answered with an
/// error; larger ones close the connection (1009) without being buffered.
const HARD_FRAME_FACTOR: usize = 4;

/// Each connection's WebSocket read buffer, in bytes.
const READ_BUFFER_BYTES: usize = 8 * 1024;

pub(super) async fn ws_handler(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    label: Option<axum::Extension<super::auth::TokenLabel>>,
    ws: WebSocketUpgrade,
) -> Response {
    let hard_limit = state
        .config
        .max_frame_bytes
        .saturating_mul(HARD_FRAME_FACTOR);
    let permit = state.sessions.clone().try_acquire_owned();
    let token = state.tracker.token();
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // tungstenite allocates its read buffer whole for each connection (128 KiB by
        // default): at 1,000 connections that alone was 128 MiB of the server's memory.
        // Requests are small; a large frame still arrives, in more reads.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let _token = token;
            match permit {
                Ok(permit) => {
                    let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
                    let span = info_span!("session", session = %id, %peer);
                    state.active.fetch_add(1, Ordering::Relaxed);
                    let origin = Origin {
                        peer: Some(peer.to_string()),
                        token_label: label.map(|axum::Extension(l)| l.0),
                    };
                    run_session(state.clone(), socket, id, origin)
                        .instrument(span)
                        .await;
                    state.active.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                }
                Err(_) => {
                    let body = serde_json::json!({
                        "detail": format!("{} sessions already open", state.max_sessions),
                    });
                    state
                        .exec
                        .refused("max_sessions", Some(&peer.to_string()), body);
                    refuse_session(socket, state.max_sessions).await
                }
            }
        })
}

async fn refuse_session(mut socket: WebSocket, max: usize) {
    let err = RpcError::SessionLimit(max);
    let reply = protocol::encode_error(&Value::Null, &err);
    let _ = socket.send(Message::Text(reply.into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1013,
            reason: "session limit reached".into(),
        })))
        .await;
}

/// What the receive task asks the send task to write.
enum Outbound {
    Text(String),
    /// The session is over: write the events already queued, then this close frame (if any),
    /// and stop.
    Finish(Option<(u16, &'static str)>),
}

async fn run_session(state: Arc<ServerState>, socket: WebSocket, id: Arc<str>, origin: Origin) {
    info!("connected");
    let (sink, stream) = socket.split();
    let (reply_tx, reply_rx) = mpsc::channel::<Outbound>(REPLY_BUFFER);
    let (event_tx, event_rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    let gateway =
        (state.gateway.as_ref()).map(|g| Arc::new(g.session(event_tx.clone(), origin.clone())));
    let session = state.exec.session(id.clone(), event_tx.clone(), origin);
    // Ends this connection's replays (`attach`) when it closes.
    let closing = CancellationToken::new();

    let hello = Notification::Connected(Connected {
        session_id: id.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: protocol::CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect(),
    });
    let _ = reply_tx
        .send(Outbound::Text(protocol::encode_notification(&hello)))
        .await;

    let mut send_task = tokio::spawn(send_loop(sink, reply_rx, event_rx).in_current_span());
    let receiver = Receiver {
        state: state.clone(),
        session: session.clone(),
        replies: reply_tx.clone(),
        events: event_tx,
        closing: closing.clone(),
        max_frame: state.config.max_frame_bytes,
        gateway: gateway.clone(),
    };
    let shutdown = state.shutdown.clone();
    let mut recv_task = tokio::spawn(
        async move {
            tokio::select! {
                why = receiver.run(stream) => why,
                _ = shutdown.cancelled() => Ending::Shutdown,
            }
        }
        .in_current_span(),
    );

    let ending = tokio::select! {
        r = &mut recv_task => r.unwrap_or(Ending::ClientGone),
        _ = &mut send_task => {
            recv_task.abort();
            Ending::ClientGone
        }
    };
    closing.cancel();
    // Cancel whatever still runs (but detached jobs, unless the server stops); each job's
    // terminal event is queued before this returns.
    let (scope, close) = match ending {
        Ending::Shutdown => (Closing::Everything, Some((1001, "server shutting down"))),
        Ending::TooLarge => (Closing::Disconnect, Some((1009, "frame too large"))),
        Ending::ClientGone => (Closing::Disconnect, None),
    };
    if let Some(g) = &gateway {
        g.close();
    }
    session.close(scope).await;
    drop(session);
    let _ = reply_tx.send(Outbound::Finish(close)).await;
    drop(reply_tx);
    // Let the send task flush the terminal events, but not wait forever on a dead client.
    if tokio::time::timeout(Duration::from_secs(5), &mut send_task)
        .await
        .is_err()
    {
        send_task.abort();
    }
    info!(?ending, "disconnected");
}

/// Why a session's receive side stopped.
#[derive(Debug)]
enum Ending {
    ClientGone,
    Shutdown,
    TooLarge,
}

async fn send_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut replies: mpsc::Receiver<Outbound>,
    mut events: mpsc::Receiver<Event>,
) {
    let mut close: Option<(u16, &'static str)> = None;
    loop {
        let out = tokio::select! {
            biased;
            Some(r) = replies.recv() => r,
            Some(e) = events.recv() => Outbound::Text(protocol::encode_notification(&e)),
            else => break,
        };
        let msg = match out {
            Outbound::Text(t) => Message::Text(t.into()),
            Outbound::Finish(frame) => {
                // The events queued now include every terminal event of the session's jobs;
                // a detached job's later events have nobody to go to.
                close = frame;
                while let Ok(e) = events.try_recv() {
                    let text = protocol::encode_notification(&e);
                    if sink.feed(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                break;
            }
        };
        // Batch writes while more is waiting; flush when the channels run dry.
        let result = if replies.is_empty() && events.is_empty() {
            sink.send(msg).await
        } else {
            sink.feed(msg).await
        };
        if let Err(e) = result {
            debug!(cause = %e, "write failed");
            return;
        }
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    let _ = sink.close().await;
}

/// The receive side of a session.
struct Receiver {
    state: Arc<ServerState>,
    session: Session,
    replies: mpsc::Sender<Outbound>,
    /// The session's event channel, for replays.
    events: mpsc::Sender<Event>,
    closing: CancellationToken,
    max_frame: usize,
    /// The cluster, when this server is a gateway (`ccx serve --nats`): jobs go there.
    gateway: Option<Arc<GatewaySession>>,
}

impl Receiver {
    async fn run(self, mut stream: futures_util::stream::SplitStream<WebSocket>) -> Ending {
        while let Some(msg) = stream.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Binary(b)) => {
                    self.reply_err(
                        Value::Null,
                        RpcError::InvalidRequest(format!(
                            "binary frames are not supported ({} bytes received); send JSON text",
                            b.len()
                        )),
                    )
                    .await;
                    continue;
                }
                Ok(Message::Close(_)) => return Ending::ClientGone,
                Ok(_) => continue,
                Err(e) => {
                    let too_large = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string());
                    if too_large.contains("too long") || too_large.contains("Space limit") {
                        warn!(cause = %too_large, "frame over the hard limit");
                        return Ending::TooLarge;
                    }
                    debug!(cause = %e, "read failed");
                    return Ending::ClientGone;
                }
            };
            if text.len() > self.max_frame {
                self.reply_err(
                    Value::Null,
                    RpcError::InvalidRequest(format!(
                        "frame of {} bytes is over the limit of {} bytes",
                        text.len(),
                        self.max_frame
                    )),
                )
                .await;
                continue;
            }
            match protocol::parse_request(&text) {
                Ok(req) => self.dispatch(req).await,
                Err((id, err)) => self.reply_err(id, err).await,
            }
        }
        Ending::ClientGone
    }

    async fn dispatch(&self, req: protocol::Request) {
        let id = req.id.clone();
        let result = self.call(req).await;
        // A request without an id is a notification: no reply, even on error.
        let Some(id) = id else { return };
        let text = match result {
            Ok((value, gate)) => {
                let text = protocol::encode_reply(&id, &value);
                let _ = self.replies.send(Outbound::Text(text)).await;
                // Only now may the job's events go out.
                drop(gate);
                return;
            }
            Err(err) => protocol::encode_error(&id, &err),
        };
        let _ = self.replies.send(Outbound::Text(text)).await;
    }

    async fn reply_err(&self, id: Value, err: RpcError) {
        let text = protocol::encode_error(&id, &err);
        let _ = self.replies.send(Outbound::Text(text)).await;
    }

    /// Runs one method and encodes its typed result. What comes back with it (the
    /// `Accepted` of an `execute`, the gate of an `attach`) is dropped once the reply is
    /// queued: the job's events wait until then.
    async fn call(
        &self,
        req: protocol::Request,
    ) -> Result<(Value, Option<Box<dyn Send>>), RpcError> {
        fn encode<T: serde::Serialize>(result: &T) -> Result<Value, RpcError> {
            serde_json::to_value(result).map_err(|_| RpcError::Internal)
        }
        let registry = self.state.exec.registry();
        match req.method.as_str() {
            "execute" => {
                let p: ExecuteParams = protocol::frame::params(req.params)?;
                if let Some(gateway) = &self.gateway {
                    let (result, gate) = gateway.execute(p).await?;
                    return Ok((encode(&result)?, Some(Box::new(gate))));
                }
                if p.requires.as_ref().is_some_and(|r| !r.is_empty()) {
                    return Err(RpcError::InvalidParams(
                        "`requires` names worker labels, and this server has no workers (it is not a cluster gateway: `ccx serve --nats`)".into(),
                    ));
                }
                let request = JobRequest::from_params(p)?;
                let accepted = self.session.execute(request).await?;
                Ok((encode(&accepted.to_result())?, Some(Box::new(accepted))))
            }
            "attach" => {
                let p: AttachParams = protocol::frame::params(req.params)?;
                if let Some(gateway) = &self.gateway {
                    let (result, gate) = gateway.attach(p).await?;
                    return Ok((encode(&result)?, Some(Box::new(gate))));
                }
                let mut replay = registry
                    .attach(&p.job_id, p.after_seq, p.output_encoding)
                    .await?;
                let result = encode(replay.result())?;
                let (gate, opened) = oneshot::channel::<()>();
                let events = self.events.clone();
                let closing = self.closing.clone();
                tokio::spawn(
                    async move {
                        let _ = opened.await;
                        loop {
                            let next = tokio::select! {
                                n = replay.next() => n,
                                _ = closing.cancelled() => None,
                            };
                            let Some(ev) = next else { break };
                            if events.send(ev).await.is_err() {
                                break;
                            }
                        }
                    }
                    .in_current_span(),
                );
                Ok((result, Some(Box::new(gate))))
            }
            "detach" => {
                let p: JobRef = protocol::frame::params(req.params)?;
                let job_id = match &self.gateway {
                    Some(g) => g.gateway().detach(&p.job_id).await?,
                    None => self.state.exec.detach(&p.job_id).await?,
                };
                Ok((
                    encode(&DetachResult {
                        job_id,
                        detached: true,
                    })?,
                    None,
                ))
            }
            "list_jobs" => {
                let p: ListJobsParams = protocol::frame::params(req.params)?;
                let jobs = match &self.gateway {
                    Some(g) => g.gateway().list_jobs(p.status, p.limit).await?,
                    None => registry.list(p.status, p.limit).await?,
                };
                Ok((encode(&JobList { jobs })?, None))
            }
            "get_job" => {
                let p: JobRef = protocol::frame::params(req.params)?;
                let record = match &self.gateway {
                    Some(g) => g.gateway().get_job(&p.job_id).await?,
                    None => registry.get(&p.job_id).await?,
                };
                Ok((encode(&record)?, None))
            }
            "control" => {
                let p: ControlParams = protocol::frame::params(req.params)?;
                let job_id = match (&self.gateway, p.job_id.as_deref()) {
                    (Some(g), id) => g.control(p.kind, id).await?,
                    (None, Some(id)) => self.state.exec.control(p.kind, id).await?,
                    (None, None) => self.session.control(p.kind, None).await?,
                };
                let status = match p.kind {
                    protocol::ControlType::Pause => NoteStatus::Paused,
                    protocol::ControlType::Resume => NoteStatus::Resumed,
                    protocol::ControlType::Cancel => NoteStatus::Canceled,
                };
                Ok((encode(&JobNote { job_id, status })?, None))
            }
            "input" => {
                let p: protocol::InputParams = protocol::frame::params(req.params)?;
                let job_id: JobId = p.job_id.as_str().into();
                let bytes = match &self.gateway {
                    Some(g) => g.gateway().input(p).await?,
                    None => {
                        let data = protocol::input::decode(&p.data, p.encoding)
                            .map_err(RpcError::InvalidParams)?;
                        self.state.exec.input(&p.job_id, data, p.eof).await? as u64
                    }
                };
                let result = protocol::InputResult { job_id, bytes };
                Ok((encode(&result)?, None))
            }
            "resize" => {
                let p: protocol::ResizeParams = protocol::frame::params(req.params)?;
                match &self.gateway {
                    Some(g) => g.gateway().resize(&p.job_id, p.rows, p.cols).await?,
                    None => {
                        self.state.exec.resize(&p.job_id, p.rows, p.cols).await?;
                    }
                }
                Ok((encode(&p)?, None))
            }
            "status" => {
                let _: NoParams = protocol::frame::params(req.params)?;
                Ok((encode(&self.session.status().await)?, None))
            }
            "hook_status" => {
                let _: NoParams = protocol::frame::params(req.params)?;
                Ok((encode(&self.state.hook_status())?, None))
            }
            "pong" | "ping" => Ok((encode(&NoParams {})?, None)),
            other => Err(RpcError::MethodNotFound(other.to_string())),
        }
    }
}
