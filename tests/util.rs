//! The harness every integration test shares; the benchmarks include it with `#[path]`.
//!
//! - The built binary ([`CCX`]) and the repository root ([`root`]).
//! - Hook components, built once per process by `hooks/build.sh` ([`component`]), and hook
//!   specs and requests for the runtime tests ([`test_hook`], [`request`]).
//! - Scratch directories that are removed when dropped ([`scratch`]), config files that load
//!   the built components ([`write_config`]) and the one compiled-artifact cache they share
//!   ([`shared_cache`]).
//! - Servers: in this process ([`TestServer`]: executor and WebSocket only; [`AppServer`]: wired
//!   like `ccx serve`) or as a `ccx serve` child process ([`spawn_ccx_serve`]).
//! - Clients: a WebSocket JSON-RPC client ([`Ws`]) and an HTTP GET ([`http_get`]).
//! - Processes: the members of a process group, a process's state, polling ([`eventually`]).
//!
//! Over 500 lines: the one harness every test and bench shares, so that none grows its own.

// Each benchmark uses a part of this file.
#![allow(dead_code)]

use ccx::config::Config;
use ccx::executor::{Executor, Hooks, NoHooks};
use ccx::hooks::{HookRequest, HookSpec, OnFailure};
use ccx::server::{self, ServerState};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The `ccx` binary Cargo built for this test run.
pub const CCX: &str = env!("CARGO_BIN_EXE_ccx");

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---- hook components ---------------------------------------------------------------------------

/// Runs `hooks/build.sh` for `names` (none: every hook it builds by default) and returns the
/// component paths it prints. It skips hooks that are up to date and takes a lock, so
/// concurrent runs (tests, benchmarks, people) are safe.
pub fn build_hooks(names: &[&str]) -> Vec<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(root().join("hooks/build.sh"))
        .args(names)
        .output()
        .expect("running hooks/build.sh");
    assert!(
        out.status.success(),
        "hooks/build.sh {names:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| PathBuf::from(l.trim()))
        .collect()
}

/// Every component `hooks/build.sh` builds by default (the test guests and the examples),
/// built by the first call in this process.
pub fn components() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| build_hooks(&[]))
}

/// The built component `hooks/out/<name>.wasm`, e.g. `test-hook` (both stages, behaviour chosen
/// by its config: see `hooks/test-hook/src/lib.rs`), `pre-only` or an example.
pub fn component(name: &str) -> &'static Path {
    let built = components();
    built
        .iter()
        .find(|p| p.file_stem().is_some_and(|s| s == name))
        .unwrap_or_else(|| panic!("hooks/build.sh did not build {name}: {built:?}"))
}

/// A spec for the test hook with the given config pairs and default limits.
pub fn test_hook(name: &str, config: &[(&str, &str)]) -> HookSpec {
    let mut spec = HookSpec::new(name, component("test-hook"));
    spec.config = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// The same spec, failing closed.
pub fn fail_closed(mut spec: HookSpec) -> HookSpec {
    spec.on_failure = OnFailure::Deny;
    spec
}

/// A simple request.
pub fn request(command: &str) -> HookRequest {
    HookRequest {
        session_id: "s1".into(),
        job_id: "j1".into(),
        command: command.into(),
        cwd: None,
        env: vec![("KEEP".into(), "1".into())],
        timeout_ms: Some(5000),
        ..Default::default()
    }
}

// ---- scratch space and config files ------------------------------------------------------------

/// A fresh, empty directory under the system temp dir, removed with its contents when the
/// value is dropped: hold it for as long as the test uses the directory. With
/// `CCX_KEEP_SCRATCH=1` in the environment they are kept, for a look after a failure.
pub fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("ccx-test-")
        .disable_cleanup(std::env::var_os("CCX_KEEP_SCRATCH").is_some_and(|v| v == "1"))
        .tempdir()
        .expect("creating a scratch dir")
}

/// The compiled-artifact cache that test configs share, in Cargo's target dir: the Python and
/// JavaScript examples take 6-15 s each to compile, so they are compiled once, not once per
/// test or per run. Entries are keyed by content and engine, so sharing is safe; tests about
/// the cache itself make their own.
pub fn shared_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ccx-artifact-cache");
    std::fs::create_dir_all(&dir).expect("creating the shared artifact cache");
    dir
}

/// Writes `dir/ccx.toml` and returns its path: a quick kill grace, the [`shared_cache`], the
/// file polled for changes every `watch_interval` seconds (0: never), then `rest`: more tables
/// and `[[hooks]]` entries, in which `{name}` stands for the path of [`component`] `name`
/// (`path = "{test-hook}"`).
pub fn write_config(dir: &Path, watch_interval: f64, rest: &str) -> PathBuf {
    let path = dir.join("ccx.toml");
    // `kill_grace = 0.3` unless `rest` has its own `[execution]` (TOML allows one).
    let (execution, rest) = match rest.find("[execution]\n") {
        Some(at) if !rest.contains("kill_grace") => {
            let mut r = rest.to_string();
            r.insert_str(at + "[execution]\n".len(), "kill_grace = 0.3\n");
            ("", r)
        }
        Some(_) => ("", rest.to_string()),
        None => ("[execution]\nkill_grace = 0.3\n\n", rest.to_string()),
    };
    // The shared cache, in `rest`'s own `[sandbox]` if it has one.
    let cache = format!("cache_dir = \"{}\"\n", shared_cache().display());
    let (sandbox, rest) = match rest.find("[sandbox]\n") {
        Some(at) => {
            let mut r = rest;
            r.insert_str(at + "[sandbox]\n".len(), &cache);
            (String::new(), r)
        }
        None => (format!("[sandbox]\n{cache}\n"), rest),
    };
    let text = format!(
        "[server]\nwatch_interval = {watch_interval}\n\n{execution}{sandbox}{}",
        fill_in_components(&rest)
    );
    std::fs::write(&path, text).expect("writing the test config");
    path
}

/// Replaces each `{name}` (lowercase letters, digits and `-`) with the path of that component,
/// building the components only when there is one. TOML's inline tables (`{ mode = "x" }`)
/// hold spaces, so they are left alone.
fn fill_in_components(text: &str) -> String {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_name(&after[..close]) => {
                out.push_str(&component(&after[..close]).display().to_string());
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The repository's own `ccx.toml` with its hook paths made absolute and `cache_dir` set to
/// `cache`; the components are built first.
pub fn example_config(cache: &Path) -> String {
    components();
    std::fs::read_to_string(root().join("ccx.toml"))
        .expect("reading ccx.toml")
        .replace(
            "path = \"hooks/out/",
            &format!("path = \"{}/hooks/out/", root().display()),
        )
        .replace(
            "# cache_dir = \"~/.cache/ccx/hooks\"",
            &format!("cache_dir = \"{}\"", cache.display()),
        )
}

// ---- servers -----------------------------------------------------------------------------------

/// A config suited to tests: short kill grace so cancel paths are quick.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.execution.kill_grace = Duration::from_millis(300);
    c
}

/// A server running in this process: the executor and the WebSocket endpoint, no config file.
pub struct TestServer {
    pub addr: SocketAddr,
    pub exec: Arc<Executor>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(cfg: Config) -> TestServer {
        TestServer::start_with_hooks(cfg, Arc::new(NoHooks)).await
    }

    pub async fn start_with_hooks(cfg: Config, hooks: Arc<dyn Hooks>) -> TestServer {
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let exec = Executor::new(cfg.execution.clone(), hooks);
        let state = ServerState::new(exec.clone(), cfg.server.clone(), None, None);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            exec,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn connect(&self) -> Ws {
        Ws::connect(&self.url()).await
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// A server in this process wired like `ccx serve`: config file, hook runtime, reload watcher.
pub struct AppServer {
    pub addr: SocketAddr,
    pub app: Arc<ccx::app::App>,
    config: PathBuf,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The directory that holds the config, when the server made it: removed after the server.
    scratch: Option<TempDir>,
}

impl AppServer {
    /// Starts on the config file at `config` (its listen address is replaced by a free port).
    pub async fn start(config: &Path) -> AppServer {
        let mut cfg = Config::load(config).expect("valid test config");
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        cfg.state.dir = config
            .parent()
            .expect("a config file's folder")
            .join("state");
        let registry = ccx::registry::Registry::open(&cfg.state).expect("registry opens");
        let app = ccx::app::App::start(cfg, registry).expect("app starts");
        let stop = tokio_util::sync::CancellationToken::new();
        app.spawn_watcher(stop.clone());
        let state = app.server_state();
        let s = stop.clone();
        let task = tokio::spawn(server::serve(listener, state, async move {
            s.cancelled().await
        }));
        AppServer {
            addr,
            app,
            config: config.to_path_buf(),
            stop,
            task,
            scratch: None,
        }
    }

    /// Starts on a config that [`write_config`] writes into a scratch directory of its own,
    /// which lives as long as the server.
    pub async fn with_config(watch_interval: f64, rest: &str) -> AppServer {
        let dir = scratch();
        let mut server = AppServer::start(&write_config(dir.path(), watch_interval, rest)).await;
        server.scratch = Some(dir);
        server
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub async fn connect(&self) -> Ws {
        Ws::connect(&format!("ws://{}/ws", self.addr)).await
    }

    /// GET a JSON page.
    pub async fn get(&self, path: &str) -> Value {
        let (_, body) = http_get(self.addr, path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the built `ccx serve` on a free loopback port with `config` and JSON logs. Returns
/// the child, its address, and the time from spawn to its "listening" line. The log is
/// drained on a thread so the server never blocks on it.
pub fn spawn_ccx_serve(
    ccx: &str,
    config: &Path,
    env: &[(&str, &str)],
) -> (Child, String, Duration) {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    let mut child = std::process::Command::new(ccx)
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config)
        // Each server its own registry, next to its config, unless the test names one.
        .env(
            "CCX_STATE_DIR",
            config
                .parent()
                .expect("a config file's folder")
                .join("state"),
        )
        // The caller's `env` may set a token; none leaks in from the environment.
        .env_remove("CCX_TOKEN")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ccx serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server log").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    let took = started.elapsed();
    std::thread::spawn(move || for _ in lines {});
    (child, addr, took)
}

/// Starts a NATS server with JetStream on a free loopback port, its store under `dir`
/// (`tests/nats/setup.sh` installs the pinned binary); returns it and its URL once it listens.
pub fn start_nats(dir: &Path) -> (Child, String) {
    start_nats_with(dir, &[])
}

/// [`start_nats`] with more `nats-server` arguments (`--user`, `--pass`, …).
pub fn start_nats_with(dir: &Path, args: &[&str]) -> (Child, String) {
    let out = std::process::Command::new(root().join("tests/nats/setup.sh"))
        .output()
        .expect("run tests/nats/setup.sh");
    assert!(
        out.status.success(),
        "tests/nats/setup.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("js"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nats-server");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < WAIT, "nats-server did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, format!("nats://127.0.0.1:{port}"))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`, …; proc(5)), in KiB; 0 once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The resident memory of process `pid`, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// How many file descriptors process `pid` holds open.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The ids of the processes alive now (the numeric entries of `/proc`).
fn pids() -> impl Iterator<Item = u32> {
    (std::fs::read_dir("/proc").unwrap().flatten())
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
}

/// Processes whose environment names one of `jobs` (`CCX_JOB_ID`), alive or zombie.
pub fn leftovers(jobs: &HashSet<String>) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for var in env.split(|b| *b == 0) {
            if let Some(id) = var.strip_prefix(b"CCX_JOB_ID=")
                && jobs.contains(String::from_utf8_lossy(id).as_ref())
            {
                found.push((pid, String::from_utf8_lossy(id).into_owned()));
            }
        }
    }
    found
}

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- clients -----------------------------------------------------------------------------------

/// GET `path` from the server at `addr`: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(&addr.to_string(), "GET", path, &[], "").await
}

/// Any HTTP request to the server at `addr` (`host:port`): (status, body).
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut req = client.request(method, format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let send = async {
        let resp = req.body(body.to_string()).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    };
    tokio::time::timeout(WAIT, send)
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A WebSocket JSON-RPC client that keeps notifications that arrive while it waits for a reply.
pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub hello: Value,
    backlog: VecDeque<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("connect");
        let mut c = Ws {
            ws,
            next_id: 1,
            hello: Value::Null,
            backlog: VecDeque::new(),
        };
        c.hello = c.next().await;
        assert_eq!(c.hello["method"], "connected", "{}", c.hello);
        c
    }

    /// A client on a connection whose greeting (`hello`) was already read.
    pub fn adopt(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, hello: Value) -> Ws {
        Ws {
            ws,
            next_id: 1,
            hello,
            backlog: VecDeque::new(),
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(&msg.to_string()).await;
        id
    }

    /// Sends a request and returns its response message (notifications are kept for `next`).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.response(json!(id)).await
    }

    /// Waits for the response with `id`.
    pub async fn response(&mut self, id: Value) -> Value {
        loop {
            let msg = self.read().await;
            if msg.get("id") == Some(&id) && msg.get("method").is_none() {
                return msg;
            }
            self.backlog.push_back(msg);
        }
    }

    /// The next message, backlog first.
    pub async fn next(&mut self) -> Value {
        match self.backlog.pop_front() {
            Some(m) => m,
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("connection open")
                .expect("read ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("valid JSON"),
                Message::Close(f) => panic!("server closed the connection: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Every notification about `job_id` up to and including its `process.completed`.
    pub async fn collect(&mut self, job_id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut kept = VecDeque::new();
        loop {
            let msg = self.next().await;
            if msg["params"]["job_id"] == job_id {
                let done = msg["method"] == "process.completed";
                events.push(msg);
                if done {
                    break;
                }
            } else {
                kept.push_back(msg);
            }
        }
        kept.extend(self.backlog.drain(..));
        self.backlog = kept;
        events
    }

    /// Runs a command to its end, or returns the error reply when it was refused.
    pub async fn run_or_error(&mut self, params: Value) -> Result<Vec<Value>, Value> {
        let resp = self.call("execute", params).await;
        match resp["result"]["job_id"].as_str() {
            Some(job) => {
                let job = job.to_string();
                Ok(self.collect(&job).await)
            }
            None => Err(resp),
        }
    }

    /// Runs a command to its end: (execute response, its notifications).
    pub async fn run(&mut self, params: Value) -> (Value, Vec<Value>) {
        let resp = self.call("execute", params).await;
        let job = resp["result"]["job_id"]
            .as_str()
            .expect("job id")
            .to_string();
        let events = self.collect(&job).await;
        (resp, events)
    }
}

/// The concatenated output of one stream from a job's events.
pub fn output(events: &[Value], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e["method"] == "process.output" && e["params"]["type"] == stream)
        .map(|e| e["params"]["data"].as_str().unwrap())
        .collect()
}

/// The report of hook `name` in a completion's `hooks`.
pub fn report<'a>(done: &'a Value, name: &str) -> &'a Value {
    done["hooks"]
        .as_array()
        .and_then(|hooks| hooks.iter().find(|h| h["hook"] == name))
        .unwrap_or_else(|| panic!("no report from {name}: {done}"))
}

pub fn completion(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["method"], "process.completed", "{last}");
    &last["params"]
}

// ---- processes ---------------------------------------------------------------------------------

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i64) -> Vec<i64> {
    let mut found = Vec::new();
    for pid in pids().map(i64::from) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (state, pgrp) = (fields[0], fields[2].parse::<i64>().unwrap_or(-1));
        if pgrp == pgid && state != "Z" && state != "X" {
            found.push(pid);
        }
    }
    found
}

/// The state letter of a process (R, S, T, Z …).
pub fn process_state(pid: i64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().next().map(str::to_owned)
}

/// Polls `f` until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
