//! Starting a job's process: `<shell> -c <command>` (or a plain command by itself: see
//! `direct`) with its environment, its standard streams (pipes, or one terminal) and the
//! writer of its input.

use super::{PIPE_BYTES, Process, ProcessSpec, input, pty};
use crate::containment::JobScope;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// `TERM` for a job on a terminal whose environment sets none.
const DEFAULT_TERM: &str = "xterm-256color";

/// One output stream of a job: a pipe, or its terminal's master.
pub(super) enum Output {
    Pipe(pipe::Receiver),
    Pty(pty::Master),
}

impl AsyncRead for Output {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Output::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            Output::Pty(m) => Pin::new(m).poll_read(cx, buf),
        }
    }
}

/// Starts `spec` inside `scope` (its cgroup, if it has one; its limits): in a new process
/// group, or for a terminal a new session whose controlling terminal it is (see
/// [`super::spawn`]). stdin is `/dev/null` unless the spec gives text or keeps it open.
/// Errors: the shell not found, a NUL in the command, env or cwd, no terminal to be had, or
/// the spawn's.
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
    let (program, argv) = match super::direct::argv(&spec.shell, &spec.command, path) {
        Some(direct) => direct,
        None => (
            super::spawn::resolve(&spec.shell, path)?,
            vec![
                cstr(&spec.shell, "shell")?,
                cstr("-c", "")?,
                cstr(&spec.command, "command")?,
            ],
        ),
    };
    let mut envp = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}"), "environment"))
        .collect::<io::Result<Vec<_>>>()?;
    if spec.pty.is_some() && !spec.env.iter().any(|(k, _)| k == "TERM") {
        envp.push(cstr(&format!("TERM={DEFAULT_TERM}"), "environment")?);
    }
    let cwd = match &spec.cwd {
        Some(d) => Some(
            CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in cwd"))?,
        ),
        None => None,
    };
    if let Some((rows, cols)) = spec.pty {
        let (master, slave) = pty::open(rows, cols)?;
        let stdio = [slave.as_fd(), slave.as_fd(), slave.as_fd()];
        let child = start(
            &mut scope,
            &program,
            &argv,
            &envp,
            cwd.as_deref(),
            stdio,
            true,
        )?;
        // Only the job holds the slave now: its last close ends the master's output.
        drop(slave);
        let master = pty::Master::new(master)?;
        let input = input::start(
            master.clone(),
            spec.stdin.clone(),
            true,
            Some(master.clone()),
        );
        return Ok(process(
            spec,
            scope,
            child,
            Output::Pty(master),
            None,
            input,
            true,
        ));
    }
    let keeps_stdin = spec.stdin.is_some() || spec.stdin_open;
    let (stdin, stdin_w): (OwnedFd, _) = match keeps_stdin {
        false => (std::fs::File::open("/dev/null")?.into(), None),
        true => {
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
    let stdio = [stdin.as_fd(), out_w.as_fd(), err_w.as_fd()];
    let child = start(
        &mut scope,
        &program,
        &argv,
        &envp,
        cwd.as_deref(),
        stdio,
        false,
    )?;
    drop((out_w, err_w, stdin));
    // Written beside the job: a command that never reads must not hold anything up. The
    // writer ends with the text (then stdin closes, unless kept open) or when the command
    // exits (EPIPE).
    let input = match stdin_w {
        Some(w) => input::start(
            pipe::Sender::from_owned_fd(w)?,
            spec.stdin.clone(),
            spec.stdin_open,
            None,
        ),
        None => None,
    };
    for fd in std::iter::once(out_r.as_raw_fd()).chain(err_r.as_ref().map(|r| r.as_raw_fd())) {
        // SAFETY: fcntl on a pipe descriptor we own; failure only means a smaller pipe.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let stdout = Output::Pipe(pipe::Receiver::from_owned_fd(out_r)?);
    let stderr = err_r
        .map(pipe::Receiver::from_owned_fd)
        .transpose()?
        .map(Output::Pipe);
    Ok(process(spec, scope, child, stdout, stderr, input, false))
}

/// Starts the leader inside `scope` with `stdio`; on a terminal (`tty`), in a new session
/// whose controlling terminal stdin is.
fn start(
    scope: &mut JobScope,
    program: &std::ffi::CStr,
    argv: &[CString],
    envp: &[CString],
    cwd: Option<&std::ffi::CStr>,
    stdio: [std::os::fd::BorrowedFd<'_>; 3],
    tty: bool,
) -> io::Result<super::spawn::Child> {
    scope.spawn(|place| {
        let child = super::spawn::spawn(&super::spawn::Spawn {
            program,
            argv,
            envp,
            cwd,
            stdio,
            cgroup: place.cgroup,
            new_session: tty,
            controlling_tty: tty,
            rlimits: place.rlimits,
            join: &place.join,
        })?;
        Ok((child.pid, child))
    })
}

fn process(
    spec: &ProcessSpec,
    scope: JobScope,
    child: super::spawn::Child,
    stdout: Output,
    stderr: Option<Output>,
    input: Option<input::JobInput>,
    tty: bool,
) -> Process {
    let pid = child.pid;
    Process {
        child,
        scope,
        stdout: Some(stdout),
        stderr,
        input,
        tty,
        pid,
        pgid: pid as i32,
        started: Instant::now(),
        timeout: spec.timeout,
        max_pause: spec.max_pause,
        kill_grace: spec.kill_grace,
        tail_bytes: spec.tail_bytes,
    }
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
