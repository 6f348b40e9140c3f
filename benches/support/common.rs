//! Helpers the benchmarks share: the tokio runtime, `CCX_BENCH_QUICK`, scratch folders, a
//! release `ccx serve` on a free port (and stopping it), a raw WebSocket client, percentiles,
//! a process's CPU time. Each bench uses a part.
#![allow(dead_code)]

use crate::util;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Whether `CCX_BENCH_QUICK` is set: the bench shrinks its sizes.
pub fn quick() -> bool {
    std::env::var_os("CCX_BENCH_QUICK").is_some()
}

/// The runtime the server benches drive their clients on: multi-threaded, 2 workers.
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The runtime the hook benches call hooks on: one thread.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Makes (if needed) and returns the folder `<dir>/<name>`, e.g. one server's own.
pub fn folder(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kills a server (or any child) and reaps it, ignoring errors.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `ccx serve` with `config` on a free port; returns it, its URL and the time from
/// spawn until `/health` says it is ready (every hook loaded; it listens long before).
pub fn start_server(
    dir: &std::path::Path,
    tag: &str,
    config: &str,
) -> (std::process::Child, String, Duration) {
    start_server_with(dir, tag, config, &[])
}

/// [`start_server`] with extra environment variables for the server (and so its jobs).
pub fn start_server_with(
    dir: &std::path::Path,
    tag: &str,
    config: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String, Duration) {
    let cfg = dir.join(format!("{tag}.toml"));
    std::fs::write(&cfg, config).unwrap();
    let started = Instant::now();
    let mut vars = vec![("RUST_LOG", "warn,ccx::server=info")];
    vars.extend_from_slice(env);
    let (child, addr, _) = util::spawn_ccx_serve(env!("CARGO_BIN_EXE_ccx"), &cfg, &vars);
    while health(&addr)["status"] != "healthy" {
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, format!("ws://{addr}/ws"), started.elapsed())
}

/// `GET /health` over a plain blocking socket.
pub fn health(addr: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

pub async fn connect(url: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"connected\""));
    ws
}

pub async fn send_execute(ws: &mut Ws, id: u64, command: &str) {
    let msg =
        json!({"jsonrpc": "2.0", "id": id, "method": "execute", "params": {"command": command}});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
}

/// Reads until `process.completed`; returns the sum of `stdout_bytes` it reports and the
/// payload bytes of output notifications seen.
pub async fn until_completed(ws: &mut Ws) -> (u64, u64) {
    let mut seen = 0u64;
    loop {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        // Output notifications are the bulk: count them without a full parse.
        if t.starts_with("{\"jsonrpc\":\"2.0\",\"method\":\"process.output\"") {
            seen += t.len() as u64;
            continue;
        }
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["method"] == "process.completed" {
            assert_ne!(v["params"]["status"], "denied");
            return (v["params"]["stdout_bytes"].as_u64().unwrap_or(0), seen);
        }
        if let Some(e) = v.get("error") {
            panic!("server error: {e}");
        }
    }
}

pub async fn round_trips(url: &str, n: usize) -> Vec<Duration> {
    let mut ws = connect(url).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        send_execute(&mut ws, i as u64, "true").await;
        until_completed(&mut ws).await;
        out.push(start.elapsed());
    }
    out.sort();
    out
}

pub async fn throughput(url: &str, bytes: u64) -> (f64, u64) {
    let mut ws = connect(url).await;
    let line = "a".repeat(1023);
    let cmd = format!("yes {line} | head -c {bytes}");
    let start = Instant::now();
    send_execute(&mut ws, 1, &cmd).await;
    let (reported, _) = until_completed(&mut ws).await;
    (start.elapsed().as_secs_f64(), reported)
}

pub fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() - 1) * p) / 100]
}

/// (p50, p99) of unsorted samples, nearest-rank (the hook benches' tables).
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99))
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (fields 14
/// and 15, in clock ticks; proc(5)), assuming the usual 100 ticks per second.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

/// Resident and peak resident memory of process `pid`, in bytes (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> (u64, u64) {
    (
        util::status_kib(pid, "VmRSS:") * 1024,
        util::status_kib(pid, "VmHWM:") * 1024,
    )
}
