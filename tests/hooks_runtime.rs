//! The hook runtime with real components and real wasmtime: decisions, chains, every limit (in
//! pairs where it makes sense), failure policies, the sandbox's output capture, kv, counters and
//! the artifact cache. The guests are built once per test process by `hooks/build.sh`.
//!
//! Over 500 lines: one module per area of the suite (see `tests/tests.rs`): every limit and
//! failure policy has its scenario here.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::util::{component, fail_closed, request, scratch, shared_cache, test_hook};
use ccx::hooks::{
    FailureKind, HookHost, HookResult, HookSet, HookSpec, HookState, HostOptions, JobStatus,
    LoadSource, PreOutcome, RunInput, Stage, Verdict, run_once,
};

/// One host for the tests that do not look at the cache (so it uses the shared one): its
/// counters and kv stores are keyed by hook name, so each test uses names of its own.
fn host() -> &'static Arc<HookHost> {
    static HOST: OnceLock<Arc<HookHost>> = OnceLock::new();
    HOST.get_or_init(|| {
        HookHost::new(HostOptions {
            cache_dir: Some(shared_cache()),
            ..HostOptions::default()
        })
        .expect("hook host")
    })
}

fn load(specs: &[HookSpec]) -> HookSet {
    let set = HookSet::load(host(), specs);
    assert!(set.load_errors().is_empty(), "{:?}", set.load_errors());
    set
}

fn job(command: &str, exit_code: i32) -> HookResult {
    HookResult {
        request: request(command),
        received: request(command),
        status: JobStatus::Completed,
        exit_code: Some(exit_code),
        signal: None,
        duration_ms: 12,
        stdout_bytes: 6,
        stderr_bytes: 0,
        stdout_tail: "hello\n".into(),
        stderr_tail: String::new(),
    }
}

fn denied(outcome: &PreOutcome) -> (&str, &str) {
    match outcome {
        PreOutcome::Deny { hook, reason } => (hook, reason),
        other => panic!("expected a deny, got {other:?}"),
    }
}

fn allowed(outcome: &PreOutcome) -> &ccx::hooks::HookRequest {
    match outcome {
        PreOutcome::Allow { request, .. } => request,
        other => panic!("expected an allow, got {other:?}"),
    }
}

// ---- decisions and chains --------------------------------------------------------------------

#[tokio::test]
async fn allow_passes_the_request_through_unchanged() {
    let set = load(&[test_hook("allow-1", &[("mode", "allow")])]);
    let chain = set.run_pre(request("ls -l")).await;
    // Unchanged but for the host's parse, which every chain adds.
    let mut expected = request("ls -l");
    expected.parse();
    assert_eq!(expected.commands[0].argv, ["ls", "-l"]);
    assert_eq!(allowed(&chain.outcome), &expected);
    assert!(chain.warnings.is_empty());
    assert_eq!(chain.reports.len(), 1);
    assert_eq!(chain.reports[0].decision.as_deref(), Some("allow"));
    assert!(chain.reports[0].fuel_used > 0);
    let stats = host().stats("allow-1");
    assert_eq!((stats.calls, stats.allow), (1, 1));
}

#[tokio::test]
async fn deny_ends_the_chain_and_later_hooks_are_not_called() {
    let set = load(&[
        test_hook("deny-1", &[("mode", "deny"), ("reason", "no way")]),
        test_hook("deny-after", &[("mode", "allow")]),
    ]);
    let chain = set.run_pre(request("rm -rf /tmp/x")).await;
    assert_eq!(denied(&chain.outcome), ("deny-1", "no way"));
    assert_eq!(chain.reports.len(), 1);
    assert_eq!(host().stats("deny-after").calls, 0);
    assert_eq!(host().stats("deny-1").deny, 1);
}

#[tokio::test]
async fn modify_is_seen_by_the_next_hook() {
    let set = load(&[
        test_hook(
            "modify-1",
            &[
                ("mode", "modify"),
                ("command", "echo patched"),
                ("set_env", "ADDED=yes"),
            ],
        ),
        test_hook(
            "modify-guard",
            &[("mode", "deny-if-contains"), ("needle", "patched")],
        ),
    ]);
    let chain = set.run_pre(request("echo original")).await;
    let (hook, reason) = denied(&chain.outcome);
    assert_eq!(hook, "modify-guard");
    assert!(reason.contains("patched"), "{reason}");

    // Without the guard the patched request is what runs.
    let set = load(&[test_hook(
        "modify-2",
        &[
            ("mode", "modify"),
            ("command", "echo patched"),
            ("set_env", "ADDED=yes"),
            ("unset_env", "KEEP"),
            ("timeout_ms", "77"),
        ],
    )]);
    let chain = set.run_pre(request("echo original")).await;
    let PreOutcome::Allow {
        request: req,
        modified_by,
    } = &chain.outcome
    else {
        panic!("{:?}", chain.outcome)
    };
    assert_eq!(req.command, "echo patched");
    assert_eq!(req.env, vec![("ADDED".to_string(), "yes".to_string())]);
    assert_eq!(req.timeout_ms, Some(77));
    assert_eq!(modified_by, &vec!["modify-2".to_string()]);
}

#[tokio::test]
async fn post_hooks_annotate_and_judge_every_job() {
    let set = load(&[
        test_hook("post-notes", &[("note.team", "infra")]),
        test_hook("post-judge", &[("fail_on_exit_nonzero", "true")]),
    ]);
    let chain = set.run_post(&job("make test", 2)).await;
    assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
    assert_eq!(chain.reports.len(), 2);
    let notes = &chain.reports[0];
    assert!(notes.annotations.contains(&("team".into(), "infra".into())));
    assert!(
        notes
            .annotations
            .contains(&("status".into(), "completed".into()))
    );
    assert!(
        notes
            .annotations
            .contains(&("exit_code".into(), "2".into()))
    );
    assert!(
        notes
            .annotations
            .contains(&("stdout_tail_len".into(), "6".into()))
    );
    assert_eq!(notes.verdict, None);
    assert_eq!(
        chain.reports[1].verdict,
        Some(Verdict::Fail("exit code 2".into()))
    );
    assert_eq!(chain.failed(), Some(("post-judge", "exit code 2")));
    assert!(
        chain
            .annotations()
            .contains(&("post-notes.team".into(), "infra".into()))
    );

    let chain = set.run_post(&job("make test", 0)).await;
    assert_eq!(chain.reports[1].verdict, Some(Verdict::Pass));
    let stats = host().stats("post-judge");
    assert_eq!((stats.post_calls, stats.pass, stats.fail), (2, 1, 1));

    let json = serde_json::to_value(&chain.reports[0]).unwrap();
    assert_eq!(json["annotations"]["team"], "infra");
}

#[tokio::test]
async fn a_pre_only_component_loads_and_is_skipped_at_post() {
    let mut spec = HookSpec::new("pre-only-1", component("pre-only"));
    spec.fuel = 10_000_000;
    let set = load(&[spec]);
    assert_eq!(set.status()[0].stages, vec!["pre"]);
    let chain = set.run_pre(request("rm -rf /")).await;
    assert_eq!(denied(&chain.outcome).0, "pre-only-1");
    let post = set.run_post(&job("ls", 0)).await;
    assert!(post.reports.is_empty() && post.warnings.is_empty());
    assert_eq!(host().stats("pre-only-1").post_calls, 0);
}

#[tokio::test]
async fn a_disabled_hook_is_listed_but_never_called() {
    let mut spec = test_hook("disabled-1", &[("mode", "deny")]);
    spec.enabled = false;
    let set = load(&[spec]);
    assert!(set.is_empty());
    let chain = set.run_pre(request("ls")).await;
    allowed(&chain.outcome);
    set.run_post(&job("ls", 0)).await;
    assert!(chain.reports.is_empty());
    let status = set.status();
    assert_eq!(status[0].state, HookState::Disabled);
    assert_eq!(status[0].stats.calls, 0);
}

// ---- limits, in pairs --------------------------------------------------------------------------

#[tokio::test]
async fn fuel_stops_an_infinite_loop() {
    let mut spec = test_hook("spin-fuel", &[("mode", "loop")]);
    spec.fuel = 50_000_000;
    spec.timeout_ms = 30_000;
    let set = load(&[spec]);
    let chain = set.run_pre(request("ls")).await;
    allowed(&chain.outcome); // fails open by default
    let w = &chain.warnings[0];
    assert_eq!((w.kind, w.stage), (FailureKind::Fuel, Stage::Pre));
    assert_eq!(
        w.message,
        "hook `spin-fuel` ran out of fuel (limit 50000000)"
    );
    assert!(chain.reports[0].fuel_used >= 50_000_000);
    let stats = host().stats("spin-fuel");
    assert_eq!(stats.failures.fuel, 1);
    assert_eq!(stats.last_failure.unwrap().kind, FailureKind::Fuel);
}

#[tokio::test]
async fn the_deadline_stops_an_infinite_loop_with_unlimited_fuel() {
    let mut spec = test_hook("spin-deadline", &[("mode", "loop")]);
    spec.fuel = 0; // unlimited
    spec.timeout_ms = 100;
    let set = load(&[spec]);
    let started = Instant::now();
    let chain = set.run_pre(request("ls")).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let w = &chain.warnings[0];
    assert_eq!(w.kind, FailureKind::Timeout);
    assert_eq!(
        w.message,
        "hook `spin-deadline` passed its deadline of 100 ms"
    );
}

#[tokio::test]
async fn a_blocking_sleep_is_cut_at_the_deadline() {
    let mut spec = test_hook("sleepy", &[("mode", "sleep"), ("ms", "60000")]);
    spec.timeout_ms = 100;
    let set = load(&[spec]);
    let started = Instant::now();
    let chain = set.run_pre(request("ls")).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(chain.warnings[0].kind, FailureKind::Timeout);
    assert_eq!(
        chain.warnings[0].message,
        "hook `sleepy` passed its deadline of 100 ms"
    );

    // The same hook with a short sleep well inside its deadline succeeds.
    let mut spec = test_hook("sleepy-ok", &[("mode", "sleep"), ("ms", "5")]);
    spec.timeout_ms = 2000;
    let chain = load(&[spec]).run_pre(request("ls")).await;
    assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
}

#[tokio::test]
async fn growing_memory_past_the_limit_is_a_memory_failure() {
    let mut spec = test_hook("hog", &[("mode", "alloc")]);
    spec.memory_mb = 32;
    let chain = load(&[spec]).run_pre(request("ls")).await;
    let w = &chain.warnings[0];
    assert_eq!(w.kind, FailureKind::Memory, "{}", w.message);
    assert!(
        w.message
            .starts_with("hook `hog` exceeded its memory limit of 32 MiB"),
        "{}",
        w.message
    );
}

#[tokio::test]
async fn memory_use_under_the_limit_succeeds() {
    let mut spec = test_hook("hog-ok", &[("mode", "alloc-some"), ("mb", "8")]);
    spec.memory_mb = 32;
    let chain = load(&[spec]).run_pre(request("ls")).await;
    assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
    assert_eq!(chain.reports[0].decision.as_deref(), Some("allow"));
}

#[tokio::test]
async fn stack_overflow_and_panic_are_traps() {
    let set = load(&[
        test_hook("deep", &[("mode", "stack")]),
        test_hook("panicky", &[("mode", "panic")]),
    ]);
    let chain = set.run_pre(request("ls")).await;
    allowed(&chain.outcome);
    assert_eq!(chain.warnings.len(), 2);
    assert_eq!(chain.warnings[0].kind, FailureKind::Trap);
    // A Rust guest's frames live partly in its shadow stack in linear memory, so unbounded
    // recursion ends as an out-of-bounds access or a wasm stack overflow: a trap either way.
    assert!(
        chain.warnings[0]
            .message
            .starts_with("hook `deep` trapped: "),
        "{}",
        chain.warnings[0].message
    );
    assert_eq!(chain.warnings[1].kind, FailureKind::Trap);
    assert!(
        chain.warnings[1].message.contains("panicked on purpose"),
        "the guest's panic message should be in the failure: {}",
        chain.warnings[1].message
    );
}

#[tokio::test]
async fn oversized_answers_are_invalid() {
    let set = load(&[test_hook(
        "bigmouth",
        &[
            ("mode", "big"),
            ("size", "100000"),
            ("post_mode", "big"),
            ("count", "1000"),
        ],
    )]);
    let chain = set.run_pre(request("ls")).await;
    allowed(&chain.outcome);
    assert_eq!(chain.warnings[0].kind, FailureKind::Invalid);
    assert!(
        chain.warnings[0]
            .message
            .contains("deny reason is 100000 bytes"),
        "{}",
        chain.warnings[0].message
    );
    let post = set.run_post(&job("ls", 0)).await;
    assert_eq!(post.warnings[0].kind, FailureKind::Invalid);
    assert!(
        post.warnings[0].message.contains("1000 annotations"),
        "{}",
        post.warnings[0].message
    );
    assert!(post.reports[0].annotations.is_empty());
}

// ---- failure policy ----------------------------------------------------------------------------

#[tokio::test]
async fn a_fail_open_hook_is_skipped_with_a_warning_and_the_chain_goes_on() {
    let set = load(&[
        test_hook("open-panics", &[("mode", "panic")]),
        test_hook("open-next", &[("mode", "modify"), ("command", "echo next")]),
    ]);
    let chain = set.run_pre(request("ls")).await;
    assert_eq!(allowed(&chain.outcome).command, "echo next");
    assert_eq!(chain.warnings.len(), 1);
    assert_eq!(chain.warnings[0].hook, "open-panics");
    assert!(chain.reports[0].error.is_some());
    assert_eq!(chain.reports[1].decision.as_deref(), Some("modify"));
}

#[tokio::test]
async fn a_fail_closed_hook_denies_with_the_failure_as_reason() {
    let mut spec = fail_closed(test_hook(
        "closed-spin",
        &[("mode", "loop"), ("post_mode", "panic")],
    ));
    spec.fuel = 1_000_000;
    let set = load(&[spec, test_hook("closed-after", &[])]);
    let chain = set.run_pre(request("ls")).await;
    let (hook, reason) = denied(&chain.outcome);
    assert_eq!(hook, "closed-spin");
    assert_eq!(reason, "hook `closed-spin` ran out of fuel (limit 1000000)");
    assert_eq!(chain.warnings.len(), 1);
    assert_eq!(host().stats("closed-after").pre_calls, 0);

    // At post, a fail-closed failure is a failing verdict; the other post-hooks still run.
    let post = set.run_post(&job("ls", 0)).await;
    assert_eq!(post.reports.len(), 2);
    match &post.reports[0].verdict {
        Some(Verdict::Fail(reason)) => assert!(reason.contains("trapped"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(post.failed().unwrap().0, "closed-spin");
    assert_eq!(post.warnings[0].kind, FailureKind::Trap);
}

#[tokio::test]
async fn a_broken_component_is_a_load_error_naming_the_file() {
    let tmp = scratch();
    let dir = tmp.path();
    let path = dir.join("broken.wasm");
    std::fs::write(&path, b"\0asm not really a component, just bytes").unwrap();
    let open = HookSpec::new("broken-open", &path);
    let closed = fail_closed(HookSpec::new("broken-closed", &path));
    let set = HookSet::load(host(), &[open, closed]);
    let errors = set.load_errors();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].0, "broken-open");
    assert!(
        errors[0].1.contains(&path.display().to_string()),
        "{}",
        errors[0].1
    );
    assert!(matches!(set.status()[0].state, HookState::Failed(_)));
    assert!(set.is_empty());

    let chain = set.run_pre(request("ls")).await;
    assert_eq!(chain.warnings[0].kind, FailureKind::Load);
    assert_eq!(denied(&chain.outcome).0, "broken-closed");

    let missing = HookSet::load(host(), &[HookSpec::new("missing", dir.join("nope.wasm"))]);
    assert!(missing.load_errors()[0].1.contains("nope.wasm"));
}

// ---- sandbox services --------------------------------------------------------------------------

#[tokio::test]
async fn kv_survives_calls_and_new_generations() {
    let spec = test_hook("counter", &[("mode", "counter")]);
    let count = |chain: &ccx::hooks::PreChain| {
        allowed(&chain.outcome)
            .env
            .iter()
            .find(|(k, _)| k == "COUNT")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let set = load(std::slice::from_ref(&spec));
    assert_eq!(count(&set.run_pre(request("make a")).await), "1");
    assert_eq!(count(&set.run_pre(request("make b")).await), "2");
    assert_eq!(count(&set.run_pre(request("ls")).await), "1");
    drop(set);
    let next = load(&[spec]);
    assert_eq!(count(&next.run_pre(request("make c")).await), "3");
    assert_eq!(next.status()[0].kv_keys, 2);
}

#[tokio::test]
async fn the_sandbox_has_no_filesystem_environment_arguments_or_network() {
    let chain = load(&[test_hook("probe", &[("mode", "probe")])])
        .run_pre(request("ls"))
        .await;
    assert_eq!(
        denied(&chain.outcome),
        ("probe", "fs=false env=0 args=0 net=false")
    );
}

#[tokio::test]
async fn guest_output_is_captured_and_bounded() {
    let mut spec = test_hook("chatty", &[("mode", "log"), ("lines", "3")]);
    let report = run_once(host(), &spec, RunInput::Pre(Box::new(request("ls"))))
        .await
        .unwrap();
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert!(
        report.stdout.contains("pre stdout line 2"),
        "{}",
        report.stdout
    );
    assert!(
        report.stderr.contains("pre stderr line"),
        "{}",
        report.stderr
    );
    assert_eq!(report.answer, Some(serde_json::json!("allow")));

    // Far more output than the cap: kept up to the cap, the rest noted, and no trap.
    spec.config = vec![
        ("mode".into(), "log".into()),
        ("lines".into(), "20000".into()),
    ];
    let report = run_once(host(), &spec, RunInput::Pre(Box::new(request("ls"))))
        .await
        .unwrap();
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert!(report.stdout.len() < ccx::hooks::OUTPUT_CAP_BYTES + 200);
    assert!(
        report.stdout.contains("more bytes dropped"),
        "{}",
        &report.stdout[report.stdout.len() - 200..]
    );
}

#[tokio::test]
async fn run_once_reports_answers_failures_and_missing_stages() {
    let spec = test_hook("once", &[("mode", "deny"), ("reason", "nope")]);
    let report = run_once(host(), &spec, RunInput::Pre(Box::new(request("ls"))))
        .await
        .unwrap();
    assert_eq!(report.answer, Some(serde_json::json!({"deny": "nope"})));
    assert!(report.fuel_used > 0);

    let input: RunInput =
        serde_json::from_str(r#"{"post": {"request": {"command": "ls"}, "status": "timed_out"}}"#)
            .unwrap();
    let report = run_once(host(), &spec, input).await.unwrap();
    assert_eq!(
        report.answer.as_ref().unwrap()["annotations"]["status"],
        "timed-out"
    );

    let spin = {
        let mut s = test_hook("once-spin", &[("mode", "loop")]);
        s.fuel = 1_000_000;
        s
    };
    let report = run_once(host(), &spin, RunInput::Pre(Box::new(request("ls"))))
        .await
        .unwrap();
    assert_eq!(report.failure.unwrap().kind, FailureKind::Fuel);

    let pre_only = HookSpec::new("once-pre-only", component("pre-only"));
    let err = run_once(host(), &pre_only, RunInput::Post(Box::new(job("ls", 0))))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not export `post-execute`"),
        "{err}"
    );
}

// ---- scheduling ----------------------------------------------------------------------------

/// Two guests spinning with unlimited fuel on a 2-worker runtime must not stop a 10 ms ticker:
/// the epoch makes them yield every tick.
#[test]
fn spinning_hooks_do_not_starve_other_tasks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut spec = test_hook("spinner", &[("mode", "loop")]);
        spec.fuel = 0;
        spec.timeout_ms = 1000;
        let set = Arc::new(load(&[spec]));
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let set = set.clone();
                tokio::spawn(async move { set.run_pre(request("ls")).await })
            })
            .collect();
        let ticker = tokio::spawn(async {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = Instant::now();
            let mut ticks = 0u32;
            while started.elapsed() < Duration::from_millis(800) {
                interval.tick().await;
                ticks += 1;
            }
            ticks
        });
        let ticks = ticker.await.unwrap();
        for s in spinners {
            let chain = s.await.unwrap();
            assert_eq!(chain.warnings[0].kind, FailureKind::Timeout);
        }
        eprintln!("{ticks} ticks of 10 ms in 800 ms while two hooks spun");
        // 80 ticks if never delayed; a starved runtime would manage almost none.
        assert!(ticks >= 60, "only {ticks} ticks in 800 ms while hooks spun");
    });
}

/// More concurrent calls than the host has instance slots: the extra calls wait for a slot
/// instead of failing on an exhausted pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_beyond_the_pool_size_all_succeed() {
    let set = Arc::new(load(&[test_hook(
        "busy",
        &[("mode", "alloc-some"), ("mb", "1")],
    )]));
    let calls = (0..100).map(|_| {
        let set = set.clone();
        tokio::spawn(async move { set.run_pre(request("ls")).await })
    });
    for chain in futures_util::future::join_all(calls).await {
        let chain = chain.unwrap();
        assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
    }
    assert_eq!(host().stats("busy").allow, 100);
}

// ---- the artifact cache ----------------------------------------------------------------------

#[tokio::test]
async fn the_compiled_artifact_is_cached_on_disk_and_reused() {
    let tmp = scratch();
    let dir = tmp.path();
    let host = HookHost::new(HostOptions {
        cache_dir: Some(dir.to_path_buf()),
        ..HostOptions::default()
    })
    .unwrap();
    let spec = test_hook("cached", &[]);
    let first = HookSet::load(&host, std::slice::from_ref(&spec));
    assert_eq!(first.status()[0].source, Some(LoadSource::Compiled));
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".cwasm"), "{files:?}");

    let second = HookSet::load(&host, std::slice::from_ref(&spec));
    assert_eq!(second.status()[0].source, Some(LoadSource::Cache));
    allowed(&second.run_pre(request("ls")).await.outcome);

    // A corrupt cache entry is replaced, not fatal. (Replaced as a new file: the entry in use
    // is memory-mapped, and truncating a mapped file in place would crash the process — which
    // is why the cache itself only ever renames new files into place.)
    std::fs::remove_file(dir.join(&files[0])).unwrap();
    std::fs::write(dir.join(&files[0]), b"garbage").unwrap();
    let third = HookSet::load(&host, std::slice::from_ref(&spec));
    assert_eq!(third.status()[0].source, Some(LoadSource::Compiled));
    allowed(&third.run_pre(request("ls")).await.outcome);
}

#[tokio::test]
async fn every_call_gets_a_fresh_instance_even_when_pool_slots_are_reused() {
    // A global in the guest's linear memory counts calls; a reused, reset pool slot must look
    // exactly like a new instance, so every call sees 1. Memory-hungry calls in between dirty
    // the slots that are reset with memset rather than unmapped.
    let counting = load(&[test_hook("fresh-instance", &[("mode", "instance-count")])]);
    let hungry = load(&[test_hook(
        "fresh-hungry",
        &[("mode", "alloc-some"), ("mb", "8")],
    )]);
    for _ in 0..20 {
        let chain = counting.run_pre(request("ls")).await;
        let (_, reason) = denied(&chain.outcome);
        assert_eq!(reason, "calls seen by this instance: 1");
        let chain = hungry.run_pre(request("ls")).await;
        assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
    }
}
