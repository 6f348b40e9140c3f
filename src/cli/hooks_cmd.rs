//! `ccx hooks …`: list, check, enable/disable, run once and scaffold hooks (`test` and
//! `replay` are in `policy`).

use super::*;
use ccx::hooks::{HookHost, HookSet, HookSpec, HostOptions, RunInput};

pub(super) async fn run(cmd: HooksCommand) -> Result<ExitCode> {
    match cmd {
        HooksCommand::List(a) => list(&a.config).await,
        HooksCommand::Check(a) => check(&a.config).await,
        HooksCommand::Enable(a) => toggle(&a.config.config, &a.name, true),
        HooksCommand::Disable(a) => toggle(&a.config.config, &a.name, false),
        HooksCommand::Run(a) => run_one(a).await,
        HooksCommand::Test(a) => super::policy::test(a).await,
        HooksCommand::Replay(a) => super::policy::replay(a).await,
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

pub(super) fn host(config: &Config) -> Result<Arc<HookHost>> {
    HookHost::new(HostOptions {
        cache_dir: config.sandbox.cache_dir.clone(),
        pooling: false,
        max_concurrent_calls: 4,
        cache_max_bytes: config.sandbox.cache_max_bytes,
        // One-shot commands: each hook is called once or a few times.
        spare_instances: 0,
        spare_memory_bytes: 0,
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
        let stages = &h.stages;
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
    // Read, edit and replace under an exclusive lock on the file's directory (which the
    // rename does not replace), so two edits at once both land, one after the other.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let lock =
        std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", dir.display()))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
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
    // A uniquely named file beside it, renamed over it: a watching server never reads half
    // a file, and two edits at once never write into the same temporary file.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(out.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    drop(lock);
    println!(
        "{} `{name}` in {}",
        if enabled { "enabled" } else { "disabled" },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn read_json_arg(arg: &str) -> Result<String> {
    match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read {file}")),
        None => Ok(arg.to_string()),
    }
}

async fn run_one(a: RunArgs) -> Result<ExitCode> {
    if a.output.is_some() {
        return run_output(a).await;
    }
    let input = match (&a.pre, &a.post) {
        (Some(pre), _) => RunInput::Pre(Box::new(
            serde_json::from_str(&read_json_arg(pre)?).context("--pre is not a valid request")?,
        )),
        (_, Some(post)) => RunInput::Post(Box::new(
            serde_json::from_str(&read_json_arg(post)?).context("--post is not a valid result")?,
        )),
        _ => unreachable!("clap requires one of --pre and --post"),
    };
    let spec = run_spec(a)?;
    let host = host(&Config::default())?;
    let report = ccx::hooks::run_once(&host, &spec, input).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `ccx hooks run FILE --output @DATA`: DATA through the hook's output stage, as one job's
/// stdout in 64 KiB reads; the bytes that come out go to stdout, the report to stderr.
/// Exit 1 when the hook ended the job or failed.
async fn run_output(a: RunArgs) -> Result<ExitCode> {
    use std::io::{Read, Write};
    let arg = a.output.as_deref().unwrap_or("-");
    let data = match arg.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
        None if arg == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        None => arg.as_bytes().to_vec(),
    };
    let spec = run_spec(a)?;
    let set = load(&host(&Config::default())?, vec![spec]).await?;
    if let Some((hook, err)) = set.load_errors().into_iter().next() {
        anyhow::bail!("hook `{hook}` did not load: {err}");
    }
    let mut request = ccx::hooks::HookRequest {
        command: "ccx hooks run --output".into(),
        ..Default::default()
    };
    request.parse();
    let (filter, warnings) = set
        .start_output(&request)
        .await
        .map_err(|(hook, reason)| anyhow::anyhow!("hook `{hook}` could not start: {reason}"))?;
    for (hook, kind, message) in warnings {
        eprintln!("warning: {hook} ({kind:?}): {message}");
    }
    let Some(mut filter) = filter else {
        anyhow::bail!("the component exports no output stage (`filter-output`)");
    };
    let stream = ccx::hooks::OutStream::Stdout;
    let mut stdout = std::io::stdout().lock();
    let mut ended = None;
    let mut seq = 0;
    for chunk in data.chunks(64 * 1024).map(Some).chain([None]) {
        seq += 1;
        let f = match chunk {
            Some(c) => filter.filter(stream, seq, c).await,
            None => filter.end(stream, seq).await,
        };
        stdout.write_all(&f.data)?;
        for (hook, kind, message) in f.warnings {
            eprintln!("warning: {hook} ({kind:?}): {message}");
        }
        if let Some(end) = f.end {
            ended = Some(end);
            break;
        }
    }
    stdout.flush()?;
    let report = serde_json::json!({"reports": filter.reports(), "ended": ended});
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    let failed = ended.is_some() || filter.reports().iter().any(|r| r.error.is_some());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The spec `ccx hooks run` gives its component: named after the file, with the given limits
/// and config.
fn run_spec(a: RunArgs) -> Result<HookSpec> {
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
    Ok(spec)
}
