// Over 500 lines: the raw TOML types and their one validation pass stay together, so every
// key's default, check and error message are read in one place (sections with logic of their
// own live in `execution`, `state`, `observe`, `secrets`, `cluster`).
//! The configuration file: raw TOML is parsed strictly (unknown keys are errors that name the
//! key and its line), then validated into [`Config`], the type the rest of ccx uses.
//!
//! Every value has a default, so an empty file (or no file at all) is a working configuration
//! that listens on loopback only.

use crate::hooks::{self, HookSpec, OnFailure};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cluster;
mod execution;
mod observe;
mod secrets;
mod state;
mod watch;
pub use cluster::{ClusterConfig, NATS_PASSWORD_ENV, NATS_TOKEN_ENV, NatsAuth};
pub use execution::{ContainmentConfig, ContainmentMode, ExecConfig, LimitsConfig};
pub use observe::{MetricsConfig, TraceConfig};
pub use secrets::{DEFAULT_SECRET_ENV, DEFAULT_TOKEN_LABEL, MASK, NamedToken, is_secret, mask_env};
pub use state::{STATE_DIR_ENV, StateConfig, default_state_dir};
pub use watch::watch_config;

/// Environment variable that supplies the auth token; it overrides the file's token.
pub const TOKEN_ENV: &str = "CCX_TOKEN";

/// Variables handed from the server's environment to children by default. Everything else —
/// credentials in particular — stays with the server unless the config asks for it.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR",
    "SHELL",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    execution: execution::RawExecution,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    hooks: Vec<RawHook>,
    #[serde(default)]
    mcp: RawMcp,
    #[serde(default)]
    state: state::RawState,
    #[serde(default)]
    metrics: observe::RawMetrics,
    #[serde(default)]
    audit: crate::audit::AuditConfig,
    #[serde(default)]
    trace: observe::RawTrace,
    #[serde(default)]
    cluster: cluster::RawCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    max_output_bytes: Option<usize>,
    progress_interval: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    cache_dir: Option<PathBuf>,
    cache: Option<bool>,
    tail_bytes: Option<usize>,
    pooling: Option<bool>,
    max_concurrent_calls: Option<u32>,
    load_timeout: Option<f64>,
    cache_max_mb: Option<u64>,
    decision_log: Option<PathBuf>,
    decision_log_max_mb: Option<u64>,
    spare_instances: Option<u32>,
    spare_memory_mb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: String,
    path: PathBuf,
    enabled: Option<bool>,
    fuel: Option<u64>,
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    on_failure: Option<OnFailure>,
    mode: Option<hooks::HookMode>,
    sha256: Option<String>,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    output: Option<RawOutput>,
    #[serde(default)]
    config: toml::Table,
}

/// `output = {granularity, max_line_bytes, flush_ms, job_fuel}` of a `[[hooks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    granularity: Option<hooks::Granularity>,
    max_line_bytes: Option<usize>,
    flush_ms: Option<u64>,
    job_fuel: Option<u64>,
}

/// `match = {programs, commands, regex}` of a `[[hooks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    commands: Vec<String>,
    regex: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_sessions: Option<usize>,
    max_frame_bytes: Option<usize>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    tokens: Option<Vec<secrets::RawToken>>,
    allowed_origins: Option<Vec<String>>,
    watch_interval: Option<f64>,
}

/// The validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The file this was read from, if any.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub execution: ExecConfig,
    pub sandbox: SandboxConfig,
    pub state: StateConfig,
    /// `[audit]`: the hash-chained audit log (off unless `path` is set).
    pub audit: crate::audit::AuditConfig,
    /// `[trace]`: OTLP export of job spans (off unless an endpoint is set).
    pub trace: TraceConfig,
    /// `[[hooks]]` in file order, paths made absolute.
    pub hooks: Vec<HookSpec>,
    /// `[cluster]`: how `ccx serve --nats` and `ccx worker` reach NATS.
    pub cluster: ClusterConfig,
}

/// `[mcp]`: how the MCP tools report jobs to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct McpConfig {
    /// Output kept per stream in a tool result: the first half and the last half of this
    /// many bytes; what lies between is left out and counted.
    pub max_output_bytes: usize,
    /// Shortest time between two progress notifications for one tool call.
    pub progress_interval: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            max_output_bytes: 32 * 1024,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// `[sandbox]`: the hook runtime as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each output stream's end handed to post-hooks.
    pub tail_bytes: usize,
    /// Use the pooling allocator when the machine allows it.
    pub pooling: bool,
    /// Hook calls running at once across all sessions.
    pub max_concurrent_calls: u32,
    /// Largest total size of the compiled-artifact cache; the least recently used entries
    /// are evicted past it.
    pub cache_max_bytes: u64,
    /// Where every hook decision is logged as JSON Lines (`[sandbox] decision_log`; `[hooks]`
    /// cannot be a table beside the `[[hooks]]` list); `None`: not logged.
    pub decision_log: Option<PathBuf>,
    /// Size at which the decision log is rotated.
    pub decision_log_max_bytes: u64,
    /// Fresh instances kept ready per hook so calls skip instantiation; 0: off.
    pub spare_instances: u32,
    /// Largest total linear memory of all spare instances, in bytes.
    pub spare_memory_bytes: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: hooks::default_cache_dir(),
            tail_bytes: 4096,
            pooling: true,
            max_concurrent_calls: 32,
            cache_max_bytes: 1 << 30,
            decision_log: None,
            decision_log_max_bytes: 64 << 20,
            spare_instances: 0,
            spare_memory_bytes: 256 << 20,
        }
    }
}

/// `[server]`: how clients reach ccx.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Concurrent WebSocket sessions; one more is refused with `-32003`.
    pub max_sessions: usize,
    /// Largest request frame accepted; a larger one gets an error reply.
    pub max_frame_bytes: usize,
    /// Shared secret clients must present (label `default`); `None` (and no `tokens`)
    /// allows loopback listening only.
    pub token: Option<String>,
    /// `[[server.tokens]]`: more clients, each with its own token and label.
    pub tokens: Vec<NamedToken>,
    /// `Origin` header values accepted from browsers; any other Origin is refused.
    pub allowed_origins: Vec<String>,
    /// How often the config file and hook files are checked for changes; `None`: never
    /// (SIGHUP still reloads).
    pub watch_interval: Option<Duration>,
    /// The `[mcp]` section. It is kept with the server settings because both MCP front ends
    /// read it with them: `/mcp` (mounted by the server, which sees only `ServerConfig`) and
    /// `ccx mcp`. Like the rest of `[server]`, a change applies after a restart.
    pub mcp: McpConfig,
    /// The `[metrics]` section (served by the server; a change applies after a restart).
    pub metrics: MetricsConfig,
}

impl ServerConfig {
    /// Whether clients must present a token.
    pub fn has_auth(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }

    /// Every accepted token with its label: `server.token` as `default`, then `tokens`.
    pub fn credentials(&self) -> impl Iterator<Item = (&str, &str)> {
        self.token
            .iter()
            .map(|t| (DEFAULT_TOKEN_LABEL, t.as_str()))
            .chain(
                self.tokens
                    .iter()
                    .map(|t| (t.label.as_str(), t.token.as_str())),
            )
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8003)),
            max_sessions: 1024,
            max_frame_bytes: 1 << 20,
            token: None,
            tokens: Vec::new(),
            allowed_origins: Vec::new(),
            watch_interval: Some(Duration::from_secs(1)),
            mcp: McpConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file. The error names the file, the key and the line.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, Some(path))
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates config text; relative paths are taken from `path`'s directory.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text)?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut cfg = Config {
            source: path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
            ..Config::default()
        };
        let s = raw.server;
        if let Some(listen) = s.listen {
            cfg.server.listen = listen.parse().with_context(|| {
                format!("server.listen: `{listen}` is not an address like 127.0.0.1:8003")
            })?;
        }
        if let Some(n) = s.max_sessions {
            cfg.server.max_sessions = positive("server.max_sessions", n)?;
        }
        if let Some(n) = s.max_frame_bytes {
            if n < 1024 {
                bail!("server.max_frame_bytes must be at least 1024, got {n}");
            }
            cfg.server.max_frame_bytes = n;
        }
        cfg.server.token = match (s.token, s.token_file) {
            (Some(_), Some(_)) => bail!("server.token and server.token_file are both set; use one"),
            (Some(t), None) => Some(t),
            (None, Some(file)) => {
                let file = base.join(file);
                let t = std::fs::read_to_string(&file).with_context(|| {
                    format!("server.token_file: cannot read {}", file.display())
                })?;
                Some(t.trim().to_string())
            }
            (None, None) => None,
        };
        if cfg.server.token.as_deref() == Some("") {
            bail!("server.token is empty");
        }
        if let Some(tokens) = s.tokens {
            cfg.server.tokens = secrets::tokens(tokens, &base)?;
        }
        if let Some(origins) = s.allowed_origins {
            cfg.server.allowed_origins = origins;
        }
        match s.watch_interval {
            Some(0.0) => cfg.server.watch_interval = None,
            Some(t) => cfg.server.watch_interval = Some(seconds("server.watch_interval", t)?),
            None => {}
        }

        execution::apply(&mut cfg.execution, raw.execution)?;
        observe::apply(&mut cfg.server.metrics, raw.metrics);
        cfg.audit = observe::audit(raw.audit, &base)?;
        cfg.trace = observe::trace(raw.trace)?;
        cfg.cluster = raw.cluster.validate(&base)?;

        let sb = raw.sandbox;
        if sb.cache == Some(false) {
            cfg.sandbox.cache_dir = None;
        } else if let Some(dir) = sb.cache_dir {
            cfg.sandbox.cache_dir = Some(base.join(dir));
        }
        if let Some(n) = sb.tail_bytes {
            if n > 1 << 20 {
                bail!("sandbox.tail_bytes must be at most 1 MiB, got {n}");
            }
            cfg.sandbox.tail_bytes = n;
        }
        if let Some(p) = sb.pooling {
            cfg.sandbox.pooling = p;
        }
        if let Some(n) = sb.max_concurrent_calls {
            cfg.sandbox.max_concurrent_calls =
                positive("sandbox.max_concurrent_calls", n as usize)? as u32;
        }
        if let Some(t) = sb.load_timeout {
            cfg.execution.hooks_load_timeout = seconds("sandbox.load_timeout", t)?;
        }
        if let Some(mb) = sb.cache_max_mb {
            cfg.sandbox.cache_max_bytes =
                (positive("sandbox.cache_max_mb", mb as usize)? as u64) << 20;
        }
        if let Some(n) = sb.spare_instances {
            if n > hooks::MAX_SPARES {
                bail!(
                    "sandbox.spare_instances must be at most {} (spares across all hooks), got {n}",
                    hooks::MAX_SPARES
                );
            }
            cfg.sandbox.spare_instances = n;
        }
        if let Some(mb) = sb.spare_memory_mb {
            if mb > 1 << 20 {
                bail!("sandbox.spare_memory_mb must be at most 1048576 (1 TiB), got {mb}");
            }
            cfg.sandbox.spare_memory_bytes = mb << 20;
        }
        cfg.sandbox.decision_log = sb.decision_log.map(|p| base.join(p));
        if let Some(mb) = sb.decision_log_max_mb {
            cfg.sandbox.decision_log_max_bytes =
                (positive("sandbox.decision_log_max_mb", mb as usize)? as u64) << 20;
        }

        raw.state.apply(&base, &mut cfg.state)?;
        if cfg.audit.path.is_some() && !cfg.state.enabled {
            bail!(
                "audit.path needs the job registry (`[state] enabled = true`): the audit log \
                 records each job's final record and keeps its last hash there"
            );
        }

        let m = raw.mcp;
        if let Some(n) = m.max_output_bytes {
            if !(256..=16 << 20).contains(&n) {
                bail!("mcp.max_output_bytes must be between 256 and 16 MiB, got {n}");
            }
            cfg.server.mcp.max_output_bytes = n;
        }
        if let Some(t) = m.progress_interval {
            cfg.server.mcp.progress_interval = seconds("mcp.progress_interval", t)?;
        }

        for (i, h) in raw.hooks.into_iter().enumerate() {
            let at = format!("hooks[{i}] (`{}`)", h.name);
            if h.name.trim().is_empty() {
                bail!("hooks[{i}].name is empty");
            }
            if cfg.hooks.iter().any(|o| o.name == h.name) {
                bail!(
                    "{at}: name `{}` is used twice; hook names must be unique",
                    h.name
                );
            }
            let mut spec = HookSpec::new(h.name.clone(), base.join(&h.path));
            spec.path = std::path::absolute(&spec.path).unwrap_or(spec.path);
            spec.enabled = h.enabled.unwrap_or(true);
            if let Some(f) = h.fuel {
                // 0 means unlimited: the deadline alone bounds the call (docs/hooks.md).
                spec.fuel = f;
            }
            if let Some(t) = h.timeout_ms {
                if !(1..=60_000).contains(&t) {
                    bail!("{at}.timeout_ms must be between 1 and 60000, got {t}");
                }
                spec.timeout_ms = t;
            }
            if let Some(m) = h.memory_mb {
                if !(1..=hooks::MAX_MEMORY_MB).contains(&m) {
                    bail!(
                        "{at}.memory_mb must be between 1 and {}, got {m}",
                        hooks::MAX_MEMORY_MB
                    );
                }
                spec.memory_mb = m;
            }
            if let Some(p) = h.on_failure {
                spec.on_failure = p;
            }
            // The output stage fails closed unless the hook says otherwise (docs/hooks.md).
            spec.output.on_failure = h.on_failure.unwrap_or(OnFailure::Deny);
            if let Some(o) = h.output {
                let out = &mut spec.output;
                out.granularity = o.granularity.unwrap_or_default();
                if let Some(n) = o.max_line_bytes {
                    if !(1..=1 << 20).contains(&n) {
                        bail!("{at}.output.max_line_bytes must be between 1 and 1048576, got {n}");
                    }
                    out.max_line_bytes = n;
                }
                if let Some(ms) = o.flush_ms {
                    if !(1..=10_000).contains(&ms) {
                        bail!("{at}.output.flush_ms must be between 1 and 10000, got {ms}");
                    }
                    out.flush_ms = ms;
                }
                if let Some(f) = o.job_fuel {
                    out.job_fuel = f;
                }
            }
            spec.mode = h.mode.unwrap_or_default();
            if let Some(d) = h.sha256 {
                if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("{at}.sha256 must be 64 hex digits (`sha256sum FILE`), got `{d}`");
                }
                spec.sha256 = Some(d.to_ascii_lowercase());
            }
            if let Some(m) = h.matcher {
                let m = hooks::MatchSpec {
                    programs: m.programs,
                    commands: m.commands,
                    regex: m.regex,
                };
                m.compile().map_err(|e| anyhow::anyhow!("{at}.match {e}"))?;
                spec.matcher = Some(m);
            }
            for (k, v) in h.config {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(n) => n.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!(
                        "{at}.config.{k} must be a string, number or boolean, got {}",
                        other.type_str()
                    ),
                };
                spec.config.push((k, v));
            }
            cfg.hooks.push(spec);
        }
        Ok(cfg)
    }

    /// Resolves the token from `CCX_TOKEN`, which overrides the file.
    pub fn apply_token_env(&mut self) {
        if let Ok(t) = std::env::var(TOKEN_ENV) {
            let t = t.trim();
            if !t.is_empty() {
                self.server.token = Some(t.to_string());
            }
        }
    }
}

/// A valid environment variable name for a child: non-empty, no `=`, no NUL.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

fn positive(key: &str, n: usize) -> Result<usize> {
    if n == 0 {
        bail!("{key} must be at least 1");
    }
    Ok(n)
}

fn seconds(key: &str, s: f64) -> Result<Duration> {
    if !s.is_finite() || s <= 0.0 || s > 1e9 {
        bail!("{key} must be a positive number of seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

#[cfg(test)]
mod tests;
