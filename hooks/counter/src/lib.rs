//! `counter`: a post-hook that counts finished runs per program (the command line's first
//! word, after any `NAME=value` assignments) in the hook's key/value store, and annotates the
//! job with the totals: `program`, `runs` (of this program), `total` (all runs) and `programs`
//! (distinct programs seen).
//!
//! The counts live in the host's memory: they survive config reloads and are shared by every
//! connection, and start again from zero when the server restarts. Keys: `runs:<program>`,
//! `total`, `programs`. Config: `key_prefix` (default empty) to keep two counters apart.

wit_bindgen::generate!({
    path: "../../wit",
    world: "post-hook",
});

use ccx::hooks::host;

struct Counter;

fn bump(key: &str) -> u64 {
    let n = host::kv_get(key)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    host::kv_set(key, &n.to_string());
    n
}

impl Guest for Counter {
    fn post_execute(job: ExecResult) -> PostOutcome {
        let prefix = host::config()
            .into_iter()
            .find(|(k, _)| k == "key_prefix")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let program = job
            .request
            .command
            .split_whitespace()
            .find(|w| !w.contains('=') || w.starts_with('='))
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        // Keys are bounded by the host (256 bytes); a giant first word is counted as `(long)`.
        let program = if program.len() > 128 {
            "(long)"
        } else {
            program
        };
        let runs_key = format!("{prefix}runs:{program}");
        let first_time = host::kv_get(&runs_key).is_none();
        let runs = bump(&runs_key);
        let total = bump(&format!("{prefix}total"));
        let programs_key = format!("{prefix}programs");
        let programs = if first_time {
            bump(&programs_key)
        } else {
            host::kv_get(&programs_key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
        };
        PostOutcome {
            annotations: vec![
                ("program".into(), program.into()),
                ("runs".into(), runs.to_string()),
                ("total".into(), total.to_string()),
                ("programs".into(), programs.to_string()),
            ],
            verdict: None,
        }
    }
}

export!(Counter);
