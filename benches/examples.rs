//! What the example hooks cost, per language (`nice cargo bench --bench examples`): component
//! size, compiled size, cold and cached load; per-call time as a job sees it (p50/p99) with
//! every call instantiating on its path (spares off, as before issue 17) and with a spare
//! instance ready (the default), so the difference is what instantiation costs; fuel per call
//! (the call alone), and hook calls per second from four callers at once with spares on.
//! Then the resident memory of a real `ccx serve` process with no hooks and with every example
//! loaded, idle and after 1,000 jobs, spares off and on. Prints Markdown tables (the README and
//! docs/hooks.md quote them). `CCX_BENCH_ONLY=NAME` measures one hook and no servers.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use ccx::hooks::{HookHost, HookRequest, HookResult, HookSet, HookSpec, HostOptions, JobStatus};
use common::{multi_thread_runtime, percentiles, stop};
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
    let options = |spares: u32| HostOptions {
        cache_dir: Some(cache.clone()),
        spare_instances: spares,
        ..HostOptions::default()
    };
    let host = HookHost::new(options(0)).expect("hook host");
    let spared = HookHost::new(options(1)).expect("hook host");
    println!("pooling allocator: {}\n", host.pooling());
    println!(
        "| hook | language | component | compiled | cold load | cached load | call p50 / p99, instantiated on the path | call p50 / p99, on a spare | fuel/call | calls/s (4 callers, spares) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let many = multi_thread_runtime();
    // `CCX_BENCH_ONLY=NAME` measures that hook alone and skips the servers (for profiling).
    let only = std::env::var("CCX_BENCH_ONLY").ok();
    for (name, lang, path, input, n) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let size = std::fs::metadata(path).unwrap().len();
        let before = dir_size(&cache);
        let spec = HookSpec::new(name, path);
        let started = Instant::now();
        let set = HookSet::load(&host, std::slice::from_ref(&spec));
        let cold = started.elapsed();
        let compiled = dir_size(&cache) - before;
        drop(set);
        // A new host maps the cached artifact, as a restarted server does.
        let restarted = HookHost::new(options(0)).unwrap();
        let started = Instant::now();
        let set = HookSet::load(&restarted, std::slice::from_ref(&spec));
        let cached = started.elapsed();
        drop(set);
        // On two workers, as in the server; the two kinds of call alternate, so both see the
        // same machine.
        let (fresh, on_spare, fuel) = many.block_on(async {
            let fresh = HookSet::load(&host, std::slice::from_ref(&spec));
            let spare = HookSet::load(&spared, std::slice::from_ref(&spec));
            calls(&fresh, &spare, name, &input, n).await
        });
        let rate = many.block_on(throughput(&spared, &spec, &input, n));
        let ((f50, f99), (s50, s99)) = (percentiles(fresh), percentiles(on_spare));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {name} | {lang} | {} | {} | {:.0} ms | {:.1} ms | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {fuel} | {rate:.0} |",
            human_bytes(size),
            human_bytes(compiled),
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            us(f50),
            us(f99),
            us(s50),
            us(s99),
        );
    }
    drop(host);
    drop(spared);
    println!();
    if only.is_none() {
        server_memory(&cache);
    }
    // The compiled Python and JavaScript hooks take ~80 MB.
    let _ = std::fs::remove_dir_all(&cache);
}

/// `n` calls of each set (after n/10 unmeasured warm-up calls), alternating: one that
/// instantiates on the path (`fresh`) and one that takes a spare (`spare`). Before each call
/// the machine is left 2 ms to finish the last call's background work (teardown, refill), as
/// between jobs. Returns both sets' times and the median fuel of a call.
async fn calls(
    fresh: &HookSet,
    spare: &HookSet,
    name: &str,
    input: &Input,
    n: usize,
) -> (Vec<Duration>, Vec<Duration>, u64) {
    let mut samples = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut fuel = Vec::with_capacity(n);
    let mut faults = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..n + n / 10 {
        for (k, set) in [fresh, spare].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            while set.spare_stats(name).is_some_and(|s| s.ready == 0) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let faults_before = minor_faults();
            let started = Instant::now();
            let reports = match input {
                Input::Pre(r) => set.run_pre((**r).clone()).await.reports,
                Input::Post(r) => set.run_post(r).await.reports,
            };
            let elapsed = started.elapsed();
            assert!(reports[0].error.is_none(), "{:?}", reports[0]);
            if i >= n / 10 {
                samples[k].push(elapsed);
                faults[k].push(minor_faults() - faults_before);
                if k == 1 {
                    fuel.push(reports[0].fuel_used);
                }
            }
        }
    }
    let s = spare.spare_stats(name).expect("spares on");
    assert!(s.served as usize >= n, "calls did not take spares: {s:?}");
    fuel.sort_unstable();
    for f in &mut faults {
        f.sort_unstable();
    }
    eprintln!(
        "{name}: minor page faults per call p50: {} instantiating, {} on a spare",
        faults[0][n / 2],
        faults[1][n / 2]
    );
    let [a, b] = samples;
    (a, b, fuel[fuel.len() / 2])
}

/// Minor page faults of this process so far (`minflt`, field 10 of /proc/self/stat; proc(5)).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after
        .split(' ')
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Hook calls per second: `n` calls from four callers at once, back to back, spares on.
async fn throughput(
    host: &std::sync::Arc<HookHost>,
    spec: &HookSpec,
    input: &Input,
    n: usize,
) -> f64 {
    let set = std::sync::Arc::new(HookSet::load(host, std::slice::from_ref(spec)));
    let started = Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let set = set.clone();
            let input = match input {
                Input::Pre(r) => Input::Pre(r.clone()),
                Input::Post(r) => Input::Post(r.clone()),
            };
            tokio::spawn(async move {
                for _ in 0..n / 4 {
                    match &input {
                        Input::Pre(r) => drop(set.run_pre((**r).clone()).await),
                        Input::Post(r) => drop(set.run_post(r).await),
                    }
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    (n / 4 * 4) as f64 / started.elapsed().as_secs_f64()
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
    common::memory(pid)
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

/// Real `ccx serve` processes without hooks, and with the example config with spares off and
/// on: the `execute "true"` round trip over 1,000 jobs (50 with `CCX_BENCH_QUICK`), and the
/// resident memory idle and after them.
fn server_memory(cache: &Path) {
    let tmp = scratch();
    let dir = tmp.path();
    let bare = dir.join("bare.toml");
    std::fs::write(
        &bare,
        format!("[sandbox]\ncache_dir = \"{}\"\n", cache.display()),
    )
    .unwrap();
    let examples = util::example_config(cache);
    assert!(
        examples.contains("\nspare_instances = 0 "),
        "ccx.toml sets spare_instances"
    );
    let full = dir.join("examples.toml");
    std::fs::write(&full, &examples).unwrap();
    let with_spares = dir.join("examples-spares.toml");
    std::fs::write(
        &with_spares,
        examples.replace("\nspare_instances = 0 ", "\nspare_instances = 1 "),
    )
    .unwrap();

    let jobs = if common::quick() { 50 } else { 1000 };
    let rt = multi_thread_runtime();
    println!(
        "| `ccx serve` | `execute \"true\"` round trip p50 / p99 ({jobs} jobs, one connection) | RSS idle | RSS after the jobs | peak RSS |"
    );
    println!("|---|---|---|---|---|");
    for (label, config) in [
        ("no hooks", &bare),
        ("all example hooks, spares off (default)", &full),
        ("all example hooks, spares on (1 per hook)", &with_spares),
    ] {
        let port = free_port();
        let server = start_server(config, port);
        // Until every hook has loaded and made its spares.
        std::thread::sleep(Duration::from_millis(1500));
        let (idle, _) = rss(server.0.id());
        let url = format!("ws://127.0.0.1:{port}/ws");
        let sorted = rt.block_on(common::round_trips(&url, jobs));
        let (after, peak) = rss(server.0.id());
        println!(
            "| {label} | {} / {} | {} | {} | {} |",
            common::us(common::pct(&sorted, 50)),
            common::us(common::pct(&sorted, 99)),
            human_bytes(idle),
            human_bytes(after),
            human_bytes(peak)
        );
    }
}
