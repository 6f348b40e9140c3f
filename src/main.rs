//! The `ccx` binary: parses arguments, sets up logging and calls the subcommand's `run`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let _telemetry = cli::init_tracing(&args);
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // The whole cause chain, as one line a person can act on.
            eprintln!("ccx: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
