//! Interactive `ccx exec`, as `docker exec -it` and `kubectl exec -it`: `-i` forwards the
//! local stdin to the job (`input`, one request in flight, retried while the job's input
//! buffer is full), `-t` runs the job on a terminal the size of the local one, puts the local
//! terminal in raw mode (restored on every way out) and forwards window size changes
//! (SIGWINCH → `resize`).

use super::{ClientError, Replies};
use crate::protocol::{
    ErrorObject, Input, InputParams, JobId, Method, OutputEncoding, PtySize, Resize, ResizeParams,
    encode_request,
};
use base64::Engine;
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::Message;

/// Largest piece of local stdin sent in one `input`.
const CHUNK: usize = 16 * 1024;

/// Sends `input` and `resize` for one job and waits for their replies (which the job's
/// stream routes here while it is followed).
#[derive(Clone)]
pub struct InputSender {
    pub(super) writer: mpsc::Sender<Message>,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) replies: Replies,
    pub(super) job_id: JobId,
}

impl InputSender {
    async fn request<M: Method>(&self, params: &M::Params) -> Result<(), RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().expect("lock").insert(id, tx);
        let frame = encode_request(id, M::NAME, params);
        let lost = || RequestError::Client(ClientError::Connection("connection lost".into()));
        self.writer
            .send(Message::Text(frame.into()))
            .await
            .map_err(|_| lost())?;
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RequestError::Refused(e)),
            Err(_) => Err(lost()),
        }
    }

    /// Sends `data` (then the end of input, if `eof`), waiting while the job's input buffer
    /// is full. Errors: the connection, or the server refusing for another reason (the job
    /// ended, its stdin closed).
    pub async fn input(&self, data: &[u8], eof: bool) -> Result<(), ClientError> {
        let params = InputParams {
            job_id: self.job_id.to_string(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            encoding: Some(OutputEncoding::Base64),
            eof,
        };
        loop {
            match self.request::<Input>(&params).await {
                Ok(()) => return Ok(()),
                Err(RequestError::Refused(e)) if e.message.contains("input buffer full") => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(RequestError::Refused(e)) => return Err(ClientError::Refused(e)),
                Err(RequestError::Client(e)) => return Err(e),
            }
        }
    }

    /// Resizes the job's terminal.
    pub async fn resize(&self, size: PtySize) -> Result<(), ClientError> {
        let params = ResizeParams {
            job_id: self.job_id.to_string(),
            rows: size.rows,
            cols: size.cols,
        };
        match self.request::<Resize>(&params).await {
            Ok(()) => Ok(()),
            Err(RequestError::Refused(e)) => Err(ClientError::Refused(e)),
            Err(RequestError::Client(e)) => Err(e),
        }
    }
}

enum RequestError {
    Refused(ErrorObject),
    Client(ClientError),
}

/// The size of the local terminal (stdout's, else stdin's); `None` when neither is one.
pub fn local_size() -> Option<PtySize> {
    [1, 0].into_iter().find_map(|fd| {
        // SAFETY: 0 and 1 stay open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let ws = rustix::termios::tcgetwinsize(fd).ok()?;
        (ws.ws_row > 0 && ws.ws_col > 0).then_some(PtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    })
}

/// The local terminal in raw mode (cfmakeraw(3): no echo, no line editing, no signals from
/// keys, so Ctrl-C reaches the job as a byte), restored when dropped.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub fn enable() -> Option<RawMode> {
        // SAFETY: fd 0 stays open for the life of the process.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let saved = rustix::termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: as in `enable`.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let _ =
            rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// Forwards the local stdin (when `stdin`) and window size changes (when `tty`) to the job
/// until the returned task is aborted or stdin ends. stdin is read on a thread of its own
/// (a blocked read would otherwise hold up the runtime's shutdown).
pub fn forward(sender: InputSender, stdin: bool, tty: bool) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    if stdin {
        std::thread::spawn(move || {
            let mut buf = vec![0; CHUNK];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
            // Dropping `tx` tells the task: end of input.
        });
    } else {
        drop(tx);
    }
    tokio::spawn(async move {
        let mut winch = tty
            .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()))
            .and_then(Result::ok);
        let mut stdin_open = stdin;
        loop {
            tokio::select! {
                chunk = rx.recv(), if stdin_open => match chunk {
                    Some(data) => {
                        if sender.input(&data, false).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        stdin_open = false;
                        let _ = sender.input(&[], true).await;
                        if winch.is_none() {
                            return;
                        }
                    }
                },
                Some(()) = async { winch.as_mut()?.recv().await } => {
                    if let Some(size) = local_size() {
                        let _ = sender.resize(size).await;
                    }
                }
                else => return,
            }
        }
    })
}
