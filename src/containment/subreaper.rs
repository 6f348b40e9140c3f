//! Child-subreaper containment for the "process-group" mode, used where cgroups are not
//! available.
//!
//! Each job runs as `sh -c CMD` in its own process group, and every process of the job inherits
//! `CCX_JOB_ID=<job id>`. A descendant that leaves the group (`setsid`, a double-forked daemon)
//! is out of reach of a group kill. Once the server is a child subreaper ([`become_subreaper`],
//! prctl(2) `PR_SET_CHILD_SUBREAPER`), such a process is re-parented to the server when its
//! parent dies, instead of to init. [`sweep`] then finds a job's adopted processes among the
//! server's children by their `CCX_JOB_ID` and kills them, and [`reap_exited`] reaps the
//! adopted processes that exit on their own.
//!
//! The server waits for the job processes it spawns itself, by pidfd, so this module never
//! calls `waitpid(-1)`. It only waits for one pid at a time, and never for a pid in `tracked`.
//! Callers must keep these rules:
//! - every child the process spawns itself is in `tracked` from its fork until it has been
//!   waited for. Insert under the lock that is held around these calls, and remove only after
//!   the wait. Otherwise [`reap_exited`] can take the child's exit status.
//! - SIGCHLD must not be ignored and `SA_NOCLDWAIT` must not be set. Either makes the kernel
//!   reap children automatically, so nothing would be left to reap here.
//!
//! Limits of this mode:
//! - Only processes whose environment still holds the marker are found. A process started
//!   with `env -i` or `env -u CCX_JOB_ID` is not, and neither is one whose
//!   `/proc/<pid>/environ` cannot be read. That includes a non-dumpable (setuid) program when
//!   the server lacks `CAP_SYS_PTRACE`, and a program that overwrote its argument and
//!   environment area (setproctitle).
//! - A process in a new pid namespace is re-parented to that namespace's init, not to us.
//! - Between two rounds of [`sweep`], a job descendant that is not yet our child can still
//!   run. It becomes our child, and can be killed, only when its parent dies.
//!
//! Sources: prctl(2) for `PR_SET_CHILD_SUBREAPER`, and proc(5) for
//! `/proc/[pid]/task/[tid]/children` (needs `CONFIG_PROC_CHILDREN`), `/proc/[pid]/environ` and
//! `/proc/[pid]/stat`. On Linux, the orphans of a dying process go to the first thread of the
//! subreaper that is not exiting, which is normally the main thread (`find_new_reaper` in
//! kernel/exit.c). They are moved before the dying process becomes a zombie, so by the time
//! `waitpid` returns for it, its children are already ours.

use std::collections::HashSet;
use std::fs;
use std::io;

/// The variable that ties a process to its job, as it starts an environ entry.
const MARKER: &[u8] = b"CCX_JOB_ID=";

/// Makes this process a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`, Linux 3.4+).
///
/// The flag belongs to the whole process, whichever thread sets it. It survives `execve` and
/// is not inherited by children. Descendants that already exist are covered too.
/// Errors: the prctl's (for example `EINVAL` on a kernel without the option).
pub fn become_subreaper() -> io::Result<()> {
    let on: libc::c_ulong = 1;
    // SAFETY: this option takes an integer flag and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on, 0 as libc::c_ulong, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether this process is a child subreaper (prctl(2) `PR_GET_CHILD_SUBREAPER`). False if
/// the prctl fails.
pub fn is_subreaper() -> bool {
    let mut flag: libc::c_int = 0;
    let out = &mut flag as *mut libc::c_int as libc::c_ulong;
    // SAFETY: the kernel writes one int through `out`, which points at `flag` for the call.
    let rc = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, out, 0 as libc::c_ulong, 0, 0) };
    rc == 0 && flag != 0
}

/// This process's children right now, as pids sorted ascending with no duplicates. Zombies
/// not yet reaped are included.
///
/// This is the union of `/proc/self/task/*/children` (proc(5), needs `CONFIG_PROC_CHILDREN`).
/// A child belongs to the thread that forked it, and an adopted orphan to some thread of the
/// subreaper, normally the main one. A thread that exits while the files are read is skipped.
/// A child that is forked or reaped during the read may be missed (proc(5) calls this list a
/// snapshot). Pids are in the pid namespace of the `/proc` mount.
/// Errors: `/proc/self/task` cannot be listed, or no thread's `children` file can be read
/// (`NotFound` when the kernel lacks `CONFIG_PROC_CHILDREN`).
pub fn children() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    let mut read_any = false;
    let mut last_error = None;
    for entry in fs::read_dir("/proc/self/task")? {
        match fs::read_to_string(entry?.path().join("children")) {
            Ok(text) => {
                read_any = true;
                pids.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
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

/// The value of `CCX_JOB_ID` in `pid`'s environment, read from `/proc/<pid>/environ`
/// (proc(5)). If the variable appears twice, the first value counts, as for getenv(3).
///
/// None if the variable is absent or empty, if its value is not UTF-8, if the process is gone
/// or its environment cannot be read (another user's or a non-dumpable process), or if it is
/// a zombie or exiting (the file is then empty). This is the environment the process was
/// started with (its initial `execve` block), not later `setenv` changes. The pid cannot be
/// reused under us only while it is our unreaped child.
pub fn job_marker(pid: i32) -> Option<String> {
    if pid <= 0 {
        return None;
    }
    marker_in(&fs::read(format!("/proc/{pid}/environ")).ok()?)
}

/// Kills every adopted child of this process whose environment says `CCX_JOB_ID=<job_id>`,
/// and returns how many processes it killed.
///
/// Each round lists [`children`], skips pids in `tracked`, matches the rest with
/// [`job_marker`], sends all the matches SIGKILL, and then reaps each one by pid with a
/// blocking `waitpid(pid, 0)`. The kernel moves a dying process's children to us before the
/// process can be reaped, so its descendants become our children during the round, and the
/// next round kills them. The sweep stops after a round that finds nothing, after one in which
/// no kill succeeded (for example `EPERM` on a process that changed its uids), or after
/// `rounds` rounds. It logs a warning if matches are left then. A chain of n nested
/// processes needs n rounds plus one to confirm that nothing is left.
///
/// An empty `job_id` matches nothing. Zombies carry no environment, so they are left to
/// [`reap_exited`]. Blocking: each `waitpid` waits until the killed process has exited, which
/// is normally immediate but lasts as long as an uninterruptible (`D` state) sleep. The caller
/// runs this off the async threads while holding the lock that guards `tracked`.
pub fn sweep(job_id: &str, tracked: &HashSet<i32>, rounds: usize) -> usize {
    if job_id.is_empty() {
        return 0;
    }
    let mut killed = 0;
    for round in 0..=rounds {
        let found = match children() {
            Ok(pids) => pids,
            Err(error) => {
                tracing::warn!(%error, job_id, "subreaper: cannot list children; sweep stops");
                break;
            }
        };
        let ours = |pid: &i32| !tracked.contains(pid) && job_marker(*pid).as_deref() == Some(job_id);
        let targets: Vec<i32> = found.into_iter().filter(ours).collect();
        if targets.is_empty() {
            break;
        }
        if round == rounds {
            tracing::warn!(job_id, left = targets.len(), rounds, "subreaper: sweep out of rounds");
            break;
        }
        // Kill them all before the first wait, so none keeps forking while we wait.
        let hit: Vec<i32> = targets.into_iter().filter(|&pid| kill(pid, job_id)).collect();
        for &pid in &hit {
            wait_blocking(pid);
        }
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
/// Never blocks for long. Call it on SIGCHLD while holding the lock that guards `tracked`.
/// Signals merge, so it reaps every zombie that is there at the time, not one per signal.
/// If `/proc` cannot be read, it logs a warning and returns 0.
pub fn reap_exited(tracked: &HashSet<i32>) -> usize {
    let pids = match children() {
        Ok(pids) => pids,
        Err(error) => {
            tracing::warn!(%error, "subreaper: cannot list children; nothing reaped");
            return 0;
        }
    };
    let exited = |pid: &i32| !tracked.contains(pid) && state(*pid) == Some(b'Z');
    let reaped = pids.into_iter().filter(exited).filter(|&pid| try_reap(pid)).count();
    if reaped > 0 {
        tracing::debug!(reaped, "subreaper: reaped adopted processes that exited");
    }
    reaped
}

/// The value of the first `CCX_JOB_ID=` entry of a NUL-separated environ block, if non-empty
/// UTF-8.
fn marker_in(environ: &[u8]) -> Option<String> {
    let value = environ.split(|&b| b == 0).find_map(|e| e.strip_prefix(MARKER))?;
    String::from_utf8(value.to_vec()).ok().filter(|v| !v.is_empty())
}

/// Field 3 (state) of `/proc/<pid>/stat`, e.g. `b'Z'`. None if the process is gone.
fn state(pid: i32) -> Option<u8> {
    stat_state(&fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `pid (comm) state ...`. `comm` may contain spaces and `)`, so the state follows the
/// last `)`.
fn stat_state(stat: &[u8]) -> Option<u8> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 1..)?.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Sends SIGKILL to `pid`, one of our unreaped children, so the pid cannot have been reused.
/// Returns true if the signal was sent.
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
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc == pid {
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
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) == pid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_marker() {
        let env = b"A=1\0CCX_JOB_ID=j-1\0XCCX_JOB_ID=no\0CCX_JOB_ID=j-2\0";
        assert_eq!(marker_in(env).as_deref(), Some("j-1"));
        assert_eq!(marker_in(b"CCX_JOB_ID=\0B=2\0"), None);
        assert_eq!(marker_in(b"XCCX_JOB_ID=j\0"), None);
        assert_eq!(marker_in(b""), None);
    }

    #[test]
    fn parses_the_state_after_the_last_paren() {
        assert_eq!(stat_state(b"42 (a) Z (b)) S 1 42"), Some(b'S'));
        assert_eq!(stat_state(b"7 (sleep) Z 1 7 7 0"), Some(b'Z'));
        assert_eq!(stat_state(b"7 (sleep"), None);
    }

    #[test]
    fn reads_no_marker_of_a_missing_process() {
        assert_eq!(job_marker(0), None);
        assert_eq!(job_marker(-1), None);
        assert!(children().is_ok());
    }
}
