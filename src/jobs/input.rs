//! A job's input: the text given at `execute` and, for `stdin_open` or a terminal, whatever
//! `input` sends later, written in order by one task per job. `input` never waits for the
//! command to read: bytes are queued (at most [`INPUT_BUFFER_BYTES`] per job, refused beyond
//! that), so a command that does not read cannot stall its client's connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Bytes of input that may wait for a job to read them.
pub const INPUT_BUFFER_BYTES: usize = 1 << 20;

/// The terminal's end-of-file character (Ctrl-D, `VEOF` in the default termios(3)).
const VEOF: u8 = 0x04;

struct Chunk {
    data: Vec<u8>,
    eof: bool,
    _permit: OwnedSemaphorePermit,
}

/// A handle to a running job's stdin or terminal; cheap to clone.
#[derive(Clone)]
pub struct JobInput {
    tx: mpsc::UnboundedSender<Chunk>,
    budget: Arc<Semaphore>,
    /// Set once `eof` was sent to a pipe, or the command closed it.
    closed: Arc<AtomicBool>,
    tty: Option<super::pty::Master>,
}

impl JobInput {
    /// Queues `data` (then, if `eof`, the end of input) and returns how many bytes were
    /// queued. Errors (for the client): stdin already closed, or more than
    /// [`INPUT_BUFFER_BYTES`] waiting.
    pub fn send(&self, data: Vec<u8>, eof: bool) -> Result<usize, String> {
        if self.closed.load(Ordering::Acquire) {
            return Err("the job's stdin is closed".into());
        }
        let n = data.len();
        let permit = u32::try_from(n)
            .ok()
            .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                format!(
                    "input buffer full: {} bytes already wait for the command to read (at most {INPUT_BUFFER_BYTES})",
                    INPUT_BUFFER_BYTES - self.budget.available_permits()
                )
            })?;
        if eof && self.tty.is_none() {
            self.closed.store(true, Ordering::Release);
        }
        let chunk = Chunk {
            data,
            eof,
            _permit: permit,
        };
        self.tx
            .send(chunk)
            .map_err(|_| "the job's stdin is closed".to_string())?;
        Ok(n)
    }

    /// Resizes the job's terminal. Errors: the job has none, or the ioctl's.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let tty = self.tty.as_ref().ok_or("the job has no terminal (`pty`)")?;
        super::pty::resize(tty.fd(), rows, cols).map_err(|e| format!("cannot resize: {e}"))
    }

    /// Whether this is a terminal.
    pub fn is_tty(&self) -> bool {
        self.tty.is_some()
    }
}

/// Starts the writer of a job's input: `first` (the request's `stdin` text) is written at
/// once; then, when `open`, chunks sent through the returned handle, in order. A pipe is
/// closed after `first` unless `open`, and after a chunk with `eof`; a terminal gets Ctrl-D
/// for `eof` and stays open. The task ends when the handle is gone (the job ended) or the
/// command stops reading for good (`EPIPE`).
pub fn start<W>(
    mut writer: W,
    first: Option<Vec<u8>>,
    open: bool,
    tty: Option<super::pty::Master>,
) -> Option<JobInput>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let closed = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let is_tty = tty.is_some();
    let task_closed = closed.clone();
    tokio::spawn(async move {
        if let Some(text) = first
            && writer.write_all(&text).await.is_err()
        {
            task_closed.store(true, Ordering::Release);
            return;
        }
        if !open {
            return;
        }
        while let Some(chunk) = rx.recv().await {
            let mut ok = writer.write_all(&chunk.data).await.is_ok();
            if chunk.eof {
                if !is_tty {
                    break;
                }
                ok = ok && writer.write_all(&[VEOF]).await.is_ok();
            }
            if !ok {
                break;
            }
        }
        task_closed.store(true, Ordering::Release);
    });
    open.then(|| JobInput {
        tx,
        budget: Arc::new(Semaphore::new(INPUT_BUFFER_BYTES)),
        closed,
        tty,
    })
}
