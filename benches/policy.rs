//! Admission-control benchmark (`cargo bench --bench policy`): what the host's command-line
//! parse costs per job, and what ten pre-hooks whose matchers do not match cost a job.
//!
//! - The parse, in process, of typical command lines and of 10 KB ones (one parse per job:
//!   every hook and matcher shares it).
//! - `execute "true"` round trips (send → `process.completed`, one connection) against two
//!   release `ccx serve`s: one without hooks, one with ten pre-hooks matching only `git`
//!   (`match = {programs = ["git"]}`), measured in alternating batches so that both see the
//!   same machine. Target: within 5% of no hooks.
//!
//! Prints Markdown rows (pasted into the README). `CCX_BENCH_QUICK=1` shrinks the sizes.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use common::*;
use std::time::{Duration, Instant};

fn main() {
    let quick = quick();
    println!("| measurement | result |\n|---|---|");
    parse_rows(quick);
    round_trip_rows(quick);
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// Parses `line` `n` times (after a warm-up); the per-parse times.
fn time_parse(line: &str, n: usize) -> Vec<Duration> {
    let mut req = util::request(line);
    req.parse();
    assert!(
        req.unparsed.is_none(),
        "{:?}: {:?}",
        &line[..line.len().min(80)],
        req.unparsed
    );
    (0..n)
        .map(|_| {
            let mut r = util::request(line);
            let t = Instant::now();
            r.parse();
            let d = t.elapsed();
            std::hint::black_box(&r.commands);
            d
        })
        .collect()
}

fn parse_rows(quick: bool) {
    let typical = [
        ("`cargo test` piped into `tee`", "cd /src && cargo test --workspace 2>&1 | tee test.log".to_string()),
        (
            "an agent's line: loop, `$(…)`, pipes",
            r#"git status --short && git diff --stat HEAD~1 | head -50; for f in $(ls src/*.rs); do wc -l "$f"; done"#.to_string(),
        ),
    ];
    // 10 KB of chained commands with quotes, substitutions and pipes (~150 simple commands).
    let mut chained = String::new();
    let mut i = 0;
    while chained.len() < 10 * 1024 {
        chained.push_str(&format!(
            "grep -n \"item {i}\" log-$(date +%s).txt | sort -u > out{i}.txt && "
        ));
        i += 1;
    }
    chained.push_str("true");
    // 10 KB of script handed over as a here-document.
    let body: String = (0..200)
        .map(|i| format!("print('line {i:04}', {i} * 2)  # some code\n"))
        .collect();
    let heredoc = format!("python3 - <<'EOF'\n{body}EOF");
    let n = if quick { 200 } else { 2000 };
    let big_n = if quick { 20 } else { 200 };
    for (what, line) in typical {
        let (p50, p99) = percentiles(time_parse(&line, n));
        println!(
            "| parse, {what} ({} B, {n} runs) | p50 {} / p99 {} |",
            line.len(),
            us(p50),
            us(p99)
        );
    }
    for (what, line) in [
        ("10 KB of chained commands", chained),
        ("10 KB here-document", heredoc),
    ] {
        let (p50, p99) = percentiles(time_parse(&line, big_n));
        println!(
            "| parse, {what} ({} B, {big_n} runs) | p50 {} / p99 {} |",
            line.len(),
            us(p50),
            us(p99)
        );
    }
}

fn round_trip_rows(quick: bool) {
    let tmp = util::scratch();
    let dir = tmp.path();
    let cache = util::shared_cache();
    let test_hook = util::component("test-hook");
    let mut hooks = format!("[sandbox]\ncache_dir = {cache:?}\n");
    for i in 0..10 {
        hooks.push_str(&format!(
            "\n[[hooks]]\nname = \"git-guard-{i}\"\npath = {test_hook:?}\nmatch = {{ programs = [\"git\"] }}\n"
        ));
    }
    // Each server in a folder of its own: a state directory has one owner.
    let (mut plain, plain_url, _) = start_server(&folder(dir, "plain"), "plain", "");
    let (mut guarded, guarded_url, _) = start_server(&folder(dir, "guarded"), "guarded", &hooks);
    let rt = multi_thread_runtime();
    let (batches, per) = if quick { (4, 50) } else { (10, 200) };
    let (none, ten) = rt.block_on(async {
        // Warm both (first spawns, first parse, page cache).
        round_trips(&plain_url, 20).await;
        round_trips(&guarded_url, 20).await;
        let (mut none, mut ten) = (Vec::new(), Vec::new());
        for _ in 0..batches {
            none.extend(round_trips(&plain_url, per).await);
            ten.extend(round_trips(&guarded_url, per).await);
        }
        (none, ten)
    });
    stop(&mut plain);
    stop(&mut guarded);
    let n = none.len();
    let (n50, n99) = percentiles(none);
    let (t50, t99) = percentiles(ten);
    println!(
        "| `execute \"true\"` round trip, no hooks ({n} runs) | p50 {} / p99 {} |",
        us(n50),
        us(n99)
    );
    println!(
        "| the same with 10 pre-hooks matching only `git` ({n} runs) | p50 {} / p99 {} ({:+.1}% at p50) |",
        us(t50),
        us(t99),
        (t50.as_secs_f64() / n50.as_secs_f64() - 1.0) * 100.0
    );
}
