//! Starting a job's process: `clone3(2)` with `CLONE_VM | CLONE_VFORK` (as glibc's
//! `posix_spawn` does: no copy of the server's page tables), `CLONE_PIDFD` (the exit is
//! awaited on a pidfd, so the pid cannot be reused under us) and, when the job has a cgroup,
//! `CLONE_INTO_CGROUP`: the child starts inside it, before it can fork, without the
//! migration a write to `cgroup.procs` costs (about 0.5 ms on these machines).
//!
//! The child runs on a stack of its own in the server's memory while the spawning thread
//! waits (`CLONE_VFORK`), so between the `clone3` and its `execve` it makes raw system calls
//! only: no allocation, no locks, no unwinding. It resets every signal handler to the default
//! and unblocks every signal, joins a new process group (or a new session, for a terminal),
//! takes `PR_SET_PDEATHSIG` (SIGKILL when the spawning thread ends: the runtime's worker
//! threads live as long as the server), applies the job's resource limits, wires its
//! standard streams and `chdir`s, then `execve`s. A failure is written to a slot the parent
//! reads once it resumes. Sources: clone(2), vfork(2), pidfd_open(2), waitid(2),
//! cgroup-v2.rst ("CLONE_INTO_CGROUP"), prctl(2).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const P_PIDFD: libc::idtype_t = 3;
const CHILD_STACK: usize = 64 * 1024;

/// `struct clone_args` of clone(2), version 2 (with `cgroup`).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What to start: everything already in the shapes the child's system calls take.
pub struct Spawn<'a> {
    /// An absolute path (see [`resolve`]).
    pub program: &'a CStr,
    pub argv: &'a [CString],
    /// `KEY=value` entries.
    pub envp: &'a [CString],
    pub cwd: Option<&'a CStr>,
    /// Descriptors that become 0, 1 and 2.
    pub stdio: [BorrowedFd<'a>; 3],
    /// A cgroup v2 directory to start in.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// `setsid` instead of a new process group.
    pub new_session: bool,
    /// Make stdin (a terminal's slave) the controlling terminal of the new session
    /// (`TIOCSCTTY`, tty_ioctl(4)); needs `new_session`.
    pub controlling_tty: bool,
    /// `(resource, soft, hard)` for setrlimit(2).
    pub rlimits: &'a [(libc::c_int, libc::rlim_t, libc::rlim_t)],
    /// cgroup v1 `cgroup.procs` files the child joins before `execve`, by writing "0" to each
    /// (Documentation/admin-guide/cgroup-v1/cgroups.rst: 0 names the writer).
    pub join: &'a [BorrowedFd<'a>],
}

/// A started process: its pid and a pidfd to await it by.
pub struct Child {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
}

/// What the child writes when it cannot get to `execve`'s success: the step and `errno`.
#[derive(Default)]
struct Failure {
    step: std::sync::atomic::AtomicU32,
    errno: std::sync::atomic::AtomicI32,
}

/// Everything the child reads, prepared by the parent (the child must not allocate).
struct ChildArgs<'a> {
    spec: &'a Spawn<'a>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    failure: Failure,
}

const STEP_SIGNALS: u32 = 1;
const STEP_GROUP: u32 = 2;
const STEP_PDEATHSIG: u32 = 3;
const STEP_RLIMIT: u32 = 4;
const STEP_JOIN: u32 = 8;
const STEP_TTY: u32 = 9;
const STEP_STDIO: u32 = 5;
const STEP_CWD: u32 = 6;
const STEP_EXEC: u32 = 7;

fn step_name(step: u32) -> &'static str {
    match step {
        STEP_SIGNALS => "resetting signals",
        STEP_GROUP => "making its process group",
        STEP_PDEATHSIG => "setting PR_SET_PDEATHSIG",
        STEP_RLIMIT => "setting its resource limits",
        STEP_JOIN => "joining its cgroup v1 groups",
        STEP_TTY => "taking its terminal (TIOCSCTTY)",
        STEP_STDIO => "wiring its standard streams",
        STEP_CWD => "changing to its working directory",
        _ => "executing it",
    }
}

/// Starts `spec`: from the spawner thread (see [`super::spawner`]) when the server holds
/// many descriptors and that thread works, else from this thread. Errors: the `clone3` itself
/// (e.g. `ENOSYS` before Linux 5.7 with a cgroup, `EAGAIN`), or any step in the child, as the
/// child's `errno` with the step named.
pub fn spawn(spec: &Spawn<'_>) -> io::Result<Child> {
    let (pid, pidfd) = match super::spawner::spawn(spec) {
        Some(pid) => {
            let pid = pid?;
            // SAFETY: pidfd_open(2) with a pid and no flags. The child cannot have been reaped
            // (only its pidfd's owner reaps it), so the pid still names it, if only as a zombie.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor that nothing else owns.
            (pid, unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        }
        None => spawn_here(spec)?,
    };
    // SAFETY: the pidfd is owned here and stays open as long as the registration (both are
    // the `AsyncFd`), as `register_with_interest` requires.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
        .map_err(io::Error::from)?;
    Ok(Child { pid, pidfd })
}

/// Starts `spec` from this thread, with this thread's descriptor table: `(pid, pidfd)`.
/// Errors: as [`spawn`]'s.
pub(super) fn spawn_here(spec: &Spawn<'_>) -> io::Result<(u32, OwnedFd)> {
    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let args = ChildArgs {
        spec,
        argv,
        envp,
        failure: Failure::default(),
    };
    // u128s: a 16-byte aligned stack.
    let mut stack = vec![0u128; CHILD_STACK / 16];
    let mut pidfd: RawFd = -1;
    let mut cl = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        // A 16-byte aligned top: the child's first `call` then sees the ABI's alignment.
        stack_size: CHILD_STACK as u64,
        ..Default::default()
    };
    if let Some(cg) = spec.cgroup {
        cl.flags |= CLONE_INTO_CGROUP;
        cl.cgroup = cg.as_raw_fd() as u64;
    }
    // Block every signal across the clone, so no handler of the server runs on the child's
    // stack before the child has reset them; restored right after.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain libc calls on local, initialised sigsets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_main` on `stack` and never returns into this frame
    // (it execs or `_exit`s); `CLONE_VFORK` keeps this thread, `args` and `stack` waiting
    // until then.
    let ret = unsafe {
        clone3_vfork(
            &mut cl,
            std::mem::size_of::<CloneArgs>(),
            child_main,
            &args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_errno = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if ret < 0 {
        return Err(clone_errno);
    }
    let pid = ret as u32;
    // SAFETY: `CLONE_PIDFD` stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let step = args.failure.step.load(std::sync::atomic::Ordering::Acquire);
    if step != 0 {
        let errno = args
            .failure
            .errno
            .load(std::sync::atomic::Ordering::Acquire);
        // The child `_exit`ed: reap it now.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child's pidfd.
        unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(
            e.kind(),
            format!("{} ({e})", step_name(step)),
        ));
    }
    Ok((pid, pidfd))
}

impl Child {
    /// Waits for the process to end and reaps it. A pidfd turns readable when its process
    /// exits (pidfd_open(2)); `waitid(P_PIDFD)` then collects the status and, through the
    /// system call's fifth argument (which glibc's wrapper does not expose), its resource
    /// usage: its own and that of the descendants it waited for (as getrusage(2)'s
    /// `RUSAGE_BOTH`, kernel/exit.c).
    pub async fn wait(&self) -> io::Result<(ExitStatus, libc::rusage)> {
        loop {
            let mut guard = self.pidfd.readable().await?;
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child's pidfd, without blocking; both out-pointers
            // are valid for writes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_waitid,
                    P_PIDFD,
                    self.pidfd.get_ref().as_raw_fd(),
                    &mut info as *mut libc::siginfo_t,
                    libc::WEXITED | libc::WNOHANG,
                    &mut usage as *mut libc::rusage,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: filled by a successful waitid.
            let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
            if pid == 0 {
                // Not exited yet (a spurious wake-up).
                guard.clear_ready();
                continue;
            }
            // In wait(2)'s encoding, which `ExitStatus` reads.
            let raw = match code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_DUMPED => (status & 0x7f) | 0x80,
                _ => status & 0x7f,
            };
            return Ok((ExitStatus::from_raw(raw), usage));
        }
    }
}

/// Finds `program` as execvp(3) would: as is if it has a `/`, else in `path` (the job's
/// `PATH`, or the server's), the first executable file. Errors: `NotFound`.
pub fn resolve(program: &str, path: Option<&str>) -> io::Result<CString> {
    let found = if program.contains('/') {
        Some(std::path::PathBuf::from(program))
    } else {
        let path = path
            .map(str::to_string)
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        search(program, path.split(':').filter(|d| !d.is_empty()))
    };
    let found = found.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{program}` is not on PATH"),
        )
    })?;
    CString::new(found.into_os_string().into_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the program's path"))
}

/// The first of `dirs`/`program` that [`is_executable`].
pub(super) fn search<'a>(
    program: &str,
    dirs: impl IntoIterator<Item = &'a str>,
) -> Option<std::path::PathBuf> {
    dirs.into_iter()
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| is_executable(p))
}

/// Whether `p` is a regular file with an execute bit set.
pub(super) fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The child, between `clone3` and `execve`: raw system calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent waits (CLONE_VFORK).
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: u32| -> ! {
        // SAFETY: errno of this thread (shared with the waiting parent thread's TLS).
        let errno = unsafe { *libc::__errno_location() };
        a.failure
            .errno
            .store(errno, std::sync::atomic::Ordering::Relaxed);
        a.failure
            .step
            .store(step, std::sync::atomic::Ordering::Release);
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    };
    let s = a.spec;
    // SAFETY (whole block): system calls on values the parent prepared.
    unsafe {
        // Default handlers (SIGPIPE included: the server ignores it, its children must not).
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut sa) == 0
                && (sa.sa_sigaction != libc::SIG_DFL || sig == libc::SIGPIPE)
            {
                sa.sa_sigaction = libc::SIG_DFL;
                sa.sa_flags = 0;
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    fail(STEP_SIGNALS);
                }
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            fail(STEP_SIGNALS);
        }
        let grouped = if s.new_session {
            libc::setsid() >= 0
        } else {
            libc::setpgid(0, 0) == 0
        };
        if !grouped {
            fail(STEP_GROUP);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            fail(STEP_PDEATHSIG);
        }
        for fd in s.join {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                fail(STEP_JOIN);
            }
        }
        for &(resource, soft, hard) in s.rlimits {
            let l = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource as _, &l) != 0 {
                fail(STEP_RLIMIT);
            }
        }
        for (target, fd) in s.stdio.iter().enumerate() {
            let (fd, target) = (fd.as_raw_fd(), target as RawFd);
            let ok = if fd == target {
                // Already in place: keep it across the exec.
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                fail(STEP_STDIO);
            }
        }
        if s.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            fail(STEP_TTY);
        }
        if let Some(cwd) = s.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(STEP_CWD);
        }
        libc::execve(s.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
    }
    fail(STEP_EXEC)
}

/// `clone3` whose child continues in `f(arg)` on the stack given in `args` and never returns.
/// Returns the child's pid to the parent, or -1 with `errno` set.
///
/// # Safety
/// `args` must describe a valid stack that outlives the child's use of it; `f` must not
/// return.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(
    args: *mut CloneArgs,
    size: usize,
    f: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the syscall returns twice; the child (rax = 0) is on its new stack and jumps
    // straight into `f`, never touching this frame. rcx and r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, {arg}",
            "call {f}",
            "ud2",
            "2:",
            f = in(reg) f,
            arg = in(reg) arg,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") size,
            // Not `lateout`: `f` and `arg` must not be given these, which `syscall` clobbers.
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        // SAFETY: setting this thread's errno.
        unsafe { *libc::__errno_location() = -ret as libc::c_int };
        return -1;
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As there.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_vfork(
    args: *mut CloneArgs,
    size: usize,
    f: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: as on x86_64; the child (x0 = 0) branches into `f` on its new stack.
    unsafe {
        std::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x0, {arg}",
            "blr {f}",
            "brk #0",
            "2:",
            f = in(reg) f,
            arg = in(reg) arg,
            inlateout("x0") args => ret,
            in("x1") size,
            in("x8") libc::SYS_clone3,
            options(nostack),
        );
    }
    if ret < 0 {
        // SAFETY: setting this thread's errno.
        unsafe { *libc::__errno_location() = -ret as libc::c_int };
        return -1;
    }
    ret
}
