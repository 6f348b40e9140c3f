//! Containment in both modes, through the built binary: a `setsid` child and a double-forked
//! daemon are killed at the job's normal end, at timeout, at CANCEL and at disconnect, and
//! PAUSE stops them too; a detached job is spared at disconnect; `/health` states the mode
//! and why. Every process of a job is found by the `CCX_JOB_ID` it carries.

use crate::jobs::{processes_of, serve};
use crate::util::{WAIT, Ws, scratch};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Two escapees (a `setsid` child and a double-forked `setsid` daemon with a child of its
/// own), a line when they are up, then `rest`.
fn escapees(rest: &str) -> String {
    format!(
        "setsid sleep 300 >/dev/null 2>&1 & \
         (setsid sh -c 'sleep 300 & wait' >/dev/null 2>&1 &); \
         sleep 0.2; echo up; {rest}"
    )
}

fn config(mode: &str) -> String {
    format!("[execution]\ncontainment = \"{mode}\"\nkill_grace = 0.5\n")
}

async fn server(dir: &Path, mode: &str) -> (crate::util::KillOnDrop, String) {
    let (server, url) = serve(dir, &config(mode), &[]);
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (_, body) = crate::util::http(addr, "GET", "/health", &[], "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["containment"]["mode"], mode, "{health}");
    (server, url)
}

/// Waits until none of the job's processes is left.
async fn all_gone(job_id: &str) {
    let deadline = Instant::now() + WAIT;
    while !processes_of(job_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left over: {:?}",
            processes_of(job_id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `command` and returns its id once it printed `up` (with its escapees running,
/// when `running`: the command has not ended).
async fn start_checked(ws: &mut Ws, params: Value, running: bool) -> String {
    let r = ws.call("execute", params).await;
    let job_id = r["result"]["job_id"]
        .as_str()
        .expect("a job id")
        .to_string();
    loop {
        let m = ws.next().await;
        if m["method"] == "process.output" && m["params"]["data"] == "up\n" {
            break;
        }
    }
    if running {
        assert!(
            processes_of(&job_id).len() >= 4,
            "the job and its escapees run: {:?}",
            processes_of(&job_id)
        );
    }
    job_id
}

async fn start(ws: &mut Ws, params: Value) -> String {
    start_checked(ws, params, true).await
}

async fn completion(ws: &mut Ws, job_id: &str) -> Value {
    loop {
        let m = ws.next().await;
        if m["method"] == "process.completed" && m["params"]["job_id"] == job_id {
            return m["params"].clone();
        }
    }
}

/// Sends `control` of `kind` (`PAUSE`, `RESUME`, `CANCEL`) for the job; the reply is a result.
async fn control(ws: &mut Ws, kind: &str, job_id: &str) {
    let r = ws
        .call("control", json!({"type": kind, "job_id": job_id}))
        .await;
    assert!(r["result"].is_object(), "{r}");
}

async fn ends_kill_escapees(mode: &str) {
    let dir = scratch();
    let (_server, url) = server(dir.path(), mode).await;
    let mut ws = Ws::connect(&url).await;

    // Normal end: the command exits, its escapees are killed and counted.
    let job = start_checked(&mut ws, json!({"command": escapees("true")}), false).await;
    let done = completion(&mut ws, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["leftovers_killed"].as_u64() >= Some(2),
        "the end says what it killed: {done}"
    );
    all_gone(&job).await;

    // Timeout.
    let job = start(
        &mut ws,
        json!({"command": escapees("sleep 300"), "timeout": 1}),
    )
    .await;
    assert_eq!(completion(&mut ws, &job).await["status"], "timed_out");
    all_gone(&job).await;

    // CANCEL.
    let job = start(&mut ws, json!({"command": escapees("sleep 300")})).await;
    control(&mut ws, "CANCEL", &job).await;
    assert_eq!(completion(&mut ws, &job).await["status"], "canceled");
    all_gone(&job).await;

    // Disconnect.
    let job = start(&mut ws, json!({"command": escapees("sleep 300")})).await;
    drop(ws);
    all_gone(&job).await;
}

/// Whether `pid` is paused as `mode` pauses: stopped (`T` in /proc/<pid>/stat) in
/// process-group mode; in cgroup mode frozen, which /proc shows only as `frozen 1` in its
/// cgroup's `cgroup.events` (frozen tasks show state `S`).
fn stopped(pid: u32, mode: &str) -> bool {
    if mode == "process-group" {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        return state.starts_with('T') || state.starts_with('t');
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return false;
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .expect("a cgroup2 mount");
    let events = format!("{mount}{path}/cgroup.events");
    std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .any(|l| l == "frozen 1")
}

/// Bytes the job's escaped writer has written so far.
fn written(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |m| m.len())
}

async fn pause_stops_escapees(mode: &str) {
    let dir = scratch();
    let (_server, url) = server(dir.path(), mode).await;
    let mut ws = Ws::connect(&url).await;
    let file = dir.path().join("ticks");
    // A writer that left the group, ticking every 20 ms.
    let writer = format!(
        "setsid sh -c 'while :; do echo t >> {}; sleep 0.02; done' >/dev/null 2>&1 &",
        file.display()
    );
    let job = start(
        &mut ws,
        json!({"command": escapees(&format!("{writer} sleep 300"))}),
    )
    .await;
    control(&mut ws, "PAUSE", &job).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every process of the job, the double-forked daemon and its child too, is stopped.
    let procs = processes_of(&job);
    assert!(procs.len() >= 5, "{procs:?}");
    for pid in procs {
        assert!(stopped(pid, mode), "{pid} of {job} runs on while paused");
    }
    let paused_at = written(&file);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(written(&file), paused_at, "the escaped writer is paused");
    control(&mut ws, "RESUME", &job).await;
    let deadline = Instant::now() + WAIT;
    while written(&file) == paused_at {
        assert!(
            Instant::now() < deadline,
            "the writer runs again after RESUME"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    control(&mut ws, "CANCEL", &job).await;
    assert_eq!(completion(&mut ws, &job).await["status"], "canceled");
    all_gone(&job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_mode_kills_escapees_at_every_end() {
    ends_kill_escapees("cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_group_mode_kills_escapees_at_every_end() {
    ends_kill_escapees("process-group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_mode_pause_freezes_escapees() {
    pause_stops_escapees("cgroup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_group_mode_pause_stops_escapees() {
    pause_stops_escapees("process-group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_parent_that_cannot_be_used_is_refused_when_cgroup_mode_is_forced() {
    let dir = scratch();
    let cfg = crate::util::write_config(
        dir.path(),
        0.0,
        "[execution]\ncontainment = \"cgroup\"\ncgroup_parent = \"/no/such/parent\"\n",
    );
    let out = std::process::Command::new(crate::util::CCX)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("containment = \"cgroup\"") && err.contains("/no/such/parent"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_paused_does_not_count_toward_the_timeout_and_max_pause_bounds_it() {
    let dir = scratch();
    let rest = "[execution]\nmax_pause = 1.0\n";
    let (_server, url) = serve(dir.path(), rest, &[]);
    let mut ws = Ws::connect(&url).await;

    // 0.6 s of work under a 1 s timeout, paused for 1.2 s of it: wall time is past the
    // timeout, running time is not.
    let r = ws
        .call(
            "execute",
            json!({"command": "sleep 0.3; sleep 0.3; echo done", "timeout": 1}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    control(&mut ws, "PAUSE", &job).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    control(&mut ws, "RESUME", &job).await;
    let done = completion(&mut ws, &job).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["execution_time"].as_f64() > Some(1.0), "{done}");

    // Paused past max_pause: canceled, and the completion says why.
    let r = ws.call("execute", json!({"command": "sleep 30"})).await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    control(&mut ws, "PAUSE", &job).await;
    let done = completion(&mut ws, &job).await;
    assert_eq!(done["status"], "canceled", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_pause")),
        "{done}"
    );
    all_gone(&job).await;
}

/// `auto` takes a cgroup where one can be made (these machines can), and `/health` says
/// which mode is in effect and why, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_states_the_mode_in_effect_and_why() {
    for (config, mode, why) in [
        ("", "cgroup", "a cgroup v2 per job under "),
        (
            "[execution]\ncontainment = \"process-group\"\n",
            "process-group",
            "child subreaper (no cgroup: `[execution] containment = \"process-group\"`)",
        ),
    ] {
        let dir = scratch();
        let (_server, url) = serve(dir.path(), config, &[]);
        let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
        let (_, body) = crate::util::http(addr, "GET", "/health", &[], "").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["containment"]["mode"], mode, "{health}");
        let reason = health["containment"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason}");
    }
}

/// A detached job is spared when its client leaves, in process-group mode too (the reaper
/// kills only what belongs to ended jobs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_group_mode_spares_a_detached_job_at_disconnect() {
    let dir = scratch();
    let (_server, url) = server(dir.path(), "process-group").await;
    let mut ws = Ws::connect(&url).await;
    let job = start(
        &mut ws,
        json!({"command": escapees("sleep 300"), "detach": true}),
    )
    .await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        processes_of(&job).len() >= 3,
        "the detached job and its escapees run on: {:?}",
        processes_of(&job)
    );
    let mut other = Ws::connect(&url).await;
    control(&mut other, "CANCEL", &job).await;
    all_gone(&job).await;
}
