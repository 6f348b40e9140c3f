//! Command-line definitions and one small `run` per subcommand.

use anyhow::{Context, Result};
use ccx::client::{self, ExecOptions};
use ccx::config::Config;
use ccx::executor::{Executor, NoHooks};
use ccx::server::{self, ServerState};
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Run the server.
    Serve(ServeArgs),
    /// Run one command through a server and exit with its exit code.
    ///
    /// Exit codes: the command's own; 128+N if a signal ended it; 124 timed out; 125 refused by
    /// the server (a hook's deny, bad request); 126 could not be started; 130 canceled (Ctrl-C);
    /// 69 the server could not be reached or the connection broke.
    Exec(ExecArgs),
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
        }
    })
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
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let exec = Executor::new(config.execution.clone(), Arc::new(NoHooks));
    let state = ServerState::new(exec, config.server.clone(), config.source.clone());
    server::serve(listener, state, shutdown_signal()).await?;
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
