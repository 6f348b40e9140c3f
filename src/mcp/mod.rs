//! The Model Context Protocol face of ccx, on the official Rust SDK (`rmcp`): the tools
//! `execute`, `execute_task_list` and `hook_status`, served over stdio by `ccx mcp` and over
//! Streamable HTTP at the server's `/mcp`.
//!
//! # Layout
//! - [`tools`]: the MCP server ([`CcxTools`]) — tool schemas, descriptions, result text and
//!   structured content, progress notifications, cancellation.
//! - [`backend`]: where jobs run. [`Local`] drives this process's [`Executor`] (the same
//!   job lifecycle as `ccx serve`, hooks and limits included); [`Remote`] runs them on a
//!   server through the one WebSocket [`crate::client::Client`] (`ccx mcp --url`). The tools
//!   see one trait.
//!
//! This face is handed what it needs (an executor, a hook-status source); the composition
//! root (`crate::app`) wires it, so nothing here imports the app.
//! - `output`: head-and-tail capture of a job's output, bounded by `[mcp] max_output_bytes`.
//!
//! Output is kept per stream (stdout and stderr separately), each cut to its first and last
//! `max_output_bytes / 2` bytes with the number of bytes left out stated.

pub mod backend;
pub mod job_ops;
mod job_tools;
mod output;
mod tasks;
pub mod tools;

pub use backend::{Backend, HookStatusFn, JobError, JobReport, JobSpec, Local, Remote};
pub use tools::{CcxTools, PROGRESS_META_KEY};

use crate::config::McpConfig;
use crate::executor::Executor;
use anyhow::{Context, Result};
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Streamable HTTP service mounted at `/mcp`: one [`CcxTools`] per MCP session, jobs run
/// by `exec`. Each MCP session holds one of the server's `sessions` permits for as long as it
/// lives, so `max_sessions` bounds WebSocket and MCP sessions together; a session that finds
/// none left is refused. `shutdown` ends every MCP session (and so cancels their jobs).
///
/// rmcp's own `Host` check (against DNS rebinding) stays on for a token-less server, which
/// only ever listens on loopback; with a token the server's auth guard is the protection and
/// the server may be reached under any name.
pub fn http_service(
    exec: Arc<Executor>,
    hook_status: Option<HookStatusFn>,
    config: McpConfig,
    has_token: bool,
    sessions: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> StreamableHttpService<CcxTools, LocalSessionManager> {
    let mut http = StreamableHttpServerConfig::default().with_cancellation_token(shutdown);
    if has_token {
        http = http.disable_allowed_hosts();
    }
    let backend: Arc<dyn Backend> = Arc::new(Local::new(exec, hook_status));
    StreamableHttpService::new(
        move || {
            let permit = sessions.clone().try_acquire_owned().map_err(|_| {
                std::io::Error::other("session limit reached: max_sessions sessions are open")
            })?;
            Ok(CcxTools::new(backend.clone(), config.clone()).holding(permit))
        },
        LocalSessionManager::default().into(),
        http,
    )
}

/// `ccx mcp --url …`: an MCP server on stdin/stdout that runs every job on the ccx server at
/// `url`.
pub async fn serve_stdio_remote(url: String, token: Option<String>) -> Result<()> {
    let backend = Arc::new(Remote::new(url, token));
    serve_stdio(backend, McpConfig::default(), Duration::from_secs(2)).await
}

/// Serves the tools on stdin/stdout until the client closes stdin (or SIGTERM/SIGINT arrives,
/// the next step of MCP's stdio shutdown); then cancels the calls still running and waits (up
/// to `grace` and a little slack) for their jobs' process groups to be gone. Logs go to
/// stderr: stdout carries the protocol.
pub async fn serve_stdio(
    backend: Arc<dyn Backend>,
    config: McpConfig,
    grace: Duration,
) -> Result<()> {
    let tools = CcxTools::new(backend, config);
    let calls = tools.calls().clone();
    let running = tools
        .serve(rmcp::transport::stdio_pipes())
        .await
        .context("MCP initialization failed")?;
    info!("MCP server ready on stdio");
    let stop = running.cancellation_token();
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("signal received; stopping");
        stop.cancel();
    });
    let reason = running.waiting().await.context("MCP service task failed")?;
    signals.abort();
    info!(?reason, "MCP service stopped");
    calls.close();
    if tokio::time::timeout(grace + Duration::from_secs(1), calls.wait())
        .await
        .is_err()
    {
        warn!("tool calls still running after the grace period");
    }
    Ok(())
}
