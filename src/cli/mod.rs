//! Command-line definitions and one small `run` per subcommand.

use anyhow::{Context, Result};
use ccx::app::App;
use ccx::client::{self, ExecOptions};
use ccx::config::Config;
use ccx::protocol::ExecuteParams;
use ccx::registry::Registry;
use ccx::server;
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// ccx: run commands over a WebSocket, with sandboxed WebAssembly hooks.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CCX_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (with --nats: a cluster gateway, whose jobs run on `ccx worker`s).
    Serve(ServeArgs),
    /// Run a cluster's jobs on this machine: take them from NATS JetStream's work queue and
    /// run each with this config's executor settings, limits and hooks.
    Worker(cluster_cmd::WorkerArgs),
    /// Run one command through a server and exit with its exit code.
    ///
    /// Exit codes: the command's own; 128+N if a signal ended it; 124 timed out; 125 refused by
    /// the server (a hook's deny, bad request); 126 could not be started; 130 canceled (Ctrl-C);
    /// 69 the server could not be reached or the connection broke; 75 the job was lost (the
    /// server crashed while it ran).
    Exec(ExecArgs),
    /// Follow a job from the start (or `--after-seq N`) to its end; exits with its exit code.
    /// Ctrl-C stops following; the job goes on.
    Attach(jobs_cmd::AttachArgs),
    /// A job's retained output; `--follow` keeps following it to its end.
    Logs(jobs_cmd::LogsArgs),
    /// List, show and cancel the jobs in a server's registry.
    #[command(subcommand)]
    Jobs(jobs_cmd::JobsCommand),
    /// Inspect, check, switch and try out hooks.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Serve the Model Context Protocol on stdin/stdout, for Claude Code and other agents.
    ///
    /// Tools: `execute`, `execute_task_list`, `hook_status`. Jobs run here, with the config's
    /// executor settings and hooks (as `ccx serve` would run them), or with --url on a running
    /// ccx server. Logs go to stderr; stdout carries the protocol.
    Mcp(McpArgs),
    /// Probe a server's `/healthz` (a container's HEALTHCHECK): exit 0 on `200`, else 1.
    Health {
        /// Plain-HTTP URL to GET.
        #[arg(
            long,
            env = "CCX_HEALTH_URL",
            default_value = "http://127.0.0.1:8003/healthz"
        )]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

#[derive(Debug, Subcommand)]
enum HooksCommand {
    /// List the configured hooks with their state, stages and limits.
    List(ConfigArg),
    /// Compile and validate every hook (enabled or not); exit 1 naming each problem.
    Check(ConfigArg),
    /// Enable a hook in the config file (comments and layout are kept).
    Enable(ToggleArgs),
    /// Disable a hook in the config file (comments and layout are kept).
    Disable(ToggleArgs),
    /// Run one hook once and print its answer, fuel used, time and guest output.
    Run(RunArgs),
    /// Scaffold a new hook project whose build command works out of the box.
    New(NewArgs),
    /// Run policy corpora (TOML cases: a hook, a request, the decision expected) and print a
    /// PASS/FAIL table. Exit 0 when every case passes, 1 when one fails, 2 when a corpus or a
    /// hook cannot be used.
    Test(policy::TestArgs),
    /// Replay a decision log's pre-stage requests of one hook through a candidate component
    /// and list the decisions that change. Exit 0 when none does, 1 when one does, 2 on errors.
    Replay(policy::ReplayArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// The hook's name (lowercase kebab-case); also the project directory's name.
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: ccx::scaffold::Lang,
    /// Which stages it implements.
    #[arg(long, value_enum, default_value_t = ccx::scaffold::StageChoice::Both)]
    stage: ccx::scaffold::StageChoice,
    /// Where to create the project directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file (TOML).
    #[arg(long, short, env = "CCX_CONFIG", default_value = "ccx.toml")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ToggleArgs {
    /// The hook's name.
    name: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["pre", "post", "output"])))]
struct RunArgs {
    /// The component file (.wasm).
    file: PathBuf,
    /// Run `pre-execute` on this request (JSON, or @FILE), e.g. '{"command":"ls"}'.
    #[arg(long)]
    pre: Option<String>,
    /// Run `post-execute` on this result (JSON, or @FILE), e.g.
    /// '{"request":{"command":"ls"},"status":"completed","exit_code":0}'.
    #[arg(long)]
    post: Option<String>,
    /// Run the output stage on this file's bytes (`@FILE`, or `-` for stdin) as a job's
    /// stdout, in 64 KiB reads: the result goes to stdout, a report to stderr.
    #[arg(long)]
    output: Option<String>,
    /// Fuel limit.
    #[arg(long, default_value_t = ccx::hooks::DEFAULT_FUEL)]
    fuel: u64,
    /// Deadline in milliseconds.
    #[arg(long, default_value_t = ccx::hooks::DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = ccx::hooks::DEFAULT_MEMORY_MB)]
    memory_mb: u64,
    /// A `host.config()` entry as KEY=VALUE (repeatable).
    #[arg(long = "config", value_parser = parse_env)]
    config: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Config file (TOML). Without it, ./ccx.toml is used when present, else the defaults.
    #[arg(long, short, env = "CCX_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; overrides `server.listen`.
    #[arg(long, env = "CCX_LISTEN")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    cluster: cluster_cmd::ClusterArgs,
}

#[derive(Debug, clap::Args)]
struct McpArgs {
    /// Run jobs on the ccx server at this WebSocket URL (e.g. ws://127.0.0.1:8003/ws)
    /// instead of in this process.
    #[arg(long, conflicts_with = "config")]
    url: Option<String>,
    /// Auth token for --url (prefer the CCX_TOKEN environment variable).
    #[arg(long, env = "CCX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Config file (TOML) for running jobs here. Without it, ./ccx.toml is used when present,
    /// else the defaults.
    #[arg(long, short, env = "CCX_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// Server URL.
    #[arg(long, env = "CCX_URL", default_value = client::DEFAULT_URL)]
    url: String,
    /// Auth token (prefer the CCX_TOKEN environment variable to the command line).
    #[arg(long, env = "CCX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Wall-clock timeout in seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Working directory on the server.
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the command, as KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Start the job detached, print its id and exit 0 (`ccx attach ID` follows it).
    #[arg(long, short = 'd')]
    detach: bool,
    /// Keep the job's stdin open and forward this terminal's (or pipe's) stdin to it.
    #[arg(long, short = 'i', conflicts_with = "detach")]
    interactive: bool,
    /// Run the job on a terminal the size of this one (raw mode with -i, window resizes
    /// followed), as `docker exec -t`.
    #[arg(long, short = 't', conflicts_with = "detach")]
    tty: bool,
    /// Worker labels the job needs, on a cluster gateway (`--requires gpu,linux`).
    #[arg(long, value_delimiter = ',')]
    requires: Vec<String>,
    /// The command line, run by the server's shell. One argument is passed through as it is
    /// (`ccx exec -- 'ls | wc -l'`); several are joined with shell quoting, so each stays one
    /// word (`ccx exec -- printf '%s\n' 'a b'`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Logs go to stderr; `RUST_LOG` picks the level (default: info for the server, warn
/// otherwise); `ccx serve` may also export its spans over OTLP (see `telemetry`). Keep the
/// returned value until the process ends: dropping it flushes the last spans.
pub fn init_tracing(cli: &Cli) -> telemetry::Telemetry {
    telemetry::init(cli)
}

/// `--config FILE`, else `./ccx.toml` when present.
fn config_path(arg: Option<PathBuf>) -> Option<PathBuf> {
    arg.or_else(|| {
        let default = PathBuf::from("ccx.toml");
        default.exists().then_some(default)
    })
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Worker(args) => cluster_cmd::worker(args).await,
            Command::Exec(args) => exec(args).await,
            Command::Attach(args) => jobs_cmd::attach(args).await,
            Command::Logs(args) => jobs_cmd::logs(args).await,
            Command::Jobs(cmd) => jobs_cmd::run(cmd).await,
            Command::Hooks(cmd) => hooks_cmd::run(cmd).await,
            Command::Audit(cmd) => audit_cmd::run(cmd),
            Command::Mcp(args) => mcp(args).await,
            Command::Health { url, timeout } => Ok(health(&url, timeout).await),
        }
    })
}

mod audit_cmd;
mod cluster_cmd;
mod hooks_cmd;
mod jobs_cmd;
mod policy;
mod telemetry;

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let path = config_path(args.config);
    let mut config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.apply_token_env();
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    // Refuse an exposed, unauthenticated address before spending time on hooks.
    server::check_exposure(config.server.listen, config.server.has_auth())?;
    open_file_limit(config.server.max_sessions);
    // Before listening: a second server on the same state directory stops here, and the
    // jobs a crashed predecessor left are settled before new ones start.
    let registry = Registry::open(&config.state)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    // Listens at once; the hooks load in the background (`/health` says `starting`).
    let gateway = args.cluster.gateway(&config).await?;
    let app = App::start(config, registry.clone())?;
    app.serve(listener, gateway, shutdown).await?;
    registry.flush().await;
    // After the registry: its last records feed the audit log.
    if let Some(audit) = app.executor().audit().cloned() {
        let flushed =
            tokio::task::spawn_blocking(move || audit.flush(std::time::Duration::from_secs(5)));
        if !flushed.await.unwrap_or(false) {
            tracing::warn!("the audit log's last records may not be written");
        }
        // Its last hash, kept in the state store.
        registry.flush().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Raises the open-file limit for `max_sessions` connections and their jobs (each connection
/// costs a socket, each running job about six descriptors); warns when it stays too low.
fn open_file_limit(max_sessions: usize) {
    let wanted = (max_sessions as libc::rlim_t)
        .saturating_mul(8)
        .saturating_add(256);
    match ccx::containment::nofile::raise_open_file_limit() {
        Ok((before, now)) => {
            if now != before {
                tracing::info!(before, now, "open-file limit raised");
            }
            if now < wanted {
                tracing::warn!(
                    limit = now,
                    max_sessions,
                    "the open-file limit is low for max_sessions (about {wanted} wanted): \
                     connections and jobs past it fail with EMFILE; raise the hard limit \
                     (`ulimit -Hn`, LimitNOFILE= in a systemd unit)"
                );
            }
        }
        Err(why) => tracing::warn!("cannot raise the open-file limit: {why}"),
    }
}

async fn mcp(args: McpArgs) -> Result<ExitCode> {
    match args.url {
        Some(url) => ccx::mcp::serve_stdio_remote(url, args.token).await?,
        None => {
            let path = args.config.or_else(|| {
                let default = PathBuf::from("ccx.toml");
                default.exists().then_some(default)
            });
            let mut config = match &path {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            // An MCP stdio server lives as long as its client's session: its jobs go with it,
            // so its registry is its own, in a directory removed when it exits (and it never
            // contends for a `ccx serve`'s state directory).
            let state = tempfile::Builder::new()
                .prefix("ccx-mcp-state-")
                .tempdir()?;
            config.state.dir = state.path().to_path_buf();
            let registry = Registry::open(&config.state)?;
            App::start(config, registry)?.serve_mcp_stdio().await?;
            drop(state);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ccx health`: one HTTP/1.1 GET, reading only the status line. Every failure exits 1
/// (a HEALTHCHECK reserves 2), with the reason on stderr.
async fn health(url: &str, timeout: f64) -> ExitCode {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let rest = url
            .strip_prefix("http://")
            .context("only http://HOST:PORT/PATH URLs are supported")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream.take(1024))
            .read_line(&mut line)
            .await?;
        anyhow::Ok(line.trim_end().to_string())
    };
    let limit = std::time::Duration::try_from_secs_f64(timeout).unwrap_or_default();
    match tokio::time::timeout(limit, probe).await {
        Ok(Ok(status)) if status.split(' ').nth(1) == Some("200") => {
            println!("{status}");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("ccx: {url}: unhealthy answer: {status:?}");
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("ccx: {url}: {e:#}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("ccx: {url}: no answer within {timeout} s");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
/// Resolves at SIGTERM or SIGINT. The handlers are installed by this call, not at the first
/// poll: a signal that arrives while the server starts is not the default (immediate) death,
/// but a graceful stop as soon as it serves.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

async fn exec(args: ExecArgs) -> Result<ExitCode> {
    let command = match args.command.as_slice() {
        [one] => one.clone(),
        words => shlex::try_join(words.iter().map(String::as_str))
            .context("the command has a NUL byte")?,
    };
    let env = args.env.into_iter().collect::<BTreeMap<_, _>>();
    let opts = ExecOptions {
        url: args.url,
        token: args.token,
        params: ExecuteParams {
            command,
            timeout: args.timeout,
            cwd: args.cwd,
            env: (!env.is_empty()).then_some(env),
            detach: args.detach,
            // Every byte exactly: the output is written to our stdout as it came.
            output_encoding: Some(ccx::protocol::OutputEncoding::Base64),
            stdin_open: args.interactive && !args.tty,
            pty: args.tty.then(|| {
                client::input::local_size().unwrap_or(ccx::protocol::PtySize { rows: 24, cols: 80 })
            }),
            requires: (!args.requires.is_empty()).then_some(args.requires),
            ..Default::default()
        },
        forward_stdin: args.interactive,
    };
    if args.detach {
        return exec_detached(&opts).await;
    }
    // Registered now, before anything is printed: a future polled later (select! may run
    // the output branch first) would leave an early Ctrl-C to kill us with the job running.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    let interrupt = async move {
        sigint.recv().await;
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    match client::exec(&opts, &mut out, &mut err, interrupt).await {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(failure) => {
            eprintln!("ccx: {failure}");
            Ok(ExitCode::from(failure.exit_code()))
        }
    }
}

/// `ccx exec --detach`: starts the job, prints its id, exits 0.
async fn exec_detached(opts: &ExecOptions) -> Result<ExitCode> {
    let mut client = match client::Client::connect(&opts.url, opts.token.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            let failure = client::ExecFailure::from(e);
            eprintln!("ccx: {failure}");
            return Ok(ExitCode::from(failure.exit_code()));
        }
    };
    match client.call::<ccx::protocol::Execute>(&opts.params).await {
        Ok(result) => {
            println!("{}", result.job_id());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let failure = client::ExecFailure::from(e);
            eprintln!("ccx: {failure}");
            Ok(ExitCode::from(failure.exit_code()))
        }
    }
}
