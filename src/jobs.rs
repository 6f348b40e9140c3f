//! Child processes: `<shell> -c <command>` in its own process group, both pipes read as bytes
//! into chunks with a `seq`, signals to the whole group, a wall-clock timeout with
//! TERM → grace → KILL, and reaping. A job reports into a session's event channel and never
//! touches a socket.
//!
//! Backpressure: a chunk is read only once the previous one has a place in the channel, so a
//! slow reader fills the pipe and the child waits in `write(2)`; memory stays bounded at one
//! chunk per job. The loop keeps serving timeouts and control messages while it waits.

use crate::containment::JobScope;
use crate::events::{Event, JobId, JobNote, JobStatus, NoteStatus, Stream};
use crate::protocol::ControlType;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

/// Largest piece of output read (and so sent) at once.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Pipe capacity asked of the kernel: fewer wake-ups per megabyte on big outputs.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub shell: String,
    pub command: String,
    pub cwd: Option<PathBuf>,
    /// The child's complete environment.
    pub env: Vec<(String, String)>,
    /// Running time allowed: time spent paused does not count.
    pub timeout: Duration,
    /// The longest a job may stay paused; then it is ended as canceled.
    pub max_pause: Duration,
    pub kill_grace: Duration,
    /// How many trailing bytes of each stream to keep for post-hooks.
    pub tail_bytes: usize,
    /// Written to stdin, which is then closed; `None`: stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// stderr on the stdout pipe.
    pub merge_stderr: bool,
}

/// A control request for a running job; the reply says whether it applied.
pub struct Control {
    pub kind: ControlType,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// How a process ended, with the facts post-hooks and the terminal event need.
#[derive(Debug, Clone)]
pub struct ProcessOutcome {
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub stdout_tail: Vec<u8>,
    pub stderr_tail: Vec<u8>,
    /// SHA-256 of each stream's bytes, hex.
    pub stdout_sha256: String,
    pub stderr_sha256: String,
    /// Processes the job left running when its leader exited, killed then.
    pub leftovers_killed: usize,
    /// Why ccx ended the job, when a rule did (`max_pause`).
    pub error: Option<String>,
}

pub mod spawn;

/// A spawned process that has not been driven yet.
pub struct Process {
    child: spawn::Child,
    scope: JobScope,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    pub pid: u32,
    pub pgid: i32,
    started: Instant,
    timeout: Duration,
    max_pause: Duration,
    kill_grace: Duration,
    tail_bytes: usize,
}

/// Starts `spec` in a new process group, inside `scope` (its cgroup, if it has one), with
/// stdin from `/dev/null` (see [`spawn`]). Errors: the shell not found, a NUL in the
/// command, env or cwd, or the spawn's.
pub fn spawn(spec: &ProcessSpec, mut scope: JobScope) -> io::Result<Process> {
    let cstr = |s: &str, what: &str| {
        CString::new(s).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a NUL byte in the {what}"),
            )
        })
    };
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let program = spawn::resolve(&spec.shell, path)?;
    let argv = [
        cstr(&spec.shell, "shell")?,
        cstr("-c", "")?,
        cstr(&spec.command, "command")?,
    ];
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}"), "environment"))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = match &spec.cwd {
        Some(d) => Some(
            CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in cwd"))?,
        ),
        None => None,
    };
    let (stdin, stdin_w): (OwnedFd, _) = match &spec.stdin {
        None => (std::fs::File::open("/dev/null")?.into(), None),
        Some(_) => {
            let (r, w) = pipe_pair()?;
            (r, Some(w))
        }
    };
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = if spec.merge_stderr {
        (None, out_w.try_clone()?)
    } else {
        let (r, w) = pipe_pair()?;
        (Some(r), w)
    };
    let child = scope.spawn(|cgroup| {
        let child = spawn::spawn(&spawn::Spawn {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: cwd.as_deref(),
            stdio: [stdin.as_fd(), out_w.as_fd(), err_w.as_fd()],
            cgroup,
            new_session: false,
            rlimits: &[],
        })?;
        Ok((child.pid, child))
    })?;
    drop((out_w, err_w, stdin));
    if let (Some(w), Some(text)) = (stdin_w, &spec.stdin) {
        // Written beside the job: a command that never reads must not hold anything up.
        // The write ends with the text (then stdin closes) or when the command exits (EPIPE).
        let mut w = pipe::Sender::from_owned_fd(w)?;
        let text = text.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = w.write_all(&text).await;
        });
    }
    for fd in std::iter::once(out_r.as_raw_fd()).chain(err_r.as_ref().map(|r| r.as_raw_fd())) {
        // SAFETY: fcntl on a pipe descriptor we own; failure only means a smaller pipe.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let pid = child.pid;
    Ok(Process {
        child,
        scope,
        stdout: Some(pipe::Receiver::from_owned_fd(out_r)?),
        stderr: err_r.map(pipe::Receiver::from_owned_fd).transpose()?,
        pid,
        pgid: pid as i32,
        started: Instant::now(),
        timeout: spec.timeout,
        max_pause: spec.max_pause,
        kill_grace: spec.kill_grace,
        tail_bytes: spec.tail_bytes,
    })
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both slots on success; each descriptor is then owned once.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub use crate::containment::signal_group;

/// Where a job's output goes on its way to the live channel: the executor records each read
/// and turns it into the notification to send. (This module never sees an encoding, a spool
/// or a socket.)
pub trait OutputTap: Send {
    /// One read of `bytes` at `offset` in `stream` (empty: the stream's end); returns the
    /// event to send live, if any.
    fn output(&mut self, stream: Stream, seq: u64, offset: u64, bytes: &[u8]) -> Option<Event>;
    /// A `process.paused`/`resumed`/`canceled` about to be sent live.
    fn note(&mut self, event: &Event);
}

/// One output pipe and what has been read from it.
struct Pipe<R> {
    reader: Option<R>,
    bytes: u64,
    tail: Vec<u8>,
    buf: Vec<u8>,
    hash: Sha256,
}

impl<R: tokio::io::AsyncRead + Unpin> Pipe<R> {
    fn new(reader: Option<R>) -> Self {
        Pipe {
            reader,
            bytes: 0,
            tail: Vec::new(),
            buf: vec![0; CHUNK_BYTES],
            hash: Sha256::new(),
        }
    }

    async fn read(&mut self) -> io::Result<usize> {
        match self.reader.as_mut() {
            Some(r) => r.read(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }

    /// Accounts for `n` fresh bytes (0 = end of stream) and returns them with their offset.
    fn take(&mut self, n: usize, tail_cap: usize) -> (u64, &[u8]) {
        if n == 0 {
            self.reader = None;
        }
        let fresh = &self.buf[..n];
        let offset = self.bytes;
        self.bytes += n as u64;
        self.hash.update(fresh);
        if tail_cap > 0 {
            self.tail
                .extend_from_slice(&fresh[fresh.len().saturating_sub(tail_cap)..]);
            if self.tail.len() > 2 * tail_cap {
                self.tail.drain(..self.tail.len() - tail_cap);
            }
        }
        (offset, fresh)
    }

    fn tail(&self, cap: usize) -> Vec<u8> {
        self.tail[self.tail.len().saturating_sub(cap)..].to_vec()
    }

    fn sha256(&self) -> String {
        self.hash
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Why the job is being ended by ccx, if it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    TimedOut,
    Canceled,
    /// Paused longer than `max_pause`: canceled, with that reason.
    PausedTooLong,
}

impl Process {
    /// Drives the process to its end: streams output into `events`, obeys `ctrl`, enforces the
    /// timeout, and reaps. Returns once the process is reaped and its pipes are drained (or,
    /// if something outside the group holds them open, a grace period after the exit).
    pub async fn run(
        mut self,
        job_id: JobId,
        events: mpsc::Sender<Event>,
        tap: &mut dyn OutputTap,
        mut ctrl: mpsc::Receiver<Control>,
    ) -> ProcessOutcome {
        let mut out = Pipe::new(self.stdout.take());
        let mut err = Pipe::new(self.stderr.take());
        let tail_cap = self.tail_bytes;
        let mut leftovers_killed = 0;
        // Moves later by the time spent paused: the timeout measures running time.
        let mut deadline = self.started + self.timeout;
        let mut paused_at: Option<Instant> = None;
        let mut seq: u64 = 0;
        // Events waiting for room in the channel; reading pauses while any wait.
        let mut pending: VecDeque<Event> = VecDeque::new();
        // Once the receiver is gone, output is read and dropped so the child never blocks.
        let mut sink_open = true;
        let mut ending: Option<Ending> = None;
        let mut kill_at: Option<Instant> = None;
        let mut exited: Option<ExitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        let mut ctrl_open = true;

        loop {
            if exited.is_some() && out.reader.is_none() && err.reader.is_none() {
                break;
            }
            let can_read = pending.is_empty();
            tokio::select! {
                permit = events.reserve(), if !pending.is_empty() => match permit {
                    Ok(permit) => permit.send(pending.pop_front().expect("checked non-empty")),
                    Err(_) => {
                        sink_open = false;
                        pending.clear();
                    }
                },
                r = out.read(), if can_read && out.reader.is_some() => {
                    let n = r.unwrap_or(0);
                    extend_drain(&mut drain_until, n, self.kill_grace);
                    seq += 1;
                    let (offset, bytes) = out.take(n, tail_cap);
                    if let Some(ev) = tap.output(Stream::Stdout, seq, offset, bytes) && sink_open {
                        pending.push_back(ev);
                    }
                }
                r = err.read(), if can_read && err.reader.is_some() => {
                    let n = r.unwrap_or(0);
                    extend_drain(&mut drain_until, n, self.kill_grace);
                    seq += 1;
                    let (offset, bytes) = err.take(n, tail_cap);
                    if let Some(ev) = tap.output(Stream::Stderr, seq, offset, bytes) && sink_open {
                        pending.push_back(ev);
                    }
                }
                status = self.child.wait(), if exited.is_none() => {
                    exited = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                    self.scope.leader_reaped();
                    // Background processes the command left behind would hold the pipes open
                    // and keep running after the job is reported done: end them.
                    leftovers_killed = self.scope.kill_all();
                    drain_until = Some(Instant::now() + self.kill_grace);
                    kill_at = None;
                }
                _ = sleep_until(deadline), if ending.is_none() && exited.is_none() && paused_at.is_none() => {
                    ending = Some(Ending::TimedOut);
                    self.scope.terminate();
                    kill_at = Some(Instant::now() + self.kill_grace);
                }
                _ = sleep_until(paused_at.map_or(deadline, |p| p + self.max_pause)),
                    if paused_at.is_some() && ending.is_none() && exited.is_none() => {
                    ending = Some(Ending::PausedTooLong);
                    self.scope.terminate();
                    kill_at = Some(Instant::now() + self.kill_grace);
                    note(&mut pending, tap, Event::Canceled(JobNote { job_id: job_id.clone(), status: NoteStatus::Canceled }));
                }
                _ = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                    self.scope.kill_all();
                    kill_at = None;
                }
                _ = sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() && can_read => {
                    // Something outside the group holds a pipe open without writing: stop
                    // waiting for it. (The timer restarts with every read, so a full pipe
                    // behind a slow client is still drained completely.)
                    break;
                }
                msg = ctrl.recv(), if ctrl_open => match msg {
                    None => ctrl_open = false,
                    Some(Control { kind, reply }) => {
                        let result = if exited.is_some() || ending.is_some() {
                            Err(format!("job {job_id} is already ending"))
                        } else {
                            match kind {
                                ControlType::Pause => {
                                    paused_at.get_or_insert_with(Instant::now);
                                    self.scope.freeze(true);
                                    note(&mut pending, tap, Event::Paused(JobNote { job_id: job_id.clone(), status: NoteStatus::Paused }));
                                }
                                ControlType::Resume => {
                                    if let Some(since) = paused_at.take() {
                                        deadline += since.elapsed();
                                    }
                                    self.scope.freeze(false);
                                    note(&mut pending, tap, Event::Resumed(JobNote { job_id: job_id.clone(), status: NoteStatus::Resumed }));
                                }
                                ControlType::Cancel => {
                                    ending = Some(Ending::Canceled);
                                    self.scope.terminate();
                                    kill_at = Some(Instant::now() + self.kill_grace);
                                    note(&mut pending, tap, Event::Canceled(JobNote { job_id: job_id.clone(), status: NoteStatus::Canceled }));
                                }
                            }
                            Ok(())
                        };
                        let _ = reply.send(result);
                    }
                },
            }
        }
        // Flush what is still waiting; the terminal event must come after all of it.
        for ev in pending.drain(..) {
            if sink_open && events.send(ev).await.is_err() {
                break;
            }
        }
        let duration = self.started.elapsed();
        // What left the group (process-group mode) goes now too; a cgroup is removed.
        leftovers_killed += self.scope.finish().await;
        let exit = exited.unwrap_or_else(|| ExitStatus::from_raw(0));
        let (exit_code, signal) = (exit.code(), exit.signal());
        let status = match ending {
            Some(Ending::TimedOut) => JobStatus::TimedOut,
            Some(Ending::Canceled | Ending::PausedTooLong) => JobStatus::Canceled,
            None if exit_code == Some(0) => JobStatus::Completed,
            None => JobStatus::Failed,
        };
        ProcessOutcome {
            status,
            exit_code,
            signal,
            duration,
            stdout_bytes: out.bytes,
            stderr_bytes: err.bytes,
            stdout_tail: out.tail(tail_cap),
            stderr_tail: err.tail(tail_cap),
            stdout_sha256: out.sha256(),
            stderr_sha256: err.sha256(),
            leftovers_killed,
            error: (ending == Some(Ending::PausedTooLong)).then(|| {
                format!(
                    "paused longer than {} s (`[execution] max_pause`)",
                    self.max_pause.as_secs_f64()
                )
            }),
        }
    }
}

/// After the exit, every read restarts the drain timer: only silence ends the wait.
fn extend_drain(drain_until: &mut Option<Instant>, n: usize, grace: Duration) {
    if n > 0
        && let Some(t) = drain_until.as_mut()
    {
        *t = Instant::now() + grace;
    }
}

/// A control note goes to the tap, then (always, even to a closed sink's queue: it is
/// dropped with the rest) to the live queue.
fn note(pending: &mut VecDeque<Event>, tap: &mut dyn OutputTap, event: Event) {
    tap.note(&event);
    pending.push_back(event);
}
