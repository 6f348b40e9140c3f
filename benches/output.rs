//! Output-stage benchmark (`cargo bench --bench output`): what `secret-redact` costs.
//!
//! - stdout throughput of 1000 MB (`yes … | head -c`) through one connection, against two
//!   release `ccx serve`s side by side: no hooks, and `secret-redact` (granularity `chunk`),
//!   best of three each, alternating. Target: at least half the rate without it.
//! - in process, the latency `secret-redact` adds per 64 KiB chunk of log text (p50/p99 of
//!   `filter-output` calls on one job-long instance), and its `start-output` (the patterns'
//!   compilation, once per job).
//!
//! Prints Markdown rows (pasted into the README). `CCX_BENCH_QUICK=1` shrinks the sizes.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use ccx::hooks::{HookHost, HookRequest, HookSet, HookSpec, HostOptions, OutStream};
use common::*;
use std::time::{Duration, Instant};

fn main() {
    let quick = quick();
    println!("| measurement | result |\n|---|---|");
    chunk_rows(quick);
    throughput_rows(quick);
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn chunk_rows(quick: bool) {
    let rt = current_thread_runtime();
    let host = HookHost::new(HostOptions {
        cache_dir: Some(util::shared_cache()),
        ..HostOptions::default()
    })
    .expect("hook host");
    let spec = HookSpec::new("secret-redact", util::component("secret-redact"));
    let set = HookSet::load(&host, &[spec]);
    let line = b"2026-12-01T04:00:00Z INFO served /api/v1/items in 12 ms status=200 bytes=5120\n";
    let chunk: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
    let n = if quick { 200 } else { 2000 };
    let (starts, calls) = rt.block_on(async {
        let mut request = HookRequest {
            command: "cat app.log".into(),
            ..Default::default()
        };
        request.parse();
        let mut starts = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let (filter, _) = set.start_output(&request).await.expect("starts");
            starts.push(t.elapsed());
            drop(filter);
        }
        let (filter, _) = set.start_output(&request).await.expect("starts");
        let mut filter = filter.expect("secret-redact takes part");
        let mut calls = Vec::with_capacity(n);
        for seq in 0..n as u64 {
            let t = Instant::now();
            let out = filter.filter(OutStream::Stdout, seq + 1, &chunk).await;
            calls.push(t.elapsed());
            assert!(out.end.is_none());
        }
        (starts, calls)
    });
    let (p50, p99) = percentiles(calls);
    println!(
        "| `secret-redact` per 64 KiB chunk of log text ({n} calls, one instance) | p50 {} / p99 {} ({:.0} MB/s at p50) |",
        ms(p50),
        ms(p99),
        65536.0 / p50.as_secs_f64() / 1e6
    );
    let (s50, s99) = percentiles(starts);
    println!(
        "| `secret-redact` start per job: instance + `start-output` (20 runs) | p50 {} / p99 {} |",
        ms(s50),
        ms(s99)
    );
}

fn throughput_rows(quick: bool) {
    let tmp = util::scratch();
    let dir = tmp.path();
    let cache = util::shared_cache();
    let hook = util::component("secret-redact");
    let redact = format!(
        "[sandbox]\ncache_dir = {cache:?}\n\n[[hooks]]\nname = \"secret-redact\"\npath = {hook:?}\n"
    );
    let (mut plain, plain_url, _) = start_server(&folder(dir, "plain"), "plain", "");
    let (mut guarded, guarded_url, _) = start_server(&folder(dir, "redact"), "redact", &redact);
    let rt = multi_thread_runtime();
    let bytes: u64 = if quick { 100 << 20 } else { 1000 << 20 };
    let (none, with) = rt.block_on(async {
        let (mut none, mut with) = (0f64, 0f64);
        for _ in 0..3 {
            let (secs, got) = throughput(&plain_url, bytes).await;
            assert_eq!(got, bytes);
            none = none.max(bytes as f64 / secs / 1e6);
            let (secs, got) = throughput(&guarded_url, bytes).await;
            assert_eq!(got, bytes);
            with = with.max(bytes as f64 / secs / 1e6);
        }
        (none, with)
    });
    stop(&mut plain);
    stop(&mut guarded);
    let mb = bytes >> 20;
    println!(
        "| stdout throughput, {mb} MB through one connection, no hooks (best of 3) | {none:.0} MB/s |"
    );
    println!(
        "| same through `secret-redact` (best of 3) | {with:.0} MB/s ({:.0}% of no hooks) |",
        with / none * 100.0
    );
}
