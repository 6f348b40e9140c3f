//! `ccx exec` and the commands built like it (`attach`, `logs`): a job stream written to
//! stdout/stderr as it arrives, and the exit code that stands for its end.

use super::{Client, ClientError, JobStream};
use crate::protocol::{
    ErrorObject, ExecuteParams, JobStatus, Notification, OutputEncoding, Stream,
};
use base64::Engine;
use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

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

/// One command for [`exec`].
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub url: String,
    pub token: Option<String>,
    pub params: ExecuteParams,
    /// Forward the local stdin to the job (`-i`; `params.stdin_open` or `pty` must be set).
    pub forward_stdin: bool,
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
    let tty = opts.params.pty.is_some();
    if !opts.forward_stdin && !tty {
        return follow(job, out, err, interrupt, true, None).await;
    }
    // Raw only with both: `-t` alone leaves the keyboard (and its Ctrl-C) local.
    let _raw = (tty && opts.forward_stdin)
        .then(super::input::RawMode::enable)
        .flatten();
    let forwarder = super::input::forward(job.input_sender(), opts.forward_stdin, tty);
    let code = follow(job, out, err, interrupt, true, None).await;
    forwarder.abort();
    code
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
                    Stream::Stdout | Stream::Pty => out,
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
                    && o.stream != Stream::Stderr
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
