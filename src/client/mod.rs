//! The one WebSocket client: `ccx exec`, `ccx attach`, `ccx logs`, `ccx jobs`, `ccx mcp --url`
//! and the tests all use it. The connection and its job streams are here; `exec` turns a job
//! stream into output and an exit code for the CLI.
//!
//! [`Client::connect`] opens a session (with the token) and waits for `connected`;
//! [`Client::execute`] sends one `execute` and returns a [`JobStream`] of that job's typed
//! events, ending with its `process.completed`, plus a [`Canceller`] that can be moved to
//! another task. [`Client::call`] sends any other method and decodes its typed result.
//! [`exec`] is `ccx exec`: one job, its output copied to the caller's writers, an exit code.

mod exec;
pub mod input;
pub use exec::*;

use crate::protocol::{
    Attach, AttachParams, AttachResult, Control, ControlParams, ControlType, ErrorObject, Execute,
    ExecuteParams, ExecuteResult, JobId, Method, Notification, ServerFrame, encode_request,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The default server URL.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8003/ws";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames waiting for the writer task.
const WRITE_BUFFER: usize = 16;

/// Requests sent beside a followed job (`input`, `resize`) whose replies the job's stream
/// hands over, by id.
type Replies = Arc<
    std::sync::Mutex<
        HashMap<u64, tokio::sync::oneshot::Sender<Result<serde_json::Value, ErrorObject>>>,
    >,
>;

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
    replies: Replies,
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
            replies: Replies::default(),
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

    /// A handle that sends this job `input` and `resize`; their replies arrive while the
    /// stream is read ([`JobStream::next`]).
    pub fn input_sender(&self) -> input::InputSender {
        input::InputSender {
            writer: self.client.writer.clone(),
            next_id: self.client.next_id.clone(),
            replies: self.client.replies.clone(),
            job_id: self.job_id.clone(),
        }
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
                    ServerFrame::Reply { id, result } => {
                        let waiting = id
                            .as_u64()
                            .and_then(|id| self.client.replies.lock().expect("lock").remove(&id));
                        if let Some(tx) = waiting {
                            let _ = tx.send(result);
                        }
                    }
                    _ => {}
                }
            },
        };
        self.done = matches!(event, Notification::Completed(_));
        Ok(Some(event))
    }
}
