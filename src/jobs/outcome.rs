//! The parts of a job's outcome that come from its limits: which limit ended it, the error
//! that says so, and what it used.

use crate::protocol::{LimitKind, Limits, Usage};
use std::time::Duration;

/// How long until the next look at a job's total CPU time, when `left` remains of its
/// limit: the soonest the job could use it all on every CPU, at least 10 ms.
pub(super) fn next_cpu_check(left: Duration) -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (left / cpus).max(Duration::from_millis(10))
}

/// A per-process limit that ended the command, read from how it ended: killed by SIGXCPU or
/// SIGXFSZ (setrlimit(2)), or a shell's exit status `128 + n` for a child so killed. Only
/// for a limit that was set.
pub(super) fn limit_by_exit(
    limits: &Limits,
    exit_code: Option<i32>,
    signal: Option<i32>,
) -> Option<LimitKind> {
    let by = |sig: i32| signal == Some(sig) || exit_code == Some(128 + sig);
    if limits.cpu_seconds.is_some() && by(libc::SIGXCPU) {
        Some(LimitKind::Cpu)
    } else if limits.file_size_mb.is_some() && by(libc::SIGXFSZ) {
        Some(LimitKind::FileSize)
    } else {
        None
    }
}

/// The job's `error` when `limit` ended it.
pub(super) fn limit_error(limit: LimitKind, limits: &Limits) -> String {
    let n = |v: Option<u64>| v.unwrap_or(0);
    match limit {
        LimitKind::Memory => format!(
            "memory limit of {} MiB reached: the kernel's OOM killer ended a process",
            n(limits.memory_mb)
        ),
        LimitKind::Pids => format!(
            "process limit of {} reached: the job could not start more",
            n(limits.pids)
        ),
        LimitKind::Cpu => format!("CPU limit of {} s reached", n(limits.cpu_seconds)),
        LimitKind::FileSize => format!(
            "file size limit of {} MiB reached (SIGXFSZ)",
            n(limits.file_size_mb)
        ),
    }
}

/// A job's usage: CPU from its cgroup where it has one (every process it ever had), else from
/// the command's rusage (it and the descendants it waited for); the largest resident set
/// from the rusage (`ru_maxrss`, KiB on Linux: getrusage(2)).
pub(super) fn usage(
    rusage: Option<&libc::rusage>,
    cgroup_cpu: Option<(Duration, Duration)>,
) -> Usage {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let (user, sys) = match (cgroup_cpu, rusage) {
        (Some((u, s)), _) => (u.as_secs_f64(), s.as_secs_f64()),
        (None, Some(r)) => (secs(r.ru_utime), secs(r.ru_stime)),
        (None, None) => (0.0, 0.0),
    };
    let round = |x: f64| (x * 1e6).round() / 1e6;
    Usage {
        cpu_user_s: round(user),
        cpu_sys_s: round(sys),
        max_rss_kb: rusage.map_or(0, |r| r.ru_maxrss.max(0) as u64),
    }
}
