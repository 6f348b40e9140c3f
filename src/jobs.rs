//! Child processes: `<shell> -c <command>` in its own process group, both pipes read as bytes
//! into chunks with a `seq`, signals to the whole group, a wall-clock timeout with
//! TERM → grace → KILL, and reaping. A job reports into a session's event channel and never
//! touches a socket.
//!
//! Backpressure: a chunk is read only once the previous one has a place in the channel, so a
//! slow reader fills the pipe and the child waits in `write(2)`; memory stays bounded at one
//! chunk per job. The loop keeps serving timeouts and control messages while it waits.
//!
//! Over 500 lines: [`Process::run`] is one `select!` loop over every event of a job's life
//! (both pipes, the output stage's flush, exit, timeout, pause, CPU watch, kill, drain,
//! control); splitting it would scatter the state it shares.

use crate::containment::JobScope;
use crate::events::{Event, JobId, JobNote, JobStatus, NoteStatus, Stream};
use crate::protocol::{ControlType, LimitKind, Usage};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

/// Largest piece of output read (and so sent) at once.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// A pipe's first read buffer, in bytes (it grows to [`CHUNK_BYTES`] while reads fill it).
const FIRST_READ_BYTES: usize = 4 * 1024;

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
    /// Keep stdin open (after `stdin`) for [`Process::input`].
    pub stdin_open: bool,
    /// Run on a terminal of `(rows, cols)`.
    pub pty: Option<(u16, u16)>,
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
    /// Why ccx ended the job, when a rule did (`max_pause`, a limit, the output stage).
    pub error: Option<String>,
    /// Bytes each stream wrote, when an output stage ran (the `*_bytes` above count what was
    /// sent on).
    pub raw_bytes: Option<(u64, u64)>,
    /// The resource limit that ended the job, if one did.
    pub limit: Option<LimitKind>,
    /// What its processes used.
    pub usage: Usage,
}

mod direct;
pub mod input;
mod outcome;
pub mod pty;
pub mod spawn;
pub mod spawner;
mod stage;
mod start;

pub use stage::{OutputStage, StageOut};

/// A spawned process that has not been driven yet.
pub struct Process {
    child: spawn::Child,
    scope: JobScope,
    stdout: Option<start::Output>,
    stderr: Option<start::Output>,
    /// The job's stdin or terminal, for `input` (and `resize`).
    input: Option<input::JobInput>,
    /// stdout is a terminal (`Stream::Pty`).
    tty: bool,
    pub pid: u32,
    pub pgid: i32,
    started: Instant,
    timeout: Duration,
    max_pause: Duration,
    kill_grace: Duration,
    tail_bytes: usize,
}

pub use start::spawn;

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
    /// Bytes sent on (after the output stage, if any).
    bytes: u64,
    /// Bytes read from the pipe, when an output stage changes what is sent.
    raw_bytes: u64,
    tail: Vec<u8>,
    buf: Vec<u8>,
    hash: Sha256,
}

impl<R: tokio::io::AsyncRead + Unpin> Pipe<R> {
    fn new(reader: Option<R>) -> Self {
        Pipe {
            reader,
            bytes: 0,
            raw_bytes: 0,
            tail: Vec::new(),
            buf: vec![0; FIRST_READ_BYTES],
            hash: Sha256::new(),
        }
    }

    /// Reads what the pipe has, up to the buffer's size. The buffer starts small (a quiet job
    /// costs little: a thousand `sleep`s would otherwise hold 128 MiB of idle buffers) and
    /// doubles, up to [`CHUNK_BYTES`], each time a read fills it.
    async fn read(&mut self) -> io::Result<usize> {
        match self.reader.as_mut() {
            Some(r) => {
                let n = r.read(&mut self.buf).await?;
                if n == self.buf.len() && n < CHUNK_BYTES {
                    self.buf.resize((n * 2).min(CHUNK_BYTES), 0);
                }
                Ok(n)
            }
            None => std::future::pending().await,
        }
    }

    /// Accounts for `n` fresh bytes (0 = end of stream) and returns them with their offset.
    fn take(&mut self, n: usize, tail_cap: usize) -> (u64, &[u8]) {
        if n == 0 {
            self.reader = None;
        }
        self.raw_bytes += n as u64;
        let offset = account(
            &mut self.bytes,
            &mut self.hash,
            &mut self.tail,
            &self.buf[..n],
            tail_cap,
        );
        (offset, &self.buf[..n])
    }

    /// Counts, hashes and keeps the tail of `sent`, bytes going on to the client; returns
    /// their offset in the stream.
    fn account(&mut self, sent: &[u8], tail_cap: usize) -> u64 {
        account(
            &mut self.bytes,
            &mut self.hash,
            &mut self.tail,
            sent,
            tail_cap,
        )
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

/// See [`Pipe::account`] (free, so that it can borrow the read buffer beside the rest).
fn account(
    bytes: &mut u64,
    hash: &mut Sha256,
    tail: &mut Vec<u8>,
    sent: &[u8],
    tail_cap: usize,
) -> u64 {
    let offset = *bytes;
    *bytes += sent.len() as u64;
    hash.update(sent);
    if tail_cap > 0 {
        tail.extend_from_slice(&sent[sent.len().saturating_sub(tail_cap)..]);
        if tail.len() > 2 * tail_cap {
            tail.drain(..tail.len() - tail_cap);
        }
    }
    offset
}

/// Why the job is being ended by ccx, if it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    TimedOut,
    Canceled,
    /// Paused longer than `max_pause`: canceled, with that reason.
    PausedTooLong,
    /// The job's total CPU time passed `cpu_seconds` (cgroup mode's watch).
    CpuLimit,
}

impl Process {
    /// A handle for the job's input: `Some` for a terminal or a stdin kept open.
    pub fn input(&self) -> Option<input::JobInput> {
        self.input.clone()
    }

    /// Drives the process to its end: streams output into `events`, obeys `ctrl`, enforces the
    /// timeout, and reaps. Returns once the process is reaped and its pipes are drained (or,
    /// if something outside the group holds them open, a grace period after the exit).
    pub async fn run(
        mut self,
        job_id: JobId,
        events: mpsc::Sender<Event>,
        tap: &mut dyn OutputTap,
        mut stage: Option<&mut dyn OutputStage>,
        mut ctrl: mpsc::Receiver<Control>,
    ) -> ProcessOutcome {
        let out_stream = if self.tty {
            Stream::Pty
        } else {
            Stream::Stdout
        };
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
        let mut rusage: Option<libc::rusage> = None;
        // When to look at the job's total CPU time next (cgroup mode with `cpu_seconds`).
        let mut cpu_check: Option<Instant> = self.scope.cpu_total().map(|_| Instant::now());
        let mut drain_until: Option<Instant> = None;
        let mut ctrl_open = true;
        // The output stage: when a partial line must go, and why it ended the job.
        let mut flush_at: Option<Instant> = None;
        let mut stage_error: Option<String> = None;

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
                    if let Some(st) = stage.as_deref_mut() {
                        let sink = stage::Sink { tap, pending: &mut pending, sink_open, tail_cap };
                        let passed = stage::pass(st, &mut out, out_stream, &mut seq, n, stage::Via::Read, sink).await;
                        flush_at = next_flush(st, flush_at, out_stream, passed.delivered);
                        stage_ended(passed, &mut stage_error, &mut kill_at, &self.scope, self.kill_grace);
                    } else {
                        let (offset, bytes) = out.take(n, tail_cap);
                        if let Some(ev) = tap.output(out_stream, seq, offset, bytes) && sink_open {
                            pending.push_back(ev);
                        }
                    }
                }
                r = err.read(), if can_read && err.reader.is_some() => {
                    let n = r.unwrap_or(0);
                    extend_drain(&mut drain_until, n, self.kill_grace);
                    seq += 1;
                    if let Some(st) = stage.as_deref_mut() {
                        let sink = stage::Sink { tap, pending: &mut pending, sink_open, tail_cap };
                        let passed = stage::pass(st, &mut err, Stream::Stderr, &mut seq, n, stage::Via::Read, sink).await;
                        flush_at = next_flush(st, flush_at, Stream::Stderr, passed.delivered);
                        stage_ended(passed, &mut stage_error, &mut kill_at, &self.scope, self.kill_grace);
                    } else {
                        let (offset, bytes) = err.take(n, tail_cap);
                        if let Some(ev) = tap.output(Stream::Stderr, seq, offset, bytes) && sink_open {
                            pending.push_back(ev);
                        }
                    }
                }
                _ = sleep_until(flush_at.unwrap_or(deadline)), if flush_at.is_some() && can_read => {
                    // A partial line waited long enough: it goes without its newline.
                    flush_at = None;
                    if let Some(st) = stage.as_deref_mut() {
                        for (stream, pipe) in [(out_stream, &mut out), (Stream::Stderr, &mut err)] {
                            if st.holds(stream) {
                                seq += 1;
                                let sink = stage::Sink { tap, pending: &mut pending, sink_open, tail_cap };
                                let passed = stage::pass(st, pipe, stream, &mut seq, 0, stage::Via::Flush, sink).await;
                                stage_ended(passed, &mut stage_error, &mut kill_at, &self.scope, self.kill_grace);
                            }
                        }
                    }
                }
                status = self.child.wait(), if exited.is_none() => {
                    let (status, usage) = status.map_or((ExitStatus::from_raw(0), None), |(s, u)| (s, Some(u)));
                    exited = Some(status);
                    rusage = usage;
                    cpu_check = None;
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
                _ = sleep_until(cpu_check.unwrap_or(deadline)), if cpu_check.is_some() && ending.is_none() => {
                    cpu_check = match self.scope.cpu_total() {
                        Some((used, limit)) if used >= limit => {
                            ending = Some(Ending::CpuLimit);
                            self.scope.kill_all();
                            None
                        }
                        Some((used, limit)) => Some(Instant::now() + outcome::next_cpu_check(limit - used)),
                        None => None,
                    };
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
        let limits = *self.scope.limits();
        let end = self.scope.finish().await;
        leftovers_killed += end.leftovers_killed;
        let exit = exited.unwrap_or_else(|| ExitStatus::from_raw(0));
        let (exit_code, signal) = (exit.code(), exit.signal());
        let mut status = match ending {
            _ if stage_error.is_some() => JobStatus::Failed,
            Some(Ending::TimedOut) => JobStatus::TimedOut,
            Some(Ending::Canceled | Ending::PausedTooLong) => JobStatus::Canceled,
            Some(Ending::CpuLimit) => JobStatus::Failed,
            None if exit_code == Some(0) => JobStatus::Completed,
            None => JobStatus::Failed,
        };
        let limit = match ending {
            Some(Ending::CpuLimit) => Some(LimitKind::Cpu),
            _ if status != JobStatus::Failed => None,
            _ => end
                .limit
                .or_else(|| outcome::limit_by_exit(&limits, exit_code, signal)),
        };
        if limit.is_some() {
            status = JobStatus::Failed;
        }
        let error = match ending {
            _ if stage_error.is_some() => stage_error,
            Some(Ending::PausedTooLong) => Some(format!(
                "paused longer than {} s (`[execution] max_pause`)",
                self.max_pause.as_secs_f64()
            )),
            _ => limit.map(|l| outcome::limit_error(l, &limits)),
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
            error,
            raw_bytes: stage.is_some().then_some((out.raw_bytes, err.raw_bytes)),
            limit,
            usage: outcome::usage(rusage.as_ref(), end.cpu),
        }
    }
}

/// The output stage ended the job: it is killed, and ends `failed` with the stage's error.
fn stage_ended(
    passed: stage::Passed,
    stage_error: &mut Option<String>,
    kill_at: &mut Option<Instant>,
    scope: &JobScope,
    grace: Duration,
) {
    if let Some(reason) = passed.end
        && stage_error.is_none()
    {
        *stage_error = Some(reason);
        scope.kill_all();
        *kill_at = Some(Instant::now() + grace);
    }
}

/// When a partial line must go after a pass over `stream`: a line's wait starts when its
/// first bytes arrive (nothing waited, or the bytes before it just went on), so a stream
/// that never ends its line is still flushed every `flush_after`.
fn next_flush(
    stage: &dyn OutputStage,
    due: Option<Instant>,
    stream: Stream,
    delivered: bool,
) -> Option<Instant> {
    let after = stage.flush_after()?;
    let holds_any = stage.holds(Stream::Stdout) || stage.holds(Stream::Stderr);
    match due {
        _ if !holds_any => None,
        None => Some(Instant::now() + after),
        Some(_) if delivered && stage.holds(stream) => Some(Instant::now() + after),
        Some(t) => Some(t),
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
