//! `ccx hooks test` and `ccx hooks replay`: policy tests for hooks. `test` runs corpora of
//! cases (a request and the decision expected) through the hooks, as OPA's `opa test` or
//! Gatekeeper's `gator verify` do for their policies; `replay` runs the requests a decision
//! log recorded through a candidate component and lists the decisions that would change.
//!
//! Layout:
//! - this file: the arguments, the hooks both commands call (a config's `[[hooks]]`,
//!   `--hook NAME=FILE`), and `ccx hooks test`: its run and its table.
//! - `corpus`: the corpus format, read strictly, and the comparison of an answer with a case.
//! - `replay`: `ccx hooks replay`.
//!
//! Both commands call each hook's pre-stage on its own, on a fresh instance with an empty kv
//! store, and report the hook's own answer: its `mode` (`warn`, `dry-run`) and `on_failure`,
//! which say what a server does with that answer, are not applied.

mod corpus;
mod replay;

use anyhow::{Context, Result, bail};
use ccx::config::Config;
use ccx::hooks::{HookMode, HookSpec, TrialDecision, TrialHook};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(super) use replay::replay;

/// Where `ccx hooks test` looks without a PATH, relative to the config file's directory.
const DEFAULT_CORPORA: &str = "hooks/corpora";

#[derive(Debug, clap::Args)]
pub(super) struct TestArgs {
    /// Corpus files, or directories whose `*.toml` files are corpora. Default: hooks/corpora
    /// beside the config file (or in the current directory without one).
    paths: Vec<PathBuf>,
    /// Config file (TOML) whose `[[hooks]]` the cases name, with their `config`, limits and
    /// matchers. Without it, ./ccx.toml is used when present.
    #[arg(long, short, env = "CCX_CONFIG")]
    config: Option<PathBuf>,
    /// A hook as NAME=FILE (repeatable): component FILE with default limits and no `config`,
    /// added, or replacing the config's hook of that name.
    #[arg(long = "hook", value_parser = parse_hook)]
    hooks: Vec<(String, PathBuf)>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {
    /// The decision log (`[sandbox] decision_log`). Its rotated part, FILE.1, is read first
    /// when it exists.
    #[arg(long)]
    log: PathBuf,
    /// The candidate, as NAME=FILE: the log's pre-stage requests of hook NAME are replayed
    /// through component FILE.
    #[arg(long, value_parser = parse_hook)]
    hook: (String, PathBuf),
    /// Config file (TOML): when its `[[hooks]]` has an entry NAME, the candidate runs with its
    /// `config`, limits and matcher (its path and pinned digest are replaced). Without it,
    /// ./ccx.toml is used when present; without an entry, default limits and no `config`.
    #[arg(long, short, env = "CCX_CONFIG")]
    config: Option<PathBuf>,
}

fn parse_hook(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("`{s}` is not NAME=FILE")),
    }
}

/// The config `path` names, else ./ccx.toml when present, else the defaults (no hooks); with
/// the path it was read from.
fn load_config(path: Option<PathBuf>) -> Result<(Config, Option<PathBuf>)> {
    let path = path.or_else(|| {
        let default = PathBuf::from("ccx.toml");
        default.exists().then_some(default)
    });
    match path {
        Some(p) => Ok((Config::load(&p)?, Some(p))),
        None => Ok((Config::default(), None)),
    }
}

/// `ccx hooks test`. Everything is checked before the first case runs — every corpus read,
/// every hook named known and loaded — and a problem is an error (exit 2) naming the file and
/// the case. Then each case runs once; the table and the summary go to stdout.
pub(super) async fn test(args: TestArgs) -> Result<ExitCode> {
    let (config, config_path) = load_config(args.config)?;
    let mut specs: BTreeMap<String, HookSpec> = config
        .hooks
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect();
    for (name, file) in &args.hooks {
        let file = std::path::absolute(file)?;
        specs.insert(name.clone(), HookSpec::new(name, file));
    }
    let paths = match args.paths {
        p if !p.is_empty() => p,
        _ => vec![match config_path.as_deref().and_then(Path::parent) {
            Some(dir) => dir.join(DEFAULT_CORPORA),
            None => PathBuf::from(DEFAULT_CORPORA),
        }],
    };
    let mut cases = Vec::new();
    for file in corpus::files(&paths)? {
        cases.extend(corpus::read(&file)?);
    }
    let source = match &config_path {
        Some(p) => format!("the [[hooks]] of {}", p.display()),
        None => "the config (there is none)".into(),
    };
    if let Some(case) = cases.iter().find(|c| !specs.contains_key(&c.hook)) {
        bail!(
            "{}: unknown hook `{}`: not in {source}, nor given by --hook NAME=FILE",
            case.at,
            case.hook
        );
    }

    let host = super::hooks_cmd::host(&config)?;
    let mut hooks = BTreeMap::new();
    for name in cases
        .iter()
        .map(|c| c.hook.as_str())
        .collect::<BTreeSet<_>>()
    {
        let spec = &specs[name];
        let first = cases
            .iter()
            .find(|c| c.hook == name)
            .expect("a case names it");
        let hook = TrialHook::load(&host, spec)
            .await
            .with_context(|| format!("{}: cannot load hook `{name}`", first.at))?;
        if spec.mode != HookMode::Enforce {
            let mode = serde_json::to_value(spec.mode)?;
            println!(
                "note: `{name}` has mode = {mode}: its own decisions are tested, which a server \
                 records but does not apply"
            );
        }
        if !spec.enabled {
            println!("note: `{name}` is disabled in the config; tested all the same");
        }
        hooks.insert(name, hook);
    }

    let mut rows = Vec::new();
    for case in &cases {
        let call = hooks[case.hook.as_str()].pre(case.request.clone()).await;
        let why = corpus::mismatch(case, &call.decision);
        rows.push(Row {
            case: case.id.clone(),
            hook: case.hook.clone(),
            expected: case.expect.name(),
            got: corpus::decision_name(&call.decision),
            why,
        });
    }
    print_table(&rows);
    let failed = rows.iter().filter(|r| r.why.is_some()).count();
    println!("{} passed, {failed} failed", rows.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line of the table.
struct Row {
    case: String,
    hook: String,
    expected: &'static str,
    got: String,
    /// Why the case failed; `None` when it passed.
    why: Option<String>,
}

fn print_table(rows: &[Row]) {
    let width =
        |f: fn(&Row) -> usize, title: &str| rows.iter().map(f).max().unwrap_or(0).max(title.len());
    let case_w = width(|r| r.case.chars().count(), "CASE");
    let hook_w = width(|r| r.hook.chars().count(), "HOOK");
    println!(
        "{:<6} {:<case_w$} {:<hook_w$} {:<8} GOT",
        "RESULT", "CASE", "HOOK", "EXPECTED"
    );
    for r in rows {
        println!(
            "{:<6} {:<case_w$} {:<hook_w$} {:<8} {}",
            if r.why.is_some() { "FAIL" } else { "PASS" },
            r.case,
            r.hook,
            r.expected,
            r.got
        );
        if let Some(why) = &r.why {
            println!("{:<6} why: {}", "", why.replace('\n', " "));
        }
    }
}

/// A decision as one line: `allow`, `deny: REASON`, `modify: PATCH`, `allow (not matched)`,
/// `failed (KIND): MESSAGE`.
fn describe(d: &TrialDecision) -> String {
    use ccx::hooks::PreDecision;
    match d {
        TrialDecision::Decided(PreDecision::Deny(reason)) => format!("deny: {reason}"),
        TrialDecision::Decided(PreDecision::Modify(p)) => {
            format!("modify: {}", corpus::describe_patch(p))
        }
        TrialDecision::Failed(f) => format!("{}: {}", corpus::decision_name(d), f.message),
        _ => corpus::decision_name(d),
    }
}
