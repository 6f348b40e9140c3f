//! The soak: many jobs over many connections through the built binary, each ending one of
//! seven ways (completed, canceled, paused and resumed, timed out, denied by a pre-hook, its
//! client gone, detached and attached again), checking that every job ends exactly once,
//! that no process or descriptor is left behind, that the server's memory levels off (at most
//! 20% growth over the last two fifths of the jobs), and that
//! after a restart the spool is within its retention.
//!
//! `cargo test` runs 1,000 jobs over 50 connections; the long run is a bench command,
//! `cargo bench --bench soak` (10,000 jobs against the release build; `benches/soak.rs`
//! includes this file and calls [`soak`]). Both print their figures; `CCX_SOAK_JOBS` and
//! `CCX_SOAK_CONNECTIONS` change the 1,000 (10,000) and the 50.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{
    KillOnDrop, Ws, fds, leftovers, rss_kib, scratch, spawn_ccx_serve, write_config,
};

const RETAIN_JOBS: usize = 200;

/// A small deterministic generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What the run saw: terminal events per job id, and every job id it was given.
#[derive(Default)]
struct Seen {
    terminal: HashMap<String, u32>,
    jobs: HashSet<String>,
    denied: u64,
    by_end: HashMap<&'static str, u64>,
}

/// Notes every terminal event in `events`.
fn note(seen: &Mutex<Seen>, events: &[Value]) {
    let mut s = seen.lock().unwrap();
    for e in events {
        if e["method"] == "process.completed"
            && let Some(id) = e["params"]["job_id"].as_str()
        {
            *s.terminal.entry(id.to_string()).or_default() += 1;
        }
    }
}

fn job_id(reply: &Value) -> String {
    reply["result"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id: {reply}"))
        .to_string()
}

/// Waits until the job has started (its `process.started`), keeping other messages.
async fn started(ws: &mut Ws, id: &str) -> Vec<Value> {
    let mut kept = Vec::new();
    loop {
        let m = ws.next().await;
        let done = m["method"] == "process.started" && m["params"]["job_id"] == id;
        kept.push(m);
        if done {
            return kept;
        }
    }
}

/// One connection's share: `n` jobs, each ending the way `rng` picks.
async fn client(url: String, n: usize, seed: u64, seen: Arc<Mutex<Seen>>) {
    let mut rng = Rng(seed | 1);
    let mut ws = Ws::connect(&url).await;
    for _ in 0..n {
        let way = rng.below(7);
        let end = match way {
            0 => {
                let r = ws.call("execute", json!({"command": "echo soak"})).await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                note(&seen, &ws.collect(&id).await);
                "completed"
            }
            1 => {
                let r = ws.call("execute", json!({"command": "sleep 30"})).await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                let mut events = started(&mut ws, &id).await;
                let ack = ws
                    .call("control", json!({"type": "CANCEL", "job_id": id}))
                    .await;
                assert!(ack.get("result").is_some(), "{ack}");
                events.extend(ws.collect(&id).await);
                note(&seen, &events);
                "canceled"
            }
            2 => {
                let r = ws
                    .call("execute", json!({"command": "sleep 0.05; echo resumed"}))
                    .await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                let mut events = started(&mut ws, &id).await;
                for t in ["PAUSE", "RESUME"] {
                    // The job may already have ended: then the control is refused, which is fine.
                    let _ = ws.call("control", json!({"type": t, "job_id": id})).await;
                }
                events.extend(ws.collect(&id).await);
                note(&seen, &events);
                "paused"
            }
            3 => {
                let r = ws
                    .call("execute", json!({"command": "sleep 30", "timeout": 0.1}))
                    .await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                let events = ws.collect(&id).await;
                assert_eq!(events.last().unwrap()["params"]["status"], "timed_out");
                note(&seen, &events);
                "timed_out"
            }
            4 => {
                let r = ws
                    .call("execute", json!({"command": "echo SOAK-DENY"}))
                    .await;
                assert!(r.get("error").is_some(), "a denial: {r}");
                seen.lock().unwrap().denied += 1;
                "denied"
            }
            5 => {
                // The client goes away mid-job: the job ends (canceled) with nobody listening.
                let r = ws.call("execute", json!({"command": "sleep 30"})).await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                started(&mut ws, &id).await;
                ws = Ws::connect(&url).await;
                // Counted from the registry at the end.
                seen.lock().unwrap().terminal.entry(id).or_default();
                "disconnected"
            }
            _ => {
                let r = ws
                    .call(
                        "execute",
                        json!({"command": "sleep 0.1; echo detached", "detach": true}),
                    )
                    .await;
                let id = job_id(&r);
                seen.lock().unwrap().jobs.insert(id.clone());
                ws = Ws::connect(&url).await;
                let a = ws.call("attach", json!({"job_id": id})).await;
                assert!(a.get("result").is_some(), "{a}");
                note(&seen, &ws.collect(&id).await);
                "attached"
            }
        };
        *seen.lock().unwrap().by_end.entry(end).or_default() += 1;
    }
    // Anything else arriving now would be a second terminal event.
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        note(&seen, &[m]);
    }
}

/// `jobs` jobs over `conns` connections, all at once.
async fn round(url: &str, jobs: usize, conns: usize, seed: u64, seen: &Arc<Mutex<Seen>>) {
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let share = jobs / conns + usize::from(c < jobs % conns);
            tokio::spawn(client(
                url.to_string(),
                share,
                seed.wrapping_mul(31).wrapping_add(c as u64),
                seen.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.expect("a soak client failed");
    }
}

fn count_dir(path: &Path) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// `CCX_SOAK_JOBS`, else `jobs`; and `CCX_SOAK_CONNECTIONS`, else 50.
pub fn sizes(jobs: usize) -> (usize, usize) {
    let var = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (var("CCX_SOAK_JOBS", jobs), var("CCX_SOAK_CONNECTIONS", 50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_job_ends_once_and_nothing_is_left_behind() {
    let (jobs, conns) = sizes(1000);
    soak(jobs, conns).await;
}

/// The soak: `jobs` jobs over `conns` connections against the built `ccx`; panics on the
/// first broken promise, prints its figures.
pub async fn soak(jobs: usize, conns: usize) {
    let tmp = scratch();
    let config = write_config(
        tmp.path(),
        0.0,
        &format!(
            "[state]\nretain_jobs = {RETAIN_JOBS}\n\n\
             [sandbox]\nmax_concurrent_calls = 4\n\n[[hooks]]\nname = \"soak-deny\"\n\
             path = \"{{test-hook}}\"\nconfig = {{ mode = \"deny-if-contains\", needle = \"SOAK-DENY\" }}\n"
        ),
    );
    let (child, addr, _) = spawn_ccx_serve(crate::util::CCX, &config, &[]);
    let server = KillOnDrop(child);
    let pid = server.id();
    let url = format!("ws://{addr}/ws");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();

    // Warm-up: a fifth of the jobs, then two fifths, then the rest. Memory and descriptors
    // are read when no connection is open, after the second round: until then the hook
    // runtime's instance pool may still be growing to its bound (each slot used at once keeps
    // up to 5 MiB resident for the next call; `max_concurrent_calls`, 4 here, bounds the
    // slots, so the bound is reached early).
    let warm = (jobs / 5).max(conns);
    let mid = (jobs * 2 / 5).max(conns);
    round(&url, warm, conns, 7, &seen).await;
    round(&url, mid, conns, 13, &seen).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_warm, fds_warm) = (rss_kib(pid), fds(pid));
    round(&url, jobs.saturating_sub(warm + mid), conns, 99, &seen).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_end, fds_end) = (rss_kib(pid), fds(pid));
    let took = started.elapsed();

    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    // Jobs whose client left: the registry must show them ended, once.
    let mut ws = Ws::connect(&url).await;
    let mut unheard = 0;
    for (id, n) in &seen.terminal {
        if *n == 0 {
            unheard += 1;
            let r = ws.call("get_job", json!({"job_id": id})).await;
            assert_eq!(
                r["result"]["status"], "canceled",
                "a job whose client left: {r}"
            );
            assert!(r["result"]["ended_at"].is_number(), "{r}");
        } else {
            assert_eq!(*n, 1, "job {id} got {n} terminal events");
        }
    }
    assert_eq!(
        seen.terminal.len(),
        seen.jobs.len(),
        "a job without its terminal event"
    );
    drop(ws);

    let left = leftovers(&seen.jobs);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        fds_end <= fds_warm + 8,
        "descriptors grew from {fds_warm} to {fds_end}"
    );
    let growth = rss_end as f64 / rss_warm as f64;
    println!(
        "soak: {} jobs ({} denied) over {conns} connections in {:.1} s; ends {:?}; \
         RSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end ({:+.1}%); \
         descriptors {fds_warm} → {fds_end}; {unheard} jobs ended with their client gone",
        seen.jobs.len() as u64 + seen.denied,
        seen.denied,
        took.as_secs_f64(),
        seen.by_end,
        (growth - 1.0) * 100.0,
    );
    assert!(
        growth <= 1.2,
        "memory grew {:.0}% after warm-up",
        (growth - 1.0) * 100.0
    );

    // A restart prunes past retention at once: the spool keeps at most `retain_jobs` jobs.
    drop(server);
    let (child, _, _) = spawn_ccx_serve(crate::util::CCX, &config, &[]);
    let _server = KillOnDrop(child);
    let spool = tmp.path().join("state/spool");
    let pruned =
        crate::util::eventually(Duration::from_secs(10), || count_dir(&spool) <= RETAIN_JOBS).await;
    assert!(pruned, "{} spools kept", count_dir(&spool));
}
