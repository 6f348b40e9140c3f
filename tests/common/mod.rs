//! Shared test harness: a real server on 127.0.0.1:0 and a real WebSocket client.
#![allow(dead_code)]

use ccx::config::Config;
use ccx::executor::{Executor, Hooks, NoHooks};
use ccx::server::{self, ServerState};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A config suited to tests: short kill grace so cancel paths are quick.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.execution.kill_grace = Duration::from_millis(300);
    c
}

/// A server running in this process.
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

/// A server wired like `ccx serve`: config file, hook runtime, reload watcher.
pub struct AppServer {
    pub addr: SocketAddr,
    pub app: Arc<ccx::app::App>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl AppServer {
    pub async fn start(config: &std::path::Path) -> AppServer {
        let mut cfg = Config::load(config).expect("valid test config");
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        let listener = tokio::net::TcpListener::bind(cfg.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = ccx::app::App::start(cfg).expect("app starts");
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
            stop,
            task,
        }
    }

    pub async fn connect(&self) -> Ws {
        Ws::connect(&format!("ws://{}/ws", self.addr)).await
    }

    /// GET a JSON page.
    pub async fn get(&self, path: &str) -> Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {buf}"))
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
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, Duration) {
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
        .envs(env.iter().copied())
        .env_remove("CCX_TOKEN")
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

pub fn completion(events: &[Value]) -> &Value {
    let last = events.last().expect("events");
    assert_eq!(last["method"], "process.completed", "{last}");
    &last["params"]
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: i64) -> Vec<i64> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
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
