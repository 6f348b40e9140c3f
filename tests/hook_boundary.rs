//! The hook boundary under fire: a real component (`test-hook`, modes `random`) answers each
//! call with a well-typed answer drawn at random — strings from every Unicode plane with NUL
//! and controls, empty or at or past each host bound or up to 4 MiB, lists of up to 100,000
//! entries, numbers at their extremes. Every answer must be accepted within the host's bounds
//! or refused as `invalid`, never anything else, and the host's memory must level off.
//! `CCX_HOOK_FUZZ_CASES` sets the number of calls per stage (300 by default; the README gives
//! the long run).

use std::collections::BTreeMap;

use crate::util::{request, rss_kib, test_hook};
use ccx::hooks::{
    FailureKind, HookHost, HookResult, HookSet, HookSpec, HostOptions, JobStatus,
    MAX_ANNOTATION_KEY_BYTES, MAX_ANNOTATION_VALUE_BYTES, MAX_ANNOTATIONS, MAX_PATCH_ENV,
    MAX_REASON_BYTES, PreOutcome, Verdict,
};

fn cases() -> usize {
    std::env::var("CCX_HOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn hostile(seed: &str) -> HookSpec {
    let mut spec = test_hook(
        "hostile",
        &[("mode", "random"), ("post_mode", "random"), ("seed", seed)],
    );
    // Room to build 4 MiB answers: the point is what the host does with them.
    spec.fuel = 2_000_000_000;
    spec.memory_mb = 128;
    spec.timeout_ms = 20_000;
    spec
}

fn result_of(command: &str) -> HookResult {
    HookResult {
        request: request(command),
        received: request(command),
        status: JobStatus::Completed,
        exit_code: Some(0),
        signal: None,
        duration_ms: 1,
        stdout_bytes: 0,
        stderr_bytes: 0,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}

/// A request the host accepted from a patch: within the bounds it promises.
fn check_accepted(req: &ccx::hooks::HookRequest, case: usize) {
    assert!(
        !req.command.contains('\0'),
        "case {case}: NUL in the command"
    );
    assert!(
        req.cwd.as_deref().is_none_or(|c| !c.contains('\0')),
        "case {case}: NUL in the cwd"
    );
    for (k, v) in &req.env {
        assert!(
            !k.is_empty() && !k.contains(['\0', '=']) && !v.contains('\0'),
            "case {case}: env {k:?}"
        );
    }
    assert!(
        req.env.len() <= MAX_PATCH_ENV + 1,
        "case {case}: {} env",
        req.env.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_accepted_within_bounds_or_refused_as_invalid() {
    let host = HookHost::new(HostOptions {
        cache_dir: Some(crate::util::shared_cache()),
        ..HostOptions::default()
    })
    .expect("hook host");
    let set = HookSet::load(&host, &[hostile("1")]);
    assert!(set.load_errors().is_empty(), "{:?}", set.load_errors());
    let n = cases();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut rss_after_warmup = 0;
    for case in 0..n {
        if case == n / 5 {
            rss_after_warmup = rss_kib(std::process::id());
        }
        let command = format!("echo case {case}");
        let pre = set.run_pre(request(&command)).await;
        let outcome = match &pre.outcome {
            PreOutcome::Deny { reason, .. } => {
                assert!(reason.len() <= MAX_REASON_BYTES, "case {case}");
                "pre: denied"
            }
            PreOutcome::Allow {
                request,
                modified_by,
            } => {
                check_accepted(request, case);
                if modified_by.is_empty() {
                    "pre: allowed"
                } else {
                    "pre: modified"
                }
            }
        };
        for w in &pre.warnings {
            assert_eq!(w.kind, FailureKind::Invalid, "case {case}: {}", w.message);
        }
        let outcome = if pre.warnings.is_empty() {
            outcome
        } else {
            "pre: invalid"
        };
        *seen.entry(outcome.into()).or_default() += 1;

        let post = set.run_post(&result_of(&command)).await;
        for w in &post.warnings {
            assert_eq!(w.kind, FailureKind::Invalid, "case {case}: {}", w.message);
        }
        let report = &post.reports[0];
        assert!(report.annotations.len() <= MAX_ANNOTATIONS, "case {case}");
        for (k, v) in &report.annotations {
            assert!(k.len() <= MAX_ANNOTATION_KEY_BYTES, "case {case}");
            assert!(v.len() <= MAX_ANNOTATION_VALUE_BYTES, "case {case}");
        }
        if let Some(Verdict::Fail(why)) = &report.verdict {
            assert!(why.len() <= MAX_REASON_BYTES, "case {case}");
        }
        let outcome = if !post.warnings.is_empty() {
            "post: invalid"
        } else if report.annotations.is_empty() {
            "post: accepted, no annotations"
        } else {
            "post: accepted with annotations"
        };
        *seen.entry(outcome.into()).or_default() += 1;
    }
    let rss_end = rss_kib(std::process::id());
    // Every kind of answer came up.
    for kind in [
        "pre: allowed",
        "pre: denied",
        "pre: modified",
        "pre: invalid",
        "post: invalid",
        "post: accepted with annotations",
    ] {
        assert!(seen.contains_key(kind), "never {kind}: {seen:?}");
    }
    // The host keeps nothing of an answer: memory levels off after the warm-up (this
    // process also runs other tests, hence the absolute margin).
    let growth_mib = (rss_end as f64 - rss_after_warmup as f64) / 1024.0;
    assert!(
        growth_mib < 128.0,
        "RSS {rss_after_warmup} KiB -> {rss_end} KiB"
    );
    println!(
        "hook boundary: {n} random answers per stage: {seen:?}; RSS after warm-up {:.1} MiB, \
         at the end {:.1} MiB",
        rss_after_warmup as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
}
