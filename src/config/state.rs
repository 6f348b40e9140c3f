//! `[state]`: where the job registry keeps its records and output spools, and how much.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable that overrides `[state] dir` (handy for containers and tests).
pub const STATE_DIR_ENV: &str = "CCX_STATE_DIR";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    enabled: Option<bool>,
    dir: Option<PathBuf>,
    max_output_bytes_per_job: Option<u64>,
    retain_jobs: Option<u64>,
    retain_days: Option<f64>,
    max_detached: Option<usize>,
}

/// `[state]`: the job registry (SQLite) and the output spools, under one directory.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// `false`: no registry, no spool (jobs live exactly as long as their connection, and
    /// `attach`, `list_jobs`, `get_job` answer `-32008`).
    pub enabled: bool,
    /// The state directory. Default: `$CCX_STATE_DIR`, else `$XDG_STATE_HOME/ccx`, else
    /// `~/.local/state/ccx`, else `/var/lib/ccx`.
    pub dir: PathBuf,
    /// Output kept per job, both streams together: the first half and the last half of this
    /// many bytes; the middle of a longer output is dropped (and a replay says so). Whole reads
    /// are kept, so each half may run over by up to one read (64 KiB).
    pub max_output_bytes_per_job: u64,
    /// Ended jobs kept (records and spools); the oldest go first.
    pub retain_jobs: u64,
    /// Ended jobs older than this are pruned.
    pub retain: Duration,
    /// Detached jobs running or queued at once; one more `execute {detach: true}` is refused.
    pub max_detached: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            enabled: true,
            dir: default_state_dir(),
            max_output_bytes_per_job: 256 << 20,
            retain_jobs: 10_000,
            retain: Duration::from_secs(7 * 24 * 3600),
            max_detached: 64,
        }
    }
}

/// The default state directory (see [`StateConfig::dir`]).
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env(STATE_DIR_ENV) {
        return dir;
    }
    env("XDG_STATE_HOME")
        .map(|d| d.join("ccx"))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/ccx")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/ccx"))
}

impl RawState {
    /// Validates into `cfg`; relative paths are relative to `base` (the config file's folder).
    pub(super) fn apply(self, base: &Path, cfg: &mut StateConfig) -> Result<()> {
        if let Some(e) = self.enabled {
            cfg.enabled = e;
        }
        if let Some(dir) = self.dir {
            // The environment still wins: it is how a container or a test points ccx elsewhere.
            if std::env::var_os(STATE_DIR_ENV).is_none_or(|v| v.is_empty()) {
                cfg.dir = base.join(dir);
            }
        }
        if let Some(n) = self.max_output_bytes_per_job {
            if n < 64 * 1024 {
                bail!("state.max_output_bytes_per_job must be at least 65536, got {n}");
            }
            cfg.max_output_bytes_per_job = n;
        }
        if let Some(n) = self.retain_jobs {
            if n == 0 {
                bail!("state.retain_jobs must be at least 1");
            }
            cfg.retain_jobs = n;
        }
        if let Some(d) = self.retain_days {
            if !d.is_finite() || d <= 0.0 || d > 36500.0 {
                bail!("state.retain_days must be a positive number of days, got {d}");
            }
            cfg.retain = Duration::from_secs_f64(d * 86400.0);
        }
        if let Some(n) = self.max_detached {
            cfg.max_detached = n;
        }
        Ok(())
    }
}
