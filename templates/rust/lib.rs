//! {{name}}: a ccx hook. See README.md for building and trying it, and ccx's docs/hooks.md for
//! the contract.

wit_bindgen::generate!({
    path: "wit",
    world: "{{world}}",
});

use ccx::hooks::host;
@@pre
use ccx::hooks::types::RequestPatch;
@@end
@@post
use ccx::hooks::types::{JobStatus, Verdict};
@@end

struct Hook;

/// A value from this hook's `config` table in ccx.toml.
fn config(key: &str) -> Option<String> {
    host::config()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

impl Guest for Hook {
@@pre
    /// Runs before a command: allow it, deny it with a reason, or modify it.
    fn pre_execute(request: ExecRequest) -> PreDecision {
        // Example: deny commands containing any of the comma-separated `deny` words.
        let deny = config("deny").unwrap_or_default();
        for word in deny.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if request.command.contains(word) {
                return PreDecision::Deny(format!("`{word}` is not allowed here"));
            }
        }
        // Example: tell the command it runs under this hook.
        host::log(host::Level::Debug, &format!("allowing `{}`", request.command));
        PreDecision::Modify(RequestPatch {
            command: None,
            cwd: None,
            set_env: vec![("CCX_HOOK".into(), "{{name}}".into())],
            unset_env: vec![],
            timeout_ms: None,
            limits: None,
        })
    }
@@end
@@post
    /// Runs after a command: annotate the job and, if you like, judge it.
    fn post_execute(job: ExecResult) -> PostOutcome {
        let lines = job.stdout_tail.lines().count();
        let annotations = vec![
            ("stdout_tail_lines".into(), lines.to_string()),
            ("stdout_bytes".into(), job.stdout_bytes.to_string()),
        ];
        // Example: fail jobs that did not exit 0 when `fail_on_error = true`.
        let verdict = if config("fail_on_error").as_deref() == Some("true") {
            match (job.status, job.exit_code) {
                (JobStatus::Completed, Some(0)) => Some(Verdict::Pass),
                (_, Some(code)) => Some(Verdict::Fail(format!("exit code {code}"))),
                _ => Some(Verdict::Fail("the command did not exit".into())),
            }
        } else {
            None
        };
        PostOutcome {
            annotations,
            verdict,
        }
    }
@@end
}

export!(Hook);
