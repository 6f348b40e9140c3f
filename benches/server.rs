//! Server benchmark: `cargo bench --bench server`.
//!
//! Starts the release `ccx` binary on a free loopback port and measures, in one run:
//! - round trip of `execute "true"` on one connection (send → `process.completed`), p50/p99,
//!   next to the cost of spawning `sh -c true` directly from Rust (the floor ccx sits on);
//! - stdout throughput for 1 GB of output;
//! - wall time for 200 connections each running `sleep 1` at once;
//! - the server's RSS idle and during that run.
//!
//! Prints a Markdown table (pasted into the README). `CCX_BENCH_QUICK=1` shrinks the sizes.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let quick = quick();
    let rt = multi_thread_runtime();
    let tmp = util::scratch();
    let dir = tmp.path();
    let (mut server, url, _) = start_server(dir, "plain", "[server]\nmax_sessions = 400\n");
    let pid = server.id();

    let rows = rt.block_on(async {
        let mut rows: Vec<(String, String)> = Vec::new();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_rss = rss_kib(pid);

        let n = if quick { 100 } else { 1000 };
        let direct = spawn_direct(n).await;
        let direct_std = spawn_std(n);
        rows.push((
            format!("`sh -c true` spawned with std, blocking ({n} runs)"),
            format!(
                "p50 {} / p99 {}",
                us(pct(&direct_std, 50)),
                us(pct(&direct_std, 99))
            ),
        ));
        let rtt = round_trips(&url, n).await;
        rows.push((
            format!("`sh -c true` spawned directly from Rust (tokio, {n} runs)"),
            format!(
                "p50 {} / p99 {}",
                us(pct(&direct, 50)),
                us(pct(&direct, 99))
            ),
        ));
        rows.push((
            format!("`execute \"true\"` round trip, one connection ({n} runs)"),
            format!(
                "p50 {} / p99 {} ({:.2}× direct p50)",
                us(pct(&rtt, 50)),
                us(pct(&rtt, 99)),
                pct(&rtt, 50).as_secs_f64() / pct(&direct, 50).as_secs_f64()
            ),
        ));

        let bytes: u64 = if quick { 100_000_000 } else { 1_000_000_000 };
        let (secs, got) = throughput(&url, bytes).await;
        assert_eq!(got, bytes, "every byte arrives");
        rows.push((
            format!(
                "stdout throughput, {} MB through one connection",
                bytes / 1_000_000
            ),
            format!("{:.0} MB/s ({secs:.2} s)", bytes as f64 / 1e6 / secs),
        ));

        let conns = if quick { 50 } else { 200 };
        let (wall, peak) = parallel_sleeps(&url, conns, pid).await;
        rows.push((
            format!("{conns} connections each running `sleep 1` at once"),
            format!("{:.2} s wall", wall.as_secs_f64()),
        ));
        rows.push((
            "server RSS idle".into(),
            format!("{:.1} MiB", idle_rss as f64 / 1024.0),
        ));
        rows.push((
            format!("server RSS peak during the {conns}-connection run"),
            format!("{:.1} MiB", peak as f64 / 1024.0),
        ));
        rows
    });
    stop(&mut server);

    // Hooks: the round trip with a 10-hook chain (pre + post each), and start-up with the
    // hooks compiled (cold cache) or mapped from the cache (warm).
    let mut rows = rows;
    let path_of = |name: &str| util::component(name).display().to_string();
    let chain = |hook: &str, cache: &std::path::Path| {
        let mut cfg = format!("[sandbox]\ncache_dir = \"{}\"\n", cache.display());
        for i in 0..10 {
            cfg.push_str(&format!("[[hooks]]\nname = \"h{i}\"\npath = \"{hook}\"\n"));
        }
        cfg
    };
    let n = if quick { 100 } else { 1000 };
    let (mut bare, bare_url, _) = start_server(dir, "bare", "");
    let bare_rtt = rt.block_on(round_trips(&bare_url, n));
    stop(&mut bare);
    rows.push((
        format!("`execute \"true\"` round trip, no hooks ({n} runs)"),
        format!(
            "p50 {} / p99 {}",
            us(pct(&bare_rtt, 50)),
            us(pct(&bare_rtt, 99))
        ),
    ));
    let trivial = chain(&path_of("pre-only"), &dir.join("cache-trivial"));
    let full = chain(&path_of("test-hook"), &dir.join("cache-full"));
    for (what, cfg) in [
        ("10 trivial Rust pre-hooks (`pre-only`)", &trivial),
        (
            "10 Rust hooks with pre and post (`test-hook`, 20 calls)",
            &full,
        ),
    ] {
        let (mut cold, _, cold_start) = start_server(dir, "cold", cfg);
        stop(&mut cold);
        let (mut warm, warm_url, warm_start) = start_server(dir, "warm", cfg);
        let chained = rt.block_on(round_trips(&warm_url, n));
        stop(&mut warm);
        rows.push((
            format!("same with {what}"),
            format!(
                "p50 {} / p99 {} (adds {} at p50)",
                us(pct(&chained, 50)),
                us(pct(&chained, 99)),
                us(pct(&chained, 50).saturating_sub(pct(&bare_rtt, 50)))
            ),
        ));
        rows.push((
            format!(
                "server start to ready (hooks loaded) with {what}: cold cache (compile) / warm cache"
            ),
            format!(
                "{:.0} ms / {:.0} ms",
                cold_start.as_secs_f64() * 1e3,
                warm_start.as_secs_f64() * 1e3
            ),
        ));
    }

    // The example config on a new machine: a clean artifact cache, all five example hooks.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ccx.toml"))
        .unwrap()
        .replace(
            "path = \"hooks/",
            concat!("path = \"", env!("CARGO_MANIFEST_DIR"), "/hooks/"),
        )
        .replace(
            "[sandbox]",
            &format!(
                "[sandbox]\ncache_dir = \"{}\"",
                dir.join("cache-examples").display()
            ),
        );
    let _ = path_of("secret-scan");
    let cfg = dir.join("examples.toml");
    std::fs::write(&cfg, example).unwrap();
    let started = Instant::now();
    let (mut child, addr, listening) = util::spawn_ccx_serve(
        env!("CARGO_BIN_EXE_ccx"),
        &cfg,
        &[("RUST_LOG", "warn,ccx::server=info")],
    );
    let first = health(&addr);
    let first_at = started.elapsed();
    assert_eq!(first["status"], "starting", "{first}");
    while health(&addr)["status"] != "healthy" {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_at = started.elapsed();
    stop(&mut child);
    rows.push((
        "`ccx serve --config ccx.toml` (5 example hooks), clean cache: listening / first `/health` (`starting`) / all hooks loaded".into(),
        format!(
            "{:.0} ms / {:.0} ms / {:.1} s",
            listening.as_secs_f64() * 1e3,
            first_at.as_secs_f64() * 1e3,
            ready_at.as_secs_f64()
        ),
    ));

    println!("| measurement | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

async fn spawn_direct(n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        child.wait_with_output().await.unwrap();
        out.push(start.elapsed());
    }
    out.sort();
    out
}

fn spawn_std(n: usize) -> Vec<Duration> {
    use std::os::unix::process::CommandExt;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        Command::new("/bin/sh")
            .args(["-c", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .output()
            .unwrap();
        out.push(start.elapsed());
    }
    out.sort();
    out
}

async fn parallel_sleeps(url: &str, conns: usize, server_pid: u32) -> (Duration, u64) {
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(server_pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                send_execute(&mut ws, 1, "sleep 1").await;
                until_completed(&mut ws).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wall = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (wall, sampler.await.unwrap())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
