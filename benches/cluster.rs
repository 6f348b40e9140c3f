//! The cluster against a single server (`cargo bench --bench cluster`): the `execute "true"`
//! round trip (one connection, one job after another: p50 / p99) and jobs per second (8
//! connections, each running `true` jobs one after another), for a single release
//! `ccx serve`, and for a gateway (`ccx serve --nats`) with one and with three `ccx worker`s
//! (`--max-jobs 8` each) on a NATS server with JetStream (`tests/nats/setup.sh`), everything
//! on this machine. `CCX_BENCH_QUICK` runs fewer jobs. Prints a Markdown table.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{
    connect, multi_thread_runtime, pct, round_trips, send_execute, stop, until_completed,
};

const CCX: &str = env!("CARGO_BIN_EXE_ccx");

/// A `ccx worker` taking jobs.
fn start_worker(dir: &std::path::Path, nats: &str, name: &str) -> Child {
    let state = common::folder(dir, name);
    let config = state.join("ccx.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(CCX)
        .args([
            "worker",
            "--nats",
            nats,
            "--name",
            name,
            "--max-jobs",
            "8",
            "--config",
        ])
        .arg(&config)
        .env("CCX_STATE_DIR", state.join("state"))
        .env("RUST_LOG", "warn,ccx::cluster=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ccx worker");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines
        .next()
        .expect("worker log")
        .unwrap()
        .contains("taking jobs")
    {}
    std::thread::spawn(move || for _ in lines {});
    child
}

/// `conns` connections, each running `per` `true` jobs one after another; jobs per second.
async fn jobs_per_second(url: &str, conns: usize, per: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url).await;
            for i in 0..per {
                send_execute(&mut ws, i as u64, "true").await;
                until_completed(&mut ws).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (conns * per) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = multi_thread_runtime();
    let tmp = util::scratch();
    let (trips, per) = if common::quick() {
        (50, 20)
    } else {
        (300, 100)
    };
    println!("| setup | `execute \"true\"` round trip p50 / p99 | jobs/s (8 connections) |");
    println!("|---|---|---|");
    for workers in [0usize, 1, 3] {
        let dir = common::folder(tmp.path(), &format!("run{workers}"));
        let mut children = Vec::new();
        let mut env = vec![("RUST_LOG", "warn,ccx::server=info".to_string())];
        if workers > 0 {
            let (nats, url) = util::start_nats(&dir);
            children.push(nats);
            for w in 0..workers {
                children.push(start_worker(&dir, &url, &format!("w{w}")));
            }
            env.push(("CCX_NATS", url));
        }
        let config = dir.join("gateway.toml");
        std::fs::write(&config, "").unwrap();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (server, addr, _) = util::spawn_ccx_serve(CCX, &config, &env);
        children.push(server);
        let url = format!("ws://{addr}/ws");
        let (samples, rate) = rt.block_on(async {
            round_trips(&url, 20).await; // warm-up
            let samples = round_trips(&url, trips).await;
            (samples, jobs_per_second(&url, 8, per).await)
        });
        let label = match workers {
            0 => "single server".to_string(),
            n => format!("gateway + {n} worker{}", if n > 1 { "s" } else { "" }),
        };
        println!(
            "| {label} | {} / {} | {rate:.0} |",
            common::us(pct(&samples, 50)),
            common::us(pct(&samples, 99)),
        );
        for mut c in children.into_iter().rev() {
            stop(&mut c);
        }
    }
}
