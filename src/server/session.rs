//! One WebSocket connection, as two tasks around the socket (as in axum's chat example): the
//! receive task parses requests and calls the executor; the send task owns the write half.
//! Two bounded channels feed the send task — replies, and the executor's events — and it
//! always takes a waiting reply first. That is what orders "execute reply → process.started":
//! the executor holds a started job's events until the reply is queued. It also means a
//! client's error replies never wait behind megabytes of its own output.

use super::ServerState;
use crate::events::{Event, JobNote, NoteStatus};
use crate::executor::{Accepted, ExecError, JobRequest, Session};
use crate::protocol::{
    self, Connected, ControlParams, ExecuteParams, NoParams, Notification, RpcError,
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
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

/// Events buffered per session before its jobs feel backpressure. With 64 KiB chunks this
/// bounds a session's queued output at about 4 MiB however slowly its client reads.
const EVENT_BUFFER: usize = 64;
/// Replies buffered per session; the receive task waits when they are not being sent.
const REPLY_BUFFER: usize = 16;
/// Frames above `max_frame_bytes` but below this many times it are read and answered with an
/// error; larger ones close the connection (1009) without being buffered.
const HARD_FRAME_FACTOR: usize = 4;

pub(super) async fn ws_handler(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
        .on_upgrade(move |socket| async move {
            let _token = token;
            match permit {
                Ok(permit) => {
                    let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
                    let span = info_span!("session", session = %id, %peer);
                    state.active.fetch_add(1, Ordering::Relaxed);
                    run_session(state.clone(), socket, id)
                        .instrument(span)
                        .await;
                    state.active.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                }
                Err(_) => refuse_session(socket, state.config.max_sessions).await,
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
    Close(u16, &'static str),
}

async fn run_session(state: Arc<ServerState>, socket: WebSocket, id: Arc<str>) {
    info!("connected");
    let (sink, stream) = socket.split();
    let (reply_tx, reply_rx) = mpsc::channel::<Outbound>(REPLY_BUFFER);
    let (event_tx, event_rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    let session = state.exec.session(id.clone(), event_tx);

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
        max_frame: state.config.max_frame_bytes,
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
    // Cancel whatever still runs; each job's terminal event is queued before this returns.
    session.close().await;
    drop(session);
    let close = match ending {
        Ending::Shutdown => Some(Outbound::Close(1001, "server shutting down")),
        Ending::TooLarge => Some(Outbound::Close(1009, "frame too large")),
        Ending::ClientGone => None,
    };
    if let Some(close) = close {
        let _ = reply_tx.send(close).await;
    }
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
    // A requested close waits until every event (terminal ones included) has been written.
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
            Outbound::Close(code, reason) => {
                close = Some((code, reason));
                continue;
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
    max_frame: usize,
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
            Ok((value, accepted)) => {
                let text = protocol::encode_reply(&id, &value);
                let _ = self.replies.send(Outbound::Text(text)).await;
                // Only now may the job's events go out.
                drop(accepted);
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

    /// Runs one method and encodes its typed result. The `Accepted` of an `execute` is
    /// handed back so its events wait until the reply is queued.
    async fn call(&self, req: protocol::Request) -> Result<(Value, Option<Accepted>), RpcError> {
        fn encode<T: serde::Serialize>(result: &T) -> Result<Value, RpcError> {
            serde_json::to_value(result).map_err(|_| RpcError::Internal)
        }
        match req.method.as_str() {
            "execute" => {
                let p: ExecuteParams = protocol::frame::params(req.params)?;
                let request =
                    JobRequest::new(p.command, p.timeout, p.cwd, p.env.unwrap_or_default())
                        .map_err(exec_error)?;
                let accepted = self.session.execute(request).await.map_err(exec_error)?;
                Ok((encode(&accepted.to_result())?, Some(accepted)))
            }
            "control" => {
                let p: ControlParams = protocol::frame::params(req.params)?;
                let job_id = self
                    .session
                    .control(p.kind, p.job_id.as_deref())
                    .await
                    .map_err(exec_error)?;
                let status = match p.kind {
                    protocol::ControlType::Pause => NoteStatus::Paused,
                    protocol::ControlType::Resume => NoteStatus::Resumed,
                    protocol::ControlType::Cancel => NoteStatus::Canceled,
                };
                Ok((encode(&JobNote { job_id, status })?, None))
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

fn exec_error(e: ExecError) -> RpcError {
    match e {
        ExecError::Invalid(msg) => RpcError::InvalidParams(msg),
        ExecError::Denied { hook, reason, .. } => RpcError::CommandNotAllowed { hook, reason },
        ExecError::QueueFull(n) => RpcError::QueueFull(n),
        ExecError::NoSuchJob(msg) => RpcError::NoSuchJob(msg),
        ExecError::Closed => RpcError::InvalidRequest("the session is closing".into()),
        ExecError::HooksNotReady(msg) => RpcError::HooksNotReady(msg),
    }
}
