//! A thread with a descriptor table of its own, from which jobs are started once the server
//! holds many descriptors.
//!
//! Starting a process costs time in proportion to the descriptors its parent holds, twice:
//! `clone3` without `CLONE_FILES` copies the whole table (kernel/fork.c, `dup_fd`), and
//! `execve` then closes every copy marked close-on-exec (fs/exec.c, `do_close_on_exec`), each
//! through `filp_close`. A server with 1,000 connections and their jobs holds several
//! thousand descriptors, so each start cost milliseconds of kernel time and 1,000 starts grew
//! quadratically (a profile of the 1,000-connection bench had `do_close_on_exec` at 18% of the
//! server's CPU). This thread calls `unshare(CLONE_FILES)` once, closes what it inherited, and
//! from then on starts each job from its own small table: it fetches the few descriptors the
//! child needs (standard streams, cgroup directory, cgroup v1 files) from the server's table
//! with `pidfd_getfd`, starts the child as [`spawn_here`] does, and closes them again. The
//! caller then opens the child's pidfd with `pidfd_open` (the child stays a zombie until its
//! pidfd's owner reaps it, so its pid cannot be reused meanwhile).
//!
//! Used only when a descriptor the child gets is numbered at least [`DELEGATE_FROM`] (a
//! server with few descriptors saves nothing and would pay the hand-over), and only if the
//! thread could be set up: `pidfd_getfd` (Linux 5.6) may be refused by a seccomp profile, and
//! then every job starts from the caller's thread as before. The children's
//! `PR_SET_PDEATHSIG` follows the thread that started them; this one lives as long as the
//! server. Sources: unshare(2), close_range(2), pidfd_open(2), pidfd_getfd(2).

use super::spawn::{Spawn, spawn_here};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use tracing::warn;

/// Jobs whose standard streams or cgroup descriptors are numbered at least this high start
/// from the spawner thread.
pub const DELEGATE_FROM: RawFd = 128;

/// How many jobs the spawner thread has started (tests and benches read it).
pub static STARTED: AtomicU64 = AtomicU64::new(0);

/// One start: the caller's spec, alive until the caller has its answer.
struct Request {
    /// A `*const Spawn<'_>`, its lifetime erased.
    spec: *const (),
    reply: mpsc::SyncSender<io::Result<u32>>,
}

// SAFETY: `spec` is only read by the spawner thread while the caller blocks on `reply`, so
// the borrow it was made from outlives every use.
unsafe impl Send for Request {}

static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();

/// Starts `spec` from the spawner thread and returns the child's pid; `None` when the spawner
/// is not used for it (few descriptors, or no spawner on this machine), so the caller starts
/// it itself. Errors: as [`spawn_here`]'s, or a descriptor that could not be fetched.
pub fn spawn(spec: &Spawn<'_>) -> Option<io::Result<u32>> {
    let fds = spec.stdio.iter().chain(spec.cgroup.iter()).chain(spec.join);
    if fds.map(|f| f.as_raw_fd()).max()? < DELEGATE_FROM {
        return None;
    }
    let spawner = SPAWNER.get_or_init(start).as_ref()?;
    let (reply, answer) = mpsc::sync_channel(1);
    let spec = std::ptr::from_ref(spec).cast::<()>();
    spawner.send(Request { spec, reply }).ok()?;
    Some(
        answer
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the spawner thread ended"))),
    )
}

/// Starts the thread and waits until it is ready; `None` (with a warning) when it cannot work.
fn start() -> Option<mpsc::Sender<Request>> {
    // A descriptor of the server's table for the thread to fetch once, as a test.
    let probe = std::fs::File::open("/dev/null").ok()?;
    let probe_fd = probe.as_raw_fd();
    let (tx, rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name("ccx-spawner".into())
        .spawn(move || match own_table(probe_fd) {
            Ok(me) => {
                let _ = ready_tx.send(Ok(()));
                for req in rx {
                    // SAFETY: see `Request`.
                    let spec = unsafe { &*req.spec.cast::<Spawn<'_>>() };
                    let _ = req.reply.send(start_one(&me, spec));
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        });
    if let Err(e) = thread {
        warn!(error = %e, "no spawner thread; jobs start from the runtime's threads");
        return None;
    }
    match ready_rx.recv() {
        Ok(Ok(())) => Some(tx),
        Ok(Err(e)) => {
            warn!(error = %e, "no spawner thread (unshare, close_range, pidfd_open or pidfd_getfd refused); jobs start from the runtime's threads");
            None
        }
        Err(_) => None,
    }
}

/// On the spawner thread: a table of its own holding only the standard streams and a pidfd
/// of this process (returned); checks that `pidfd_getfd` works by fetching `probe`.
fn own_table(probe: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: unshare(2) of this thread's descriptor table: later opens and closes elsewhere
    // in the server do not show here, nor ours there.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Every descriptor past the standard streams, in this thread's copy only: the server's
    // own stay open (closing a copy releases no file and no POSIX lock of the server's table,
    // whose locks belong to that table).
    // SAFETY: close_range(2) on this thread's private table.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open(2) of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let me = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    drop(fetch(&me, probe)?);
    Ok(me)
}

/// A copy, in this thread's table, of the server's descriptor `fd` (close-on-exec set).
fn fetch(me: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) with no flags: the target is this process, whose ptrace access
    // check passes for its own threads.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, me.as_raw_fd(), fd, 0u32) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// On the spawner thread: starts `spec` with its descriptors fetched into this table.
fn start_one(me: &OwnedFd, spec: &Spawn<'_>) -> io::Result<u32> {
    let get = |fd: &BorrowedFd<'_>| fetch(me, fd.as_raw_fd());
    let stdio = [
        get(&spec.stdio[0])?,
        get(&spec.stdio[1])?,
        get(&spec.stdio[2])?,
    ];
    let cgroup = spec.cgroup.as_ref().map(get).transpose()?;
    let join = spec.join.iter().map(get).collect::<io::Result<Vec<_>>>()?;
    let join: Vec<BorrowedFd<'_>> = join.iter().map(|f| f.as_fd()).collect();
    let local = Spawn {
        stdio: [stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()],
        cgroup: cgroup.as_ref().map(|f| f.as_fd()),
        join: &join,
        ..*spec
    };
    let (pid, _pidfd) = spawn_here(&local)?;
    STARTED.fetch_add(1, Ordering::Relaxed);
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Read;

    /// With this process holding more than [`DELEGATE_FROM`] descriptors, a job starts from the
    /// spawner thread, gets exactly its standard streams (nothing of the spawner's or the
    /// server's table leaks into it), and is awaited and reaped through the pidfd the caller
    /// opened.
    #[tokio::test]
    async fn a_job_started_from_the_spawner_gets_its_streams_and_nothing_else() {
        let ballast: Vec<std::fs::File> = (0..DELEGATE_FROM)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let (r, w) = std::io::pipe().unwrap();
        let stdin = std::fs::File::open("/dev/null").unwrap();
        assert!(
            w.as_raw_fd() >= DELEGATE_FROM,
            "the pipe is numbered past the bound"
        );
        let program = CString::new("/bin/sh").unwrap();
        let argv = ["sh", "-c", "ls /proc/self/fd | wc -l; echo done; exit 7"]
            .map(|a| CString::new(a).unwrap());
        let envp = [CString::new("PATH=/usr/bin:/bin").unwrap()];
        let spec = Spawn {
            program: &program,
            argv: &argv,
            envp: &envp,
            cwd: None,
            stdio: [stdin.as_fd(), w.as_fd(), w.as_fd()],
            cgroup: None,
            new_session: false,
            controlling_tty: false,
            rlimits: &[],
            join: &[],
        };
        let before = STARTED.load(Ordering::Relaxed);
        let child = crate::jobs::spawn::spawn(&spec).expect("started");
        assert_eq!(
            STARTED.load(Ordering::Relaxed),
            before + 1,
            "through the spawner"
        );
        drop(w);
        let mut out = String::new();
        (&r).read_to_string(&mut out).unwrap();
        // `ls` holds 0, 1 (the pipe to `wc`), 2 and the directory it lists.
        assert_eq!(out, "4\ndone\n");
        let (status, _) = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        drop(ballast);
    }
}
