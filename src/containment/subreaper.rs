//! Child-subreaper containment: the "process-group" mode, used where cgroups are unavailable.
//!
//! Each job runs as `sh -c CMD` in its own process group, and every process of the job inherits
//! `CCX_JOB_ID=<job id>`. A descendant that leaves the group (`setsid`, a double-forked daemon)
//! is out of reach of a group kill. Once the server is a child subreaper ([`become_subreaper`]),
//! such a process is re-parented to the server when its parent dies, instead of to init.
//! [`sweep`] then finds a job's adopted processes among the server's children by their
//! `CCX_JOB_ID` and kills them; [`reap_exited`] reaps adopted processes that exit by themselves.
//!
//! The server waits for the job processes it spawns itself, by pidfd, so this module never calls
//! `waitpid(-1)`: it waits for one pid at a time, never one in `tracked`. Callers must ensure:
//! - every child the process spawns itself is in `tracked` from its fork until it has been
//!   waited for. Insert under the lock that is held around these calls, and remove only after
//!   the wait. Otherwise [`reap_exited`] can take the child's exit status.
//! - SIGCHLD is not ignored and `SA_NOCLDWAIT` is not set (the kernel would reap by itself).
//!
//! Limits of this mode:
//! - Only processes whose environment holds the marker are found. A process started with
//!   `env -i` or `env -u CCX_JOB_ID` is not, and neither is one whose `/proc/<pid>/environ`
//!   cannot be read: a non-dumpable (setuid) program when the server lacks `CAP_SYS_PTRACE`, or
//!   a program that overwrote its argument and environment area (setproctitle).
//! - A process in a new pid namespace is re-parented to that namespace's init, not to us.
//! - A job descendant that is not yet our child keeps running until its parent dies.
//!
//! Kernel behaviour relied on (Linux; prctl(2) `PR_SET_CHILD_SUBREAPER`, proc(5)
//! `/proc/[pid]/task/[tid]/children` with `CONFIG_PROC_CHILDREN`, `environ` and `stat`):
//! - the orphans of a dying process go to the first thread of the subreaper that is not exiting,
//!   normally the main thread (`find_new_reaper` in kernel/exit.c).
//! - the orphans move before the dying process becomes a zombie, so by the time `waitpid`
//!   returns for it, its children are already ours.
//! - `environ` reads empty, short (even mid-entry) or fails (`ESRCH`) while a process is
//!   mid-`execve` or exiting, and an exiting one's children are not ours yet: [`sweep`] retries.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// The variable that ties a process to its job, as it starts an environ entry.
const MARKER: &[u8] = b"CCX_JOB_ID=";
/// How long one [`sweep`] waits in all for children caught mid-`execve` or exiting.
const PENDING_LIMIT: Duration = Duration::from_millis(100);
/// The pause between two looks at them.
const PENDING_POLL: Duration = Duration::from_millis(1);

/// Makes this process a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`, Linux 3.4+). The
/// flag belongs to the whole process, whichever thread sets it, and covers descendants that
/// already exist. It survives `execve` and is not inherited by children.
/// Errors: the prctl's (for example `EINVAL` on a kernel without the option).
pub fn become_subreaper() -> io::Result<()> {
    let on: libc::c_ulong = 1;
    // SAFETY: this option takes an integer flag and no pointers.
    match unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on, 0 as libc::c_ulong, 0, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether this process is a child subreaper (prctl(2) `PR_GET_CHILD_SUBREAPER`). False if the
/// prctl fails.
pub fn is_subreaper() -> bool {
    let mut flag: libc::c_int = 0;
    let out = &raw mut flag as libc::c_ulong;
    // SAFETY: the kernel writes one int through `out`, which points at `flag` for the call.
    let rc = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, out, 0 as libc::c_ulong, 0, 0) };
    rc == 0 && flag != 0
}

/// This process's children now, as pids sorted ascending with no duplicates, unreaped zombies
/// included: the union of `/proc/self/task/*/children` (proc(5), needs `CONFIG_PROC_CHILDREN`).
/// A child belongs to the thread that forked it, and an adopted orphan to some thread of the
/// subreaper, normally the main one. A thread that exits during the read is skipped; a child
/// forked or reaped during the read may be missed. Pids are in the `/proc` mount's namespace.
/// Errors: `/proc/self/task` cannot be listed, or no thread's `children` file can be read
/// (`NotFound` without `CONFIG_PROC_CHILDREN`).
pub fn children() -> io::Result<Vec<i32>> {
    let (mut pids, mut read_any, mut last_error) = (Vec::new(), false, None);
    let parse = |p: &str| p.parse::<i32>().ok();
    for entry in fs::read_dir("/proc/self/task")? {
        match fs::read_to_string(entry?.path().join("children")) {
            Ok(text) => {
                read_any = true;
                pids.extend(text.split_ascii_whitespace().filter_map(parse));
            }
            Err(e) => last_error = Some(e),
        }
    }
    if !read_any {
        let none = || io::Error::new(io::ErrorKind::NotFound, "no readable /proc/self/task");
        return Err(last_error.unwrap_or_else(none));
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// The value of `CCX_JOB_ID` in `pid`'s environment, from `/proc/<pid>/environ` (proc(5)); if
/// the variable appears twice, the first, as for getenv(3). This is the environment the process
/// was started with, not later `setenv` changes. None if it is absent, empty or not UTF-8, if
/// the process is gone or its environment unreadable (another user's, non-dumpable), and if it
/// is a zombie, exiting or mid-`execve` (the file then reads empty, short, or fails: `ESRCH`).
/// Only for our unreaped child can `pid` not have been reused meanwhile.
pub fn job_marker(pid: i32) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    marker_in(&fs::read(format!("/proc/{pid}/environ")).ok()?)
}

/// Kills every adopted child of this process whose environment says `CCX_JOB_ID=<job_id>`,
/// and returns how many processes it killed. Each round lists [`children`], skips pids in
/// `tracked`, matches the rest with [`job_marker`], sends all the matches SIGKILL, then reaps
/// each by pid with a blocking `waitpid(pid, 0)`. A dying process's children become ours before
/// it can be reaped, so the next round finds them: a chain of n processes takes n rounds. It
/// stops when a look finds nothing, after a round whose kills all failed (`EPERM`: a process
/// that changed its uids), or after `rounds` rounds, and warns if matches are left.
///
/// A child whose environment cannot be read whole yet (mid-`execve`, or exiting, and then its
/// children may not be listed yet) is looked at again every millisecond, for up to 100 ms in
/// all. An empty `job_id` matches nothing. Zombies carry no environment: [`reap_exited`] reaps
/// them. Blocking: each `waitpid` lasts until its process has exited, normally at once, but
/// through any uninterruptible (`D`) sleep. Run it off the async threads, holding the lock that
/// guards `tracked`.
pub fn sweep(job_id: &str, tracked: &HashSet<i32>, rounds: usize) -> usize {
    let deadline = Instant::now() + PENDING_LIMIT;
    let (mut killed, mut round) = (0, 0);
    while !job_id.is_empty() {
        let ((targets, pending), listed) = match children() {
            Ok(listed) => (scan(&listed, job_id, tracked), listed),
            Err(error) => {
                tracing::warn!(%error, job_id, "subreaper: cannot list children; sweep stops");
                break;
            }
        };
        if targets.is_empty() {
            // A child that was exiting when listed may show as a zombie by now: its children,
            // ours before that, are not in `listed`. Done once a new list is the same.
            let late = pending > 0 || children().is_ok_and(|now| now != listed);
            if late && Instant::now() < deadline {
                std::thread::sleep(PENDING_POLL);
                continue;
            }
            if late {
                tracing::warn!(job_id, pending, "subreaper: sweep gave up waiting");
            }
            break;
        }
        if round == rounds {
            tracing::warn!(job_id, left = targets.len(), "subreaper: out of rounds");
            break;
        }
        round += 1;
        // Kill them all before the first wait, so none keeps forking while we wait.
        let hit: Vec<i32> = targets.into_iter().filter(|&p| kill(p, job_id)).collect();
        hit.iter().for_each(|&pid| wait_blocking(pid));
        tracing::debug!(job_id, round, pids = ?hit, "subreaper: killed adopted processes");
        killed += hit.len();
        if hit.is_empty() {
            break;
        }
    }
    killed
}

/// Reaps adopted children that have exited: zombies (state `Z` in `/proc/<pid>/stat`, proc(5))
/// that are not in `tracked`. Each is reaped by pid with `waitpid(pid, WNOHANG)`, so a process
/// that is still running, or a group leader whose other threads still run, is left alone.
/// Returns how many were reaped.
///
/// Does not block. Call it on SIGCHLD, holding the lock that guards `tracked`; signals merge, so
/// it reaps every zombie there is. If `/proc` cannot be read, it warns and returns 0.
pub fn reap_exited(tracked: &HashSet<i32>) -> usize {
    let pids = match children() {
        Ok(pids) => pids,
        Err(error) => {
            tracing::warn!(%error, "subreaper: cannot list children; nothing reaped");
            return 0;
        }
    };
    let zombie = |pid: i32| stat(pid).is_some_and(|s| s.state == b'Z');
    let reap = |&pid: &i32| !tracked.contains(&pid) && zombie(pid) && try_reap(pid);
    let reaped = pids.into_iter().filter(reap).count();
    if reaped > 0 {
        tracing::debug!(reaped, "subreaper: reaped adopted processes that exited");
    }
    reaped
}

/// What a sweep makes of one child: carries the job's marker; alive, but its environment could
/// not be read whole (mid-`execve` or exiting); anything else.
enum Seen {
    Ours,
    Pending,
    Other,
}

/// Those of `pids` not in `tracked` that carry `job_id`'s marker, and how many are pending.
fn scan(pids: &[i32], job_id: &str, tracked: &HashSet<i32>) -> (Vec<i32>, usize) {
    let (mut targets, mut pending) = (Vec::new(), 0);
    for &pid in pids.iter().filter(|pid| !tracked.contains(pid)) {
        match classify(pid, job_id) {
            Seen::Ours => targets.push(pid),
            Seen::Pending => pending += 1,
            Seen::Other => {}
        }
    }
    (targets, pending)
}

fn classify(pid: i32, job_id: &str) -> Seen {
    let environ = match fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => environ,
        // No memory (zombie, exiting, mid-execve): ESRCH on Linux 6.x, an empty read before.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Vec::new(),
        Err(_) => return Seen::Other,
    };
    match marker_in(&environ) {
        Some(marker) if marker == job_id => return Seen::Ours,
        Some(_) => return Seen::Other,
        None => {}
    }
    // No marker: for good if the read was whole (as long as the environment, per stat). Else an
    // execve or exit took the memory during the read (which then ends short, even mid-entry), or
    // execve has not set it up yet: end 0, or start == end while it fills it in. That also looks
    // like an empty environment (`env -i`), so it only counts while the process runs (R or D).
    let len = environ.len() as u64;
    match stat(pid) {
        Some(s) if matches!(s.state, b'Z' | b'X') => Seen::Other,
        Some(s) if s.env_end == 0 || s.env_end.wrapping_sub(s.env_start) != len => Seen::Pending,
        Some(s) if len == 0 && matches!(s.state, b'R' | b'D') => Seen::Pending,
        _ => Seen::Other,
    }
}

/// The value of the first `CCX_JOB_ID=` entry of a NUL-separated environ block, if non-empty
/// UTF-8. Only NUL-terminated entries count: a read cut short may end mid-value.
fn marker_in(environ: &[u8]) -> Option<String> {
    let end = environ.iter().rposition(|&b| b == 0).unwrap_or(0);
    let mut entries = environ[..end].split(|&b| b == 0);
    let value = String::from_utf8(entries.find_map(|e| e.strip_prefix(MARKER))?.to_vec()).ok()?;
    (!value.is_empty()).then_some(value)
}

/// Fields 3 (state, e.g. `b'Z'`), 50 and 51 (the environment's addresses; 0 without memory, or
/// without permission, but then `environ` is unreadable too) of `/proc/<pid>/stat` (proc(5)).
struct Stat {
    state: u8,
    env_start: u64,
    env_end: u64,
}

/// Parses `pid (comm) state ...`; `comm` may hold spaces and `)`, so fields follow the last `)`.
fn stat(pid: i32) -> Option<Stat> {
    let bytes = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied(); // fields[0] is field 3
    Some(Stat {
        state: *field(3)?.as_bytes().first()?,
        env_start: field(50).and_then(|f| f.parse().ok()).unwrap_or(0),
        env_end: field(51).and_then(|f| f.parse().ok()).unwrap_or(0),
    })
}

/// Sends SIGKILL to `pid`, our unreaped child (so not a reused pid). True if it was sent.
fn kill(pid: i32, job_id: &str) -> bool {
    // SAFETY: kill has no memory effects, and `pid` is positive, so it names one process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        return true;
    }
    let error = io::Error::last_os_error();
    tracing::warn!(pid, job_id, %error, "subreaper: cannot kill an adopted process");
    false
}

/// Waits for `pid`, which has just been sent SIGKILL, and reaps it.
fn wait_blocking(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is valid for the call, and `pid > 0` names one child.
        if unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) } == pid {
            return;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            tracing::warn!(pid, %error, "subreaper: cannot reap a killed process");
            return;
        }
    }
}

/// Reaps `pid` if it has exited. Returns true if it did.
fn try_reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: `status` is valid for the call, and `pid > 0` names one child.
    unsafe { libc::waitpid(pid, &raw mut status, libc::WNOHANG | libc::__WALL) == pid }
}
