//! The WebSocket face: the axum router (`/ws`, `/ws/mcp`, `/health`, `/healthz`, `/hooks`,
//! `/metrics`, MCP's Streamable HTTP at `/mcp`, see [`crate::mcp`], and the dashboard at
//! `/ui`), auth and Origin checks, and one session per WebSocket connection.
//!
//! # Layout
//! - this file: what the server shares between connections ([`ServerState`]), the router,
//!   [`serve`] with its shutdown order, and the HTTP status pages.
//! - [`auth`]: token and Origin checks.
//! - `ui`: the dashboard's page, script and style sheet, compiled in; its data comes from the
//!   guarded routes.
//! - `session`: one connection — its receive task (parse, dispatch to the executor, reply)
//!   and its send task (replies first, then the executor's events, encoded as notifications).
//!
//! The server knows nothing of processes or wasm: it turns requests into executor calls and
//! events into notifications.

mod auth;
mod session;
mod throttle;
mod ui;

pub use auth::check_exposure;

use crate::config::ServerConfig;
use crate::executor::Executor;
use crate::mcp::HookStatusFn;
use crate::protocol::HookStatusReport;
use anyhow::Result;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router, middleware};
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// What a running server shares between its connections.
pub struct ServerState {
    pub exec: Arc<Executor>,
    hooks: Option<HookStatusFn>,
    pub config: ServerConfig,
    /// The config file the server was started with, reported by `/health`.
    pub config_file: Option<PathBuf>,
    /// One permit per connected session, WebSocket or MCP: `max_sessions` bounds them, and a
    /// client over the limit is told so (-32003) rather than left waiting.
    sessions: Arc<Semaphore>,
    /// `max_sessions` in effect: the configured one, lowered to what the open-file limit
    /// leaves room for (see [`crate::containment::nofile::session_room`]), so that a client past the limit is
    /// refused rather than left unaccepted.
    max_sessions: usize,
    /// WebSocket sessions open now (MCP sessions hold permits but are not counted here).
    active: AtomicUsize,
    started: Instant,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Failed authentication per peer address (429 past the limit).
    auth_throttle: throttle::AuthThrottle,
    /// Set when this server is a cluster gateway (`ccx serve --nats`): `execute` and
    /// `control` go to the cluster.
    pub gateway: Option<Arc<crate::cluster::Gateway>>,
}

impl ServerState {
    /// `hooks` reports the hooks' state for `hook_status`, `/hooks` and `/health`; `None`
    /// when the server runs without hooks.
    pub fn new(
        exec: Arc<Executor>,
        config: ServerConfig,
        config_file: Option<PathBuf>,
        hooks: Option<HookStatusFn>,
    ) -> Arc<Self> {
        let max_sessions = effective_max_sessions(config.max_sessions);
        Arc::new(ServerState {
            exec,
            hooks,
            sessions: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
            config,
            config_file,
            active: AtomicUsize::new(0),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            auth_throttle: throttle::AuthThrottle::default(),
            gateway: None,
        })
    }

    /// The same state, as a cluster gateway: jobs go to `gateway`'s workers.
    pub fn with_gateway(self: Arc<Self>, gateway: Arc<crate::cluster::Gateway>) -> Arc<Self> {
        let mut state = Arc::into_inner(self).expect("not shared yet");
        state.gateway = Some(gateway);
        Arc::new(state)
    }

    fn hook_status(&self) -> HookStatusReport {
        match &self.hooks {
            Some(f) => f(),
            None => HookStatusReport {
                state: "ready".into(),
                ..HookStatusReport::default()
            },
        }
    }
}

/// The router, with auth and Origin checks on every route but `/healthz` and the dashboard's
/// files (`/ui`, which hold no data: the page brings the token to the routes that do).
pub fn router(state: Arc<ServerState>) -> Router {
    let mcp = crate::mcp::http_service(
        state.exec.clone(),
        state.hooks.clone(),
        state.config.mcp.clone(),
        state.config.has_auth(),
        state.sessions.clone(),
        state.shutdown.child_token(),
    );
    let guarded = Router::new()
        .route("/ws", get(session::ws_handler))
        .route("/ws/mcp", get(session::ws_handler))
        .route("/health", get(health))
        .route("/hooks", get(hooks_page))
        .route("/metrics", get(metrics_page))
        .route_service("/mcp", mcp)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::slash))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
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
    check_exposure(addr, state.config.has_auth())?;
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
    let drained = async {
        state.tracker.wait().await;
        // Detached jobs whose connections are gone end too: a graceful stop leaves nothing.
        state.exec.shutdown().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        warn!("jobs still running after the shutdown grace period");
    }
    info!("stopped");
    Ok(())
}

/// `GET /metrics`: the Prometheus exposition ([`crate::metrics`]); 404 when `[metrics]
/// enabled = false`.
async fn metrics_page(
    axum::extract::State(state): axum::extract::State<Arc<ServerState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !state.config.metrics.enabled {
        return auth::refuse(axum::http::StatusCode::NOT_FOUND, "metrics are off");
    }
    let registry = state.exec.registry().health();
    let running = state.exec.running_jobs();
    let snapshot = crate::metrics::Snapshot {
        active_sessions: (state.max_sessions - state.sessions.available_permits()) as u64,
        running_jobs: running as u64,
        queued_jobs: state.exec.open_jobs().saturating_sub(running) as u64,
        detached_jobs: registry.detached_jobs as u64,
        spool_errors: registry.spool_errors,
        audit_write_errors: state.exec.audit().map(|a| a.health().write_errors),
        audit_dropped: state.exec.audit().map(|a| a.health().dropped),
        hooks: state.hook_status().hooks,
    };
    let body = state.exec.metrics().encode(snapshot);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

async fn hooks_page(
    axum::extract::State(state): axum::extract::State<Arc<ServerState>>,
) -> Json<HookStatusReport> {
    Json(state.hook_status())
}

/// `GET /health`.
#[derive(Serialize)]
struct Health {
    /// `starting` until every hook of the first configuration has loaded, then `healthy`.
    status: &'static str,
    service: &'static str,
    version: &'static str,
    uptime_seconds: f64,
    active_sessions: usize,
    max_sessions: usize,
    running_jobs: usize,
    limits: Value,
    config_file: Option<PathBuf>,
    hooks: HealthHooks,
    /// The job registry: its directory, why it is unavailable (if it is), spool failures.
    state: crate::registry::StateHealth,
    /// How jobs' processes are contained (`cgroup` or `process-group`), and why.
    containment: crate::containment::ContainmentHealth,
    /// The audit log, when `[audit]` is on: records written, lost, write errors.
    audit: Option<crate::audit::AuditHealth>,
    /// A cluster gateway's NATS connection (`ccx serve --nats`); absent on a single server.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::gateway::GatewayHealth>,
}

#[derive(Serialize)]
struct HealthHooks {
    configured: usize,
    loading: usize,
    loaded: usize,
    failed: usize,
    disabled: usize,
    generation: u64,
    reload_error: Option<String>,
    /// Config sections changed in the file that apply only after a restart.
    restart_required: Vec<String>,
    /// Each hook's name and load state (`loading`, `loaded`, `failed`, `disabled`).
    each: Vec<Value>,
}

async fn health(
    axum::extract::State(state): axum::extract::State<Arc<ServerState>>,
) -> Json<Health> {
    let exec = state.exec.config();
    let hooks = state.hook_status();
    let count = |s: &str| hooks.hooks.iter().filter(|h| h["state"] == s).count();
    let each = hooks
        .hooks
        .iter()
        .map(|h| {
            let mut entry = json!({"name": h["name"], "state": h["state"]});
            if let Some(e) = h.get("error").filter(|e| !e.is_null()) {
                entry["error"] = e.clone();
            }
            entry
        })
        .collect();
    let registry = state.exec.registry().health();
    let containment = state.exec.containment().health();
    let audit = state.exec.audit().map(|a| a.health());
    let cluster = state.gateway.as_ref().map(|g| g.health());
    let nats_down = cluster.as_ref().is_some_and(|c| c.state != "connected");
    Json(Health {
        containment,
        audit,
        cluster,
        status: if hooks.state == "starting" {
            "starting"
        } else if nats_down || (registry.enabled && registry.error.is_some()) {
            // Jobs run, but cannot be found again after their connection closes.
            "degraded"
        } else {
            "healthy"
        },
        service: "ccx",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        active_sessions: state.active.load(Ordering::Relaxed),
        max_sessions: state.max_sessions,
        running_jobs: state.exec.running_jobs(),
        limits: json!({
            "max_frame_bytes": state.config.max_frame_bytes,
            "max_queue": exec.max_queue,
            "default_timeout": exec.default_timeout.as_secs_f64(),
            "max_timeout": exec.max_timeout.as_secs_f64(),
            "kill_grace": exec.kill_grace.as_secs_f64(),
            // Per job: what a job gets when it asks for nothing, and the most it may ask
            // (how each is enforced: `containment.limits`).
            "job_default": exec.limits.default,
            "job_max": exec.limits.max,
        }),
        config_file: state.config_file.clone(),
        hooks: HealthHooks {
            configured: hooks.hooks_configured,
            loading: count("loading"),
            loaded: count("loaded"),
            failed: count("failed"),
            disabled: count("disabled"),
            generation: hooks.generation,
            reload_error: hooks.reload_error,
            restart_required: hooks.restart_required,
            each,
        },
        state: registry,
    })
}

/// `configured`, lowered (with a warning) to the sessions the open-file limit leaves room for.
fn effective_max_sessions(configured: usize) -> usize {
    match crate::containment::nofile::session_room() {
        Some(room) if room < configured => {
            warn!(
                configured,
                lowered_to = room,
                "max_sessions is lowered to what the open-file limit leaves room for: clients \
                 past it are refused with -32003; raise the hard limit (`ulimit -Hn`, \
                 LimitNOFILE= in a systemd unit) to allow more"
            );
            room
        }
        _ => configured,
    }
}
