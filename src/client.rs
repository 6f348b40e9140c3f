//! The WebSocket client behind `ccx exec`: connect (with the token), send one `execute`, copy
//! the job's output to the caller's writers as it arrives, and turn the terminal event into an
//! exit code.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Exit code when the job hit its timeout (as `timeout(1)`).
pub const EXIT_TIMED_OUT: u8 = 124;
/// Exit code when the server refused the request (a hook's deny, bad params, full queue).
pub const EXIT_REFUSED: u8 = 125;
/// Exit code when the command could not be started at all.
pub const EXIT_NOT_STARTED: u8 = 126;
/// Exit code when the job was canceled (Ctrl-C).
pub const EXIT_CANCELED: u8 = 130;
/// Exit code when the server could not be reached or the connection broke (EX_UNAVAILABLE).
pub const EXIT_CONNECTION: u8 = 69;

/// The default server URL.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8003/ws";

/// One command to run remotely.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub url: String,
    pub token: Option<String>,
    pub command: String,
    pub timeout: Option<f64>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// A connected JSON-RPC client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The `connected` notification's params.
    pub hello: Value,
}

impl Client {
    /// Connects and waits for the `connected` notification.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("`{url}` is not a WebSocket URL"))?;
        if let Some(token) = token {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("token is not a valid header")?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let mut client = Client {
            ws,
            next_id: 1,
            hello: Value::Null,
        };
        let first = client.next_message().await?;
        if first["method"] == "connected" {
            client.hello = first["params"].clone();
            Ok(client)
        } else if let Some(err) = first.get("error") {
            bail!(
                "server refused the session: {}",
                err["message"].as_str().unwrap_or("?")
            )
        } else {
            bail!("unexpected first message from server: {first}")
        }
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .context("connection lost while sending")?;
        Ok(id)
    }

    /// The next JSON message from the server.
    pub async fn next_message(&mut self) -> Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).context("server sent invalid JSON");
                }
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    bail!("server closed the connection {why}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow!(e).context("connection lost")),
                None => bail!("connection closed"),
            }
        }
    }
}

/// Why `exec` could not report a command's own exit.
#[derive(Debug, thiserror::Error)]
pub enum ExecFailure {
    #[error("{0:#}")]
    Connection(anyhow::Error),
    #[error("server refused the command: {0}")]
    Refused(String),
}

impl ExecFailure {
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecFailure::Connection(_) => EXIT_CONNECTION,
            ExecFailure::Refused(_) => EXIT_REFUSED,
        }
    }
}

/// Runs one command through a server, writing its output to `out`/`err` as it arrives.
/// When `interrupt` resolves (Ctrl-C) the remote job is canceled. Returns the exit code to
/// use: the command's own, `128 + signal`, or one of the `EXIT_*` codes.
pub async fn exec<O: Write, E: Write>(
    opts: &ExecOptions,
    out: &mut O,
    err: &mut E,
    interrupt: impl Future<Output = ()>,
) -> Result<u8, ExecFailure> {
    let mut client = Client::connect(&opts.url, opts.token.as_deref())
        .await
        .map_err(ExecFailure::Connection)?;
    let mut params = json!({"command": opts.command});
    if let Some(t) = opts.timeout {
        params["timeout"] = json!(t);
    }
    if let Some(cwd) = &opts.cwd {
        params["cwd"] = json!(cwd);
    }
    if !opts.env.is_empty() {
        params["env"] = json!(opts.env);
    }
    let id = client
        .send("execute", params)
        .await
        .map_err(ExecFailure::Connection)?;
    let mut job_id: Option<String> = None;
    let mut cancel_sent = false;
    tokio::pin!(interrupt);
    loop {
        let msg = tokio::select! {
            m = client.next_message() => m.map_err(ExecFailure::Connection)?,
            _ = &mut interrupt, if !cancel_sent => {
                cancel_sent = true;
                let mut p = json!({"type": "CANCEL"});
                if let Some(j) = &job_id {
                    p["job_id"] = json!(j);
                }
                client.send("control", p).await.map_err(ExecFailure::Connection)?;
                continue;
            }
        };
        if msg.get("id").and_then(Value::as_u64) == Some(id) {
            if let Some(e) = msg.get("error") {
                let mut text = e["message"].as_str().unwrap_or("error").to_string();
                if let Some(data) = e.get("data") {
                    text.push_str(&format!(" ({data})"));
                }
                return Err(ExecFailure::Refused(text));
            }
            job_id = msg["result"]["job_id"].as_str().map(str::to_owned);
            continue;
        }
        let params = &msg["params"];
        match msg["method"].as_str() {
            Some("process.output") => {
                let data = params["data"].as_str().unwrap_or_default().as_bytes();
                let w: &mut dyn Write = if params["type"] == "stderr" { err } else { out };
                // A closed pipe on our side (e.g. `| head`) is not the remote command's failure.
                let _ = w.write_all(data).and_then(|_| w.flush());
            }
            Some("hook.warning") => {
                let _ = writeln!(
                    err,
                    "ccx: hook `{}` failed ({}): {}",
                    params["hook"].as_str().unwrap_or("?"),
                    params["kind"].as_str().unwrap_or("?"),
                    params["message"].as_str().unwrap_or("")
                );
            }
            Some("process.completed") => return Ok(completion_exit_code(params, err)),
            _ => {}
        }
    }
}

fn completion_exit_code<E: Write>(c: &Value, err: &mut E) -> u8 {
    // A post-hook's failing verdict does not change the command's exit code, but is worth
    // a line on stderr.
    for report in c["hooks"].as_array().into_iter().flatten() {
        if let Some(reason) = report["verdict"]["fail"].as_str() {
            let hook = report["hook"].as_str().unwrap_or("?");
            let _ = writeln!(err, "ccx: hook `{hook}` failed the job: {reason}");
        }
    }
    match c["status"].as_str() {
        Some("timed_out") => {
            let _ = writeln!(err, "ccx: timed out after {} s", c["execution_time"]);
            EXIT_TIMED_OUT
        }
        Some("canceled") => EXIT_CANCELED,
        Some("denied") => {
            let _ = writeln!(
                err,
                "ccx: denied by hook `{}`: {}",
                c["hook"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            );
            EXIT_REFUSED
        }
        _ => {
            if let Some(code) = c["exit_code"].as_i64() {
                code as u8
            } else if let Some(sig) = c["signal"].as_i64() {
                128u8.wrapping_add(sig as u8)
            } else {
                if let Some(e) = c["error"].as_str() {
                    let _ = writeln!(err, "ccx: {e}");
                }
                EXIT_NOT_STARTED
            }
        }
    }
}
