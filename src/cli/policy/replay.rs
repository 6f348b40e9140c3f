//! `ccx hooks replay`: the pre-stage requests a decision log recorded for one hook, run through
//! a candidate component, and the decisions that would change — before the candidate meets
//! real traffic. Reads FILE.1 (the rotated, older part) first, then FILE, line by line, so a
//! log of any size replays in constant memory.

use super::{ReplayArgs, describe, load_config};
use anyhow::{Context, Result, bail};
use ccx::hooks::{HookRequest, HookSpec, PreDecision, RequestPatch, TrialDecision, TrialHook};
use serde::Deserialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What replay reads of a decision-log line. The writer's type,
/// `ccx::hooks::decision_log::DecisionRecord`, cannot be read back (its `stage` is a
/// `&'static str`), so this names the fields replay needs; the log's other fields are ignored.
#[derive(Debug, Deserialize)]
struct Logged {
    time: f64,
    #[serde(default)]
    job_id: String,
    hook: String,
    stage: String,
    decision: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    patch: Option<RequestPatch>,
    request: HookRequest,
}

/// What a replay counted.
#[derive(Debug, Default)]
struct Tally {
    replayed: u64,
    unchanged: u64,
    /// Of `unchanged`: denies whose reason alone changed.
    reworded: u64,
    changed: u64,
    /// Records of other hooks, or of other stages.
    other: u64,
    /// The hook's records whose call had failed: there is no decision to compare.
    failed: u64,
    /// The hooks with pre-stage records, for the error when NAME has none.
    hooks: std::collections::BTreeSet<String>,
}

/// How a new decision compares with the recorded one.
#[derive(Debug, PartialEq)]
enum Compared {
    Same,
    /// Deny then, deny now, with another reason: the same decision.
    Reworded,
    Changed,
}

/// `ccx hooks replay`: exit 0 when no decision changed, 1 when some did (as `diff` does), an
/// error (exit 2) for an unreadable log, a line that is not a record, or a candidate that
/// cannot be loaded.
pub(in crate::cli) async fn replay(args: ReplayArgs) -> Result<ExitCode> {
    let (name, file) = args.hook;
    let (config, config_path) = load_config(args.config)?;
    let file = std::path::absolute(&file)?;
    let (spec, settings) = match config.hooks.iter().find(|s| s.name == name) {
        Some(entry) => {
            let mut spec = entry.clone();
            spec.path = file.clone();
            // The pin is the recorded component's, not the candidate's.
            spec.sha256 = None;
            spec.enabled = true;
            let from = config_path.as_deref().unwrap_or(Path::new("the config"));
            (
                spec,
                format!("config and limits of `{name}` in {}", from.display()),
            )
        }
        None => (
            HookSpec::new(&name, &file),
            "default limits, no config".to_string(),
        ),
    };
    let host = super::super::hooks_cmd::host(&config)?;
    let hook = TrialHook::load(&host, &spec)
        .await
        .with_context(|| format!("cannot load the candidate {}", file.display()))?;
    println!(
        "replaying `{name}` from {} through {} (sha256 {}; {settings})",
        args.log.display(),
        file.display(),
        hook.sha256()
    );

    let mut tally = Tally::default();
    for part in parts(&args.log)? {
        replay_file(&part, &hook, &mut tally).await?;
    }
    if tally.replayed + tally.failed == 0 {
        let hooks: Vec<String> = tally.hooks.iter().map(|h| format!("`{h}`")).collect();
        bail!(
            "{}: no pre-stage record of hook `{name}` to replay (hooks with pre-stage records: {})",
            args.log.display(),
            if hooks.is_empty() {
                "none".into()
            } else {
                hooks.join(", ")
            }
        );
    }
    let reworded = match tally.reworded {
        0 => String::new(),
        n => format!(" ({n} with another deny reason)"),
    };
    println!(
        "replayed {}: {} unchanged{reworded}, {} changed; skipped {} ({} of other hooks or \
         stages, {} failed calls)",
        tally.replayed,
        tally.unchanged,
        tally.changed,
        tally.other + tally.failed,
        tally.other,
        tally.failed
    );
    Ok(if tally.changed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The files of the log, oldest first: FILE.1 when it exists (the server renames FILE to it
/// when FILE reaches its size limit), then FILE, which must exist.
fn parts(log: &Path) -> Result<Vec<PathBuf>> {
    let mut rotated = log.as_os_str().to_owned();
    rotated.push(".1");
    let rotated = PathBuf::from(rotated);
    std::fs::metadata(log).with_context(|| format!("cannot read {}", log.display()))?;
    Ok(if rotated.exists() {
        vec![rotated, log.to_path_buf()]
    } else {
        vec![log.to_path_buf()]
    })
}

async fn replay_file(path: &Path, hook: &TrialHook, tally: &mut Tally) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Logged = match serde_json::from_str(line.trim_end()) {
            Ok(r) => r,
            // The server may be writing the last line as we read it.
            Err(_) if !line.ends_with('\n') => break,
            Err(e) => bail!(
                "{}:{number}: not a decision-log record: {e}",
                path.display()
            ),
        };
        if record.hook != hook.spec().name || record.stage != "pre" {
            if record.stage == "pre" && !tally.hooks.contains(&record.hook) {
                tally.hooks.insert(record.hook.clone());
            }
            tally.other += 1;
            continue;
        }
        if record.decision == "failed" {
            tally.failed += 1;
            continue;
        }
        if !matches!(record.decision.as_str(), "allow" | "deny" | "modify") {
            bail!(
                "{}:{number}: unknown pre-stage decision `{}`",
                path.display(),
                record.decision
            );
        }
        let now = hook.pre_as_recorded(record.request.clone()).await;
        tally.replayed += 1;
        match compare(&record, &now.decision) {
            Compared::Same => tally.unchanged += 1,
            Compared::Reworded => {
                tally.unchanged += 1;
                tally.reworded += 1;
            }
            Compared::Changed => {
                tally.changed += 1;
                print_change(&record, &now.decision);
            }
        }
    }
    Ok(())
}

fn compare(record: &Logged, now: &TrialDecision) -> Compared {
    match (record.decision.as_str(), now) {
        // A hook its matcher keeps away from a request lets it through, as an allow does.
        ("allow", TrialDecision::NotMatched | TrialDecision::Decided(PreDecision::Allow)) => {
            Compared::Same
        }
        ("deny", TrialDecision::Decided(PreDecision::Deny(reason))) => {
            if record.reason.as_ref() == Some(reason) {
                Compared::Same
            } else {
                Compared::Reworded
            }
        }
        ("modify", TrialDecision::Decided(PreDecision::Modify(patch)))
            if record.patch.as_ref() == Some(patch) =>
        {
            Compared::Same
        }
        _ => Compared::Changed,
    }
}

fn print_change(record: &Logged, now: &TrialDecision) {
    let recorded = match record.decision.as_str() {
        "deny" => format!("deny: {}", record.reason.as_deref().unwrap_or("")),
        "modify" => format!(
            "modify: {}",
            record
                .patch
                .as_ref()
                .map_or("?".into(), super::corpus::describe_patch)
        ),
        other => other.to_string(),
    };
    println!(
        "CHANGED {}  job {}  {}",
        super::super::jobs_cmd::format_time(record.time),
        record.job_id,
        record.request.command.replace('\n', " ")
    );
    println!("    recorded: {recorded}");
    println!("    now:      {}", describe(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(decision: &str, reason: Option<&str>) -> Logged {
        serde_json::from_value(serde_json::json!({
            "time": 0.0, "job_id": "j", "hook": "h", "stage": "pre", "decision": decision,
            "reason": reason, "request": {"command": "ls"}, "sha256": "x", "fuel": 1
        }))
        .unwrap()
    }

    #[test]
    fn a_deny_with_another_reason_is_the_same_decision() {
        let deny = |r: &str| TrialDecision::Decided(PreDecision::Deny(r.into()));
        let rec = logged("deny", Some("no"));
        assert_eq!(compare(&rec, &deny("no")), Compared::Same);
        assert_eq!(compare(&rec, &deny("nope")), Compared::Reworded);
        let allow = TrialDecision::Decided(PreDecision::Allow);
        assert_eq!(compare(&rec, &allow), Compared::Changed);
        let rec = logged("allow", None);
        assert_eq!(compare(&rec, &TrialDecision::NotMatched), Compared::Same);
    }

    #[test]
    fn a_modify_with_another_patch_is_a_change() {
        let mut rec = logged("modify", None);
        let patch = RequestPatch {
            cwd: Some("/a".into()),
            ..RequestPatch::default()
        };
        rec.patch = Some(patch.clone());
        let now = |p: RequestPatch| TrialDecision::Decided(PreDecision::Modify(p));
        assert_eq!(compare(&rec, &now(patch.clone())), Compared::Same);
        let other = RequestPatch {
            cwd: Some("/b".into()),
            ..patch
        };
        assert_eq!(compare(&rec, &now(other)), Compared::Changed);
    }

    #[test]
    fn the_rotated_part_is_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.jsonl");
        assert!(parts(&log).is_err());
        std::fs::write(&log, "").unwrap();
        assert_eq!(parts(&log).unwrap(), vec![log.clone()]);
        std::fs::write(dir.path().join("d.jsonl.1"), "").unwrap();
        assert_eq!(
            parts(&log).unwrap(),
            vec![dir.path().join("d.jsonl.1"), log]
        );
    }
}
