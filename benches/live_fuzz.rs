//! A live fuzzer: hostile frames (the generator of `tests/frame_gen.rs`: garbage, deep
//! nesting, hostile ids, methods and params) sent to a running `ccx serve` for a set time over
//! several connections at once, while a well-behaved client runs `echo` jobs and times them.
//! Each frame is followed by a `ping` sentinel, so every reply is checked against what its
//! frame is owed (one reply with its id, or none for a notification).
//!
//! Reports frames sent, wrong or missing replies, connections the server closed, the
//! server's resident memory (start, peak, end), whether it lived, and the well-behaved
//! client's job latency. Exits non-zero if the server died, a reply was wrong, or the
//! well-behaved client failed. A connection that cannot be opened again (after a close, or a
//! send or read that failed) means the server is gone: the run stops, prints `DIED` with the
//! fuzzing connection's seed, the frame's index and the frame it sent last (in full in a file
//! it names), and exits 1.
//!
//! `cargo bench --bench live_fuzz` starts the built server itself (release, no hooks).
//! `CCX_FUZZ_SECONDS` (60; 10 with `CCX_BENCH_QUICK`), `CCX_FUZZ_CONNECTIONS` (4) and
//! `CCX_FUZZ_SEED` tune it; `CCX_FUZZ_URL=ws://host:port/ws` (with `?token=…` when it needs
//! one) fuzzes a server you run instead (its memory and liveness are then not reported).

#[path = "support/common.rs"]
mod common;
#[path = "../tests/frame_gen.rs"]
mod frame_gen;
#[path = "../tests/util.rs"]
mod util;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{folder, multi_thread_runtime, percentiles, stop, us};
use frame_gen::{Rng, expected_reply, frame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    frames: AtomicU64,
    replies: AtomicU64,
    closes: AtomicU64,
    wrong: AtomicU64,
    /// Set once the server is gone: every task stops.
    gone: AtomicBool,
    /// What the fuzzing connection that found the server gone sent last.
    death: Mutex<Option<Death>>,
}

/// The server went away: which connection saw it, and what it had just sent.
struct Death {
    seed: u64,
    /// Index of the frame (in that connection's sequence) sent last.
    frame: usize,
    text: String,
    why: String,
}

/// Opens a connection and reads its greeting; a few tries over about a second, so a
/// refusal under load is not taken for a dead server. `Err`: the server is gone.
async fn try_connect(url: &str) -> Result<common::Ws, String> {
    let mut why = String::new();
    for _ in 0..5 {
        match tokio_tungstenite::connect_async_with_config(url, None, true).await {
            Ok((mut ws, _)) => match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"connected\"") => return Ok(ws),
                other => why = format!("no greeting: {other:?}"),
            },
            Err(e) => why = format!("connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(why)
}

/// The next reply (notifications skipped): `Err` when the server closed the connection.
async fn next_reply(ws: &mut common::Ws) -> Result<Value, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return Err("no answer in 30 s".into()),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}"))?;
                if v.get("method").is_none() {
                    return Ok(v);
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => return Err(format!("closed: {f:?}")),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("read error: {e}")),
            Ok(None) => return Err("stream ended".into()),
        }
    }
}

/// One fuzzing connection until `until`; reconnects after each close. When it cannot, the
/// server is gone: it records what it sent last and stops every task.
async fn fuzz(url: String, seed: u64, until: Instant, max_frame: usize, tally: Arc<Tally>) {
    let mut rng = Rng(seed | 1);
    let mut last = (0, String::new());
    let gone = |last: (usize, String), why: String| {
        tally.gone.store(true, Ordering::Relaxed);
        let mut death = tally.death.lock().unwrap();
        if death.is_none() {
            *death = Some(Death {
                seed,
                frame: last.0,
                text: last.1,
                why,
            });
        }
    };
    let mut ws = match try_connect(&url).await {
        Ok(ws) => ws,
        Err(why) => return gone(last, why),
    };
    let mut n = 0usize;
    while Instant::now() < until && !tally.gone.load(Ordering::Relaxed) {
        let text = frame(&mut rng, n);
        last = (n, text.clone());
        let want = expected_reply(&text, max_frame);
        let sentinel = json!(format!("sentinel-{seed}-{n}"));
        let ping = json!({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}).to_string();
        n += 1;
        tally.frames.fetch_add(1, Ordering::Relaxed);
        if ws.send(Message::Text(text.clone().into())).await.is_err()
            || ws.send(Message::Text(ping.into())).await.is_err()
        {
            tally.closes.fetch_add(1, Ordering::Relaxed);
            match try_connect(&url).await {
                Ok(again) => ws = again,
                Err(why) => return gone(last, why),
            }
            continue;
        }
        let mut replies = Vec::new();
        let closed = loop {
            match next_reply(&mut ws).await {
                Ok(r) if r["id"] == sentinel => break false,
                Ok(r) => replies.push(r),
                Err(why) => {
                    if !why.starts_with("closed") {
                        eprintln!("frame {n}: {why}");
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    break true;
                }
            }
        };
        tally
            .replies
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        if closed {
            tally.closes.fetch_add(1, Ordering::Relaxed);
            match try_connect(&url).await {
                Ok(again) => ws = again,
                Err(why) => return gone(last, why),
            }
            continue;
        }
        let right = match &want {
            Some(id) => replies.len() == 1 && &replies[0]["id"] == id,
            None => replies.is_empty(),
        };
        if !right {
            let shown: String = text.chars().take(120).collect();
            eprintln!("frame {n} {shown:?}: owed {want:?}, got {replies:?}");
            tally.wrong.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The well-behaved client: `echo` jobs one after another until `until` (or the server is
/// gone); their latencies.
async fn behave(
    url: String,
    until: Instant,
    failed: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<Duration> {
    let mut took = Vec::new();
    let Ok(mut ws) = try_connect(&url).await else {
        eprintln!("well-behaved client: cannot connect");
        failed.store(true, Ordering::Relaxed);
        return took;
    };
    let mut id = 0;
    while Instant::now() < until && !tally.gone.load(Ordering::Relaxed) {
        id += 1;
        let started = Instant::now();
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "execute",
            "params": {"command": "echo ok"}});
        if ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .is_err()
        {
            eprintln!("well-behaved job {id}: the send failed");
            failed.store(true, Ordering::Relaxed);
            return took;
        }
        let done = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let v = next_any(&mut ws).await?;
                if v["method"] == "process.completed" {
                    return Some(v["params"]["status"] == "completed");
                }
            }
        })
        .await;
        if done != Ok(Some(true)) {
            eprintln!("well-behaved job {id}: {done:?}");
            failed.store(true, Ordering::Relaxed);
            return took;
        }
        took.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took
}

async fn next_any(ws: &mut common::Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    util::rss_kib(pid) as f64 / 1024.0
}

fn main() {
    let quick = common::quick();
    let seconds: u64 = env_or("CCX_FUZZ_SECONDS", if quick { 10 } else { 60 });
    let conns: u64 = env_or("CCX_FUZZ_CONNECTIONS", 4);
    let seed: u64 = env_or("CCX_FUZZ_SEED", 0x00C0_FFEE);
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, url) = match std::env::var("CCX_FUZZ_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let dir = folder(tmp.path(), "fuzzed");
            let (child, url, _) = common::start_server(&dir, "fuzzed", "[server]\n");
            (Some(child), url)
        }
    };
    let pid = server.as_ref().map(|c| c.id());
    let max_frame = 1 << 20; // the default `max_frame_bytes`
    let rt = multi_thread_runtime();
    let tally = Arc::new(Tally::default());
    let failed = Arc::new(AtomicBool::new(false));
    let start_rss = pid.map(rss_mib);
    let peak = Arc::new(AtomicU64::new(0));
    let latencies = rt.block_on(async {
        let until = Instant::now() + Duration::from_secs(seconds);
        if let Some(pid) = pid {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(util::rss_kib(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let fuzzers: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(fuzz(url.clone(), seed ^ c, until, max_frame, tally.clone())))
            .collect();
        let behaved = tokio::spawn(behave(url.clone(), until, failed.clone(), tally.clone()));
        for f in fuzzers {
            if let Err(e) = f.await {
                eprintln!("a fuzzing task failed: {e}");
                failed.store(true, Ordering::Relaxed);
            }
        }
        behaved.await.unwrap_or_else(|e| {
            eprintln!("the well-behaved client failed: {e}");
            failed.store(true, Ordering::Relaxed);
            Vec::new()
        })
    });
    let exited = server
        .as_mut()
        .and_then(|child| child.try_wait().ok().flatten());
    let death = tally.death.lock().unwrap().take();
    let alive = exited.is_none() && death.is_none();
    let end_rss = pid.map(rss_mib);
    let (frames, replies, closes, wrong) = (
        tally.frames.load(Ordering::Relaxed),
        tally.replies.load(Ordering::Relaxed),
        tally.closes.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
    );
    println!(
        "live fuzz: {seconds} s, {conns} connections, seed {seed:#x}: {frames} frames \
         ({:.0}/s), {replies} replies, {wrong} wrong or missing, {closes} closed by the server",
        frames as f64 / seconds as f64
    );
    if let (Some(a), Some(b)) = (start_rss, end_rss) {
        let peak = peak.load(Ordering::Relaxed) as f64 / 1024.0;
        println!(
            "server: {}, RSS {a:.1} MiB at start, {peak:.1} MiB at peak, {b:.1} MiB at the end",
            if alive { "alive" } else { "DIED" }
        );
    } else if !alive {
        println!("server: DIED");
    }
    if let Some(status) = exited {
        println!("server exited: {status}");
    }
    if let Some(d) = &death {
        let path =
            std::env::temp_dir().join(format!("ccx-live-fuzz-{:#x}-{}.frame", d.seed, d.frame));
        let saved = match std::fs::write(&path, &d.text) {
            Ok(()) => format!("in full in {}", path.display()),
            Err(e) => format!("not saved: {e}"),
        };
        let shown: String = d.text.chars().take(2000).collect();
        println!(
            "server gone ({}): connection seed {:#x}, frame {} ({} bytes, {saved}), sent last:\n{shown:?}",
            d.why,
            d.seed,
            d.frame,
            d.text.len()
        );
    }
    let n = latencies.len();
    if n > 0 {
        let (p50, p99) = percentiles(latencies);
        println!(
            "well-behaved client meanwhile: {n} jobs, p50 {}, p99 {}{}",
            us(p50),
            us(p99),
            if failed.load(Ordering::Relaxed) {
                ", then FAILED"
            } else {
                ""
            }
        );
    }
    if let Some(child) = server.as_mut() {
        stop(child);
    }
    if !alive || wrong > 0 || failed.load(Ordering::Relaxed) || n == 0 {
        std::process::exit(1);
    }
}
