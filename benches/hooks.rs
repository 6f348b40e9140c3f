//! Micro-benchmarks of the hook runtime with the real test guest (`nice cargo bench --bench
//! hooks`): a fresh-instance call of a trivial hook, a 10-hook chain, cold versus cached load
//! of a set, and how far past its deadline an interrupted hook returns.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccx::hooks::{HookHost, HookResult, HookSet, HostOptions, JobStatus};
use common::{current_thread_runtime, percentiles};
use util::{request, scratch, test_hook};

fn row(what: &str, samples: Vec<Duration>) {
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "{what:<52} p50 {:>9.1} µs   p99 {:>9.1} µs   (n={n})",
        us(p50),
        us(p99)
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A host on the artifact cache `cache`.
fn host(cache: &Path, pooling: bool) -> Arc<HookHost> {
    HookHost::new(HostOptions {
        cache_dir: Some(cache.to_path_buf()),
        pooling,
        ..HostOptions::default()
    })
    .expect("hook host")
}

fn job() -> HookResult {
    HookResult {
        request: request("make test"),
        received: request("make test"),
        status: JobStatus::Completed,
        exit_code: Some(0),
        signal: None,
        duration_ms: 10,
        stdout_bytes: 3,
        stderr_bytes: 0,
        stdout_tail: "ok\n".into(),
        stderr_tail: String::new(),
    }
}

async fn calls(set: &HookSet, n: usize, pre: bool, post: bool) -> Vec<Duration> {
    let result = job();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        if pre {
            let chain = set.run_pre(request("ls -l")).await;
            assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
        }
        if post {
            let chain = set.run_post(&result).await;
            assert!(chain.warnings.is_empty(), "{:?}", chain.warnings);
        }
        if i >= n / 10 {
            samples.push(started.elapsed()); // the first 10% warm caches and are dropped
        }
    }
    samples
}

fn main() {
    let guest = util::component("test-hook");
    let rt = current_thread_runtime();
    println!(
        "guest: {} ({} bytes)",
        guest.display(),
        std::fs::metadata(guest).unwrap().len()
    );

    // -- load: cold (compile + write cache), warm (map from cache) in the same and a new host
    // Fresh caches, so that cold loads really compile.
    let (cache, on_demand_cache) = (scratch(), scratch());
    let pooled = host(cache.path(), true);
    println!("pooling allocator: {}", pooled.pooling());
    let allow = test_hook("allow", &[("mode", "allow"), ("post_mode", "annotate")]);
    let started = Instant::now();
    let set = HookSet::load(&pooled, std::slice::from_ref(&allow));
    println!(
        "{:<52} {:>9.2} ms",
        "load 1 hook, cold (compile + cache write)",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut warm = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let s = HookSet::load(&pooled, std::slice::from_ref(&allow));
        warm.push(started.elapsed());
        drop(s);
    }
    row("load 1 hook, warm (mapped from cache)", warm);
    let ten: Vec<_> = (0..10)
        .map(|i| test_hook(&format!("allow-{i}"), &[("mode", "allow")]))
        .collect();
    let started = Instant::now();
    let chain10 = HookSet::load(&pooled, &ten);
    println!(
        "{:<52} {:>9.2} ms",
        "load 10 hooks, warm",
        started.elapsed().as_secs_f64() * 1e3
    );
    {
        let fresh = HookHost::new(HostOptions {
            cache_dir: pooled.cache_dir().map(Into::into),
            ..HostOptions::default()
        })
        .unwrap();
        let started = Instant::now();
        let _s = HookSet::load(&fresh, std::slice::from_ref(&allow));
        println!(
            "{:<52} {:>9.2} ms",
            "load 1 hook in a new host (restart), cached",
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    rt.block_on(async {
        // -- fresh-instance calls
        row(
            "pre call, fresh store+instance (pooling)",
            calls(&set, 5000, true, false).await,
        );
        row(
            "post call, fresh store+instance (pooling)",
            calls(&set, 5000, false, true).await,
        );
        row(
            "pre + post, fresh instances (pooling)",
            calls(&set, 5000, true, true).await,
        );
        row(
            "10-hook pre chain (pooling)",
            calls(&chain10, 1000, true, false).await,
        );

        let on_demand = host(on_demand_cache.path(), false);
        let set_od = HookSet::load(&on_demand, std::slice::from_ref(&allow));
        row(
            "pre call, fresh store+instance (on-demand)",
            calls(&set_od, 5000, true, false).await,
        );
        let fuel = set.status()[0].stats.fuel_p50.unwrap_or(0);
        println!("{:<52} {fuel}", "fuel per trivial pre call (p50)");

        // -- interrupted hooks vs their deadline
        for (label, mode, timeout_ms) in [
            ("spinning hook, deadline 50 ms", "loop", 50u64),
            ("blocking sleep, deadline 50 ms", "sleep", 50),
        ] {
            let mut spec = test_hook(&format!("late-{mode}"), &[("mode", mode)]);
            spec.fuel = 0;
            spec.timeout_ms = timeout_ms;
            let late = HookSet::load(&pooled, &[spec]);
            let mut overshoot = Vec::new();
            for _ in 0..20 {
                let started = Instant::now();
                let chain = late.run_pre(request("ls")).await;
                assert_eq!(chain.warnings.len(), 1);
                overshoot.push(
                    started
                        .elapsed()
                        .saturating_sub(Duration::from_millis(timeout_ms)),
                );
            }
            row(&format!("{label}: time past the deadline"), overshoot);
        }
        let mut spec = test_hook("late-fuel", &[("mode", "loop")]);
        spec.fuel = 10_000_000;
        let fuel_set = HookSet::load(&pooled, &[spec]);
        row(
            "spinning hook, 10 M fuel: time to trap",
            calls_failing(&fuel_set, 20).await,
        );
    });
}

async fn calls_failing(set: &HookSet, n: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let chain = set.run_pre(request("ls")).await;
        assert_eq!(chain.warnings.len(), 1);
        samples.push(started.elapsed());
    }
    samples
}
