//! Crash recovery: find and kill what a crashed server's jobs left behind.
//!
//! When the server dies by `kill -9`, its jobs (`sh -c <command>`, each the leader of its own
//! process group) keep running with nobody to stream, time out or stop them. The registry
//! records each job's [`ProcessIdentity`]; on the next start [`reap`] kills what is left.
//!
//! A pid alone proves nothing: after the crash it may have been reused by an unrelated process.
//! A process is therefore only killed if it started no earlier than the job's leader (stat
//! field 22, clock ticks since boot, in this same boot) and one of these holds:
//! 1. its environment holds `CCX_JOB_ID=<job id>`, which every job and its descendants inherit
//!    (this also finds descendants that left the group with `setsid`);
//! 2. it is the recorded leader itself: same pid and same start time;
//! 3. it is in the recorded process group while the recorded leader is still alive with the same
//!    start time: a pgid cannot be reused while its leader's pid is taken, so the group is ours.
//!
//! Everything is read from `/proc` (proc(5)); processes vanish mid-scan, so every read may fail
//! and a failed read means "not ours".

use std::collections::HashSet;
use std::fs;

/// The variable every job's environment carries: `CCX_JOB_ID=<job id>`.
const JOB_ID_VAR: &str = "CCX_JOB_ID";
/// Scans per [`reap`]: a parent that forked just before its SIGKILL leaves a child for the next.
const MAX_PASSES: usize = 5;
/// Processes already sent SIGKILL (uncatchable: once is enough), as (pid, start ticks).
type Seen = HashSet<(u32, u64)>;

/// Identity of a job's process as recorded when it started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    /// This boot's id: `/proc/sys/kernel/random/boot_id`, trimmed (a UUID, e.g.
    /// `4dcbfbf8-0ed5-4c89-bfb4-41645e31cc87`). Start times only compare within one boot.
    pub boot_id: String,
    /// The group leader's pid (the shell).
    pub pid: u32,
    /// The process group id: field 5 (`pgrp`) of `/proc/<pid>/stat`; equals `pid` for a job.
    pub pgid: i32,
    /// Field 22 (`starttime`) of `/proc/<pid>/stat`: clock ticks (`sysconf(_SC_CLK_TCK)`,
    /// usually 100 per second) since boot.
    pub start_ticks: u64,
}

/// The identity of `pid` as it is now (reads `/proc/<pid>/stat` and the boot id), or None if
/// it is gone or unreadable. A zombie still has one: its pid is not free yet.
pub fn identify(pid: u32) -> Option<ProcessIdentity> {
    let stat = read_stat(pid)?;
    Some(ProcessIdentity {
        boot_id: boot_id()?,
        pid,
        pgid: stat.pgid,
        start_ticks: stat.start_ticks,
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`, trimmed), or None where `/proc` is
/// unavailable.
pub fn boot_id() -> Option<String> {
    // It cannot change while this process lives: read it once.
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(id.trim().to_string()).filter(|id| !id.is_empty())
    })
    .clone()
}

/// What `reap` found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Pids sent SIGKILL, each once, in the order they were killed.
    pub killed: Vec<u32>,
    /// The identity is from another boot: nothing of the job can be left, nothing was scanned.
    pub skipped_other_boot: bool,
}

/// Kills (SIGKILL) what is left of job `job_id`, whose leader had identity `ident`.
///
/// Scans `/proc` up to 5 times, stopping after a pass that kills nothing; never signals our own
/// process, pid 1, or a zombie. Errors are not reported: a process that cannot be read or
/// signalled (gone, another user's) is skipped. Without `/proc` nothing is found or killed.
/// An empty `job_id` matches no environment (rules 2 and 3 still apply).
/// Does not wait for the killed processes to exit; their parent (or init) reaps them.
pub fn reap(job_id: &str, ident: &ProcessIdentity) -> Reaped {
    let mut reaped = Reaped::default();
    // Without /proc there is no boot id, and `pids` finds nothing to kill.
    if boot_id().is_some_and(|current| current != ident.boot_id) {
        reaped.skipped_other_boot = true;
        return reaped;
    }
    let job_env = (!job_id.is_empty()).then(|| format!("{JOB_ID_VAR}={job_id}").into_bytes());
    let mut done = HashSet::new();
    for _ in 0..MAX_PASSES {
        let killed = pass(job_env.as_deref(), ident, &mut done);
        if killed.is_empty() {
            break;
        }
        reaped.killed.extend(killed);
    }
    reaped
}

/// One scan of `/proc`: kills each matching process not yet in `done` and adds it there.
fn pass(job_env: Option<&[u8]>, ident: &ProcessIdentity, done: &mut Seen) -> Vec<u32> {
    // Decided once per pass, before this pass kills the leader. A zombie leader counts: it
    // still holds its pid, so the pgid cannot have been reused.
    let leader_alive = read_stat(ident.pid).is_some_and(|s| s.start_ticks == ident.start_ticks);
    let mut killed = Vec::new();
    let me = std::process::id();
    let others = pids().into_iter().filter(|&pid| pid > 1 && pid != me);
    for (pid, stat) in others.filter_map(|pid| Some((pid, read_stat(pid).filter(|s| !s.dead)?))) {
        if stat.start_ticks < ident.start_ticks || done.contains(&(pid, stat.start_ticks)) {
            continue;
        }
        let is_leader = pid == ident.pid && stat.start_ticks == ident.start_ticks;
        let in_group = leader_alive && ident.pgid > 1 && stat.pgid == ident.pgid;
        let has_job_env = || job_env.is_some_and(|env| environ_contains(pid, env));
        if (is_leader || in_group || has_job_env()) && kill(pid) {
            done.insert((pid, stat.start_ticks));
            killed.push(pid);
        }
    }
    killed
}

/// The fields of `/proc/<pid>/stat` we use (proc(5)).
struct Stat {
    /// Field 3 (state) is `Z` (zombie) or `X` (dead): exited, only waiting to be reaped.
    dead: bool,
    /// Field 5: the process group id.
    pgid: i32,
    /// Field 22: clock ticks after boot at which the process started.
    start_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `pid (comm) state ppid pgrp ...`. `comm` may hold spaces, `)` and bytes that are not
/// UTF-8, so the fields after it start after the last `)`.
fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&bytes[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        dead: matches!(field(3)?, "Z" | "X"),
        pgid: field(5)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
    })
}

/// Whether `/proc/<pid>/environ` (NUL-separated `NAME=value` entries) holds `entry` exactly.
/// Unreadable (another user's process, exited) means no.
fn environ_contains(pid: u32, entry: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry))
}

/// Every pid in `/proc` (processes, not threads); empty where `/proc` cannot be read.
fn pids() -> Vec<u32> {
    let entries = fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sends SIGKILL to `pid`; true if it was delivered.
fn kill(pid: u32) -> bool {
    // SAFETY: kill has no memory effects; pid is positive, so it names one process, never a group.
    i32::try_from(pid).is_ok_and(|pid| unsafe { libc::kill(pid, libc::SIGKILL) } == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// A spawned `sh -c` job: own group, unique `CCX_JOB_ID`. Drop kills the group and reaps
    /// the leader (safe: the unreaped leader holds the pgid, so it names no one else's group).
    struct Job {
        child: Child,
        id: String,
    }

    impl Job {
        /// Spawns `script` and waits until `sleeps` processes named `sleep` carry its job id.
        fn spawn(script: &str, sleeps: usize) -> Job {
            let id = format!("test-{}", uuid::Uuid::new_v4());
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).env(JOB_ID_VAR, &id);
            let child = cmd.process_group(0).spawn().expect("spawning sh");
            let job = Job { child, id };
            eventually("the sleeps run", || job.sleeps() == sleeps);
            job
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Live pids carrying the job's `CCX_JOB_ID`.
        fn pids(&self) -> Vec<u32> {
            let entry = format!("{JOB_ID_VAR}={}", self.id);
            live(|p, _| environ_contains(p, entry.as_bytes()))
        }

        fn sleeps(&self) -> usize {
            let comm = |p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let pids = self.pids();
            pids.iter().filter(|&&p| comm(p) == "sleep\n").count()
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects; a negative pid names our child's group.
            unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }

    /// Live (not zombie) pids matching `f`.
    fn live(f: impl Fn(u32, &Stat) -> bool) -> Vec<u32> {
        let matches = |&p: &u32| read_stat(p).is_some_and(|s| !s.dead && f(p, &s));
        pids().into_iter().filter(matches).collect()
    }

    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn identifies_this_process() {
        let me = identify(std::process::id()).expect("our own identity");
        assert!(me.pid == std::process::id() && me.pgid > 0, "{me:?}");
        let uptime = fs::read_to_string("/proc/uptime").unwrap();
        let uptime: f64 = uptime.split(' ').next().unwrap().parse().unwrap();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!(me.start_ticks as f64 <= (uptime + 1.0) * hz, "{me:?}");
        assert_eq!(boot_id(), Some(me.boot_id.clone()));
        assert_eq!(me.boot_id.len(), 36, "{me:?}");
    }

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let line = b"42 (a) b (c)) S 1 40 40 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.dead, stat.pgid, stat.start_ticks), (false, 40, 777));
    }

    #[test]
    fn kills_the_whole_group() {
        // The second sleep has no CCX_JOB_ID: only its group ties it to the job.
        let job = Job::spawn("sleep 300 & env -u CCX_JOB_ID sleep 300; wait", 1);
        let group = || live(|_, s| s.pgid == job.pid() as i32);
        eventually("both sleeps run", || group().len() == 3);
        let reaped = reap(&job.id, &identify(job.pid()).unwrap());
        assert_eq!(reaped.killed.len(), 3, "{reaped:?}");
        assert!(reaped.killed.contains(&job.pid()));
        eventually("the group is gone", || group().is_empty());
    }

    #[test]
    fn kills_a_descendant_that_left_the_group() {
        let job = Job::spawn("setsid sleep 300 & sleep 300", 2);
        let outside = |p: &u32| read_stat(*p).is_some_and(|s| s.pgid != job.pid() as i32);
        let escaped: Vec<u32> = job.pids().into_iter().filter(outside).collect();
        assert_eq!(escaped.len(), 1, "{escaped:?}");
        let reaped = reap(&job.id, &identify(job.pid()).unwrap());
        assert!(reaped.killed.contains(&escaped[0]), "{reaped:?}");
        eventually("everything of the job is gone", || job.pids().is_empty());
    }

    #[test]
    fn spares_another_job() {
        let job = Job::spawn("sleep 300", 1);
        let mut other = identify(std::process::id()).unwrap();
        (other.pid, other.pgid, other.start_ticks) = (4_000_000_000, i32::MAX, 0); // no such leader
        let reaped = reap(&format!("test-other-{}", uuid::Uuid::new_v4()), &other);
        assert_eq!(reaped, Reaped::default());
        assert_eq!(job.sleeps(), 1);
    }

    #[test]
    fn another_boot_kills_nothing() {
        let job = Job::spawn("sleep 300", 1);
        let mut ident = identify(job.pid()).unwrap();
        ident.boot_id = "not-this-boot".into();
        let reaped = reap(&job.id, &ident);
        assert_eq!((reaped.skipped_other_boot, reaped.killed.len()), (true, 0));
        assert_eq!(job.sleeps(), 1);
    }
}
