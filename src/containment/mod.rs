//! Containment: every process a job starts is held together and ended together, whatever it
//! does to leave (`setsid`, double forks, daemons).
//!
//! Two modes ([`Mode`]), chosen at start by `[execution] containment`:
//! - **cgroup** ([`cgroup`]): a cgroup v2 per job under `<parent>/ccx-<pid>`. The job's shell
//!   starts in it (`CLONE_INTO_CGROUP`), so every descendant is in it too; `cgroup.kill` ends
//!   them all, `cgroup.freeze` pauses them all. Needs a writable v2 hierarchy with
//!   `cgroup.kill` (Linux 5.14): under systemd, `Delegate=yes`.
//! - **process group** ([`subreaper`]): the job's shell leads a process group, which signals
//!   reach; the server is a child subreaper, so a descendant that left the group is re-parented
//!   to the server when its parent dies, and is found (by the `CCX_JOB_ID` every job's
//!   processes carry) and killed when its job ends. Its limit: a process that clears its
//!   environment and whose parent outlives the job is not found.
//!
//! [`JobScope`] is one job's handle; the executor calls it at spawn, pause, resume, timeout,
//! cancel and the job's end.

pub mod cgroup;
pub mod limits;
pub mod nofile;
pub mod subreaper;

use crate::config::{ContainmentConfig, ContainmentMode};
use crate::protocol::{LimitKind, Limits};
use cgroup::{CgroupRoot, JobCgroup};
use limits::{Enforcer, JobLimits, LimitsHealth};
use serde::Serialize;
use std::collections::HashSet;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How long a job's end waits for its cgroup to empty before leaving it behind.
const EMPTY_LIMIT: Duration = Duration::from_secs(5);
/// How many times the process-group sweep looks again for orphans its kills made.
const SWEEP_ROUNDS: usize = 8;

/// The mechanism in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Cgroup,
    ProcessGroup,
}

/// `/health`'s account of containment.
#[derive(Debug, Clone, Serialize)]
pub struct ContainmentHealth {
    pub mode: Mode,
    /// Why this mode: what was found, or what was missing.
    pub reason: String,
    /// The folder job cgroups are made in (cgroup mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Whether the server is a child subreaper (process-group mode).
    pub subreaper: bool,
    /// How each resource limit is enforced.
    pub limits: LimitsHealth,
}

/// The server's containment: its mode, and the job processes it awaits itself.
pub struct Containment {
    mode: Mode,
    reason: String,
    root: Option<CgroupRoot>,
    subreaper: bool,
    limits: Enforcer,
}

/// Job processes the executor awaits by pidfd, in this whole process (being a subreaper is a
/// property of the process, and so is reaping): the subreaper's reaping never touches them.
/// Held across each spawn, so a fresh child is in it before anything could reap it.
static TRACKED: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

fn tracked() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

impl Containment {
    /// Sets containment up for a server, as `cfg` asks. `auto` takes a cgroup where one can be
    /// made, else a process group. In process-group mode the server becomes a child
    /// subreaper and reaps adopted orphans as they exit (a task on the current runtime).
    ///
    /// Errors: `containment = "cgroup"` where no cgroup can be made (the reason says why);
    /// the subreaper's prctl failing.
    pub fn start(cfg: &ContainmentConfig) -> anyhow::Result<Arc<Containment>> {
        let cgroup = match cfg.mode {
            ContainmentMode::ProcessGroup => {
                Err("`[execution] containment = \"process-group\"`".to_string())
            }
            _ => CgroupRoot::open(cfg.cgroup_parent.as_deref()),
        };
        let c = match cgroup {
            Ok(root) => Containment {
                mode: Mode::Cgroup,
                reason: format!("a cgroup v2 per job under {}", root.path().display()),
                limits: Enforcer::start(Some(root.path())),
                root: Some(root),
                subreaper: false,
            },
            Err(why) if cfg.mode == ContainmentMode::Cgroup => {
                anyhow::bail!(
                    "`[execution] containment = \"cgroup\"`, but no cgroup can be made: {why}"
                )
            }
            Err(why) => {
                subreaper::become_subreaper()
                    .map_err(|e| anyhow::anyhow!("cannot become a child subreaper: {e}"))?;
                Containment {
                    mode: Mode::ProcessGroup,
                    reason: format!(
                        "a process group per job, the server as child subreaper (no cgroup: {why})"
                    ),
                    root: None,
                    subreaper: true,
                    limits: Enforcer::start(None),
                }
            }
        };
        info!(mode = ?c.mode, reason = %c.reason, "containment");
        let c = Arc::new(c);
        if c.subreaper {
            c.clone().spawn_reaper();
        }
        Ok(c)
    }

    /// A process group per job and nothing else (no subreaper): for an executor embedded in
    /// another program, and tests.
    pub fn plain() -> Arc<Containment> {
        Arc::new(Containment {
            mode: Mode::ProcessGroup,
            reason: "a process group per job (embedded: no subreaper)".into(),
            root: None,
            subreaper: false,
            limits: Enforcer::rlimits_only(),
        })
    }

    pub fn health(&self) -> ContainmentHealth {
        ContainmentHealth {
            mode: self.mode,
            reason: self.reason.clone(),
            cgroup: self.root.as_ref().map(|r| r.path().display().to_string()),
            subreaper: self.subreaper,
            limits: self.limits.health(),
        }
    }

    /// One job's scope: in cgroup mode its cgroup is made now, and its `limits` are set up
    /// ([`Enforcer::apply`]). Errors: making or writing a cgroup.
    pub fn prepare(self: &Arc<Self>, job_id: &str, limits: &Limits) -> io::Result<JobScope> {
        let cgroup = match &self.root {
            Some(root) => Some(root.create_job(job_id)?),
            None => None,
        };
        let limits = match limits.is_empty() {
            true => JobLimits::none(),
            false => self.limits.apply(job_id, limits, cgroup.as_ref())?,
        };
        Ok(JobScope {
            owner: self.clone(),
            job_id: job_id.to_string(),
            cgroup,
            limits,
            pgid: None,
            pid: None,
        })
    }

    /// On every SIGCHLD, reaps adopted orphans that have exited (never a tracked job
    /// process: the executor awaits those).
    fn spawn_reaper(self: Arc<Self>) {
        let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        else {
            warn!("cannot listen for SIGCHLD: adopted orphans are reaped only at their job's end");
            return;
        };
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                let _ = tokio::task::spawn_blocking(|| {
                    let mut tracked = tracked();
                    subreaper::reap_exited(tracked.get_or_insert_default())
                })
                .await;
            }
        });
    }
}

/// One job's processes, as the executor starts, signals and ends them.
pub struct JobScope {
    owner: Arc<Containment>,
    job_id: String,
    cgroup: Option<JobCgroup>,
    limits: JobLimits,
    pgid: Option<i32>,
    pid: Option<i32>,
}

impl JobScope {
    /// The job's cgroup, for `CLONE_INTO_CGROUP`.
    pub fn cgroup_fd(&self) -> Option<BorrowedFd<'_>> {
        self.cgroup.as_ref().map(|c| c.dir_fd())
    }

    /// The job's cgroup folder, if it has one (recorded for crash recovery).
    pub fn cgroup_path(&self) -> Option<&std::path::Path> {
        self.cgroup.as_ref().map(|c| c.path())
    }

    /// Runs `spawn` (which starts the job's leader where [`Place`] says) with the tracked set
    /// held, and records the leader. `spawn` returns the leader's pid with whatever it built.
    pub fn spawn<T>(
        &mut self,
        spawn: impl FnOnce(Place<'_>) -> io::Result<(u32, T)>,
    ) -> io::Result<T> {
        let mut tracked = tracked();
        let place = Place {
            cgroup: self.cgroup_fd(),
            join: self.limits.join_fds(),
            rlimits: &self.limits.rlimits,
        };
        let (pid, value) = spawn(place)?;
        tracked.get_or_insert_default().insert(pid as i32);
        self.pid = Some(pid as i32);
        self.pgid = Some(pid as i32);
        Ok(value)
    }

    /// The leader has been reaped: its pid is free again.
    pub fn leader_reaped(&mut self) {
        if let Some(pid) = self.pid.take() {
            tracked().get_or_insert_default().remove(&pid);
        }
    }

    /// SIGTERM to every process (then SIGCONT, so stopped ones can act on it; a frozen
    /// cgroup is thawed).
    pub fn terminate(&self) {
        match &self.cgroup {
            Some(cg) => {
                let _ = cg.freeze(false);
                let _ = cg.signal_all(libc::SIGTERM);
                let _ = cg.signal_all(libc::SIGCONT);
            }
            None => {
                if let Some(pgid) = self.pgid {
                    signal_group(pgid, libc::SIGTERM);
                    signal_group(pgid, libc::SIGCONT);
                }
            }
        }
    }

    /// SIGKILL to every process; returns how many there were (after the leader's exit:
    /// what it left running).
    pub fn kill_all(&self) -> usize {
        match &self.cgroup {
            // Nearly always empty once the leader has exited: one read of `cgroup.events`.
            Some(cg) if cg.is_known_empty() => 0,
            Some(cg) => {
                let n = cg.pids().map_or(0, |p| p.len());
                if let Err(e) = cg.kill() {
                    warn!(job = %self.job_id, error = %e, "cgroup.kill failed; killing the group");
                    if let Some(pgid) = self.pgid {
                        signal_group(pgid, libc::SIGKILL);
                    }
                }
                n
            }
            None => match self.pgid {
                // SAFETY: killpg with signal 0 only checks that the group exists.
                Some(pgid) if unsafe { libc::killpg(pgid, 0) } == 0 => {
                    // Counted only when there is something to count: a scan of /proc.
                    let n = group_members(pgid);
                    signal_group(pgid, libc::SIGKILL);
                    n.max(1)
                }
                _ => 0,
            },
        }
    }

    /// Pauses (true) or resumes (false) every process: `cgroup.freeze`, or SIGSTOP/SIGCONT
    /// to the group and to the job's adopted orphans.
    pub fn freeze(&self, frozen: bool) {
        if let Some(cg) = &self.cgroup
            && cg.freeze(frozen).is_ok()
        {
            return;
        }
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        if let Some(pgid) = self.pgid {
            signal_group(pgid, sig);
        }
        // Those that left the group, wherever they are: found by the job's marker (a scan of
        // /proc; pausing is rare).
        for pid in all_pids() {
            if subreaper::job_marker(pid).as_deref() == Some(self.job_id.as_str()) {
                // SAFETY: a signal to a process of this job.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// The job's total CPU time so far, where it is watched (cgroup mode; see
    /// [`Enforcer::watches_cpu_total`]) and a `cpu_seconds` limit is set: `(used, limit)`.
    pub fn cpu_total(&self) -> Option<(Duration, Duration)> {
        let limit = Duration::from_secs(self.limits.limits.cpu_seconds?);
        if !self.owner.limits.watches_cpu_total() {
            return None;
        }
        let (used, _, _) = self.cgroup.as_ref()?.cpu().ok()?;
        Some((used, limit))
    }

    /// The limits the job runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits.limits
    }

    /// After the leader's exit and [`JobScope::kill_all`]: ends whatever is left and says what
    /// that found (cgroup: waits until the cgroup is empty, reads its counters, removes it;
    /// process group: kills the job's adopted orphans, which had left the group).
    pub async fn finish(mut self) -> ScopeEnd {
        self.leader_reaped();
        let mut end = ScopeEnd::default();
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.empty(EMPTY_LIMIT).await {
                warn!(job = %self.job_id, error = %e, "the job's cgroup did not empty");
            }
            end.cpu = cg.cpu().ok().map(|(_, user, sys)| (user, sys));
            end.limit = self.limits.hit(Some(cg.path()));
            if let Err(e) = cg.remove(EMPTY_LIMIT).await {
                warn!(job = %self.job_id, error = %e, "the job's cgroup could not be removed");
            }
        } else if self.owner.subreaper {
            let job_id = self.job_id.clone();
            end.leftovers_killed = tokio::task::spawn_blocking(move || {
                let mut tracked = tracked();
                subreaper::sweep(&job_id, tracked.get_or_insert_default(), SWEEP_ROUNDS)
            })
            .await
            .unwrap_or(0);
        }
        end.limit = end.limit.or_else(|| self.limits.hit(None));
        self.limits.remove(EMPTY_LIMIT).await;
        end
    }
}

/// Where and how a job's leader starts (see [`spawn`](crate::jobs::spawn::Spawn)).
pub struct Place<'a> {
    /// The job's cgroup v2, for `CLONE_INTO_CGROUP`.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// `cgroup.procs` files of cgroup v1 groups to join (by writing "0").
    pub join: Vec<BorrowedFd<'a>>,
    /// `(resource, soft, hard)` for setrlimit(2).
    pub rlimits: &'a [(libc::c_int, libc::rlim_t, libc::rlim_t)],
}

/// What the end of a job's scope found.
#[derive(Debug, Default)]
pub struct ScopeEnd {
    /// Processes killed that had left the job's process group (process-group mode).
    pub leftovers_killed: usize,
    /// The whole job's CPU time `(user, system)`, where its cgroup counts it.
    pub cpu: Option<(Duration, Duration)>,
    /// A whole-job limit the kernel enforced (an OOM kill, a refused fork).
    pub limit: Option<LimitKind>,
}

impl Drop for JobScope {
    fn drop(&mut self) {
        self.leader_reaped();
        if let Some(cg) = &self.cgroup {
            // Only reached when `finish` did not run (a spawn that failed, a panic).
            let _ = cg.kill();
        }
    }
}

/// Every process's pid, from /proc.
fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// How many processes are in process group `pgid` (stat field 5, proc(5)).
fn group_members(pgid: i32) -> usize {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok())
                    == Some(pgid)
            })
        })
        .count()
}

/// Sends `sig` to every process in the group (ESRCH, a group gone, is ignored).
pub fn signal_group(pgid: i32, sig: libc::c_int) {
    // SAFETY: killpg has no memory effects.
    unsafe { libc::killpg(pgid, sig) };
}
