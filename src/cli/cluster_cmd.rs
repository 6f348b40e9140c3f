//! `ccx worker` and the cluster flags of `ccx serve` (`--nats`): see `crate::cluster`.

use super::{config_path, open_file_limit, shutdown_signal};
use anyhow::{Context, Result, bail};
use ccx::Config;
use ccx::app::App;
use ccx::cluster::{ClusterOptions, Gateway, WorkerOptions, valid_label};
use ccx::registry::Registry;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the cluster is and how long it keeps things; shared by `serve` and `worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// NATS server with JetStream (`nats://127.0.0.1:4222`). With it, `ccx serve` is a cluster
    /// gateway: its clients' jobs run on `ccx worker`s.
    #[arg(long, env = "CCX_NATS")]
    pub nats: Option<String>,
    /// This process's name in job records and `process.started` (default: host name and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a job may wait for a worker before it ends `failed` (gateway).
    #[arg(long, env = "CCX_QUEUE_TIMEOUT", default_value_t = 300.0)]
    pub queue_timeout: f64,
    /// Seconds the cluster keeps a job's events and record (set by whoever creates the
    /// streams first).
    #[arg(long, default_value_t = 86400.0)]
    pub events_max_age: f64,
    /// Seconds between a worker's heartbeats; a gateway ends a running job `lost` when its
    /// worker has been silent for 1.5 of them. Give gateways and workers the same value.
    #[arg(long, env = "CCX_HEARTBEAT", default_value_t = 5.0)]
    pub heartbeat: f64,
}

impl ClusterArgs {
    /// The NATS address: `--nats` / `CCX_NATS`, else `[cluster] nats`.
    fn url(&self, config: &Config) -> Option<String> {
        self.nats.clone().or_else(|| config.cluster.nats.clone())
    }

    fn options(&self, url: &str, config: &Config) -> Result<ClusterOptions> {
        let secs = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                bail!("--{what} must be a positive number of seconds, got {v}")
            }
        };
        let mut opts = ClusterOptions::new(url);
        opts.queue_timeout = secs("queue-timeout", self.queue_timeout)?;
        opts.events_max_age = secs("events-max-age", self.events_max_age)?;
        opts.heartbeat = secs("heartbeat", self.heartbeat)?;
        opts.access = config.cluster.clone();
        Ok(opts)
    }

    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "ccx".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The gateway for `ccx serve`, when `--nats` (or `[cluster] nats`) is given.
    pub async fn gateway(&self, config: &Config) -> Result<Option<std::sync::Arc<Gateway>>> {
        let Some(url) = self.url(config) else {
            return Ok(None);
        };
        let gateway = Gateway::connect(self.options(&url, config)?, self.name())
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(nats = %url, "cluster gateway: jobs run on the workers");
        Ok(Some(gateway))
    }
}

/// `ccx worker` flags.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Labels this worker offers (`gpu,linux`); it takes jobs that require a subset of them.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Jobs run at once, at most.
    #[arg(long, default_value_t = 8)]
    max_jobs: usize,
    /// Config file (TOML): the executor settings, limits and hooks this worker's jobs run
    /// with. Without it, ./ccx.toml is used when present, else the defaults.
    #[arg(long, short, env = "CCX_CONFIG")]
    config: Option<PathBuf>,
}

/// `ccx worker`: runs the cluster's jobs here until SIGTERM or Ctrl-C.
pub async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    if let Some(bad) = args.labels.iter().find(|l| !valid_label(l)) {
        bail!("--labels: `{bad}` is not a label of 1 to 32 of [A-Za-z0-9_-]");
    }
    if args.labels.len() > ccx::cluster::MAX_REQUIRES {
        bail!("--labels: at most {} labels", ccx::cluster::MAX_REQUIRES);
    }
    if args.max_jobs == 0 {
        bail!("--max-jobs must be at least 1");
    }
    let shutdown = shutdown_signal()?;
    let path = config_path(args.config);
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let Some(url) = args.cluster.url(&config) else {
        bail!("`ccx worker` needs --nats URL (or CCX_NATS, or `[cluster] nats` in its config)");
    };
    open_file_limit(args.max_jobs);
    let registry = Registry::open(&config.state).context("the worker's job registry")?;
    let opts = WorkerOptions {
        cluster: args.cluster.options(&url, &config)?,
        name: args.cluster.name(),
        labels: args.labels,
        max_jobs: args.max_jobs,
    };
    let app = App::start(config, registry.clone())?;
    app.work(opts, shutdown).await?;
    registry.flush().await;
    Ok(ExitCode::SUCCESS)
}
