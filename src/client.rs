//! The one WebSocket client: `ccx exec`, `ccx attach`, `ccx logs`, `ccx jobs`, `ccx mcp --url`
//! and the tests all use it. (Just over 500 lines: the client, and the one loop that turns a
//! job stream into output and an exit code, kept next to the exit-code table it applies.)
//!
//! [`Client::connect`] opens a session (with the token) and waits for `connected`;
//! [`Client::execute`] sends one `execute` and returns a [`JobStream`] of that job's typed
//! events, ending with its `process.completed`, plus a [`Canceller`] that can be moved to
//! another task. [`Client::call`] sends any other method and decodes its typed result.
//! [`exec`] is `ccx exec`: one job, its output copied to the caller's writers, an exit code.

use crate::protocol::{
    Attach, AttachParams, AttachResult, Control, ControlParams, ControlType, ErrorObject, Execute,
    ExecuteParams, ExecuteResult, JobId, JobStatus, Method, Notification, OutputEncoding,
    ServerFrame, Stream, encode_request,
};
use base64::Engine;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
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
/// The job was lost: the server stopped without a graceful shutdown while it ran (`EX_TEMPFAIL`
/// of sysexits.h: trying again may work).
pub const EXIT_LOST: u8 = 75;
/// Exit code when our stdout was closed by its reader (`ccx exec … | head`): the remote job
/// is canceled, and the code is the one a shell shows for a process killed by SIGPIPE.
pub const EXIT_BROKEN_PIPE: u8 = 141;
/// Exit code when the server could not be reached or the connection broke (EX_UNAVAILABLE).
pub const EXIT_CONNECTION: u8 = 69;

/// The default server URL.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8003/ws";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames waiting for the writer task.
const WRITE_BUFFER: usize = 16;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or the connection broke.
    #[error("{0}")]
    Connection(String),
    /// The server answered the request with an error.
    #[error("server refused the request: {0}")]
    Refused(ErrorObject),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A connected session.
pub struct Client {
    reader: SplitStream<Ws>,
    writer: mpsc::Sender<Message>,
    next_id: Arc<AtomicU64>,
    /// The `connected` notification's params.
    pub hello: crate::protocol::Connected,
}

impl Client {
    /// Connects to `url` (presenting `token` as a Bearer token) and waits for `connected`.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Connection(format!("`{url}` is not a WebSocket URL: {e}")))?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Connection("the token is not a valid header".into()))?;
            request.headers_mut().insert("Authorization", value);
        }
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .map_err(|e| ClientError::Connection(format!("cannot connect to {url}: {e}")))?;
        let (sink, reader) = ws.split();
        let (writer, rx) = mpsc::channel(WRITE_BUFFER);
        tokio::spawn(write_loop(sink, rx));
        let mut client = Client {
            reader,
            writer,
            next_id: Arc::new(AtomicU64::new(1)),
            hello: crate::protocol::Connected {
                session_id: String::new(),
                version: String::new(),
                capabilities: Vec::new(),
            },
        };
        match client.next_frame().await? {
            ServerFrame::Notification(Notification::Connected(hello)) => {
                client.hello = hello;
                Ok(client)
            }
            ServerFrame::Reply { result: Err(e), .. } => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!(
                "expected `connected` first, got {other:?}"
            ))),
        }
    }

    /// Sends a text frame as it is (tests use this for hostile frames).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.writer
            .send(Message::Text(text.into().into()))
            .await
            .map_err(|_| ClientError::Connection("connection lost while sending".into()))
    }

    /// Sends a request for method `M` and returns its id.
    pub async fn send<M: Method>(&self, params: &M::Params) -> Result<u64, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send_text(encode_request(id, M::NAME, params)).await?;
        Ok(id)
    }

    /// The next text frame, as it came. `Ok(None)` when the server closed the connection;
    /// the close frame's code and reason are in the error otherwise.
    pub async fn next_text(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.reader.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
                Some(Ok(Message::Close(frame))) => {
                    return match frame {
                        Some(f) if u16::from(f.code) != 1000 => Err(ClientError::Connection(
                            format!("server closed the connection ({}: {})", f.code, f.reason),
                        )),
                        _ => Ok(None),
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(ClientError::Connection(format!("connection lost: {e}")));
                }
                None => return Ok(None),
            }
        }
    }

    /// The next frame, decoded.
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        match self.next_text().await? {
            Some(text) => ServerFrame::parse(&text).map_err(ClientError::Protocol),
            None => Err(ClientError::Connection("connection closed".into())),
        }
    }

    /// Calls method `M` and waits for its result. Notifications that arrive meanwhile are
    /// dropped: use [`Client::execute`] for a job's events.
    pub async fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, ClientError> {
        let id = self.send::<M>(params).await?;
        loop {
            if let ServerFrame::Reply { id: got, result } = self.next_frame().await?
                && got == json!(id)
            {
                let value = result.map_err(ClientError::Refused)?;
                return serde_json::from_value(value)
                    .map_err(|e| ClientError::Protocol(format!("bad `{}` result: {e}", M::NAME)));
            }
        }
    }

    /// Sends `execute` and returns the job's event stream once the server has answered.
    pub async fn execute(&mut self, params: &ExecuteParams) -> Result<JobStream<'_>, ClientError> {
        let id = self.send::<Execute>(params).await?;
        let (accepted, early) = self.reply_and_early::<ExecuteResult>(id, "execute").await?;
        let job_id = accepted.job_id().clone();
        Ok(self.stream(accepted, job_id, early))
    }

    /// Sends `attach` and returns the replay as a job stream (its `accepted` is `existing`),
    /// with the `attach` result.
    pub async fn attach(
        &mut self,
        params: &AttachParams,
    ) -> Result<(AttachResult, JobStream<'_>), ClientError> {
        let id = self.send::<Attach>(params).await?;
        let (result, early) = self.reply_and_early::<AttachResult>(id, "attach").await?;
        let job_id = result.job_id.clone();
        let accepted = ExecuteResult::Existing {
            job_id: job_id.clone(),
        };
        Ok((result, self.stream(accepted, job_id, early)))
    }

    /// Waits for the reply to request `id`, keeping the notifications that overtake it (a job
    /// that failed to spawn, hook warnings).
    async fn reply_and_early<T: serde::de::DeserializeOwned>(
        &mut self,
        id: u64,
        method: &str,
    ) -> Result<(T, VecDeque<Notification>), ClientError> {
        let mut early = VecDeque::new();
        loop {
            match self.next_frame().await? {
                ServerFrame::Reply { id: got, result } if got == json!(id) => {
                    let value = result.map_err(ClientError::Refused)?;
                    let answer = serde_json::from_value(value).map_err(|e| {
                        ClientError::Protocol(format!("bad `{method}` result: {e}"))
                    })?;
                    return Ok((answer, early));
                }
                ServerFrame::Reply { .. } => {}
                ServerFrame::Notification(n) => early.push_back(n),
            }
        }
    }

    fn stream(
        &mut self,
        accepted: ExecuteResult,
        job_id: JobId,
        mut early: VecDeque<Notification>,
    ) -> JobStream<'_> {
        early.retain(|n| n.job_id() == Some(&job_id));
        JobStream {
            canceller: Canceller {
                writer: self.writer.clone(),
                next_id: self.next_id.clone(),
                job_id: job_id.clone(),
            },
            client: self,
            accepted,
            job_id,
            early,
            done: false,
        }
    }
}

async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        if sink.send(msg).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Cancels one job; cheap to clone and to move to another task.
#[derive(Clone)]
pub struct Canceller {
    writer: mpsc::Sender<Message>,
    next_id: Arc<AtomicU64>,
    job_id: JobId,
}

impl Canceller {
    /// Sends `control CANCEL` for the job (its reply is not awaited: the job's
    /// `process.canceled` and `process.completed` say that it took effect).
    pub async fn cancel(&self) -> Result<(), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = ControlParams {
            kind: ControlType::Cancel,
            job_id: Some(self.job_id.to_string()),
        };
        let frame = encode_request(id, Control::NAME, &params);
        self.writer
            .send(Message::Text(frame.into()))
            .await
            .map_err(|_| ClientError::Connection("connection lost while sending".into()))
    }
}

/// One job's events, in the order the server sent them, ending with `process.completed`.
pub struct JobStream<'c> {
    client: &'c mut Client,
    canceller: Canceller,
    /// The `execute` result.
    pub accepted: ExecuteResult,
    job_id: JobId,
    early: VecDeque<Notification>,
    done: bool,
}

impl JobStream<'_> {
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// A handle that cancels this job.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// The job's next event; `Ok(None)` after its `process.completed`. Cancel-safe: a call
    /// dropped mid-way loses no event.
    pub async fn next(&mut self) -> Result<Option<Notification>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let event = match self.early.pop_front() {
            Some(e) => e,
            None => loop {
                match self.client.next_frame().await? {
                    ServerFrame::Notification(n) if n.job_id() == Some(&self.job_id) => break n,
                    _ => {}
                }
            },
        };
        self.done = matches!(event, Notification::Completed(_));
        Ok(Some(event))
    }
}

/// One command for [`exec`].
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub url: String,
    pub token: Option<String>,
    pub params: ExecuteParams,
}

/// Why `exec` could not report a command's own exit.
#[derive(Debug, thiserror::Error)]
pub enum ExecFailure {
    #[error("{0}")]
    Connection(ClientError),
    #[error("server refused the command: {0}")]
    Refused(ErrorObject),
}

impl ExecFailure {
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecFailure::Connection(_) => EXIT_CONNECTION,
            ExecFailure::Refused(_) => EXIT_REFUSED,
        }
    }
}

impl From<ClientError> for ExecFailure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused(obj) => ExecFailure::Refused(obj),
            other => ExecFailure::Connection(other),
        }
    }
}

/// Runs one command through a server, writing its output to `out`/`err` as it arrives.
/// When `interrupt` resolves (Ctrl-C) the remote job is canceled; when `out` is closed by its
/// reader (a broken pipe) the job is canceled too and the code is [`EXIT_BROKEN_PIPE`].
/// Returns the exit code to use: the command's own, `128 + signal`, or one of the `EXIT_*`
/// codes.
pub async fn exec<O: Write, E: Write>(
    opts: &ExecOptions,
    out: &mut O,
    err: &mut E,
    interrupt: impl Future<Output = ()>,
) -> Result<u8, ExecFailure> {
    let mut client = Client::connect(&opts.url, opts.token.as_deref()).await?;
    let job = client.execute(&opts.params).await?;
    follow(job, out, err, interrupt, true, None).await
}

/// Writes a job's output to `out`/`err` as it arrives (base64 decoded) until its
/// `process.completed`, and returns the exit code that stands for it. `interrupt` cancels
/// the job (`cancel_on_interrupt`) or just stops following it (exit 130). `until_seq`: stop,
/// exit 0, after the output with this `seq` (a snapshot of a running job's log).
pub async fn follow<O: Write, E: Write>(
    mut job: JobStream<'_>,
    out: &mut O,
    err: &mut E,
    interrupt: impl Future<Output = ()>,
    cancel_on_interrupt: bool,
    until_seq: Option<u64>,
) -> Result<u8, ExecFailure> {
    let canceller = job.canceller();
    let mut cancel_sent = false;
    tokio::pin!(interrupt);
    loop {
        let event = tokio::select! {
            e = job.next() => e?,
            _ = &mut interrupt, if !cancel_sent => {
                if !cancel_on_interrupt {
                    return Ok(EXIT_CANCELED);
                }
                cancel_sent = true;
                canceller.cancel().await?;
                continue;
            }
        };
        let Some(event) = event else {
            return Err(
                ClientError::Protocol("the job ended without process.completed".into()).into(),
            );
        };
        match event {
            Notification::Output(o) => {
                let w: &mut dyn Write = match o.stream {
                    Stream::Stderr => err,
                    Stream::Stdout => out,
                };
                let bytes = match o.encoding {
                    OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD
                        .decode(&o.data)
                        .map_err(|e| ClientError::Protocol(format!("bad base64 output: {e}")))?,
                    OutputEncoding::Utf8 => o.data.into_bytes(),
                };
                let written = w.write_all(&bytes).and_then(|_| w.flush());
                let seq = o.seq;
                if let Err(e) = written
                    && e.kind() == io::ErrorKind::BrokenPipe
                    && o.stream == Stream::Stdout
                {
                    // Nobody reads our output any more: stop the remote job, then leave as
                    // soon as it has ended (bounded, in case the server is slow to answer).
                    if !cancel_sent {
                        canceller.cancel().await?;
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        while let Ok(Some(e)) = job.next().await {
                            if matches!(e, Notification::Completed(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    return Ok(EXIT_BROKEN_PIPE);
                }
                if until_seq.is_some_and(|last| seq >= last) {
                    return Ok(0);
                }
            }
            Notification::HookWarning(w) => {
                let _ = writeln!(
                    err,
                    "ccx: hook `{}` failed ({}): {}",
                    w.hook, w.kind, w.message
                );
            }
            Notification::OutputGap(g) => {
                let _ = writeln!(
                    err,
                    "ccx: [{} bytes of output not kept here (seq {} to {})]",
                    g.bytes,
                    g.after_seq + 1,
                    g.next_seq.saturating_sub(1)
                );
            }
            Notification::Completed(c) => return Ok(completion_exit_code(&c, err)),
            _ => {}
        }
    }
}

fn completion_exit_code<E: Write>(c: &crate::protocol::Completion, err: &mut E) -> u8 {
    // A post-hook's failing verdict does not change the command's exit code, but is worth
    // a line on stderr.
    for report in &c.hooks {
        if let Some(crate::protocol::Verdict::Fail(reason)) = &report.verdict {
            let _ = writeln!(err, "ccx: hook `{}` failed the job: {reason}", report.hook);
        }
    }
    match c.status {
        JobStatus::TimedOut => {
            let _ = writeln!(err, "ccx: timed out after {} s", c.execution_time);
            EXIT_TIMED_OUT
        }
        JobStatus::Canceled => EXIT_CANCELED,
        JobStatus::Denied => {
            let _ = writeln!(
                err,
                "ccx: denied by hook `{}`: {}",
                c.hook.as_deref().unwrap_or("?"),
                c.reason.as_deref().unwrap_or("")
            );
            EXIT_REFUSED
        }
        JobStatus::Lost => {
            let why = c
                .error
                .as_deref()
                .unwrap_or("the server stopped while it ran");
            let _ = writeln!(err, "ccx: the job was lost: {why}");
            EXIT_LOST
        }
        JobStatus::Completed | JobStatus::Failed => {
            if let Some(code) = c.exit_code {
                code as u8
            } else if let Some(sig) = c.signal {
                128u8.wrapping_add(sig as u8)
            } else {
                if let Some(e) = &c.error {
                    let _ = writeln!(err, "ccx: {e}");
                }
                EXIT_NOT_STARTED
            }
        }
    }
}
