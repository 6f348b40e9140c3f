//! The composition root: wires one process's parts — hook host, executor, reload loop, and
//! the faces (WebSocket server, MCP over stdio) — for `ccx serve` and `ccx mcp` alike. Nothing
//! imports this module but the CLI; the faces are handed what they need.
//!
//! A configuration and its hook set form one *generation*, swapped into the executor in one
//! step, so no job ever starts with a new config and old hooks. The first generation loads in
//! the background: the server listens at once, `/health` says `starting` with each hook's load
//! state, and a job that arrives meanwhile waits for its hooks (bounded by `[sandbox]
//! load_timeout`). A reload is all or nothing: a config that does not validate, or a hook set
//! in which a hook fails to load, leaves the previous generation running; the error shows in
//! the log, in `/health` and in `hook_status`. Settings that cannot change in a running
//! process are named in `restart_required`.

use crate::audit::AuditLog;
use crate::cluster::{Gateway, WorkerOptions, run_worker};
use crate::config::{self, Config};
use crate::executor::{Executor, HookChain};
use crate::hooks::{HookHost, HookSet, HostOptions};
use crate::mcp::{self, HookStatusFn, Local};
use crate::protocol::HookStatusReport;
use crate::registry::Registry;
use crate::server::{self, ServerState};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// The running process: executor, hook host and the generation in force.
pub struct App {
    pub exec: Arc<Executor>,
    pub host: Arc<HookHost>,
    /// The config as first loaded (settings that need a restart come from here).
    pub config: Config,
    current: Mutex<Generation>,
    /// Held while a hook set loads and is swapped in, so generations apply in order.
    loading: tokio::sync::Mutex<()>,
    /// The config file as read when watching began, before command-line overrides: a
    /// reloaded file is compared with it to name the settings that need a restart.
    baseline: Mutex<Option<Config>>,
}

/// The generation in force and how it got there.
struct Generation {
    /// 0 while the first generation loads; +1 with every applied reload.
    number: u64,
    /// `None` while the first generation loads.
    set: Option<Arc<HookSet>>,
    loaded_at: SystemTime,
    /// The last reload that was refused, if the newest attempt failed.
    reload_error: Option<String>,
    /// Config keys whose change in the file needs a restart.
    restart_required: Vec<String>,
    /// While the first generation loads: each hook that has finished, and its error if it
    /// failed (`/health` shows the rest as `loading`).
    first_load: std::collections::BTreeMap<String, Option<String>>,
}

impl App {
    /// Builds the hook host and the executor, and starts loading the first hook set in the
    /// background. Hooks that fail to load at start are kept in their failed state (each
    /// then fails per its `on_failure`). Returns before the hooks are loaded.
    pub fn start(config: Config, registry: Registry) -> Result<Arc<App>> {
        let sandbox = config.sandbox.clone();
        let host = HookHost::new(HostOptions {
            cache_dir: sandbox.cache_dir.clone(),
            pooling: sandbox.pooling,
            max_concurrent_calls: sandbox.max_concurrent_calls,
            cache_max_bytes: sandbox.cache_max_bytes,
            spare_instances: sandbox.spare_instances,
            spare_memory_bytes: sandbox.spare_memory_bytes,
        })
        .context("cannot start the hook runtime")?;
        if let Some(path) = &sandbox.decision_log {
            let secret = config.execution.secret_env.clone();
            let is_secret = move |name: &str| crate::config::is_secret(&secret, name);
            let log = crate::hooks::decision_log::DecisionLog::open(
                path.clone(),
                sandbox.decision_log_max_bytes,
                Arc::new(is_secret),
            )
            .with_context(|| format!("cannot open the decision log {}", path.display()))?;
            host.set_decision_log(log);
        }
        if registry.is_on() {
            // The hooks' kv stores live in the registry's database: hooks remember across
            // restarts.
            let seed = registry
                .kv_load()
                .into_iter()
                .filter_map(|(h, k, v)| Some((h, k, String::from_utf8(v).ok()?)))
                .collect();
            let reg = registry.clone();
            host.persist_kv(
                seed,
                Arc::new(move |hook: &str, key: &str, value: &str| {
                    reg.kv_store(hook, key, Some(value.as_bytes().to_vec()))
                }),
            );
        }
        let containment = crate::containment::Containment::start(&config.execution.containment)?;
        let audit = open_audit(&config.audit, &registry)?;
        let exec = Executor::serving(config.execution.clone(), registry.clone(), containment);
        // Every job's final record: to the audit log, and the jobs settled `lost` at the
        // start (told at once) to the metrics, which otherwise count jobs as the executor ends
        // them.
        let (metrics, jobs) = (exec.metrics().clone(), audit.clone());
        registry.on_job_end(Box::new(move |record| {
            if let Some(log) = &jobs {
                log.record("job", serde_json::to_value(record).unwrap_or_default());
            }
            if record.status == crate::protocol::JobState::Lost {
                metrics.job_lost();
            }
        }));
        if let Some(log) = audit {
            exec.set_audit(log);
        }
        exec.registry()
            .spawn_pruner(std::time::Duration::from_secs(600));
        let app = Arc::new(App {
            exec,
            host,
            current: Mutex::new(Generation {
                number: 0,
                set: None,
                loaded_at: SystemTime::now(),
                reload_error: None,
                restart_required: Vec::new(),
                first_load: Default::default(),
            }),
            loading: tokio::sync::Mutex::new(()),
            baseline: Mutex::new(None),
            config,
        });
        let first = app.clone();
        tokio::spawn(async move {
            let _loading = first.loading.lock().await;
            let progress = first.clone();
            let observer = move |hook: &str, result: Result<(), &str>| {
                progress
                    .current
                    .lock()
                    .expect("generation lock")
                    .first_load
                    .insert(hook.to_string(), result.err().map(str::to_owned));
            };
            let set = match load_set(&first.host, &first.config, observer).await {
                Ok(set) => set,
                Err(e) => {
                    error!(cause = %format!("{e:#}"), "hook loading failed");
                    Arc::new(HookSet::load(&first.host, &[]))
                }
            };
            for (hook, err) in set.load_errors() {
                error!(%hook, cause = %err, "hook failed to load");
            }
            first.install(first.config.clone(), set);
            info!(
                hooks = first.config.hooks.len(),
                pooling = first.host.pooling(),
                "hooks loaded; ready"
            );
        });
        Ok(app)
    }

    /// Applies a validated config: loads its hook set and swaps config and hooks in together
    /// if every enabled hook loaded; otherwise keeps the previous generation and records why.
    pub async fn apply(&self, new: Config) -> Result<()> {
        let _loading = self.loading.lock().await;
        let set = match load_set(&self.host, &new, |_: &str, _: Result<(), &str>| {}).await {
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
        let restart = {
            let baseline = self.baseline.lock().expect("baseline lock");
            restart_required(baseline.as_ref().unwrap_or(&self.config), &new)
        };
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "these settings changed in the config file; they take effect after a restart"
            );
        }
        self.current
            .lock()
            .expect("generation lock")
            .restart_required = restart;
        let hooks = new.hooks.len();
        let number = self.install(new, set);
        self.exec.metrics().reload(true);
        info!(generation = number, hooks, "configuration reloaded");
        Ok(())
    }

    /// Makes `config` and `set` the generation in force, in one step; returns its number.
    fn install(&self, config: Config, set: Arc<HookSet>) -> u64 {
        let mut cur = self.current.lock().expect("generation lock");
        cur.number += 1;
        // Before any job can reach the set: its decisions are logged with the number.
        set.set_generation(cur.number);
        // The old generation's spares go now; jobs still running on it instantiate.
        if let Some(old) = cur.set.replace(set.clone()) {
            old.retire();
        }
        cur.loaded_at = SystemTime::now();
        cur.reload_error = None;
        let chain = Arc::new(HookChain::new(
            set,
            config.sandbox.tail_bytes,
            config.execution.secret_env.clone(),
        ));
        self.exec.set_generation(config.execution, Some(chain));
        cur.number
    }

    fn refuse(&self, msg: String) -> anyhow::Error {
        self.exec.metrics().reload(false);
        let msg = format!("reload refused, previous hooks stay active: {msg}");
        error!("{msg}");
        self.current.lock().expect("generation lock").reload_error = Some(msg.clone());
        anyhow::anyhow!(msg)
    }

    /// Records a config file that failed to parse or validate.
    fn config_error(&self, err: &anyhow::Error) {
        self.exec.metrics().reload(false);
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
        let baseline = Config::load(&path).map(|mut c| {
            c.apply_token_env();
            c
        });
        *self.baseline.lock().expect("baseline lock") = baseline.ok();
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

    /// The hooks' state for `hook_status`, `/hooks` and `/health`.
    pub fn status(&self) -> HookStatusReport {
        let cur = self.current.lock().expect("generation lock");
        let hooks: Vec<Value> = match &cur.set {
            Some(set) => set
                .status()
                .iter()
                .map(|h| serde_json::to_value(h).unwrap_or(Value::Null))
                .collect(),
            None => self
                .config
                .hooks
                .iter()
                .map(|h| match cur.first_load.get(&h.name) {
                    _ if !h.enabled => json!({"name": h.name, "path": h.path, "state": "disabled"}),
                    None => json!({"name": h.name, "path": h.path, "state": "loading"}),
                    Some(None) => json!({"name": h.name, "path": h.path, "state": "loaded"}),
                    Some(Some(e)) => {
                        json!({"name": h.name, "path": h.path, "state": "failed", "error": e})
                    }
                })
                .collect(),
        };
        let loaded_at = cur
            .loaded_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        HookStatusReport {
            enabled: hooks.iter().any(|h| h["state"] == "loaded"),
            state: if cur.set.is_some() {
                "ready"
            } else {
                "starting"
            }
            .into(),
            hooks_configured: hooks.len(),
            generation: cur.number,
            loaded_at,
            reload_error: cur.reload_error.clone(),
            restart_required: cur.restart_required.clone(),
            config_file: self.config.source.as_ref().map(|p| p.display().to_string()),
            pooling: self.host.pooling(),
            cache_dir: self.host.cache_dir().map(|p| p.display().to_string()),
            spare_memory_bytes: self.host.spare_memory().0 as u64,
            spare_memory_budget_bytes: self.host.spare_memory().1 as u64,
            hooks,
        }
    }

    /// The status source handed to the faces.
    fn status_fn(self: &Arc<Self>) -> HookStatusFn {
        let app = self.clone();
        Arc::new(move || app.status())
    }

    /// The state the WebSocket server shares between connections, reporting these hooks.
    pub fn server_state(self: &Arc<Self>) -> Arc<ServerState> {
        ServerState::new(
            self.exec.clone(),
            self.config.server.clone(),
            self.config.source.clone(),
            Some(self.status_fn()),
        )
    }

    /// `ccx serve`: serves on `listener` (already bound) until `shutdown`, reloading the
    /// config as it changes. With `gateway` (`--nats`), clients' jobs go to the cluster's
    /// workers instead of this process's executor.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        gateway: Option<Arc<Gateway>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let stop = CancellationToken::new();
        self.spawn_watcher(stop.clone());
        let mut state = self.server_state();
        if let Some(gateway) = gateway {
            state = state.with_gateway(gateway);
        }
        let result = server::serve(listener, state, shutdown).await;
        stop.cancel();
        result
    }

    /// `ccx worker`: runs jobs from the cluster's work queue with this process's executor and
    /// hooks until `shutdown`, reloading the config as it changes; then cancels what still
    /// runs and publishes its end.
    pub async fn work(
        self: &Arc<Self>,
        opts: WorkerOptions,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let stop = CancellationToken::new();
        self.spawn_watcher(stop.clone());
        let stopping = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        run_worker(self.exec.clone(), opts, stop).await
    }

    /// The executor every face of this app drives.
    pub fn executor(&self) -> &Arc<Executor> {
        &self.exec
    }

    /// `ccx mcp --config …`: the MCP tools on stdin/stdout, jobs run by this process's
    /// executor, reloading the config as it changes.
    pub async fn serve_mcp_stdio(self: &Arc<Self>) -> Result<()> {
        let stop = CancellationToken::new();
        self.spawn_watcher(stop.clone());
        let backend = Arc::new(Local::new(self.exec.clone(), Some(self.status_fn())));
        let grace = self.exec.config().kill_grace;
        let result = mcp::serve_stdio(backend, self.config.server.mcp.clone(), grace).await;
        stop.cancel();
        result
    }
}

/// The keys of `new` that differ from `running` and cannot change without a restart: the
/// listener and who may connect, the MCP face's settings, and the hook runtime's engine-wide
/// options. (`[execution]`, `[[hooks]]` and the per-job `[sandbox]` keys apply at once.)
fn restart_required(running: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&running.server, &new.server);
    let (s, t) = (&running.sandbox, &new.sandbox);
    [
        ("server.listen", a.listen != b.listen),
        ("server.token", a.token != b.token),
        ("server.tokens", a.tokens != b.tokens),
        ("server.max_sessions", a.max_sessions != b.max_sessions),
        (
            "server.max_frame_bytes",
            a.max_frame_bytes != b.max_frame_bytes,
        ),
        (
            "server.allowed_origins",
            a.allowed_origins != b.allowed_origins,
        ),
        (
            "server.watch_interval",
            a.watch_interval != b.watch_interval,
        ),
        ("mcp", a.mcp != b.mcp),
        ("metrics", a.metrics != b.metrics),
        ("audit", running.audit != new.audit),
        ("trace", running.trace != new.trace),
        ("state", running.state != new.state),
        (
            "execution.containment",
            running.execution.containment != new.execution.containment,
        ),
        ("sandbox.cache_dir", s.cache_dir != t.cache_dir),
        ("sandbox.pooling", s.pooling != t.pooling),
        (
            "sandbox.max_concurrent_calls",
            s.max_concurrent_calls != t.max_concurrent_calls,
        ),
        (
            "sandbox.cache_max_mb",
            s.cache_max_bytes != t.cache_max_bytes,
        ),
        (
            "sandbox.spare_instances",
            s.spare_instances != t.spare_instances,
        ),
        (
            "sandbox.spare_memory_mb",
            s.spare_memory_bytes != t.spare_memory_bytes,
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect()
}

/// Loads `config`'s hooks in parallel, off the async threads (compiling is CPU work);
/// `observer` hears of each hook as it finishes.
async fn load_set(
    host: &Arc<HookHost>,
    config: &Config,
    observer: impl Fn(&str, Result<(), &str>) + Send + Sync + 'static,
) -> Result<Arc<HookSet>> {
    let host = host.clone();
    let specs = config.hooks.clone();
    let set = tokio::task::spawn_blocking(move || HookSet::load_observed(&host, &specs, &observer))
        .await
        .context("hook loading panicked")?;
    Ok(Arc::new(set))
}

/// The key under which the state store keeps the last hash of the audit file at `path`.
pub fn audit_hash_key(path: &std::path::Path) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("audit_last_hash:{}", path.display())
}

/// Opens the audit log of `[audit]` (`None` when it is off), continuing the chain from the
/// hash the state store kept (the caller has every job's final record written to it). Errors: the
/// file cannot be created or read (the message names it).
fn open_audit(cfg: &crate::audit::AuditConfig, registry: &Registry) -> Result<Option<AuditLog>> {
    let Some(path) = &cfg.path else {
        return Ok(None);
    };
    let key = audit_hash_key(path);
    let log = AuditLog::open(cfg, registry.meta_get(&key))
        .with_context(|| format!("cannot open the audit log {}", path.display()))?;
    let reg = registry.clone();
    log.on_written(Box::new(move |hash: &str| reg.meta_set(&key, hash)));
    Ok(Some(log))
}
