//! Spare hook instances, made ahead of time so calls skip instantiation: each serves exactly
//! one call (globals and linear memory never carry over), the memory budget bounds them, and a
//! reload drops the old generation's spares even while a job still runs on it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{AppServer, eventually, request, shared_cache, test_hook};
use ccx::hooks::{HookHost, HookSet, HostOptions, PreOutcome, SpareStats};

const WAIT: Duration = Duration::from_secs(30);

fn host(spares: u32, budget_bytes: u64) -> Arc<HookHost> {
    HookHost::new(HostOptions {
        cache_dir: Some(shared_cache()),
        spare_instances: spares,
        spare_memory_bytes: budget_bytes,
        ..HostOptions::default()
    })
    .expect("hook host")
}

fn load(host: &Arc<HookHost>, name: &str, mode: &str) -> HookSet {
    let set = HookSet::load(host, &[test_hook(name, &[("mode", mode)])]);
    assert!(set.load_errors().is_empty(), "{:?}", set.load_errors());
    set
}

fn stats(set: &HookSet, name: &str) -> SpareStats {
    set.spare_stats(name).expect("the hook has a spare pool")
}

async fn ready_at_least(set: &HookSet, name: &str, n: usize) {
    let ok = eventually(WAIT, || stats(set, name).ready >= n).await;
    assert!(ok, "{name}: {:?}", stats(set, name));
}

fn reason(outcome: &PreOutcome) -> &str {
    match outcome {
        PreOutcome::Deny { reason, .. } => reason,
        other => panic!("expected a deny, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_serves_one_call_and_is_never_reused() {
    let host = host(2, 256 << 20);
    // A heap value and a static counter, both in the guest's linear memory.
    let remember = load(&host, "spare-remember", "remember");
    let count = load(&host, "spare-count", "instance-count");
    for i in 0..6 {
        // Each call takes a spare made while the one before ran.
        ready_at_least(&remember, "spare-remember", 1).await;
        let chain = remember.run_pre(request(&format!("echo {i}"))).await;
        assert_eq!(
            reason(&chain.outcome),
            "previous command in this instance: none"
        );
        ready_at_least(&count, "spare-count", 1).await;
        let chain = count.run_pre(request("ls")).await;
        assert_eq!(reason(&chain.outcome), "calls seen by this instance: 1");
    }
    for (set, name) in [(&remember, "spare-remember"), (&count, "spare-count")] {
        let s = stats(set, name);
        assert_eq!((s.served, s.cold, s.target), (6, 0, 2), "{s:?}");
        assert!(s.instance_bytes > 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_spares_turns_them_off() {
    let host = host(0, 256 << 20);
    let set = load(&host, "spare-off", "instance-count");
    assert!(set.spare_stats("spare-off").is_none());
    for _ in 0..3 {
        let chain = set.run_pre(request("ls")).await;
        assert_eq!(reason(&chain.outcome), "calls seen by this instance: 1");
    }
    assert_eq!(host.spare_memory().0, 0);
}

// This test once hung: a pool short of budget refilled in a loop that never yielded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_bounds_the_spares() {
    // The size of one spare, from a host with room for three.
    let roomy = host(3, 1 << 30);
    let set = load(&roomy, "spare-sized", "instance-count");
    ready_at_least(&set, "spare-sized", 3).await;
    let one = stats(&set, "spare-sized").instance_bytes;
    assert!(one > 0);
    assert_eq!(roomy.spare_memory().0, 3 * one);
    drop(set);
    assert_eq!(
        roomy.spare_memory().0,
        0,
        "a dropped set gives its spares back"
    );

    // Room for two and a half: two are made, never a third, before and after calls.
    let budget = 2 * one + one / 2;
    let tight = host(3, budget as u64);
    let set = load(&tight, "spare-tight", "instance-count");
    ready_at_least(&set, "spare-tight", 2).await;
    for _ in 0..4 {
        let chain = set.run_pre(request("ls")).await;
        assert_eq!(reason(&chain.outcome), "calls seen by this instance: 1");
        ready_at_least(&set, "spare-tight", 2).await;
        assert!(tight.spare_memory().0 <= budget);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = stats(&set, "spare-tight");
    assert_eq!(s.ready, 2, "{s:?}");
    assert_eq!(tight.spare_memory(), (2 * one, budget));

    // Room for less than one: none is kept, and calls instantiate on their path.
    let none = host(3, (one - 1) as u64);
    let set = load(&none, "spare-none", "instance-count");
    let made = eventually(WAIT, || stats(&set, "spare-none").instance_bytes > 0).await;
    assert!(made, "one spare is made to learn its size, then dropped");
    let chain = set.run_pre(request("ls")).await;
    assert_eq!(reason(&chain.outcome), "calls seen by this instance: 1");
    let s = stats(&set, "spare-none");
    assert_eq!((s.ready, s.served, s.cold), (0, 0, 1), "{s:?}");
    assert_eq!(none.spare_memory().0, 0);
}

/// The `/hooks` page once `f` holds for it.
async fn hooks_page(server: &AppServer, f: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let page = server.get("/hooks").await;
        if f(&page) {
            return page;
        }
        assert!(started.elapsed() < WAIT, "never true: {page:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_drops_the_old_generations_spares_while_its_jobs_run() {
    let config = |reason: &str| {
        format!(
            "[sandbox]\nspare_instances = 2\n\n[[hooks]]\nname = \"spare-gen\"\n\
             path = \"{{test-hook}}\"\nconfig = {{ mode = \"deny-if-contains\", needle = \"{reason}\" }}\n"
        )
    };
    let server = AppServer::with_config(0.1, &config("forbidden")).await;
    let page = hooks_page(&server, |p| p["hooks"][0]["spares"]["ready"] == 2).await;
    let one = page["hooks"][0]["spares"]["instance_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(page["spare_memory_bytes"], 2 * one, "{page:#}");
    assert_eq!(page["spare_memory_budget_bytes"], 256u64 << 20);

    // A job that runs on generation 1 through the reload (its post-hook is still to come).
    let mut ws = server.connect().await;
    let job = ws
        .call("execute", json!({"command": "sleep 2", "detach": true}))
        .await;
    assert!(job["result"]["job_id"].is_string(), "{job}");
    let page = hooks_page(&server, |p| p["hooks"][0]["spares"]["ready"] == 2).await;
    assert_eq!(page["generation"], 1);

    std::fs::write(
        server.config_path(),
        std::fs::read_to_string(server.config_path())
            .unwrap()
            .replace("forbidden", "banned"),
    )
    .unwrap();
    // Generation 2 has its own two spares; generation 1's are gone though its job still runs.
    let page = hooks_page(&server, |p| {
        p["generation"] == 2 && p["hooks"][0]["spares"]["ready"] == 2
    })
    .await;
    assert_eq!(page["hooks"][0]["spares"]["served"], 0, "{page:#}");
    assert_eq!(page["spare_memory_bytes"], 2 * one, "{page:#}");
    let running = ws.call("list_jobs", json!({"status": "running"})).await;
    assert_eq!(
        running["result"]["jobs"].as_array().map(Vec::len),
        Some(1),
        "the job of generation 1 still runs: {running}"
    );
    // The new generation's hook is in force, on a spare (on a second connection: the first
    // one's queue holds its running job).
    let mut other = server.connect().await;
    let denied = other
        .call("execute", json!({"command": "echo banned"}))
        .await;
    assert!(
        denied["error"]["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("banned")),
        "{denied}"
    );
    let page = hooks_page(&server, |p| p["hooks"][0]["spares"]["served"] == 1).await;
    assert_eq!(page["hooks"][0]["spares"]["cold"], 0, "{page:#}");
    server.stop().await;
}
