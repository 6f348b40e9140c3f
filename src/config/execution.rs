//! `[execution]`: how commands run, and how a job's processes are contained
//! ([`ContainmentConfig`]).

use super::{DEFAULT_PASS_ENV, DEFAULT_SECRET_ENV, seconds, secrets, valid_env_name};
use crate::protocol::Limits;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExecution {
    shell: Option<String>,
    default_timeout: Option<f64>,
    max_timeout: Option<f64>,
    kill_grace: Option<f64>,
    max_pause: Option<f64>,
    max_queue: Option<usize>,
    pass_env: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    secret_env: Option<Vec<String>>,
    containment: Option<String>,
    cgroup_parent: Option<String>,
    limits: Option<RawLimits>,
}

/// `[execution.limits]`: `default` and `max` tables with the keys of [`Limits`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    default: Option<Limits>,
    max: Option<Limits>,
}

/// `[execution.limits]`: what a job gets when it asks for nothing, and the most it may ask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `[execution.limits.default]`.
    pub default: Limits,
    /// `[execution.limits.max]`: a request above it is refused; a job that asks for nothing
    /// and has no default gets the maximum.
    pub max: Limits,
}

impl LimitsConfig {
    /// The limits a job runs under: each field from `asked`, else the default, else the
    /// maximum. Errors (for the client): a field of 0 or above the maximum.
    pub fn resolve(&self, asked: Option<Limits>) -> Result<Limits, String> {
        let asked = asked.unwrap_or_default();
        if let Some((name, _)) = asked.fields().into_iter().find(|(_, v)| *v == Some(0)) {
            return Err(format!("`limits.{name}` must be at least 1"));
        }
        if let Some((name, v, max)) = asked.above(&self.max) {
            return Err(format!(
                "`limits.{name}` = {v} is above the server's maximum of {max} (`[execution.limits.max]`)"
            ));
        }
        Ok(asked.or(self.default).or(self.max))
    }

    /// `limits` with each field lowered to the maximum, where there is one (a pre-hook's
    /// change is taken this way).
    pub fn clamp(&self, limits: Limits) -> Limits {
        let low = |v: Option<u64>, m: Option<u64>| match (v, m) {
            (Some(v), Some(m)) => Some(v.min(m)),
            (None, m) => m,
            (v, None) => v,
        };
        Limits {
            memory_mb: low(limits.memory_mb, self.max.memory_mb),
            pids: low(limits.pids, self.max.pids),
            cpu_seconds: low(limits.cpu_seconds, self.max.cpu_seconds),
            open_files: low(limits.open_files, self.max.open_files),
            file_size_mb: low(limits.file_size_mb, self.max.file_size_mb),
        }
    }
}

/// `[execution]`: how commands run.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub shell: String,
    /// Applied when a request sets no timeout.
    pub default_timeout: Duration,
    /// A request asking for more is refused.
    pub max_timeout: Duration,
    /// Time between SIGTERM and SIGKILL on cancel, timeout and shutdown.
    pub kill_grace: Duration,
    /// The longest a job may stay paused (PAUSE); then it ends `canceled` with that reason.
    /// Time paused does not count toward the timeout.
    pub max_pause: Duration,
    /// Jobs waiting behind the running one, per connection.
    pub max_queue: usize,
    /// Names of server environment variables passed to children; `*` passes all.
    pub pass_env: Vec<String>,
    /// Variables set for every child (a request's own `env` goes on top).
    pub env: BTreeMap<String, String>,
    /// How long a job waits for its generation's hooks to finish loading (`[sandbox]
    /// load_timeout`) before it is refused with `-32006`.
    pub hooks_load_timeout: Duration,
    /// Globs of variable names whose values are masked (`***`) wherever a request is stored
    /// or logged (job records); see [`DEFAULT_SECRET_ENV`].
    pub secret_env: Vec<glob::Pattern>,
    /// How a job's processes are kept together (and ended together).
    pub containment: ContainmentConfig,
    /// Per-job resource limits.
    pub limits: LimitsConfig,
}

/// `[execution] containment`: which mechanism holds a job's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContainmentMode {
    /// A cgroup per job where the server can make one, else a process group.
    #[default]
    Auto,
    /// A cgroup v2 per job; the server refuses to start without one.
    Cgroup,
    /// A process group per job, with the server as child subreaper.
    ProcessGroup,
}

/// `[execution] containment` and `cgroup_parent`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainmentConfig {
    pub mode: ContainmentMode,
    /// A cgroup (a path inside the v2 hierarchy, such as `/ccx.slice`) under which job
    /// cgroups are made; default: the server's own.
    pub cgroup_parent: Option<String>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            shell: "/bin/sh".into(),
            default_timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(24 * 3600),
            kill_grace: Duration::from_secs(2),
            max_pause: Duration::from_secs(3600),
            max_queue: 16,
            pass_env: DEFAULT_PASS_ENV.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            hooks_load_timeout: Duration::from_secs(60),
            secret_env: DEFAULT_SECRET_ENV
                .iter()
                .map(|s| glob::Pattern::new(s).expect("the default globs are valid"))
                .collect(),
            containment: ContainmentConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Applies a file's `[execution]` to `cfg`. Errors name the key.
pub(super) fn apply(cfg: &mut ExecConfig, e: RawExecution) -> Result<()> {
    if let Some(shell) = e.shell {
        if shell.is_empty() {
            bail!("execution.shell is empty");
        }
        cfg.shell = shell;
    }
    if let Some(t) = e.default_timeout {
        cfg.default_timeout = seconds("execution.default_timeout", t)?;
    }
    if let Some(t) = e.max_timeout {
        cfg.max_timeout = seconds("execution.max_timeout", t)?;
    }
    if cfg.default_timeout > cfg.max_timeout {
        bail!(
            "execution.default_timeout ({} s) is larger than execution.max_timeout ({} s)",
            cfg.default_timeout.as_secs_f64(),
            cfg.max_timeout.as_secs_f64()
        );
    }
    if let Some(t) = e.kill_grace {
        cfg.kill_grace = seconds("execution.kill_grace", t)?;
    }
    if let Some(t) = e.max_pause {
        cfg.max_pause = seconds("execution.max_pause", t)?;
    }
    if let Some(n) = e.max_queue {
        cfg.max_queue = n;
    }
    if let Some(list) = e.pass_env {
        cfg.pass_env = list;
    }
    if let Some(patterns) = e.secret_env {
        cfg.secret_env = secrets::secret_env(patterns)?;
    }
    if let Some(env) = e.env {
        if let Some(k) = env.keys().find(|k| !valid_env_name(k)) {
            bail!("execution.env: `{k}` is not a valid variable name");
        }
        cfg.env = env;
    }
    match e.containment.as_deref() {
        None | Some("auto") => cfg.containment.mode = ContainmentMode::Auto,
        Some("cgroup") => cfg.containment.mode = ContainmentMode::Cgroup,
        Some("process-group") => cfg.containment.mode = ContainmentMode::ProcessGroup,
        Some(other) => bail!(
            "execution.containment: `{other}` is not one of \"auto\", \"cgroup\", \"process-group\""
        ),
    }
    if let Some(parent) = e.cgroup_parent {
        if !parent.starts_with('/') || parent.split('/').any(|c| c == "..") {
            bail!(
                "execution.cgroup_parent: `{parent}` must be an absolute path inside the cgroup hierarchy, without `..`"
            );
        }
        cfg.containment.cgroup_parent = Some(parent);
    }
    if let Some(l) = e.limits {
        let (default, max) = (l.default.unwrap_or_default(), l.max.unwrap_or_default());
        for (table, limits) in [("default", &default), ("max", &max)] {
            if let Some((name, _)) = limits.fields().into_iter().find(|(_, v)| *v == Some(0)) {
                bail!("execution.limits.{table}.{name} must be at least 1 (leave it out for none)");
            }
        }
        if let Some((name, v, m)) = default.above(&max) {
            bail!(
                "execution.limits.default.{name} ({v}) is above execution.limits.max.{name} ({m})"
            );
        }
        cfg.limits = LimitsConfig { default, max };
    }
    Ok(())
}
