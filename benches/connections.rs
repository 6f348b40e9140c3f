//! A thousand connections on one machine (`nice cargo bench --bench connections`): a release
//! `ccx serve` with the default config and no hooks; N WebSocket connections open, then each
//! sends `execute "sleep 1"` at once; reports the time from the first send until the last
//! `process.completed`, when the jobs' `process.started` arrived (first, median, last), the
//! server's CPU time over the run and its resident memory (peak and
//! after). N = 200 and 1,000 (200 only with `CCX_BENCH_QUICK`), with the locale the bench was
//! started with, then 1,000 again with `LC_ALL=C`: each `sleep` loads its locale's files at
//! start (a dozen for `C.UTF-8`), and the server passes its environment on to jobs, so the
//! locale decides much of what the jobs themselves cost. Prints a Markdown table.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use std::time::{Duration, Instant};

use common::{
    connect, cpu_time, folder, multi_thread_runtime, send_execute, start_server_with, stop,
};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// (VmRSS, VmHWM) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let (rss, hwm) = common::memory(pid);
    (rss as f64 / 1048576.0, hwm as f64 / 1048576.0)
}

/// Reads one connection until its job's `process.completed`; returns the job's status and
/// when its `process.started` arrived.
async fn completed(ws: &mut common::Ws) -> (String, Option<Instant>) {
    let mut started = None;
    loop {
        let Message::Text(t) = ws.next().await.expect("open").expect("frame") else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["method"] == "process.started" {
            started = Some(Instant::now());
        }
        if v["method"] == "process.completed" {
            let status = v["params"]["status"].as_str().unwrap_or("").to_string();
            return (status, started);
        }
        if let Some(e) = v.get("error") {
            panic!("server error: {e}");
        }
    }
}

fn main() {
    // The client holds N sockets too.
    let _ = ccx::containment::nofile::raise_open_file_limit();
    let rt = multi_thread_runtime();
    let tmp = util::scratch();
    let inherited = std::env::var("LC_ALL")
        .or_else(|_| std::env::var("LANG"))
        .map(|l| format!("locale `{l}`"))
        .unwrap_or_else(|_| "no locale set".into());
    let c_locale: &[(&str, &str)] = &[("LC_ALL", "C")];
    let runs: &[(usize, &[(&str, &str)])] = if common::quick() {
        &[(200, &[])]
    } else {
        &[(200, &[]), (1000, &[]), (1000, c_locale)]
    };
    println!(
        "| connections, each `sleep 1` at once | all completed after | `process.started` first / median / last | server CPU | server RSS: idle / peak / after |"
    );
    println!("|---|---|---|---|---|");
    for (run, &(n, env)) in runs.iter().enumerate() {
        let dir = folder(tmp.path(), &format!("c{run}"));
        let (mut child, url, _) = start_server_with(&dir, "serve", "", env);
        let set: Vec<String> = env.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        let label = if set.is_empty() {
            format!("{n}, {inherited}")
        } else {
            format!("{n}, {}", set.join(" "))
        };
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        let (idle, _) = rss_mib(pid);
        let (elapsed, cpu, spread) = rt.block_on(async {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(connect(&url).await);
            }
            let cpu_before = cpu_time(pid);
            let started = Instant::now();
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut ws| {
                    tokio::spawn(async move {
                        send_execute(&mut ws, 1, "sleep 1").await;
                        let done = completed(&mut ws).await;
                        (done, ws)
                    })
                })
                .collect();
            let mut open = Vec::with_capacity(n);
            let mut starts = Vec::with_capacity(n);
            for t in tasks {
                let ((status, at), ws) = t.await.unwrap();
                assert_eq!(status, "completed");
                starts.push(at.expect("process.started before process.completed") - started);
                open.push(ws);
            }
            let elapsed = started.elapsed();
            let cpu = cpu_time(pid) - cpu_before;
            drop(open);
            starts.sort();
            let at = |q: usize| starts[(starts.len() - 1) * q / 100].as_secs_f64();
            (elapsed, cpu, (at(0), at(50), at(100)))
        });
        let (after, peak) = rss_mib(pid);
        println!(
            "| {label} | {:.2} s | {:.2} / {:.2} / {:.2} s | {:.2} s | {idle:.1} / {peak:.1} / {after:.1} MiB |",
            elapsed.as_secs_f64(),
            spread.0,
            spread.1,
            spread.2,
            cpu.as_secs_f64(),
        );
        stop(&mut child);
    }
}
