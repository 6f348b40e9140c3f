//! `ccx audit verify`: checks an audit log's hash chain (see `docs/audit.md`).

use anyhow::Result;
use ccx::audit::{self, VerifyError};
use ccx::config::default_state_dir;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check an audit log's hash chain and name the first broken record.
    ///
    /// One file: it and the files rotated out of it, oldest first. A directory: the audit
    /// files in it. Several files: those, in the order given. The last hash the server kept
    /// in its state store is checked too (a cut tail is found), unless `--expect-last` gives
    /// one. Exit codes: 0 the chain holds; 1 it is broken (the record is named); 2 the files
    /// could not be read.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The audit file (the current one, as in `[audit] path`), a directory, or several files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The last record's hash as kept elsewhere; by default the state store's.
    #[arg(long)]
    expect_last: Option<String>,
    /// The server's state directory, whose database keeps the last hash (default: as
    /// `ccx serve`'s: `$CCX_STATE_DIR`, `$XDG_STATE_HOME/ccx`, …).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    let AuditCommand::Verify(args) = cmd;
    let files = match &args.files[..] {
        [one] if one.is_file() => audit::chain_files(one)?,
        many => many.to_vec(),
    };
    let (expect, source) = match (&args.expect_last, &args.files[..]) {
        (Some(h), _) => (Some(h.clone()), "--expect-last".to_string()),
        (None, [one]) if one.is_file() => {
            let dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
            let kept = ccx::registry::read_meta(&dir, &ccx::app::audit_hash_key(one))?;
            (kept, format!("the state store in {}", dir.display()))
        }
        (None, _) => (None, String::new()),
    };
    match audit::verify::verify(&files, expect.as_deref()) {
        Ok(report) => {
            println!(
                "ok: {} records in {} files (seq {}..={}), last hash {}",
                report.records,
                report.files.len(),
                report.first_seq,
                report.last_seq,
                report.last_hash
            );
            match (&expect, report.records_after_expected) {
                (Some(_), Some(0)) => println!("the last hash matches {source}"),
                (Some(_), Some(n)) => {
                    println!("the last hash kept in {source} is {n} records back (written since)")
                }
                _ => {
                    println!("no last hash kept elsewhere to compare: a cut tail would not be seen")
                }
            }
            if let Some(prev) = report.continues_from {
                println!("the first file continues an earlier chain (its prev: {prev})");
            }
            for i in &report.incidents {
                println!("incident at {}: {}: {}", i.at, i.kind, i.detail);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ VerifyError::Broken { .. }) => {
            println!("broken: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("ccx audit verify: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
