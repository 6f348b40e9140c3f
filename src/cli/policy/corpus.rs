//! Policy corpora for `ccx hooks test`: TOML files of cases (a hook, a request, the decision
//! expected), read strictly — a typo is an error naming the file and the case, never a case
//! that passes by accident — and the comparison of a hook's answer with a case's expectation.

use anyhow::{Context, Result, anyhow, bail};
use ccx::hooks::{
    HookLimits, HookRequest, PreDecision, RequestPatch, StdinMode, Submitter, TerminalSize,
    TrialDecision,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One case, validated: the request to give the hook and what it must answer.
#[derive(Debug)]
pub(super) struct Case {
    /// `FILE:NAME`, as the table shows it.
    pub(super) id: String,
    /// `FILE: case N (`NAME`)`, as errors show it.
    pub(super) at: String,
    pub(super) hook: String,
    pub(super) request: HookRequest,
    pub(super) expect: Expect,
    /// For `deny`: a text the reason must contain.
    pub(super) reason_contains: Option<String>,
}

/// The decision a case expects.
#[derive(Debug)]
pub(super) enum Expect {
    Allow,
    Deny,
    /// A modify whose patch has every field given here (fields left out are not compared).
    Modify(Box<ModifyExpect>),
}

impl Expect {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Modify(_) => "modify",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCorpus {
    /// The hook of the cases that name none.
    hook: Option<String>,
    #[serde(default)]
    case: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    hook: Option<String>,
    request: CaseRequest,
    /// Checked by hand, for errors that say what is allowed.
    expect: toml::Value,
    reason_contains: Option<String>,
}

/// A case's request: the fields a client can set. The host's parse is added when it runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    command: String,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    stdin: StdinMode,
    terminal: Option<CaseTerminal>,
    #[serde(default)]
    limits: CaseLimits,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    submitter: CaseSubmitter,
}

// Strict mirrors of the library's request types, which accept unknown keys (they read JSON
// from newer or older peers); in a corpus an unknown key is a typo.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseTerminal {
    rows: u16,
    cols: u16,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseLimits {
    memory_mb: Option<u64>,
    pids: Option<u64>,
    cpu_seconds: Option<u64>,
    open_files: Option<u64>,
    file_size_mb: Option<u64>,
}

impl From<CaseLimits> for HookLimits {
    fn from(l: CaseLimits) -> HookLimits {
        HookLimits {
            memory_mb: l.memory_mb,
            pids: l.pids,
            cpu_seconds: l.cpu_seconds,
            open_files: l.open_files,
            file_size_mb: l.file_size_mb,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSubmitter {
    token_label: Option<String>,
    peer: Option<String>,
}

/// `expect = { modify = { … } }`: each field given must equal the patch's; `set_env` and
/// `unset_env` are compared without regard to order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModifyExpect {
    command: Option<String>,
    cwd: Option<String>,
    set_env: Option<BTreeMap<String, String>>,
    unset_env: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    limits: Option<CaseLimits>,
}

/// The `*.toml` files `paths` name: a file as it is, a directory's `*.toml` (not its
/// subdirectories), sorted. Errors: a path that does not exist, a directory without any.
pub(super) fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", path.display()))?;
        found.retain(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file());
        if found.is_empty() {
            bail!("{}: no *.toml corpus in this directory", path.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Reads one corpus. Errors name the file, and the case when one is at fault: TOML syntax,
/// an unknown key, a case without a hook, a bad `expect`, `reason_contains` without `deny`,
/// a file without cases.
pub(super) fn read(path: &Path) -> Result<Vec<Case>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: RawCorpus = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid corpus", path.display()))?;
    if raw.case.is_empty() {
        bail!("{}: no [[case]] in this corpus", path.display());
    }
    raw.case
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            // Named by its command when unnamed; a newline shows as `⏎` to keep one line a case.
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| c.request.command.replace('\n', "⏎"));
            let id = format!("{}:{name}", path.display());
            let at = || format!("{}: case {} (`{name}`)", path.display(), i + 1);
            let hook = c
                .hook
                .or_else(|| raw.hook.clone())
                .ok_or_else(|| anyhow!("{}: no `hook` (in the case or at the top)", at()))?;
            let expect = expect(c.expect).with_context(at)?;
            if c.reason_contains.is_some() && !matches!(expect, Expect::Deny) {
                bail!(
                    "{}: `reason_contains` needs `expect = \"deny\"` (only a deny has a reason)",
                    at()
                );
            }
            Ok(Case {
                id,
                at: at(),
                hook,
                request: request(c.request),
                expect,
                reason_contains: c.reason_contains,
            })
        })
        .collect()
}

fn expect(value: toml::Value) -> Result<Expect> {
    const SHAPES: &str = "`expect` must be \"allow\", \"deny\", \"modify\" or { modify = { … } }";
    match value {
        toml::Value::String(s) => match s.as_str() {
            "allow" => Ok(Expect::Allow),
            "deny" => Ok(Expect::Deny),
            "modify" => Ok(Expect::Modify(Box::default())),
            other => bail!("{SHAPES}, not \"{other}\""),
        },
        toml::Value::Table(mut t) if t.len() == 1 && t.contains_key("modify") => {
            let fields = t.remove("modify").expect("checked above");
            let m: ModifyExpect = fields
                .try_into()
                .map_err(|e| anyhow!("`expect.modify`: {}", e.message()))?;
            Ok(Expect::Modify(Box::new(m)))
        }
        _ => bail!("{SHAPES}"),
    }
}

fn request(r: CaseRequest) -> HookRequest {
    HookRequest {
        command: r.command,
        cwd: r.cwd,
        env: r.env.into_iter().collect(),
        timeout_ms: r.timeout_ms,
        stdin: r.stdin,
        terminal: r.terminal.map(|t| TerminalSize {
            rows: t.rows,
            cols: t.cols,
        }),
        limits: r.limits.into(),
        labels: r.labels.into_iter().collect(),
        submitter: Submitter {
            token_label: r.submitter.token_label,
            peer: r.submitter.peer,
        },
        ..HookRequest::default()
    }
}

/// `allow`, `deny`, `modify`, `allow (not matched)` or `failed (KIND)`.
pub(super) fn decision_name(d: &TrialDecision) -> String {
    match d {
        TrialDecision::NotMatched => "allow (not matched)".into(),
        TrialDecision::Decided(d) => d.name().into(),
        TrialDecision::Failed(f) => {
            format!("failed ({})", format!("{:?}", f.kind).to_lowercase())
        }
    }
}

/// A patch as one line: only the fields it sets.
pub(super) fn describe_patch(p: &RequestPatch) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &p.command {
        parts.push(format!("command={c:?}"));
    }
    if let Some(c) = &p.cwd {
        parts.push(format!("cwd={c:?}"));
    }
    for (k, v) in &p.set_env {
        parts.push(format!("set {k}={v:?}"));
    }
    for k in &p.unset_env {
        parts.push(format!("unset {k}"));
    }
    if let Some(t) = p.timeout_ms {
        parts.push(format!("timeout_ms={t}"));
    }
    if let Some(l) = &p.limits {
        parts.push(format!(
            "limits={}",
            serde_json::to_string(l).unwrap_or_default()
        ));
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join(", ")
    }
}

/// Why `got` does not meet `case`, or `None` when it does.
pub(super) fn mismatch(case: &Case, got: &TrialDecision) -> Option<String> {
    let decided = match got {
        TrialDecision::Failed(f) => return Some(f.message.clone()),
        TrialDecision::NotMatched => {
            return match case.expect {
                Expect::Allow => None,
                _ => Some("the hook's `match` does not match: a server would not call it".into()),
            };
        }
        TrialDecision::Decided(d) => d,
    };
    match (&case.expect, decided) {
        (Expect::Allow, PreDecision::Allow) => None,
        (Expect::Deny, PreDecision::Deny(reason)) => match &case.reason_contains {
            Some(want) if !reason.contains(want.as_str()) => {
                Some(format!("reason {reason:?} does not contain {want:?}"))
            }
            _ => None,
        },
        (Expect::Modify(want), PreDecision::Modify(patch)) => modify_mismatch(want, patch),
        (_, PreDecision::Deny(reason)) => Some(format!("denied: {reason}")),
        (_, PreDecision::Modify(patch)) => Some(format!("modified: {}", describe_patch(patch))),
        (_, PreDecision::Allow) => Some("allowed".into()),
    }
}

fn modify_mismatch(want: &ModifyExpect, got: &RequestPatch) -> Option<String> {
    let mut wrong = Vec::new();
    let mut field = |name: &str, want: Option<String>, got: String| {
        if let Some(w) = want
            && w != got
        {
            wrong.push(format!("{name}: expected {w}, got {got}"));
        }
    };
    let opt = |v: &Option<String>| v.as_ref().map_or("none".into(), |s| format!("{s:?}"));
    field(
        "command",
        want.command.as_ref().map(|c| format!("{c:?}")),
        opt(&got.command),
    );
    field(
        "cwd",
        want.cwd.as_ref().map(|c| format!("{c:?}")),
        opt(&got.cwd),
    );
    let env = |m: &BTreeMap<String, String>| format!("{m:?}");
    field(
        "set_env",
        want.set_env.as_ref().map(env),
        env(&got.set_env.iter().cloned().collect()),
    );
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        format!("{v:?}")
    };
    field(
        "unset_env",
        want.unset_env.as_deref().map(sorted),
        sorted(&got.unset_env),
    );
    field(
        "timeout_ms",
        want.timeout_ms.map(|t| t.to_string()),
        got.timeout_ms.map_or("none".into(), |t| t.to_string()),
    );
    let limits = |l: &HookLimits| serde_json::to_string(l).unwrap_or_default();
    field(
        "limits",
        want.limits.clone().map(|l| limits(&l.into())),
        got.limits.as_ref().map_or("none".into(), limits),
    );
    (!wrong.is_empty()).then(|| format!("patch differs: {}", wrong.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(text: &str) -> Result<Vec<Case>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        read(&path)
    }

    #[test]
    fn a_case_reads_with_its_defaults() {
        let cases = corpus(
            r#"hook = "h"
[[case]]
request = { command = "ls", env = { B = "2", A = "1" }, labels = { team = "x" } }
expect = "allow"
"#,
        )
        .unwrap();
        assert_eq!(cases[0].hook, "h");
        assert!(cases[0].id.ends_with("c.toml:ls"), "{}", cases[0].id);
        assert_eq!(cases[0].request.env[0], ("A".into(), "1".into()));
        assert_eq!(cases[0].request.labels[0], ("team".into(), "x".into()));
    }

    #[test]
    fn mistakes_name_the_case() {
        let err = |text: &str| format!("{:#}", corpus(text).unwrap_err());
        let e = err("[[case]]\nhook = \"h\"\nrequest = { command = \"ls\" }\nexpect = \"allwo\"\n");
        assert!(
            e.contains("case 1 (`ls`)") && e.contains("\"allwo\""),
            "{e}"
        );
        let e = err(
            "[[case]]\nname = \"n\"\nhook = \"h\"\nrequest = { command = \"ls\" }\n\
             expect = { modify = { comand = \"x\" } }\n",
        );
        assert!(e.contains("case 1 (`n`)") && e.contains("comand"), "{e}");
        let e = err("[[case]]\nrequest = { command = \"ls\" }\nexpect = \"allow\"\n");
        assert!(e.contains("no `hook`"), "{e}");
        let e = err(
            "[[case]]\nhook = \"h\"\nrequest = { command = \"ls\" }\nexpect = \"allow\"\n\
             reason_contains = \"x\"\n",
        );
        assert!(e.contains("reason_contains"), "{e}");
        let e = err("[[case]]\nhook = \"h\"\nrequest = { command = \"ls\", cdw = \"/\" }\n");
        assert!(e.contains("cdw"), "{e}");
    }

    #[test]
    fn a_modify_expectation_compares_only_the_fields_given() {
        let want = ModifyExpect {
            set_env: Some(BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
            ])),
            ..ModifyExpect::default()
        };
        let mut got = RequestPatch {
            command: Some("other".into()),
            set_env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            ..RequestPatch::default()
        };
        assert_eq!(modify_mismatch(&want, &got), None);
        got.set_env.pop();
        let why = modify_mismatch(&want, &got).unwrap();
        assert!(why.starts_with("patch differs: set_env"), "{why}");
    }
}
