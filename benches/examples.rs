//! What the example hooks cost, per language (`nice cargo bench --bench examples`): component
//! size, compiled size, cold and cached load, per-call time (p50/p99, fresh store + instance +
//! call, as the server does it) and fuel on a representative input; then the resident memory
//! of a real `ccx serve` process with no hooks and with every example loaded, before and after
//! jobs run through them. Prints Markdown tables (docs/hooks.md quotes them).

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use ccx::hooks::{HookHost, HookRequest, HookResult, HookSet, HookSpec, HostOptions, JobStatus};
use common::{current_thread_runtime, percentiles, stop};
use util::{component, root, scratch};

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{:.0} KB", n as f64 / 1024.0)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn request(command: &str) -> Box<HookRequest> {
    Box::new(HookRequest {
        session_id: "bench".into(),
        job_id: "j1".into(),
        command: command.into(),
        cwd: Some("/srv/app".into()),
        env: vec![("CI".into(), "1".into())],
        timeout_ms: Some(60_000),
        ..Default::default()
    })
}

fn result(command: &str, stdout_tail: String) -> Box<HookResult> {
    Box::new(HookResult {
        request: *request(command),
        received: *request(command),
        status: JobStatus::Completed,
        exit_code: Some(0),
        signal: None,
        duration_ms: 1234,
        stdout_bytes: stdout_tail.len() as u64,
        stderr_bytes: 0,
        stdout_tail,
        stderr_tail: String::new(),
    })
}

/// Typical build output: 4 KiB (the default tail) without secrets.
fn build_log() -> String {
    let mut log = String::new();
    let mut i = 0;
    while log.len() < 4096 {
        log.push_str(&format!(
            "   Compiling crate-{i} v0.{i}.3 (/srv/app/crates/crate-{i})\n"
        ));
        i += 1;
    }
    log.truncate(4096);
    log
}

enum Input {
    Pre(Box<HookRequest>),
    Post(Box<HookResult>),
}

fn main() {
    let rt = current_thread_runtime();
    let transcript =
        std::fs::read_to_string(root().join("tests/fixtures/agent-success.jsonl")).unwrap();
    let cases: Vec<(&str, &str, &Path, Input, usize)> = vec![
        (
            "deny-dangerous",
            "Rust",
            component("deny-dangerous"),
            Input::Pre(request(
                "cd /srv/app && git pull --ff-only && cargo build --release 2>&1 | tail -n 5",
            )),
            3000,
        ),
        (
            "venv-setup",
            "Rust",
            component("venv-setup"),
            Input::Pre(request("pytest -q tests/ && ruff check .")),
            3000,
        ),
        (
            "counter",
            "Rust",
            component("counter"),
            Input::Post(result("make test", "ok\n".into())),
            3000,
        ),
        (
            "agent-result-check",
            "Python",
            component("agent-result-check"),
            Input::Post(result(
                "claude -p --output-format stream-json 'fix the tests'",
                transcript,
            )),
            300,
        ),
        (
            "secret-scan",
            "JavaScript",
            component("secret-scan"),
            Input::Post(result("cargo build", build_log())),
            300,
        ),
    ];

    // The C example only when its toolchain is wanted (it takes minutes to install).
    let c_hook = (std::env::var("CCX_HOOKS_C").as_deref() == Ok("1"))
        .then(|| util::build_hooks(&["deny-substring"]).remove(0));
    let mut cases = cases;
    if let Some(path) = &c_hook {
        cases.push((
            "deny-substring",
            "C",
            path,
            Input::Pre(request("cd /srv/app && make -j4 && make test")),
            3000,
        ));
    }

    // A fresh cache, so cold loads really compile.
    let cache_dir = scratch();
    let cache = cache_dir.path().to_path_buf();
    let host = HookHost::new(HostOptions {
        cache_dir: Some(cache.clone()),
        ..HostOptions::default()
    })
    .expect("hook host");
    println!("pooling allocator: {}\n", host.pooling());
    println!(
        "| hook | language | component | compiled | cold load | cached load | call p50 | call p99 | fuel/call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, lang, path, input, n) in cases {
        let size = std::fs::metadata(path).unwrap().len();
        let before = dir_size(&cache);
        let spec = HookSpec::new(name, path);
        let started = Instant::now();
        let set = HookSet::load(&host, std::slice::from_ref(&spec));
        let cold = started.elapsed();
        let compiled = dir_size(&cache) - before;
        drop(set);
        // A new host maps the cached artifact, as a restarted server does.
        let restarted = HookHost::new(HostOptions {
            cache_dir: Some(cache.clone()),
            ..HostOptions::default()
        })
        .unwrap();
        let started = Instant::now();
        let set = HookSet::load(&restarted, std::slice::from_ref(&spec));
        let cached = started.elapsed();
        drop(set);
        let set = HookSet::load(&host, std::slice::from_ref(&spec));
        let (samples, fuel) = rt.block_on(calls(&set, &input, n));
        let (p50, p99) = percentiles(samples);
        println!(
            "| {name} | {lang} | {} | {} | {:.0} ms | {:.1} ms | {:.0} µs | {:.0} µs | {fuel} |",
            human_bytes(size),
            human_bytes(compiled),
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
        );
    }
    drop(host);
    println!();
    server_memory(&cache);
    // The compiled Python and JavaScript hooks take ~80 MB.
    let _ = std::fs::remove_dir_all(&cache);
}

/// `n` calls (after n/10 unmeasured warm-up calls); returns their times and the median fuel.
async fn calls(set: &HookSet, input: &Input, n: usize) -> (Vec<Duration>, u64) {
    let mut samples = Vec::with_capacity(n);
    let mut fuel = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let reports = match input {
            Input::Pre(r) => set.run_pre((**r).clone()).await.reports,
            Input::Post(r) => set.run_post(r).await.reports,
        };
        let elapsed = started.elapsed();
        assert!(reports[0].error.is_none(), "{:?}", reports[0]);
        if i >= n / 10 {
            samples.push(elapsed);
            fuel.push(reports[0].fuel_used);
        }
    }
    fuel.sort_unstable();
    (samples, fuel[fuel.len() / 2])
}

/// Kills the server when the benchmark ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn start_server(config: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_ccx"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ccx serve");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

fn exec(port: u16, command: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_ccx"))
        .args([
            "exec",
            "--url",
            &format!("ws://127.0.0.1:{port}/ws"),
            command,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ccx exec {command}: {status}");
}

/// The memory of real `ccx serve` processes: without hooks, and with the example config.
fn server_memory(cache: &Path) {
    let tmp = scratch();
    let dir = tmp.path();
    let bare = dir.join("bare.toml");
    std::fs::write(
        &bare,
        format!("[sandbox]\ncache_dir = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let full = dir.join("examples.toml");
    std::fs::write(&full, util::example_config(cache)).unwrap();

    println!("| `ccx serve` | RSS after start | RSS after 50 jobs | peak RSS |");
    println!("|---|---|---|---|");
    for (label, config) in [("no hooks", &bare), ("all 5 example hooks", &full)] {
        let port = free_port();
        let server = start_server(config, port);
        std::thread::sleep(Duration::from_millis(300));
        let (at_start, _) = rss(server.0.id());
        let commands = [
            "echo hello",
            "ls /",
            "python3 --version",
            "true",
            "uname -a",
        ];
        for i in 0..50 {
            exec(port, commands[i % commands.len()]);
        }
        let (after, peak) = rss(server.0.id());
        println!(
            "| {label} | {} | {} | {} |",
            human_bytes(at_start),
            human_bytes(after),
            human_bytes(peak)
        );
    }
}
