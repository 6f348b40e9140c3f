//! Command-line definitions and one small `run` per subcommand.

use anyhow::{Context, Result};
use ccx::app::App;
use ccx::client::{self, ExecOptions};
use ccx::config::Config;
use ccx::server;
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    /// Run the server.
    Serve(ServeArgs),
    /// Run one command through a server and exit with its exit code.
    ///
    /// Exit codes: the command's own; 128+N if a signal ended it; 124 timed out; 125 refused by
    /// the server (a hook's deny, bad request); 126 could not be started; 130 canceled (Ctrl-C);
    /// 69 the server could not be reached or the connection broke.
    Exec(ExecArgs),
    /// Inspect, check, switch and try out hooks.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Serve the Model Context Protocol on stdin/stdout, for Claude Code and other agents.
    ///
    /// Tools: `execute`, `execute_task_list`, `hook_status`. Jobs run here, with the config's
    /// executor settings and hooks (as `ccx serve` would run them), or with --url on a running
    /// ccx server. Logs go to stderr; stdout carries the protocol.
    Mcp(McpArgs),
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
#[command(group(clap::ArgGroup::new("input").required(true).args(["pre", "post"])))]
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
    /// The command; several words are joined with spaces and run by the server's shell.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Logs go to stderr; `RUST_LOG` picks the level (default: info for the server, warn otherwise).
pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Exec(args) => exec(args).await,
            Command::Hooks(cmd) => hooks_cmd::run(cmd).await,
            Command::Mcp(args) => mcp(args).await,
        }
    })
}

mod hooks_cmd {
    use super::*;
    use ccx::hooks::{HookHost, HookSet, HookSpec, HostOptions, RunInput};

    pub async fn run(cmd: HooksCommand) -> Result<ExitCode> {
        match cmd {
            HooksCommand::List(a) => list(&a.config).await,
            HooksCommand::Check(a) => check(&a.config).await,
            HooksCommand::Enable(a) => toggle(&a.config.config, &a.name, true),
            HooksCommand::Disable(a) => toggle(&a.config.config, &a.name, false),
            HooksCommand::Run(a) => run_one(a).await,
            HooksCommand::New(a) => {
                let dir = ccx::scaffold::scaffold(&a.name, a.lang, a.stage, &a.dir)?;
                println!("created {}", dir.display());
                println!(
                    "see {} for how to build and try it",
                    dir.join("README.md").display()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    fn host(config: &Config) -> Result<Arc<HookHost>> {
        HookHost::new(HostOptions {
            cache_dir: config.sandbox.cache_dir.clone(),
            pooling: false,
            max_concurrent_calls: 4,
            cache_max_bytes: config.sandbox.cache_max_bytes,
        })
    }

    async fn load(host: &Arc<HookHost>, specs: Vec<HookSpec>) -> Result<HookSet> {
        let host = host.clone();
        Ok(tokio::task::spawn_blocking(move || HookSet::load(&host, &specs)).await?)
    }

    async fn list(path: &Path) -> Result<ExitCode> {
        let config = Config::load(path)?;
        if config.hooks.is_empty() {
            println!("no hooks configured in {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        let set = load(&host(&config)?, config.hooks.clone()).await?;
        println!(
            "{:<20} {:<8} {:<9} {:<9} {:>12} {:>8} {:>7} {:<10} PATH",
            "NAME", "ENABLED", "STATE", "STAGES", "FUEL", "TIMEOUT", "MEMORY", "ON_FAILURE"
        );
        for h in set.status() {
            let stages: Vec<String> = h
                .stages
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect();
            let state = match &h.state {
                ccx::hooks::HookState::Loaded => "loaded",
                ccx::hooks::HookState::Disabled => "disabled",
                ccx::hooks::HookState::Failed(_) => "FAILED",
            };
            println!(
                "{:<20} {:<8} {:<9} {:<9} {:>12} {:>6}ms {:>5}MiB {:<10} {}",
                h.name,
                !matches!(h.state, ccx::hooks::HookState::Disabled),
                state,
                if stages.is_empty() {
                    "-".to_string()
                } else {
                    stages.join("+")
                },
                h.fuel,
                h.timeout_ms,
                h.memory_mb,
                format!("{:?}", h.on_failure).to_lowercase(),
                h.path.display()
            );
            if let ccx::hooks::HookState::Failed(e) = &h.state {
                println!("    error: {e}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn check(path: &Path) -> Result<ExitCode> {
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ccx: {e:#}");
                return Ok(ExitCode::from(1));
            }
        };
        // Disabled hooks are checked too: enabling one later must not be a surprise.
        let specs: Vec<HookSpec> = config
            .hooks
            .iter()
            .cloned()
            .map(|mut s| {
                s.enabled = true;
                s
            })
            .collect();
        let set = load(&host(&config)?, specs).await?;
        let errors = set.load_errors();
        for (hook, err) in &errors {
            eprintln!("ccx: hook `{hook}`: {err}");
        }
        if errors.is_empty() {
            println!("ok: {} hooks compiled and validated", config.hooks.len());
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "ccx: {} of {} hooks have problems",
                errors.len(),
                config.hooks.len()
            );
            Ok(ExitCode::from(1))
        }
    }

    /// Flips `enabled` of the named `[[hooks]]` entry, keeping the file's comments and layout,
    /// and refuses to write a result that would not validate.
    fn toggle(path: &Path, name: &str, enabled: bool) -> Result<ExitCode> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let hooks = doc
            .get_mut("hooks")
            .and_then(|h| h.as_array_of_tables_mut())
            .with_context(|| format!("{} has no [[hooks]]", path.display()))?;
        let entry = hooks
            .iter_mut()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            .with_context(|| format!("no hook named `{name}` in {}", path.display()))?;
        entry["enabled"] = toml_edit::value(enabled);
        let out = doc.to_string();
        Config::parse(&out, Some(path)).context("the edited config would not validate")?;
        // Write beside and rename, so a watching server never reads half a file.
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, &out).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        println!(
            "{} `{name}` in {}",
            if enabled { "enabled" } else { "disabled" },
            path.display()
        );
        Ok(ExitCode::SUCCESS)
    }

    fn read_json_arg(arg: &str) -> Result<String> {
        match arg.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
            }
            None => Ok(arg.to_string()),
        }
    }

    async fn run_one(a: RunArgs) -> Result<ExitCode> {
        let input = match (&a.pre, &a.post) {
            (Some(pre), _) => RunInput::Pre(
                serde_json::from_str(&read_json_arg(pre)?)
                    .context("--pre is not a valid request")?,
            ),
            (_, Some(post)) => RunInput::Post(
                serde_json::from_str(&read_json_arg(post)?)
                    .context("--post is not a valid result")?,
            ),
            _ => unreachable!("clap requires one of --pre and --post"),
        };
        let name = a
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hook".into());
        let mut spec = HookSpec::new(name, std::path::absolute(&a.file)?);
        spec.fuel = a.fuel;
        spec.timeout_ms = a.timeout_ms;
        spec.memory_mb = a.memory_mb;
        spec.config = a.config;
        let host = host(&Config::default())?;
        let report = ccx::hooks::run_once(&host, &spec, input).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(if report.failure.is_some() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let path = args.config.or_else(|| {
        let default = PathBuf::from("ccx.toml");
        default.exists().then_some(default)
    });
    let mut config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    config.apply_token_env();
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    // Refuse an exposed, unauthenticated address before spending time on hooks.
    server::check_exposure(config.server.listen, config.server.token.is_some())?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let app = App::start(config).await?;
    let stop = CancellationToken::new();
    app.spawn_watcher(stop.clone());
    let result = server::serve(listener, app.server_state(), shutdown_signal()).await;
    stop.cancel();
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn mcp(args: McpArgs) -> Result<ExitCode> {
    match args.url {
        Some(url) => ccx::mcp::serve_stdio_remote(url, args.token).await?,
        None => {
            let path = args.config.or_else(|| {
                let default = PathBuf::from("ccx.toml");
                default.exists().then_some(default)
            });
            let config = match &path {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            ccx::mcp::serve_stdio_local(config).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn exec(args: ExecArgs) -> Result<ExitCode> {
    let opts = ExecOptions {
        url: args.url,
        token: args.token,
        command: args.command.join(" "),
        timeout: args.timeout,
        cwd: args.cwd,
        env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
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
