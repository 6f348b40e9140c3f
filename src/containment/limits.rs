//! Enforcing a job's resource limits ([`Limits`]), with the best mechanism the machine has.
//!
//! - `memory_mb` and `pids` limit the whole job where a controller exists: in cgroup v2 the
//!   job's own cgroup (`memory.max`, `pids.max`, when the controllers are enabled where job
//!   cgroups are made), else a cgroup v1 hierarchy of that controller (`memory.limit_in_bytes`,
//!   `pids.max`), in which ccx makes one group per job that the job's first process joins
//!   before `execve` (it writes "0" to the group's `cgroup.procs`, which moves the writer:
//!   Documentation/admin-guide/cgroup-v1/cgroups.rst). Without either, each process gets
//!   `RLIMIT_AS` (its address space: runtimes that reserve large virtual ranges, such as node
//!   or Go, need more than they use) or `RLIMIT_NPROC` (processes of the user, all of them,
//!   and it does not bind root).
//! - `cpu_seconds` is `RLIMIT_CPU` for every process (SIGXCPU at the limit, SIGKILL a second
//!   later: setrlimit(2)); in cgroup v2 mode the job's total CPU time is watched too
//!   (`cpu.stat`, which needs no controller), and the job is killed when it passes the limit.
//! - `open_files` is `RLIMIT_NOFILE`, `file_size_mb` is `RLIMIT_FSIZE` (SIGXFSZ on a write past
//!   it), per process.
//!
//! Which limit ended a job comes from the kernel's counters (`oom_kill` in
//! `memory.events`/`memory.oom_control`, `max` in `pids.events`), from ccx's own CPU watch, or
//! from the signal that ended the command (SIGXCPU, SIGXFSZ; or a shell's `128 + n`).

use super::cgroup::{self, JobCgroup};
use crate::protocol::{LimitKind, Limits};
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// How one limit is enforced on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    CgroupV2,
    CgroupV1,
    Rlimit,
}

/// `/health`'s account of the limits: for each, how it is enforced here.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsHealth {
    pub memory_mb: String,
    pub pids: String,
    pub cpu_seconds: String,
    pub open_files: String,
    pub file_size_mb: String,
}

/// The server's means of enforcing limits, found at start.
pub struct Enforcer {
    memory: Via,
    pids: Via,
    /// The job's total CPU time from its cgroup v2 `cpu.stat` (cgroup mode).
    cpu_total: bool,
    v1_memory: Option<V1Root>,
    v1_pids: Option<V1Root>,
}

impl Enforcer {
    /// Looks for controllers: the v2 ones where job cgroups are made (`base`, cgroup mode),
    /// else v1 hierarchies of `memory` and `pids` in which this process may make groups. Never
    /// fails: what is missing falls back to resource limits per process.
    pub fn start(base: Option<&Path>) -> Enforcer {
        let v2 = base.map(enable_v2_controllers).unwrap_or_default();
        let has = |c: &str| v2.iter().any(|x| x == c);
        let v1 = |c: &'static str| match has(c) {
            true => None,
            false => V1Root::open(c)
                .inspect_err(|why| tracing::info!(controller = c, %why, "no cgroup v1 controller"))
                .ok(),
        };
        let (v1_memory, v1_pids) = (v1("memory"), v1("pids"));
        let via = |v2: bool, v1: &Option<V1Root>| match (v2, v1) {
            (true, _) => Via::CgroupV2,
            (false, Some(_)) => Via::CgroupV1,
            _ => Via::Rlimit,
        };
        Enforcer {
            memory: via(has("memory"), &v1_memory),
            pids: via(has("pids"), &v1_pids),
            cpu_total: base.is_some(),
            v1_memory,
            v1_pids,
        }
    }

    /// Resource limits per process only (an embedded executor, tests).
    pub fn rlimits_only() -> Enforcer {
        Enforcer {
            memory: Via::Rlimit,
            pids: Via::Rlimit,
            cpu_total: false,
            v1_memory: None,
            v1_pids: None,
        }
    }

    pub fn health(&self) -> LimitsHealth {
        let controller = |via, v2: &str, v1: &str, rlimit: &str| match via {
            Via::CgroupV2 => format!("the whole job: cgroup v2 {v2}"),
            Via::CgroupV1 => format!("the whole job: cgroup v1 {v1}"),
            Via::Rlimit => format!("each process: {rlimit}"),
        };
        LimitsHealth {
            memory_mb: controller(
                self.memory,
                "memory.max",
                "memory.limit_in_bytes",
                "RLIMIT_AS (address space; no memory controller)",
            ),
            pids: controller(
                self.pids,
                "pids.max",
                "pids.max",
                "RLIMIT_NPROC (per user, not binding root; no pids controller)",
            ),
            cpu_seconds: match self.cpu_total {
                true => "each process: RLIMIT_CPU; the whole job: cgroup v2 cpu.stat".into(),
                false => "each process: RLIMIT_CPU".into(),
            },
            open_files: "each process: RLIMIT_NOFILE".into(),
            file_size_mb: "each process: RLIMIT_FSIZE".into(),
        }
    }

    /// Sets `limits` up for one job: writes the controllers' limits (to the job's v2
    /// cgroup, or to v1 groups made now) and computes the per-process resource limits.
    /// Errors: making or writing a cgroup.
    pub fn apply(
        &self,
        job_id: &str,
        limits: &Limits,
        v2: Option<&JobCgroup>,
    ) -> io::Result<JobLimits> {
        let mut job = JobLimits {
            limits: *limits,
            rlimits: Vec::new(),
            v1: Vec::new(),
            v2_memory: false,
            v2_pids: false,
        };
        let rl = |r, n: u64| (r as libc::c_int, n as libc::rlim_t, n as libc::rlim_t);
        if let Some(mb) = limits.memory_mb {
            let bytes = mb.saturating_mul(MIB);
            match (self.memory, v2, &self.v1_memory) {
                (Via::CgroupV2, Some(cg), _) => {
                    let dir = cg.path();
                    cgroup::write_file(&dir.join("memory.max"), &bytes.to_string())?;
                    // No swap beyond the limit, and one OOM kill ends the whole job.
                    let _ = cgroup::write_file(&dir.join("memory.swap.max"), "0");
                    let _ = cgroup::write_file(&dir.join("memory.oom.group"), "1");
                    job.v2_memory = true;
                }
                (Via::CgroupV1, _, Some(root)) => {
                    let g = root.create_job(job_id)?;
                    g.write("memory.limit_in_bytes", &bytes.to_string())?;
                    // Memory plus swap, where swap accounting exists.
                    let _ = g.write("memory.memsw.limit_in_bytes", &bytes.to_string());
                    job.v1.push(g);
                }
                _ => job.rlimits.push(rl(libc::RLIMIT_AS, bytes)),
            }
        }
        if let Some(n) = limits.pids {
            match (self.pids, v2, &self.v1_pids) {
                (Via::CgroupV2, Some(cg), _) => {
                    cgroup::write_file(&cg.path().join("pids.max"), &n.to_string())?;
                    job.v2_pids = true;
                }
                (Via::CgroupV1, _, Some(root)) => {
                    let g = root.create_job(job_id)?;
                    g.write("pids.max", &n.to_string())?;
                    job.v1.push(g);
                }
                _ => job.rlimits.push(rl(libc::RLIMIT_NPROC, n)),
            }
        }
        if let Some(s) = limits.cpu_seconds {
            // SIGXCPU at the soft limit, SIGKILL at the hard one for a process that ignores it.
            let (soft, hard) = (s as libc::rlim_t, s.saturating_add(1) as libc::rlim_t);
            job.rlimits
                .push((libc::RLIMIT_CPU as libc::c_int, soft, hard));
        }
        if let Some(n) = limits.open_files {
            job.rlimits.push(rl(libc::RLIMIT_NOFILE, n));
        } else if let Some((soft, hard)) = super::nofile::for_jobs() {
            // The soft limit the server started with, not the one it raised for itself.
            job.rlimits
                .push((libc::RLIMIT_NOFILE as libc::c_int, soft, hard));
        }
        if let Some(mb) = limits.file_size_mb {
            job.rlimits
                .push(rl(libc::RLIMIT_FSIZE, mb.saturating_mul(MIB)));
        }
        Ok(job)
    }

    /// Whether the job's total CPU time is watched (cgroup v2 `cpu.stat`).
    pub fn watches_cpu_total(&self) -> bool {
        self.cpu_total
    }
}

/// One job's limits as set up: what the child applies and where the counters are read.
pub struct JobLimits {
    pub limits: Limits,
    /// `(resource, soft, hard)` for setrlimit(2) in the child.
    pub rlimits: Vec<(libc::c_int, libc::rlim_t, libc::rlim_t)>,
    v1: Vec<V1Group>,
    v2_memory: bool,
    v2_pids: bool,
}

impl JobLimits {
    /// No limits (but the open-file limit the server started with, if it raised its own).
    pub fn none() -> JobLimits {
        JobLimits {
            limits: Limits::default(),
            rlimits: super::nofile::for_jobs()
                .map(|(soft, hard)| (libc::RLIMIT_NOFILE as libc::c_int, soft, hard))
                .into_iter()
                .collect(),
            v1: Vec::new(),
            v2_memory: false,
            v2_pids: false,
        }
    }

    /// `cgroup.procs` of each v1 group the child joins (it writes "0" to each).
    pub fn join_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.v1.iter().map(|g| g.procs.as_fd()).collect()
    }

    /// Which whole-job limit the kernel enforced, once the job's processes are gone: an OOM
    /// kill in its memory cgroup, or a fork refused by its pids cgroup. `v2` is the job's v2
    /// cgroup, if it has one.
    pub fn hit(&self, v2: Option<&Path>) -> Option<LimitKind> {
        let v2_count = |file: &str, key: &str| v2.and_then(|d| counter(&d.join(file), key));
        let v1_count = |file: &str, key: &str| {
            self.v1
                .iter()
                .find_map(|g| counter(&g.path.join(file), key))
        };
        let memory = match self.v2_memory {
            true => v2_count("memory.events", "oom_kill"),
            false => v1_count("memory.oom_control", "oom_kill"),
        };
        let pids = match self.v2_pids {
            true => v2_count("pids.events", "max"),
            false => v1_count("pids.events", "max"),
        };
        if memory.is_some_and(|n| n > 0) {
            Some(LimitKind::Memory)
        } else if pids.is_some_and(|n| n > 0) {
            Some(LimitKind::Pids)
        } else {
            None
        }
    }

    /// Removes the job's v1 groups: first SIGKILLs whatever is still in them (they hold
    /// every descendant of the job), waits up to `limit` for them to empty. Errors are
    /// logged.
    pub async fn remove(&mut self, limit: Duration) {
        for g in self.v1.drain(..) {
            let start = std::time::Instant::now();
            loop {
                let pids = g.pids();
                if pids.is_empty() {
                    break;
                }
                if start.elapsed() > limit {
                    tracing::warn!(path = %g.path.display(), "a cgroup v1 group still has processes");
                    break;
                }
                for pid in pids {
                    // SAFETY: kill(2) of a process in the job's own group.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Err(e) = fs::remove_dir(&g.path) {
                tracing::warn!(path = %g.path.display(), error = %e, "cannot remove a cgroup v1 group");
            }
        }
    }
}

impl Drop for JobLimits {
    fn drop(&mut self) {
        // Reached without `remove` only when the spawn failed: nothing ever joined.
        for g in &self.v1 {
            let _ = fs::remove_dir(&g.path);
        }
    }
}

/// `key N` in a flat-keyed cgroup file.
fn counter(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key))
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Enables `memory` and `pids` for the job cgroups below `base` (`+memory +pids` in its
/// `cgroup.subtree_control`), each where the parent offers it; returns those enabled.
fn enable_v2_controllers(base: &Path) -> Vec<String> {
    let offered = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    offered
        .split_whitespace()
        .filter(|c| matches!(*c, "memory" | "pids"))
        .filter(|c| {
            cgroup::write_file(&base.join("cgroup.subtree_control"), &format!("+{c}")).is_ok()
        })
        .map(str::to_string)
        .collect()
}

/// A server's base group in a cgroup v1 hierarchy of one controller:
/// `<mount><own group>/ccx-<pid>-<n>`. Dropping it removes what is left below it.
struct V1Root {
    base: PathBuf,
}

/// One job's group in a v1 hierarchy, with its `cgroup.procs` open for the child.
struct V1Group {
    path: PathBuf,
    procs: OwnedFd,
}

impl V1Root {
    /// Finds the v1 hierarchy of `controller` (/proc/self/mountinfo: fstype `cgroup` with the
    /// controller among its options), this process's group in it (/proc/self/cgroup), and
    /// makes the base there; stale bases of dead servers are removed first. Errors: a reason.
    fn open(controller: &str) -> Result<V1Root, String> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let (mount, mount_root) = info
            .lines()
            .find_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let mut r = right.split(' ');
                let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
                if fstype != "cgroup" || !options.split(',').any(|o| o == controller) {
                    return None;
                }
                let mut f = left.split(' ').skip(3);
                let root = cgroup::unescape(f.next()?);
                Some((PathBuf::from(cgroup::unescape(f.next()?)), root))
            })
            .ok_or_else(|| format!("no cgroup v1 hierarchy with {controller}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| e.to_string())?
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, list, path) = (f.next()?, f.next()?, f.next()?);
                list.split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_string())
            })
            .ok_or_else(|| format!("this process has no {controller} group"))?;
        let rel = own
            .strip_prefix(mount_root.trim_end_matches('/'))
            .ok_or_else(|| format!("own {controller} group {own} is not under {mount_root}"))?;
        let parent = mount.join(rel.trim_start_matches('/'));
        remove_stale_v1(&parent);
        static ROOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = ROOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = parent.join(format!("ccx-{}-{n}", std::process::id()));
        fs::create_dir(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        Ok(V1Root { base })
    }

    fn create_job(&self, job_id: &str) -> io::Result<V1Group> {
        let path = self.base.join(job_id);
        fs::create_dir(&path)?;
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path.join("cgroup.procs"))
            .inspect_err(|_| {
                let _ = fs::remove_dir(&path);
            })?;
        Ok(V1Group {
            path,
            procs: procs.into(),
        })
    }
}

impl Drop for V1Root {
    fn drop(&mut self) {
        remove_v1_tree(&self.base);
    }
}

impl V1Group {
    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        cgroup::write_file(&self.path.join(file), value)
    }

    fn pids(&self) -> Vec<i32> {
        group_pids(&self.path)
    }
}

fn group_pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p > 0)
        .collect()
}

/// Kills what is in the groups below `base` (v1 has no `cgroup.kill`), waits up to 5 s, and
/// removes them and `base`.
fn remove_v1_tree(base: &Path) {
    let groups: Vec<PathBuf> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    for g in groups.iter().map(PathBuf::as_path).chain([base]) {
        let start = std::time::Instant::now();
        loop {
            let pids = group_pids(g);
            if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) of a process in a group ccx made for a job.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = fs::remove_dir(g) {
            tracing::warn!(path = %g.display(), error = %e, "cannot remove a cgroup v1 group");
        }
    }
}

/// Removes `ccx-<pid>-<n>` bases in `parent` whose server is no longer alive.
fn remove_stale_v1(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| {
            let rest = n.strip_prefix("ccx-")?;
            rest.split('-').next()?.parse::<i32>().ok()
        });
        // SAFETY: signal 0 only checks whether the pid exists.
        if let Some(pid) = pid
            && pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            remove_v1_tree(&entry.path());
        }
    }
}
