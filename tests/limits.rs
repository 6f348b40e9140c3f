//! Resource limits per job, through the built binary, in both containment modes: 1 GB under
//! `memory_mb = 100`, a bounded forker under `pids = 64`, a busy loop under
//! `cpu_seconds = 1` (and, in cgroup mode, four loops whose total passes it), 10 MB written
//! under `file_size_mb = 1` — each ends with its `limit` while another client is served
//! meanwhile; `usage` in every completion; limits above the
//! server's maxima refused.

use crate::jobs::{processes_of, serve};
use crate::util::{KillOnDrop, Ws, completion, scratch};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = "[execution.limits.max]\nmemory_mb = 4096\npids = 1000\ncpu_seconds = 60\n";

/// A server in `mode`, with its `/health`.
async fn server(dir: &Path, mode: &str) -> (KillOnDrop, String, Value) {
    let rest = format!("[execution]\ncontainment = \"{mode}\"\n\n{CONFIG}");
    let (server, url) = serve(dir, &rest, &[]);
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (_, body) = crate::util::http(addr, "GET", "/health", &[], "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["containment"]["mode"], mode, "{health}");
    (server, url, health)
}

/// Runs `params` on one connection while a second one runs `echo` jobs one after another
/// until the limited job ends, and returns the limited job's completion. Each `echo` must be
/// answered in time, and at least one while the limited job ran.
async fn limited(url: &str, params: Value) -> Value {
    limited_counting(url, params).await.0
}

/// [`limited`], also counting the most processes the limited job had at once (sampled every
/// few milliseconds).
async fn limited_counting(url: &str, params: Value) -> (Value, usize) {
    let mut ws = Ws::connect(url).await;
    let mut other = Ws::connect(url).await;
    let r = ws.call("execute", params).await;
    let job_id = r["result"]["job_id"]
        .as_str()
        .expect("a job id")
        .to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let served = tokio::spawn(async move {
        let mut served = 0;
        while served == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let run = other.run(json!({"command": "echo other"}));
            let (_, events) = tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .expect("the other client is answered while a job is at its limit");
            assert_eq!(completion(&events)["status"], "completed");
            served += 1;
        }
        served
    });
    let mut most = 0;
    let completed = loop {
        most = most.max(processes_of(&job_id).len());
        let m = tokio::time::timeout(Duration::from_millis(5), ws.next()).await;
        if let Ok(m) = m
            && m["method"] == "process.completed"
            && m["params"]["job_id"] == job_id.as_str()
        {
            break m["params"].clone();
        }
    };
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(served.await.unwrap() >= 1);
    (completed, most)
}

fn whole_job(health: &Value, limit: &str) -> bool {
    health["containment"]["limits"][limit]
        .as_str()
        .unwrap()
        .starts_with("the whole job")
}

async fn limits_in(mode: &str) {
    let dir = scratch();
    let (_server, url, health) = server(dir.path(), mode).await;

    // Memory: 1 GB, touched, under 100 MiB.
    let done = limited(
        &url,
        json!({"command": "python3 -c \"x = b'a' * (1 << 30); print(len(x))\"",
               "limits": {"memory_mb": 100}}),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    if whole_job(&health, "memory_mb") {
        assert_eq!(done["limit"], "memory", "{done}");
        assert!(
            done["error"].as_str().unwrap().contains("100 MiB"),
            "{done}"
        );
    }

    // Processes: a forker bounded to 300, under 64; it never gets past the limit, and the
    // other client is served meanwhile.
    let (done, most) = limited_counting(
        &url,
        json!({"command": "for i in $(seq 300); do sleep 3 & done; wait",
               "limits": {"pids": 64}}),
    )
    .await;
    let mut ws = Ws::connect(&url).await;
    if whole_job(&health, "pids") {
        assert!(most <= 64, "{most} processes under pids = 64");
        assert_eq!(done["limit"], "pids", "{done}");
    }

    // CPU: a busy loop under one second.
    let done = limited(
        &url,
        json!({"command": "while :; do :; done", "limits": {"cpu_seconds": 1}}),
    )
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["limit"], "cpu", "{done}");
    let used = done["usage"]["cpu_user_s"].as_f64().unwrap()
        + done["usage"]["cpu_sys_s"].as_f64().unwrap();
    // About the limit: a cgroup's `cpu.stat` (tick-sampled here) has read 0.85 s for a loop
    // its own RLIMIT_CPU ended at 1 s, on a loaded machine.
    assert!((0.5..3.0).contains(&used), "{done}");

    // CPU of the whole job (cgroup mode's `cpu.stat` watch): four busy loops on two cores
    // reach one second together long before any of them reaches its own `RLIMIT_CPU`
    // (without the watch each loop dies alone of SIGXCPU and `wait` ends the job with 0).
    if mode == "cgroup" {
        let done = limited(
            &url,
            json!({"command": "for i in 1 2 3 4; do (while :; do :; done) & done; wait",
                   "limits": {"cpu_seconds": 1}}),
        )
        .await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["limit"], "cpu", "{done}");
        // Ended by the watch near one second in all: four loops ended one by one by their own
        // RLIMIT_CPU would have used four.
        let used = done["usage"]["cpu_user_s"].as_f64().unwrap()
            + done["usage"]["cpu_sys_s"].as_f64().unwrap();
        assert!(used < 3.0, "{done}");
    }

    // File size: 10 MB under 1 MiB.
    let file = dir.path().join("big");
    let done = limited(
        &url,
        json!({"command": format!("head -c 10485760 /dev/zero > {}", file.display()),
               "limits": {"file_size_mb": 1}}),
    )
    .await;
    assert_eq!(done["limit"], "file_size", "{done}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);

    // Open files: the shell sees the limit.
    let (_, events) = ws
        .run(json!({"command": "ulimit -n", "limits": {"open_files": 32}}))
        .await;
    assert_eq!(crate::util::output(&events, "stdout"), "32\n");

    // Every completion carries usage; a job that hits nothing has no `limit`.
    let (_, events) = ws.run(json!({"command": "echo hi"})).await;
    let done = completion(&events);
    assert!(done["limit"].is_null(), "{done}");
    assert!(done["usage"]["max_rss_kb"].as_u64().unwrap() > 0, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_jobs_in_cgroup_mode() {
    limits_in("cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_jobs_in_process_group_mode() {
    limits_in("process-group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_above_the_maxima_are_refused_and_defaults_apply() {
    let dir = scratch();
    let rest = format!("{CONFIG}[execution.limits.default]\nopen_files = 50\n");
    let (_server, url) = serve(dir.path(), &rest, &[]);
    let mut ws = Ws::connect(&url).await;
    for (limits, says) in [
        (
            json!({"memory_mb": 5000}),
            "above the server's maximum of 4096",
        ),
        (json!({"pids": 0}), "at least 1"),
        (json!({"memory": 10}), "unknown field"),
    ] {
        let r = ws
            .call("execute", json!({"command": "true", "limits": limits}))
            .await;
        assert_eq!(r["error"]["code"], -32602, "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
    }
    // The default applies, and the maxima fill what is not asked; both are in
    // `process.started`.
    let (_, events) = ws.run(json!({"command": "ulimit -n"})).await;
    assert_eq!(crate::util::output(&events, "stdout"), "50\n");
    let started = events
        .iter()
        .find(|e| e["method"] == "process.started")
        .unwrap();
    assert_eq!(
        started["params"]["limits"],
        json!({"memory_mb": 4096, "pids": 1000, "cpu_seconds": 60, "open_files": 50})
    );
}
