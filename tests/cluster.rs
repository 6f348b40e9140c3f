//! The cluster (`ccx serve --nats` gateway, `ccx worker`s) on a real NATS server with
//! JetStream on loopback (`tests/nats/setup.sh` installs the pinned `nats-server`): jobs come
//! back byte for byte from whichever worker ran them, `requires` routes them, a job no worker
//! can take fails after `queue_timeout`, cancel and disconnect reach the worker's process,
//! a worker killed mid-job leaves its job `lost` (and the others running), a second gateway
//! replays a job exactly, and a NATS that is gone gives clear errors.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::util::{
    CCX, KillOnDrop, WAIT, Ws, completion, eventually, http, scratch, spawn_ccx_serve,
    start_nats_with,
};

/// Seconds between a worker's heartbeats, for workers and gateways alike.
const HEARTBEAT: &str = "0.5";

/// A NATS server with JetStream, its store in a scratch folder.
pub(crate) struct Nats {
    pub(crate) child: KillOnDrop,
    pub(crate) url: String,
    _dir: TempDir,
}

impl Nats {
    pub(crate) fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// With more `nats-server` arguments (`--user`, `--pass`, …).
    pub(crate) fn start_with(args: &[&str]) -> Nats {
        let dir = scratch();
        let (child, url) = start_nats_with(dir.path(), args);
        Nats {
            child: KillOnDrop(child),
            url,
            _dir: dir,
        }
    }
}

/// A `ccx worker` of the built binary, started and taking jobs.
pub(crate) struct Worker {
    pub(crate) child: KillOnDrop,
    _dir: TempDir,
}

impl Worker {
    pub(crate) fn start(nats: &str, name: &str, labels: &str) -> Worker {
        Worker::start_with(nats, name, labels, "")
    }

    /// With more config text (`[cluster]` credentials, …).
    pub(crate) fn start_with(nats: &str, name: &str, labels: &str, config_text: &str) -> Worker {
        let dir = scratch();
        let config = dir.path().join("ccx.toml");
        let text = format!("[execution]\nkill_grace = 0.3\n{config_text}");
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(CCX);
        cmd.args([
            "--log-format",
            "json",
            "worker",
            "--nats",
            nats,
            "--name",
            name,
        ])
        .args(["--max-jobs", "4", "--config"])
        .arg(&config)
        .env("CCX_STATE_DIR", dir.path().join("state"))
        .env("CCX_HEARTBEAT", HEARTBEAT)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if !labels.is_empty() {
            cmd.args(["--labels", labels]);
        }
        let mut child = cmd.spawn().expect("start ccx worker");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("worker log").unwrap();
            if line.contains("taking jobs") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Worker {
            child: KillOnDrop(child),
            _dir: dir,
        }
    }
}

/// A gateway: `ccx serve` with `CCX_NATS`.
pub(crate) struct Gateway {
    pub(crate) child: KillOnDrop,
    pub(crate) addr: String,
    _dir: TempDir,
}

impl Gateway {
    pub(crate) fn start(nats: &str, queue_timeout: &str) -> Gateway {
        Gateway::start_with(nats, queue_timeout, "", &[])
    }

    /// With config text (`[cluster]` credentials, …) and more environment variables.
    pub(crate) fn start_with(
        nats: &str,
        queue_timeout: &str,
        config_text: &str,
        more_env: &[(&str, &str)],
    ) -> Gateway {
        let dir = scratch();
        let config = dir.path().join("ccx.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut env = vec![
            ("CCX_NATS", nats),
            ("CCX_QUEUE_TIMEOUT", queue_timeout),
            ("CCX_HEARTBEAT", HEARTBEAT),
        ];
        env.extend_from_slice(more_env);
        let (child, addr, _) = spawn_ccx_serve(CCX, &config, &env);
        Gateway {
            child: KillOnDrop(child),
            addr,
            _dir: dir,
        }
    }

    pub(crate) async fn connect(&self) -> Ws {
        Ws::connect(&format!("ws://{}/ws", self.addr)).await
    }
}

/// The bytes job `i` writes: text and every byte value, so a lossy hop would show.
fn expected(i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for n in i..i + 300 {
        out.extend_from_slice(format!("{n}\n").as_bytes());
    }
    out.extend((0..=255u8).collect::<Vec<_>>());
    out
}

/// The command that writes [`expected`]`(i)` (dash's printf takes octal escapes).
fn command(i: usize) -> String {
    let all: String = (0..=255u32).map(|b| format!("\\{b:03o}")).collect();
    format!("seq {i} {}; printf '{all}'", i + 299)
}

/// The stdout bytes of a job's events (base64 output).
fn stdout_bytes(events: &[Value]) -> Vec<u8> {
    let mut chunks: Vec<(u64, Vec<u8>)> = events
        .iter()
        .filter(|e| e["method"] == "process.output" && e["params"]["type"] == "stdout")
        .map(|e| {
            let data = e["params"]["data"].as_str().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            (e["params"]["seq"].as_u64().unwrap(), bytes)
        })
        .collect();
    chunks.sort_by_key(|c| c.0);
    chunks.into_iter().flat_map(|c| c.1).collect()
}

fn started(events: &[Value]) -> &Value {
    &events
        .iter()
        .find(|e| e["method"] == "process.started")
        .unwrap_or_else(|| panic!("no process.started: {events:?}"))["params"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_300_jobs_byte_exact_routed_by_requires() {
    let nats = Nats::start();
    let _workers = [
        Worker::start(&nats.url, "w-plain", ""),
        Worker::start(&nats.url, "w-gpu", "gpu"),
        Worker::start(&nats.url, "w-gpu-linux", "linux,gpu"),
    ];
    let gateway = Gateway::start(&nats.url, "3");

    // 10 connections, each sending its 30 jobs at once: the gateway answers `queued` and runs
    // them one after another, on whichever worker takes each.
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..10 {
        let mut ws = gateway.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut jobs = Vec::new();
            for k in 0..30 {
                let i = c * 1000 + k;
                let reply = ws
                    .call(
                        "execute",
                        json!({"command": command(i), "output_encoding": "base64"}),
                    )
                    .await;
                let result = &reply["result"];
                assert_eq!(result["status"], "queued", "{reply}");
                // Counts this connection's jobs not ended yet, this one included.
                let position = result["position"].as_u64().unwrap() as usize;
                assert!((1..=k + 1).contains(&position), "{reply}");
                jobs.push((i, result["job_id"].as_str().unwrap().to_string()));
            }
            let mut ran = Vec::new();
            let mut last_end = 0.0f64;
            for (i, job) in jobs {
                let events = ws.collect(&job).await;
                let done = completion(&events);
                assert_eq!(done["status"], "completed", "{done}");
                let bytes = stdout_bytes(&events);
                assert!(bytes == expected(i), "job {i}: output differs");
                assert_eq!(done["stdout_bytes"], bytes.len(), "{done}");
                let s = started(&events);
                assert!(s["pid"].as_u64().unwrap() > 0);
                ran.push(s["worker"].as_str().unwrap().to_string());
                // One after another: nothing of a job arrives before the previous one ended.
                let first = events.first().unwrap();
                assert_eq!(first["method"], "process.started", "{first}");
                last_end = last_end.max(done["execution_time"].as_f64().unwrap());
            }
            ran
        }));
    }
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        for w in t.await.unwrap() {
            *per_worker.entry(w).or_default() += 1;
        }
    }
    let took = began.elapsed();
    eprintln!(
        "cluster: 300 jobs over 10 connections, 3 workers: {took:?}, per worker {per_worker:?}"
    );
    assert_eq!(per_worker.values().sum::<usize>(), 300);
    assert_eq!(
        per_worker.len(),
        3,
        "every worker took jobs: {per_worker:?}"
    );

    // Routing: `requires` picks the workers that have every label.
    let mut ws = gateway.connect().await;
    let mut routed: HashMap<&str, Vec<String>> = HashMap::new();
    for (requires, n) in [(json!(["gpu"]), 8), (json!(["gpu", "linux"]), 4)] {
        for _ in 0..n {
            let (_, events) = ws
                .run(json!({"command": "echo routed", "requires": requires}))
                .await;
            assert_eq!(completion(&events)["status"], "completed");
            let key = if requires.as_array().unwrap().len() == 1 {
                "gpu"
            } else {
                "gpu+linux"
            };
            routed
                .entry(key)
                .or_default()
                .push(started(&events)["worker"].as_str().unwrap().to_string());
        }
    }
    assert!(
        routed["gpu"]
            .iter()
            .all(|w| w == "w-gpu" || w == "w-gpu-linux"),
        "{routed:?}"
    );
    assert!(
        routed["gpu+linux"].iter().all(|w| w == "w-gpu-linux"),
        "{routed:?}"
    );

    // Nobody offers `tpu`: the job fails after the gateway's queue timeout (3 s), naming it.
    let (reply, events) = ws
        .run(json!({"command": "echo never", "requires": ["tpu"]}))
        .await;
    assert_eq!(reply["result"]["status"], "queued", "{reply}");
    let done = completion(&events);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("queue_timeout"),
        "{done}"
    );
    assert_eq!(events.len(), 1, "nothing ran: {events:?}");

    // Bad labels are the client's mistake.
    let reply = ws
        .call("execute", json!({"command": "true", "requires": ["a.b"]}))
        .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_disconnect_reach_the_process_on_its_worker() {
    let nats = Nats::start();
    let _worker = Worker::start(&nats.url, "w1", "");
    let gateway = Gateway::start(&nats.url, "30");

    // CANCEL by job id, from another connection.
    let mut ws = gateway.connect().await;
    let reply = ws.call("execute", json!({"command": "sleep 300"})).await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let first = ws.next().await;
    assert_eq!(first["method"], "process.started", "{first}");
    let pid = first["params"]["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let mut other = gateway.connect().await;
    let reply = other
        .call("control", json!({"type": "CANCEL", "job_id": job}))
        .await;
    assert_eq!(reply["result"]["status"], "canceled", "{reply}");
    let events = ws.collect(&job).await;
    assert_eq!(completion(&events)["status"], "canceled", "{events:?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} still runs"
    );
    // A job that has ended: a clear error.
    let reply = other
        .call("control", json!({"type": "PAUSE", "job_id": job}))
        .await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended")
    );

    // A client that leaves: its job (not detached) is canceled on the worker.
    let mut ws = gateway.connect().await;
    ws.call("execute", json!({"command": "sleep 300"})).await;
    let first = ws.next().await;
    let pid = first["params"]["pid"].as_u64().unwrap();
    drop(ws);
    assert!(
        eventually(WAIT, || !Path::new(&format!("/proc/{pid}")).exists()).await,
        "sleep {pid} outlived its client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_execute_fails_clearly_and_health_says_so() {
    let mut nats = Nats::start();
    let _worker = Worker::start(&nats.url, "w1", "");
    let gateway = Gateway::start(&nats.url, "30");
    let mut ws = gateway.connect().await;
    let (_, events) = ws.run(json!({"command": "echo up"})).await;
    assert_eq!(completion(&events)["status"], "completed");

    nats.child.kill().unwrap();
    nats.child.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    let health = loop {
        let (_, body) = http(&gateway.addr, "GET", "/health", &[], "").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        if health["cluster"]["state"] != "connected" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(health["cluster"]["state"], "connected", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let reply = ws.call("execute", json!({"command": "echo down"})).await;
    assert_eq!(reply["error"]["code"], -32009, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("NATS"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_ends_lost_and_a_second_gateway_replays_a_job_exactly() {
    let nats = Nats::start();
    let mut doomed = Worker::start(&nats.url, "w-a", "a");
    let _other = Worker::start(&nats.url, "w-b", "b");
    let first = Gateway::start(&nats.url, "30");
    let second = Gateway::start(&nats.url, "30");

    // A finished job, replayed through the other gateway: the same events, byte for byte.
    let mut ws = first.connect().await;
    let (reply, ran) = ws
        .run(json!({"command": command(7), "output_encoding": "base64", "requires": ["b"]}))
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    assert_eq!(stdout_bytes(&ran), expected(7));
    let mut ws2 = second.connect().await;
    let reply = ws2.call("attach", json!({"job_id": job})).await;
    assert_eq!(reply["result"]["status"], "completed", "{reply}");
    let replayed = ws2.collect(&job).await;
    assert_eq!(
        replayed, ran,
        "the replay differs from what the first client saw"
    );
    // From a seq on: only the output after it, then the end.
    let first_seq = ran
        .iter()
        .find(|e| e["method"] == "process.output")
        .map(|e| e["params"]["seq"].as_u64().unwrap())
        .unwrap();
    ws2.call("attach", json!({"job_id": job, "after_seq": first_seq}))
        .await;
    let tail = ws2.collect(&job).await;
    assert_eq!(tail.as_slice(), &ran[2..], "{tail:?}");
    let reply = ws2
        .call(
            "attach",
            json!({"job_id": "01234567-0000-7000-8000-000000000000"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");

    // Two jobs on two workers; the one running `w-a` is killed with SIGKILL.
    let mut on_a = first.connect().await;
    let reply = on_a
        .call(
            "execute",
            json!({"command": "sleep 300", "requires": ["a"]}),
        )
        .await;
    let lost_job = reply["result"]["job_id"].as_str().unwrap().to_string();
    let started_a = on_a.next().await;
    assert_eq!(started_a["params"]["worker"], "w-a", "{started_a}");
    let orphan = started_a["params"]["pid"].as_u64().unwrap();
    let mut on_b = first.connect().await;
    let reply = on_b
        .call(
            "execute",
            json!({"command": "sleep 2; echo survived", "requires": ["b"]}),
        )
        .await;
    let kept_job = reply["result"]["job_id"].as_str().unwrap().to_string();

    let killed = Instant::now();
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let events = on_a.collect(&lost_job).await;
    let took = killed.elapsed();
    let done = completion(&events);
    assert_eq!(done["status"], "lost", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("w-a") && error.contains("heartbeat"),
        "{error}"
    );
    eprintln!("cluster: a killed worker's job ended lost after {took:?} (heartbeat {HEARTBEAT} s)");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Its record says so, for any gateway.
    let reply = ws2.call("attach", json!({"job_id": lost_job})).await;
    assert_eq!(reply["result"]["status"], "lost", "{reply}");
    ws2.collect(&lost_job).await;

    let events = on_b.collect(&kept_job).await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    assert_eq!(crate::util::output(&events, "stdout"), "survived\n");
    // The dead worker's process has nobody left to end it (a restarted worker on that
    // machine would); the test does.
    unsafe { libc::kill(orphan as i32, libc::SIGKILL) };
}
