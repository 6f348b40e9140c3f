//! One ccx process's moving parts, wired once for `ccx serve` and `ccx mcp` alike: the hook
//! host, the executor, and the reload loop that keeps the executor's configuration and hook
//! set in step with the config file and the hook files.
//!
//! A reload is all or nothing: a config that does not validate, or a hook set in which a hook
//! fails to load, leaves the previous generation running; the error shows in the log, in
//! `/health` and in `hook_status`.

use crate::config::{self, Config};
use crate::executor::{Executor, HookChain};
use crate::hooks::{HookHost, HookSet, HostOptions};
use crate::server::{HookStatusSource, ServerState};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The running process: executor, hook host and the current generation.
pub struct App {
    pub exec: Arc<Executor>,
    pub host: Arc<HookHost>,
    /// The config as first loaded (server settings that need a restart come from here).
    pub config: Config,
    current: Mutex<Generation>,
}

/// The hook set in force and how it got there.
struct Generation {
    number: u64,
    set: Arc<HookSet>,
    loaded_at: SystemTime,
    /// The last reload that was refused, if the newest attempt failed.
    reload_error: Option<String>,
    tail_bytes: usize,
}

impl App {
    /// Builds the hook host, loads the first hook set and the executor. Hooks that fail to
    /// load at start are kept in their failed state (each then fails per its `on_failure`).
    pub async fn start(config: Config) -> Result<Arc<App>> {
        let sandbox = config.sandbox.clone();
        let host = HookHost::new(HostOptions {
            cache_dir: sandbox.cache_dir.clone(),
            pooling: sandbox.pooling,
            max_concurrent_calls: sandbox.max_concurrent_calls,
            cache_max_bytes: sandbox.cache_max_bytes,
        })
        .context("cannot start the hook runtime")?;
        let set = load_set(&host, &config).await?;
        for (hook, err) in set.load_errors() {
            error!(%hook, cause = %err, "hook failed to load");
        }
        let chain = Arc::new(HookChain::new(set.clone(), sandbox.tail_bytes));
        let exec = Executor::new(config.execution.clone(), chain);
        info!(
            hooks = config.hooks.len(),
            pooling = host.pooling(),
            "hook runtime ready"
        );
        Ok(Arc::new(App {
            exec,
            host,
            current: Mutex::new(Generation {
                number: 1,
                set,
                loaded_at: SystemTime::now(),
                reload_error: None,
                tail_bytes: sandbox.tail_bytes,
            }),
            config,
        }))
    }

    /// Applies a validated config: loads its hook set and swaps it in if every enabled hook
    /// loaded; otherwise keeps the previous one and records why.
    pub async fn apply(&self, new: Config) -> Result<()> {
        let set = match load_set(&self.host, &new).await {
            Ok(set) => set,
            Err(e) => return Err(self.refuse(format!("{e:#}"))),
        };
        let errors = set.load_errors();
        if !errors.is_empty() {
            let msg = errors
                .iter()
                .map(|(h, e)| format!("hook `{h}`: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.refuse(msg));
        }
        if new.server.listen != self.config.server.listen
            || new.server.token != self.config.server.token
            || new.server.max_sessions != self.config.server.max_sessions
        {
            warn!("[server] settings changed; they take effect after a restart");
        }
        let mut cur = self.current.lock().expect("generation lock");
        cur.number += 1;
        cur.set = set.clone();
        cur.loaded_at = SystemTime::now();
        cur.reload_error = None;
        self.exec.set_config(new.execution.clone());
        self.exec
            .set_hooks(Arc::new(HookChain::new(set, cur.tail_bytes)));
        info!(
            generation = cur.number,
            hooks = new.hooks.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    fn refuse(&self, msg: String) -> anyhow::Error {
        let msg = format!("reload refused, previous hooks stay active: {msg}");
        error!("{msg}");
        self.current.lock().expect("generation lock").reload_error = Some(msg.clone());
        anyhow::anyhow!(msg)
    }

    /// Records a config file that failed to parse or validate.
    fn config_error(&self, err: &anyhow::Error) {
        let msg = format!("reload refused, previous configuration stays active: {err:#}");
        error!("{msg}");
        self.current.lock().expect("generation lock").reload_error = Some(msg);
    }

    /// Watches the config file (and every hook file it names) every `server.watch_interval`,
    /// and reloads on SIGHUP, until `stop` is canceled.
    pub fn spawn_watcher(self: &Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.config.source.clone() else {
            return;
        };
        let app = self.clone();
        let (tx, mut rx) = mpsc::channel(1);
        let watcher = tokio::spawn(config::watch_config(
            path,
            self.config.hooks.iter().map(|h| h.path.clone()).collect(),
            self.config.server.watch_interval,
            tx,
        ));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = rx.recv() => match next {
                        None => break,
                        Some(Ok(cfg)) => {
                            let _ = app.apply(cfg).await;
                        }
                        Some(Err(e)) => app.config_error(&e),
                    }
                }
            }
            watcher.abort();
        });
    }

    /// The state the WebSocket server shares between connections, reporting these hooks.
    pub fn server_state(self: &Arc<Self>) -> Arc<ServerState> {
        ServerState::new(
            self.exec.clone(),
            self.config.server.clone(),
            self.config.source.clone(),
            Some(self.clone()),
        )
    }

    /// The hooks' state for `hook_status`, `/hooks` and `/health`.
    pub fn status(&self) -> Value {
        let cur = self.current.lock().expect("generation lock");
        let hooks = cur.set.status();
        let loaded_at = cur
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        json!({
            "enabled": hooks.iter().any(|h| matches!(h.state, crate::hooks::HookState::Loaded)),
            "hooks_configured": hooks.len(),
            "generation": cur.number,
            "loaded_at": loaded_at,
            "reload_error": cur.reload_error,
            "config_file": self.config.source,
            "pooling": self.host.pooling(),
            "cache_dir": self.host.cache_dir(),
            "hooks": hooks,
        })
    }
}

impl HookStatusSource for App {
    fn hook_status(&self) -> Value {
        self.status()
    }
}

/// Loads `config`'s hooks off the async threads (compiling is CPU work).
async fn load_set(host: &Arc<HookHost>, config: &Config) -> Result<Arc<HookSet>> {
    let host = host.clone();
    let specs = config.hooks.clone();
    let set = tokio::task::spawn_blocking(move || HookSet::load(&host, &specs))
        .await
        .context("hook loading panicked")?;
    Ok(Arc::new(set))
}
