//! Per-job resource limits as the wire carries them (`execute {limits}`, `[execution.limits]`),
//! which limit ended a job, and what a job used.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Resource limits of one job; an absent field is unlimited (or the server's default).
/// How each is enforced depends on the machine: `/health` says (`limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory of the whole job in MiB (cgroup `memory.max`), else of each process's address
    /// space (`RLIMIT_AS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Processes (and threads) of the whole job (cgroup `pids.max`), else of the user
    /// (`RLIMIT_NPROC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU seconds: per process (`RLIMIT_CPU`), and in cgroup mode the job's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Largest file a process may write, in MiB (`RLIMIT_FSIZE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_mb: Option<u64>,
}

impl Limits {
    /// Each field with its name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("memory_mb", self.memory_mb),
            ("pids", self.pids),
            ("cpu_seconds", self.cpu_seconds),
            ("open_files", self.open_files),
            ("file_size_mb", self.file_size_mb),
        ]
    }

    /// Each field taken from `self`, else from `other`.
    pub fn or(self, other: Limits) -> Limits {
        Limits {
            memory_mb: self.memory_mb.or(other.memory_mb),
            pids: self.pids.or(other.pids),
            cpu_seconds: self.cpu_seconds.or(other.cpu_seconds),
            open_files: self.open_files.or(other.open_files),
            file_size_mb: self.file_size_mb.or(other.file_size_mb),
        }
    }

    /// The first field of `self` above the same field of `max`: `(name, asked, max)`.
    pub fn above(&self, max: &Limits) -> Option<(&'static str, u64, u64)> {
        self.fields()
            .into_iter()
            .zip(max.fields())
            .find_map(|((name, v), (_, m))| match (v, m) {
                (Some(v), Some(m)) if v > m => Some((name, v, m)),
                _ => None,
            })
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_none())
    }
}

/// Which limit ended a job (`process.completed {limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// `memory_mb`: the kernel's OOM killer ended a process of the job.
    Memory,
    /// `pids`: the job tried to start more processes than allowed.
    Pids,
    /// `cpu_seconds`.
    Cpu,
    /// `file_size_mb`: a write past the limit (SIGXFSZ).
    FileSize,
}

/// What a job's processes used (`process.completed {usage}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// CPU seconds in user mode: the whole job in cgroup mode, else the command and the
    /// descendants it waited for (getrusage(2)).
    pub cpu_user_s: f64,
    /// CPU seconds in the kernel, counted the same way.
    pub cpu_sys_s: f64,
    /// The largest resident set of any one of those processes, in KiB (`ru_maxrss`).
    pub max_rss_kb: u64,
}
