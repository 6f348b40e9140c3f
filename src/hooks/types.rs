//! Plain Rust mirrors of the WIT types, the conversions to and from the `bindgen!` types, and
//! the checks that turn a guest's answer into one the server can trust.
//!
//! The rest of ccx only ever sees these types: they are `serde` data with no wasmtime in them,
//! so the executor, the protocol and the CLI can use them without knowing about components.

use serde::{Deserialize, Serialize};

use super::bindings::types as wit;

/// Largest answer a hook may give, counting the bytes of every string in it. An answer past a
/// bound is a failure of kind `invalid`, so a buggy or hostile hook cannot blow up the events
/// the server sends to clients.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most annotations one post-hook may add.
pub const MAX_ANNOTATIONS: usize = 64;
/// Longest annotation key, in bytes.
pub const MAX_ANNOTATION_KEY_BYTES: usize = 128;
/// Longest annotation value, in bytes.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 4 * 1024;
/// Longest deny reason or verdict failure reason, in bytes.
pub const MAX_REASON_BYTES: usize = 4 * 1024;
/// Most `set-env` plus `unset-env` entries in one patch.
pub const MAX_PATCH_ENV: usize = 256;

/// A request as the hooks see it (mirror of WIT `exec-request`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRequest {
    /// The connection's session id.
    #[serde(default)]
    pub session_id: String,
    /// The job's id, unique on this server.
    #[serde(default)]
    pub job_id: String,
    /// The shell command line, run as `sh -c`.
    pub command: String,
    /// The working directory, when the request set one.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables the request sets, not the server's own environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The job's timeout in milliseconds, when one applies.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How the job's stdin is given.
    #[serde(default)]
    pub stdin: StdinMode,
    /// The job's terminal, when it runs on one.
    #[serde(default)]
    pub terminal: Option<TerminalSize>,
    /// The resource limits in force.
    #[serde(default)]
    pub limits: HookLimits,
    /// The client's labels.
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// Who submitted the request.
    #[serde(default)]
    pub submitter: Submitter,
    /// The host's parse of `command` (see [`HookRequest::parse`]).
    #[serde(default)]
    pub commands: Vec<super::parse::SimpleCommand>,
    /// Why `command` could not be parsed, if it could not.
    #[serde(default)]
    pub unparsed: Option<String>,
}

/// How a job's stdin is given (mirror of WIT `stdin-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StdinMode {
    /// `/dev/null`.
    #[default]
    None,
    /// Text given with the request, then closed.
    Text,
    /// Kept open for `input`.
    Open,
    /// A terminal.
    Terminal,
}

/// A terminal's size (mirror of WIT `terminal-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// Resource limits (mirror of WIT `limits`); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookLimits {
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
    #[serde(default)]
    pub open_files: Option<u64>,
    #[serde(default)]
    pub file_size_mb: Option<u64>,
}

/// Who submitted a request (mirror of WIT `submitter`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitter {
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
}

/// How a job ended (mirror of WIT `job-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// The command exited with code 0.
    Completed,
    /// The command exited non-zero, was ended by a signal ccx did not send, or could not start.
    Failed,
    /// The command was stopped at its timeout.
    #[serde(alias = "timed-out")]
    TimedOut,
    /// The command was canceled.
    Canceled,
}

/// A finished job as the post-hooks see it (mirror of WIT `exec-result`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookResult {
    /// The request as it ran, after pre-hook changes.
    pub request: HookRequest,
    /// The request as the client sent it (0.2.0 hooks only).
    #[serde(default)]
    pub received: HookRequest,
    /// How the job ended.
    pub status: JobStatus,
    /// The exit code, when the process exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Wall-clock run time in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Total bytes written to stdout.
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Total bytes written to stderr.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// The last bytes of stdout, lossy UTF-8.
    #[serde(default)]
    pub stdout_tail: String,
    /// The last bytes of stderr, lossy UTF-8.
    #[serde(default)]
    pub stderr_tail: String,
}

/// Changes a pre-hook asked for (mirror of WIT `request-patch`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPatch {
    /// Replaces the command line.
    pub command: Option<String>,
    /// Replaces the working directory.
    pub cwd: Option<String>,
    /// Variables to set, replacing any of the same name.
    pub set_env: Vec<(String, String)>,
    /// Names of variables to remove.
    pub unset_env: Vec<String>,
    /// Replaces the timeout.
    pub timeout_ms: Option<u64>,
    /// Replaces the limits, field by field (0.2.0 hooks only; the executor lowers a value
    /// above the server's maximum to it).
    #[serde(default)]
    pub limits: Option<HookLimits>,
}

/// A pre-hook's answer, once checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreDecision {
    /// Run the request as it is.
    Allow,
    /// Refuse the request with this reason.
    Deny(String),
    /// Change the request.
    Modify(RequestPatch),
}

impl PreDecision {
    /// The decision's name as reported in [`super::HookReport::decision`].
    pub fn name(&self) -> &'static str {
        match self {
            PreDecision::Allow => "allow",
            PreDecision::Deny(_) => "deny",
            PreDecision::Modify(_) => "modify",
        }
    }
}

/// A post-hook's judgement; serializes as `"pass"` or `{"fail": "reason"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The job's result is acceptable.
    Pass,
    /// The job's result is not acceptable, with a reason.
    Fail(String),
}

/// A post-hook's answer, once checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PostOutcome {
    /// Notes for the job's completion event; serialized as a JSON object.
    #[serde(serialize_with = "serialize_pairs")]
    pub annotations: Vec<(String, String)>,
    /// The hook's verdict, when it gave one.
    pub verdict: Option<Verdict>,
}

/// Serializes key/value pairs as a JSON object, keeping their order (a later duplicate key
/// wins in most JSON readers, which matches "later annotation replaces earlier").
pub(crate) fn serialize_pairs<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

impl HookRequest {
    /// Parses `command` into `commands` (or `unparsed`), resolving programs on the request's
    /// `PATH`, else the server's.
    pub fn parse(&mut self) {
        let path = self
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let resolve = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| std::path::Path::new(d).join(name))
                .find(|p| {
                    std::fs::metadata(p)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .map(|p| p.display().to_string())
        };
        let parsed = super::parse::parse(&self.command, &resolve);
        self.commands = parsed.commands;
        self.unparsed = parsed.unparsed;
    }

    /// Applies a checked patch: command, cwd and timeout replace; `set_env` upserts (keeping the
    /// variable's position when it exists); `unset_env` removes.
    pub fn apply(&mut self, patch: &RequestPatch) {
        if let Some(command) = &patch.command {
            self.command = command.clone();
            // Later hooks and matchers see the changed command's parse.
            self.parse();
        }
        if let Some(cwd) = &patch.cwd {
            self.cwd = Some(cwd.clone());
        }
        if let Some(timeout) = patch.timeout_ms {
            self.timeout_ms = Some(timeout);
        }
        if let Some(l) = &patch.limits {
            let merge = |new: Option<u64>, old: Option<u64>| new.or(old);
            self.limits = HookLimits {
                memory_mb: merge(l.memory_mb, self.limits.memory_mb),
                pids: merge(l.pids, self.limits.pids),
                cpu_seconds: merge(l.cpu_seconds, self.limits.cpu_seconds),
                open_files: merge(l.open_files, self.limits.open_files),
                file_size_mb: merge(l.file_size_mb, self.limits.file_size_mb),
            };
        }
        for (key, value) in &patch.set_env {
            match self.env.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.clone(),
                None => self.env.push((key.clone(), value.clone())),
            }
        }
        self.env.retain(|(k, _)| !patch.unset_env.contains(k));
    }
}

// ---- checking the guest's answers -------------------------------------------------------------

/// Why an answer was refused; becomes a failure of kind `invalid`.
pub(crate) type Invalid = String;

fn check_len(what: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return Err(format!("{what} is {} bytes (limit {max})", s.len()));
    }
    Ok(())
}

fn check_answer_size(total: usize) -> Result<(), Invalid> {
    if total > MAX_ANSWER_BYTES {
        return Err(format!(
            "answer is {total} bytes (limit {MAX_ANSWER_BYTES})"
        ));
    }
    Ok(())
}

/// A string that will reach `exec`/`sh -c` or an environment block must hold no NUL byte.
fn check_no_nul(what: &str, s: &str) -> Result<(), Invalid> {
    if s.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

fn check_env_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(format!("invalid environment variable name {name:?}"));
    }
    Ok(())
}

/// Checks a pre-hook's answer against the documented bounds.
pub(crate) fn check_pre(answer: wit::PreDecision) -> Result<PreDecision, Invalid> {
    match answer {
        wit::PreDecision::Allow => Ok(PreDecision::Allow),
        wit::PreDecision::Deny(reason) => {
            check_len("deny reason", &reason, MAX_REASON_BYTES)?;
            Ok(PreDecision::Deny(reason))
        }
        wit::PreDecision::Modify(p) => {
            let entries = p.set_env.len() + p.unset_env.len();
            if entries > MAX_PATCH_ENV {
                return Err(format!(
                    "patch has {entries} environment entries (limit {MAX_PATCH_ENV})"
                ));
            }
            let total = p.command.as_ref().map_or(0, String::len)
                + p.cwd.as_ref().map_or(0, String::len)
                + p.set_env
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
                + p.unset_env.iter().map(String::len).sum::<usize>();
            check_answer_size(total)?;
            if let Some(command) = &p.command {
                check_no_nul("patched command", command)?;
            }
            if let Some(cwd) = &p.cwd {
                check_no_nul("patched cwd", cwd)?;
            }
            for (k, v) in &p.set_env {
                check_env_name(k)?;
                check_no_nul("environment value", v)?;
            }
            for k in &p.unset_env {
                check_env_name(k)?;
            }
            Ok(PreDecision::Modify(RequestPatch {
                command: p.command,
                cwd: p.cwd,
                set_env: p.set_env,
                unset_env: p.unset_env,
                timeout_ms: p.timeout_ms,
                limits: p.limits.map(|l| HookLimits {
                    memory_mb: l.memory_mb,
                    pids: l.pids,
                    cpu_seconds: l.cpu_seconds,
                    open_files: l.open_files,
                    file_size_mb: l.file_size_mb,
                }),
            }))
        }
    }
}

/// Checks a post-hook's answer against the documented bounds.
pub(crate) fn check_post(answer: wit::PostOutcome) -> Result<PostOutcome, Invalid> {
    if answer.annotations.len() > MAX_ANNOTATIONS {
        return Err(format!(
            "{} annotations (limit {MAX_ANNOTATIONS})",
            answer.annotations.len()
        ));
    }
    let mut total = 0;
    for (k, v) in &answer.annotations {
        check_len("annotation key", k, MAX_ANNOTATION_KEY_BYTES)?;
        check_len("annotation value", v, MAX_ANNOTATION_VALUE_BYTES)?;
        total += k.len() + v.len();
    }
    let verdict = match answer.verdict {
        None => None,
        Some(wit::Verdict::Pass) => Some(Verdict::Pass),
        Some(wit::Verdict::Fail(reason)) => {
            check_len("verdict reason", &reason, MAX_REASON_BYTES)?;
            total += reason.len();
            Some(Verdict::Fail(reason))
        }
    };
    check_answer_size(total)?;
    Ok(PostOutcome {
        annotations: answer.annotations,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_replaces_upserts_and_removes() {
        let mut req = HookRequest {
            command: "ls".into(),
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            ..Default::default()
        };
        req.apply(&RequestPatch {
            command: Some("ls -l".into()),
            set_env: vec![("A".into(), "9".into()), ("C".into(), "3".into())],
            unset_env: vec!["B".into()],
            timeout_ms: Some(5),
            ..Default::default()
        });
        assert_eq!(req.command, "ls -l");
        assert_eq!(
            req.env,
            vec![("A".into(), "9".into()), ("C".into(), "3".into())]
        );
        assert_eq!(req.timeout_ms, Some(5));
        assert_eq!(req.cwd, None);
    }

    #[test]
    fn oversized_answers_are_invalid() {
        let err = check_pre(wit::PreDecision::Deny("x".repeat(MAX_REASON_BYTES + 1))).unwrap_err();
        assert!(err.contains("deny reason"), "{err}");
        let many = (0..=MAX_ANNOTATIONS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let err = check_post(wit::PostOutcome {
            annotations: many,
            verdict: None,
        })
        .unwrap_err();
        assert!(err.contains("annotations"), "{err}");
        let err = check_pre(wit::PreDecision::Modify(wit::RequestPatch {
            command: None,
            cwd: None,
            set_env: vec![("A=B".into(), "1".into())],
            unset_env: vec![],
            timeout_ms: None,
            limits: None,
        }))
        .unwrap_err();
        assert!(err.contains("variable name"), "{err}");
    }

    #[test]
    fn verdict_and_annotations_serialize_compactly() {
        let out = PostOutcome {
            annotations: vec![("k".into(), "v".into())],
            verdict: Some(Verdict::Fail("bad".into())),
        };
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(
            json,
            r#"{"annotations":{"k":"v"},"verdict":{"fail":"bad"}}"#
        );
        assert_eq!(serde_json::to_string(&Verdict::Pass).unwrap(), r#""pass""#);
    }
}
