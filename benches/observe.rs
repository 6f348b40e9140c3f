//! Observability benchmark (`cargo bench --bench observe`): what `/metrics` and the audit log
//! cost a job.
//!
//! `execute "true"` round trips (send → `process.completed`, one connection) against two
//! release `ccx serve`s side by side, in alternating batches so that both see the same
//! machine: one with `[metrics] enabled = false` and no audit log, one with `/metrics`
//! scraped after every batch and `[audit] path` set (one hash-chained, fdatasync'ed line per
//! job). Target: within 5% of off. Also: the time one scrape of `/metrics` takes.
//!
//! Prints Markdown rows (pasted into the README). `CCX_BENCH_QUICK=1` shrinks the sizes.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use common::*;
use std::time::Instant;

fn main() {
    let quick = quick();
    println!("| measurement | result |\n|---|---|");
    let tmp = util::scratch();
    let dir = tmp.path();
    let off_dir = folder(dir, "off");
    let on_dir = folder(dir, "on");
    let audit = on_dir.join("audit.log");
    let (mut off, off_url, _) = start_server(&off_dir, "off", "[metrics]\nenabled = false\n");
    let (mut on, on_url, _) = start_server(
        &on_dir,
        "on",
        &format!("[audit]\npath = {:?}\n", audit.display().to_string()),
    );
    let on_addr = on_url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let rt = multi_thread_runtime();
    let (batches, per) = if quick { (4, 50) } else { (10, 200) };
    let (plain, observed, scrapes) = rt.block_on(async {
        round_trips(&off_url, 20).await;
        round_trips(&on_url, 20).await;
        let (mut plain, mut observed, mut scrapes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..batches {
            plain.extend(round_trips(&off_url, per).await);
            observed.extend(round_trips(&on_url, per).await);
            let t = Instant::now();
            let (status, body) = util::http(&on_addr, "GET", "/metrics", &[], "").await;
            scrapes.push(t.elapsed());
            assert_eq!(status, 200, "{body}");
        }
        (plain, observed, scrapes)
    });
    stop(&mut off);
    stop(&mut on);
    let lines = std::fs::read_to_string(&audit)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let n = plain.len();
    let (p50, p99) = percentiles(plain);
    let (o50, o99) = percentiles(observed);
    let (s50, _) = percentiles(scrapes);
    println!(
        "| `execute \"true\"` round trip, metrics off, no audit log ({n} runs) | p50 {} / p99 {} |",
        us(p50),
        us(p99)
    );
    println!(
        "| the same with `/metrics` scraped and the audit log on ({n} runs, {lines} audit lines) | p50 {} / p99 {} ({:+.1}% at p50) |",
        us(o50),
        us(o99),
        (o50.as_secs_f64() / p50.as_secs_f64() - 1.0) * 100.0
    );
    println!("| one scrape of `/metrics` (no hooks) | p50 {} |", us(s50));
}
