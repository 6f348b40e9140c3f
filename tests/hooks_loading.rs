//! Loading hook sets with real components: hooks load in parallel and report, one by one, as
//! they finish; the set keeps config order; the compiled-artifact cache stays under its size
//! cap by evicting the least recently used artifacts. The guests are built by `hooks/build.sh`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{component, request, test_hook};
use ccx::hooks::{HookHost, HookSet, HookSpec, HookState, HostOptions, LoadSource};

/// A copy of `component` with a custom section appended, so it is a different component to
/// the cache (a new key, a new artifact) but behaves the same.
fn variant(component: &Path, dir: &Path, tag: &str) -> PathBuf {
    let mut bytes = std::fs::read(component).unwrap();
    let name = b"ccx-test-variant";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 lengths");
    bytes.push(0); // custom section id
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join(format!("variant-{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn host_with_cache(dir: &Path, cache_max_bytes: u64) -> Arc<HookHost> {
    HookHost::new(HostOptions {
        cache_dir: Some(dir.to_path_buf()),
        pooling: false,
        cache_max_bytes,
        ..HostOptions::default()
    })
    .unwrap()
}

/// The artifacts in the cache directory, as (name, bytes).
fn artifacts(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

/// Loads one hook and says where it came from.
fn source(host: &Arc<HookHost>, spec: &HookSpec) -> LoadSource {
    let set = HookSet::load(host, std::slice::from_ref(spec));
    assert!(set.load_errors().is_empty(), "{:?}", set.load_errors());
    set.status()[0].source.unwrap()
}

/// What the observer was told: (hook, Ok or the error, whether it ran on a loading thread).
type Observed = (String, Result<(), String>, bool);

#[tokio::test]
async fn hooks_load_on_their_own_threads_report_as_they_finish_and_keep_config_order() {
    let scratch = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_cache(cache.path(), u64::MAX);
    let mut disabled = test_hook("disabled", &[]);
    disabled.enabled = false;
    let specs = vec![
        HookSpec::new(
            "first",
            variant(component("test-hook"), scratch.path(), "a"),
        ),
        disabled,
        HookSpec::new("missing", scratch.path().join("nope.wasm")),
        HookSpec::new("pre-only", component("pre-only")),
        HookSpec::new("first", component("test-hook")),
        HookSpec::new("last", variant(component("test-hook"), scratch.path(), "b")),
    ];
    let seen: Mutex<Vec<Observed>> = Mutex::default();
    let set = HookSet::load_observed(&host, &specs, &|hook, state| {
        let on_loader = std::thread::current().name() == Some("ccx-hook-load");
        seen.lock()
            .unwrap()
            .push((hook.to_string(), state.map_err(str::to_string), on_loader));
    });

    let status = set.status();
    let names: Vec<&str> = status.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["first", "disabled", "missing", "pre-only", "first", "last"]
    );
    let states: Vec<&HookState> = status.iter().map(|h| &h.state).collect();
    assert!(matches!(states[0], HookState::Loaded));
    assert!(matches!(states[1], HookState::Disabled));
    assert!(matches!(states[2], HookState::Failed(e) if e.contains("nope.wasm")));
    assert!(matches!(states[3], HookState::Loaded));
    assert!(matches!(states[4], HookState::Failed(e) if e.contains("appears twice")));
    assert!(matches!(states[5], HookState::Loaded));
    // The set runs in config order; the two failed hooks fail open.
    let chain = set.run_pre(request("ls")).await;
    assert!(matches!(
        chain.outcome,
        ccx::hooks::PreOutcome::Allow { .. }
    ));
    let called: Vec<&str> = chain.reports.iter().map(|r| r.hook.as_str()).collect();
    assert_eq!(called, ["first", "pre-only", "last"]);
    let warned: Vec<&str> = chain.warnings.iter().map(|w| w.hook.as_str()).collect();
    assert_eq!(warned, ["missing", "first"]);

    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 5, "every hook but the disabled one: {seen:?}");
    // The duplicate is known before anything is compiled.
    assert_eq!(seen[0].0, "first");
    assert!(seen[0].1.as_ref().unwrap_err().contains("appears twice"));
    assert!(!seen[0].2);
    // The others are reported from their loading threads, each with the set's own message.
    for (hook, state, on_loader) in &seen[1..] {
        assert!(on_loader, "{hook} was not loaded on a loading thread");
        match hook.as_str() {
            "missing" => assert_eq!(
                state.as_ref().unwrap_err(),
                &set.load_errors()
                    .iter()
                    .find(|(h, _)| h == "missing")
                    .unwrap()
                    .1
            ),
            _ => assert!(state.is_ok(), "{hook}: {state:?}"),
        }
    }
    let mut reported: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    reported.sort();
    assert_eq!(reported, ["first", "first", "last", "missing", "pre-only"]);
}

#[test]
fn a_slow_report_of_one_hook_does_not_hold_up_loading_the_others() {
    // Loaded one after the other, the second hook could not finish while the first one's
    // report is pending, and the wait below would time out.
    let scratch = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = host_with_cache(cache.path(), u64::MAX);
    let specs = ["x", "y"]
        .map(|tag| HookSpec::new(tag, variant(component("test-hook"), scratch.path(), tag)));
    let reported = AtomicUsize::new(0);
    let overlapped = AtomicBool::new(false);
    let set = HookSet::load_observed(&host, &specs, &|_, _| {
        if reported.fetch_add(1, Ordering::SeqCst) == 0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while reported.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            overlapped.store(reported.load(Ordering::SeqCst) == 2, Ordering::SeqCst);
        }
    });
    assert!(set.load_errors().is_empty(), "{:?}", set.load_errors());
    assert!(
        overlapped.load(Ordering::SeqCst),
        "the second hook did not finish loading while the first one's report was pending"
    );
}

#[test]
fn a_cache_capped_below_two_artifacts_keeps_only_the_newest() {
    // The size of one artifact, measured in a cache of its own.
    let measure = tempfile::tempdir().unwrap();
    let spec_a = HookSpec::new("cap-a", component("test-hook"));
    source(&host_with_cache(measure.path(), u64::MAX), &spec_a);
    let one = artifacts(measure.path());
    assert_eq!(one.len(), 1, "{one:?}");

    let dir = tempfile::tempdir().unwrap();
    let host = host_with_cache(dir.path(), one[0].1);
    assert_eq!(source(&host, &spec_a), LoadSource::Compiled);
    assert_eq!(artifacts(dir.path()), one, "same engine, same key");

    let spec_b = HookSpec::new("cap-b", component("pre-only"));
    assert_eq!(source(&host, &spec_b), LoadSource::Compiled);
    let left = artifacts(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0].0, one[0].0, "the older artifact is the one evicted");
    assert_eq!(source(&host, &spec_b), LoadSource::Cache);
    assert_eq!(source(&host, &spec_a), LoadSource::Compiled);
}

#[test]
fn eviction_spares_the_artifact_used_most_recently() {
    let scratch = tempfile::tempdir().unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|tag| {
        HookSpec::new(
            format!("lru-{tag}"),
            variant(component("test-hook"), scratch.path(), tag),
        )
    });
    let measure = tempfile::tempdir().unwrap();
    source(&host_with_cache(measure.path(), u64::MAX), &a);
    let size = artifacts(measure.path())[0].1;

    // Room for two artifacts, not three.
    let dir = tempfile::tempdir().unwrap();
    let host = host_with_cache(dir.path(), size * 5 / 2);
    assert_eq!(source(&host, &a), LoadSource::Compiled);
    assert_eq!(source(&host, &b), LoadSource::Compiled);
    assert_eq!(source(&host, &a), LoadSource::Cache); // a is now the more recently used
    assert_eq!(source(&host, &c), LoadSource::Compiled); // evicts b
    assert_eq!(artifacts(dir.path()).len(), 2);
    assert_eq!(source(&host, &a), LoadSource::Cache);
    assert_eq!(source(&host, &b), LoadSource::Compiled);
}
