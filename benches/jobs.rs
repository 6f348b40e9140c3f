//! Job registry benchmark: `cargo bench --bench jobs`.
//!
//! Two release `ccx serve` processes side by side, one with the registry and spool on (the
//! default) and one with `[state] enabled = false`, measured in alternating rounds so both
//! see the same machine:
//! - `execute "true"` round trip, p50/p99 (target: on within 10% of off);
//! - stdout throughput through one connection (target: on at least 90% of off);
//! - the state directory's size after 10,000 jobs (database and spools);
//! - `attach` replay speed of a finished 1 GB job, in MB/s.
//!
//! Prints a Markdown table (pasted into the README). `CCX_BENCH_QUICK=1` shrinks the sizes;
//! `CCX_BENCH_ONLY=rtt` measures the round trips alone (more rounds), `CCX_BENCH_ONLY=throughput`
//! the throughput alone.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let quick = quick();
    let only = std::env::var("CCX_BENCH_ONLY").unwrap_or_default();
    let rtt_only = only == "rtt";
    let throughput_only = only == "throughput";
    let rt = multi_thread_runtime();
    let tmp = util::scratch();
    let dir = tmp.path();
    let big = if quick { 100_000_000u64 } else { 1_000_000_000 };
    // Each server in a folder of its own: its state directory is `<folder>/state`.
    let on_cfg = format!("[state]\nmax_output_bytes_per_job = {}\n", 2 * big);
    let (mut on, on_url, _) = start_server(&folder(dir, "on"), "on", &on_cfg);
    let (mut off, off_url, _) =
        start_server(&folder(dir, "off"), "off", "[state]\nenabled = false\n");

    let rows = rt.block_on(async {
        let mut rows: Vec<(String, String)> = Vec::new();
        // Round trips, alternating.
        let (rounds, per) = match (quick, rtt_only) {
            (true, _) => (4, 50),
            (false, false) => (10, 200),
            (false, true) => (30, 200),
        };
        let (mut rtt_on, mut rtt_off) = (Vec::new(), Vec::new());
        let rounds = if throughput_only { 1 } else { rounds };
        let (on_cpu, off_cpu) = (cpu_time(on.id()), cpu_time(off.id()));
        for _ in 0..rounds {
            rtt_off.extend(round_trips(&off_url, per).await);
            rtt_on.extend(round_trips(&on_url, per).await);
        }
        let (on_cpu, off_cpu) = (cpu_time(on.id()) - on_cpu, cpu_time(off.id()) - off_cpu);
        rtt_on.sort();
        rtt_off.sort();
        let n = rounds * per;
        rows.push((
            format!("`execute \"true\"` round trip, registry off ({n} runs)"),
            format!(
                "p50 {} / p99 {}",
                us(pct(&rtt_off, 50)),
                us(pct(&rtt_off, 99))
            ),
        ));
        rows.push((
            format!("same, registry and spool on ({n} runs)"),
            format!(
                "p50 {} / p99 {} ({:+.1}% at p50)",
                us(pct(&rtt_on, 50)),
                us(pct(&rtt_on, 99)),
                (pct(&rtt_on, 50).as_secs_f64() / pct(&rtt_off, 50).as_secs_f64() - 1.0) * 100.0
            ),
        ));
        rows.push((
            "server CPU time per `execute \"true\"`, registry off / on".into(),
            format!("{} / {}", us(off_cpu / n as u32), us(on_cpu / n as u32)),
        ));

        if rtt_only {
            return rows;
        }
        // Throughput, alternating, best of three each. Each run starts with no dirty pages
        // (`sync`): otherwise the writeback of the runs before throttles this one's spool
        // writes to the disk's speed, whichever server it is.
        let (mut best_on, mut best_off) = (f64::MAX, f64::MAX);
        let (on_cpu, off_cpu) = (cpu_time(on.id()), cpu_time(off.id()));
        for _ in 0..3 {
            unsafe { libc::sync() };
            let (s, got) = throughput(&off_url, big).await;
            assert_eq!(got, big);
            best_off = best_off.min(s);
            unsafe { libc::sync() };
            let (s, got) = throughput(&on_url, big).await;
            assert_eq!(got, big);
            best_on = best_on.min(s);
        }
        let (on_cpu, off_cpu) = (cpu_time(on.id()) - on_cpu, cpu_time(off.id()) - off_cpu);
        let mb = big as f64 / 1e6;
        rows.push((
            format!(
                "stdout throughput, {mb:.0} MB through one connection, registry off (best of 3)"
            ),
            format!("{:.0} MB/s", mb / best_off),
        ));
        rows.push((
            "same, registry and spool on (every byte also spooled and hashed)".into(),
            format!(
                "{:.0} MB/s ({:.0}% of off)",
                mb / best_on,
                best_off / best_on * 100.0
            ),
        ));
        rows.push((
            "server CPU time per GB of output, registry off / on".into(),
            format!(
                "{:.2} s / {:.2} s",
                off_cpu.as_secs_f64() / (3.0 * mb / 1000.0),
                on_cpu.as_secs_f64() / (3.0 * mb / 1000.0)
            ),
        ));

        // Replay the last big job (finished, spooled whole).
        let job_id = newest_job(&on_url).await;
        for encoding in ["utf8", "base64"] {
            let (secs, bytes) = replay(&on_url, &job_id, encoding).await;
            assert_eq!(bytes, big, "the whole output is replayed");
            rows.push((
                format!("`attach` replay of a finished {mb:.0} MB job, `{encoding}`"),
                format!("{:.0} MB/s ({secs:.2} s)", mb / secs),
            ));
        }
        rows
    });
    let rtt_only = rtt_only || throughput_only;
    stop(&mut off);
    stop(&mut on);
    if rtt_only {
        print_table(rows);
        return;
    }

    // The store's size per 10,000 jobs, on a fresh state directory.
    let jobs = if quick { 1000 } else { 10_000 };
    let (mut sized, sized_url, _) = start_server(&folder(dir, "size"), "size", "");
    let took = rt.block_on(many_jobs(&sized_url, jobs));
    stop(&mut sized);
    let state = dir.join("size/state");
    let db = ["ccx.db", "ccx.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(state.join(f)).map_or(0, |m| m.len()))
        .sum::<u64>();
    let spool = du(&state.join("spool"));
    let per = 10_000.0 / jobs as f64;
    let mut rows = rows;
    rows.push((
        "state directory per 10,000 `echo` jobs: database / spools (disk blocks)".into(),
        format!(
            "{:.1} MiB / {:.1} MiB ({jobs} jobs in {:.1} s over 8 connections)",
            db as f64 * per / 1048576.0,
            spool as f64 * per / 1048576.0,
            took.as_secs_f64()
        ),
    ));

    print_table(rows);
}

fn print_table(rows: Vec<(String, String)>) {
    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

async fn call(ws: &mut Ws, method: &str, params: Value) -> Value {
    let msg = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
    loop {
        let m = ws.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v["id"] == 1 {
            return v;
        }
    }
}

async fn newest_job(url: &str) -> String {
    let mut ws = connect(url).await;
    let r = call(&mut ws, "list_jobs", json!({"limit": 1})).await;
    r["result"]["jobs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Attaches from the start and reads to `process.completed`: (seconds, output bytes).
async fn replay(url: &str, job_id: &str, encoding: &str) -> (f64, u64) {
    use base64::Engine;
    let mut ws = connect(url).await;
    let start = Instant::now();
    let r = call(
        &mut ws,
        "attach",
        json!({"job_id": job_id, "output_encoding": encoding}),
    )
    .await;
    assert!(r["result"].is_object(), "{r}");
    let mut bytes = 0u64;
    loop {
        let m = ws.next().await.unwrap().unwrap();
        let text = m.to_text().unwrap();
        // Only the method is needed from most frames: avoid a full parse of 64 KiB strings.
        if text.contains("\"process.completed\"") {
            break;
        }
        if text.contains("\"process.output\"") {
            let v: Value = serde_json::from_str(text).unwrap();
            let data = v["params"]["data"].as_str().unwrap();
            bytes += if encoding == "base64" {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap()
                    .len() as u64
            } else {
                data.len() as u64
            };
        }
    }
    (start.elapsed().as_secs_f64(), bytes)
}

/// Runs `n` small jobs over 8 connections.
async fn many_jobs(url: &str, n: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let url = url.to_string();
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                for i in (c..n).step_by(8) {
                    send_execute(&mut ws, i as u64, "echo job").await;
                    until_completed(&mut ws).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Disk blocks used under `dir`, in bytes.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}
