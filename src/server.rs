//! The HTTP side: the axum router (`/ws`, `/ws/mcp`, `/health`, `/healthz`, and MCP's
//! Streamable HTTP at `/mcp`, see [`crate::mcp`]), auth and Origin checks, and one session per
//! WebSocket connection.
//!
//! A session is two tasks around the socket (as in axum's chat example): the receive task
//! parses requests and calls the executor; the send task owns the write half. Two bounded
//! channels feed the send task — replies, and the executor's events — and it always takes a
//! waiting reply first. That is what orders "execute reply → process.started": the executor
//! holds a started job's events until the reply is queued. It also means a client's error
//! replies never wait behind megabytes of its own output.
//!
//! The server knows nothing of processes or wasm: it turns requests into executor calls and
//! events into notifications.

use crate::config::ServerConfig;
use crate::events::{Event, Stream};
use crate::executor::{Accepted, ExecError, Executor, JobRequest, Session};
use crate::protocol::{self, ControlParams, ExecuteParams, NoParams, RpcError};
use anyhow::{Result, bail};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// Events buffered per session before its jobs feel backpressure. With 64 KiB chunks this
/// bounds a session's queued output at about 4 MiB however slowly its client reads.
const EVENT_BUFFER: usize = 64;
/// Replies buffered per session; the receive task waits when they are not being sent.
const REPLY_BUFFER: usize = 16;
/// Frames above `max_frame_bytes` but below this many times it are read and answered with an
/// error; larger ones close the connection (1009) without being buffered.
const HARD_FRAME_FACTOR: usize = 4;

/// Where `hook_status`, `GET /hooks` and `/health` get the hooks' state from. The server only
/// passes the JSON along; it knows nothing of wasm.
pub trait HookStatusSource: Send + Sync {
    fn hook_status(&self) -> Value;
}

/// What a running server shares between its connections.
pub struct ServerState {
    pub exec: Arc<Executor>,
    hooks: Option<Arc<dyn HookStatusSource>>,
    pub config: ServerConfig,
    /// The config file the server was started with, reported by `/health`.
    pub config_file: Option<PathBuf>,
    /// One permit per connected session: `max_sessions` bounds them, and a client over the
    /// limit is told so (-32003) rather than left waiting.
    sessions: Arc<Semaphore>,
    active: AtomicUsize,
    started: Instant,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ServerState {
    pub fn new(
        exec: Arc<Executor>,
        config: ServerConfig,
        config_file: Option<PathBuf>,
        hooks: Option<Arc<dyn HookStatusSource>>,
    ) -> Arc<Self> {
        Arc::new(ServerState {
            exec,
            hooks,
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            config,
            config_file,
            active: AtomicUsize::new(0),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }
}

/// The router, with auth and Origin checks on every route but `/healthz`.
pub fn router(state: Arc<ServerState>) -> Router {
    let status_state = state.clone();
    let mcp = crate::mcp::http_service(
        state.exec.clone(),
        Some(Arc::new(move || status_state.hook_status())),
        state.config.mcp.clone(),
        state.config.token.is_some(),
        state.shutdown.child_token(),
    );
    let guarded = Router::new()
        .route("/ws", get(ws_handler))
        .route("/ws/mcp", get(ws_handler))
        .route("/health", get(health))
        .route("/hooks", get(hooks_page))
        .route_service("/mcp", mcp)
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(guarded)
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, cancels every job
/// (each still sends its terminal event) and returns once the sessions have closed, or after
/// the kill grace period and a little slack.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr()?;
    check_exposure(addr, state.config.token.is_some())?;
    info!(%addr, "listening");
    let token = state.shutdown.clone();
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = token.clone();
    // Small JSON frames must not wait for Nagle's algorithm (a 40 ms stall per reply).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stop.cancelled() => {}
        }
        stop.cancel();
    });
    server.await?;
    // Upgraded connections are ours to wait for, not axum's.
    state.tracker.close();
    let grace = state.exec.config().kill_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, state.tracker.wait())
        .await
        .is_err()
    {
        warn!("sessions still open after the shutdown grace period");
    }
    info!("stopped");
    Ok(())
}

/// Without a token, only loopback addresses may be served.
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> Result<()> {
    if !has_token && !addr.ip().is_loopback() {
        bail!(
            "refusing to listen on {addr} without an auth token: set server.token or \
             server.token_file in the config, or CCX_TOKEN, or listen on a loopback address"
        );
    }
    Ok(())
}

/// Auth (Bearer header or `?token=`) and the Origin check.
async fn guard(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.config.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return refuse(StatusCode::FORBIDDEN, "origin not allowed");
        }
    }
    if let Some(expected) = &state.config.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| {
                Query::<HashMap<String, String>>::try_from_uri(request.uri())
                    .ok()
                    .and_then(|Query(mut q)| q.remove("token"))
            });
        match presented {
            Some(p) if constant_time_eq(p.trim().as_bytes(), expected.as_bytes()) => {}
            Some(_) => return refuse(StatusCode::UNAUTHORIZED, "invalid token"),
            None => return refuse(StatusCode::UNAUTHORIZED, "missing token"),
        }
    }
    next.run(request).await
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// Compares without an early exit, so timing says nothing about where a guess went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl ServerState {
    fn hook_status(&self) -> Value {
        match &self.hooks {
            Some(src) => src.hook_status(),
            None => json!({"enabled": false, "hooks_configured": 0, "hooks": []}),
        }
    }
}

async fn hooks_page(State(state): State<Arc<ServerState>>) -> Json<Value> {
    Json(state.hook_status())
}

async fn health(State(state): State<Arc<ServerState>>) -> Json<Value> {
    let exec = state.exec.config();
    let hooks = state.hook_status();
    let count = |s: &str| {
        hooks["hooks"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|h| h["state"] == s).count())
    };
    Json(json!({
        "status": "healthy",
        "service": "ccx",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "active_sessions": state.active.load(Ordering::Relaxed),
        "max_sessions": state.config.max_sessions,
        "running_jobs": state.exec.running_jobs(),
        "limits": {
            "max_frame_bytes": state.config.max_frame_bytes,
            "max_queue": exec.max_queue,
            "default_timeout": exec.default_timeout.as_secs_f64(),
            "max_timeout": exec.max_timeout.as_secs_f64(),
            "kill_grace": exec.kill_grace.as_secs_f64(),
        },
        "config_file": state.config_file,
        "hooks": {
            "configured": hooks["hooks_configured"],
            "loaded": count("loaded"),
            "failed": count("failed"),
            "disabled": count("disabled"),
            "generation": hooks["generation"],
            "reload_error": hooks["reload_error"],
        },
    }))
}

async fn ws_handler(
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
    let reply = protocol::error_response(Value::Null, &err).to_string();
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

    let hello = protocol::notification(
        "connected",
        json!({
            "session_id": id,
            "version": env!("CARGO_PKG_VERSION"),
            "capabilities": protocol::CAPABILITIES,
        }),
    );
    let _ = reply_tx.send(Outbound::Text(hello.to_string())).await;

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
            Some(e) = events.recv() => Outbound::Text(event_json(&e)),
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
                let text = protocol::response(id, value).to_string();
                let _ = self.replies.send(Outbound::Text(text)).await;
                // Only now may the job's events go out.
                drop(accepted);
                return;
            }
            Err(err) => protocol::error_response(id, &err).to_string(),
        };
        let _ = self.replies.send(Outbound::Text(text)).await;
    }

    async fn reply_err(&self, id: Value, err: RpcError) {
        let text = protocol::error_response(id, &err).to_string();
        let _ = self.replies.send(Outbound::Text(text)).await;
    }

    /// Runs one method. The `Accepted` of an `execute` is handed back so its events wait
    /// until the reply is queued.
    async fn call(&self, req: protocol::Request) -> Result<(Value, Option<Accepted>), RpcError> {
        match req.method.as_str() {
            "execute" => {
                let p: ExecuteParams = protocol::params(req.params)?;
                let request =
                    JobRequest::new(p.command, p.timeout, p.cwd, p.env.unwrap_or_default())
                        .map_err(exec_error)?;
                let accepted = self.session.execute(request).await.map_err(exec_error)?;
                Ok((accepted.to_json(), Some(accepted)))
            }
            "control" => {
                let p: ControlParams = protocol::params(req.params)?;
                let job_id = self
                    .session
                    .control(p.kind, p.job_id.as_deref())
                    .await
                    .map_err(exec_error)?;
                let status = match p.kind {
                    protocol::ControlType::Pause => "paused",
                    protocol::ControlType::Resume => "resumed",
                    protocol::ControlType::Cancel => "canceled",
                };
                Ok((json!({"status": status, "job_id": job_id}), None))
            }
            "status" => {
                let _: NoParams = protocol::params(req.params)?;
                let status = self.session.status().await;
                Ok((
                    serde_json::to_value(status).map_err(|_| RpcError::Internal)?,
                    None,
                ))
            }
            "hook_status" => {
                let _: NoParams = protocol::params(req.params)?;
                Ok((self.state.hook_status(), None))
            }
            "pong" | "ping" => Ok((json!({}), None)),
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

#[derive(Serialize)]
struct Note<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
}

#[derive(Serialize)]
struct OutputParams<'a> {
    job_id: &'a str,
    #[serde(rename = "type")]
    stream: Stream,
    data: &'a str,
    seq: u64,
}

/// An event as the notification the predecessor's clients know.
fn event_json(event: &Event) -> String {
    fn note<P: Serialize>(method: &str, params: P) -> String {
        serde_json::to_string(&Note {
            jsonrpc: protocol::JSONRPC,
            method,
            params,
        })
        .expect("notifications serialize")
    }
    match event {
        Event::Output {
            job_id,
            stream,
            data,
            seq,
        } => note(
            "process.output",
            OutputParams {
                job_id,
                stream: *stream,
                data,
                seq: *seq,
            },
        ),
        Event::Started { info, .. } => note("process.started", info),
        Event::Paused { job_id } => note(
            "process.paused",
            json!({"job_id": job_id, "status": "paused"}),
        ),
        Event::Resumed { job_id } => note(
            "process.resumed",
            json!({"job_id": job_id, "status": "resumed"}),
        ),
        Event::Canceled { job_id } => note(
            "process.canceled",
            json!({"job_id": job_id, "status": "canceled"}),
        ),
        Event::HookWarning { job_id, warning } => {
            let mut params = warning.clone();
            if let Value::Object(map) = &mut params {
                map.insert("job_id".into(), json!(job_id));
            }
            note("hook.warning", params)
        }
        Event::Completed(c) => note("process.completed", c),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
