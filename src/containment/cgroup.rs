//! Per-job containment in cgroup v2: one cgroup per job below
//! `<v2 mount><parent>/ccx-<server pid>`.
//!
//! Behaviour comes from the kernel's Documentation/admin-guide/cgroup-v2.rst: `cgroup.kill`
//! (Linux 5.14) SIGKILLs every process of a subtree, `cgroup.freeze` (5.2) freezes one,
//! `cgroup.events` reports `populated` and `frozen`, `cgroup.procs` lists the processes, and
//! rmdir(2) fails with EBUSY while a cgroup has processes or child cgroups. The hierarchy is
//! found in /proc/self/mountinfo (fstype `cgroup2`), never assumed. This module never moves a
//! job's processes: the server starts children straight inside a job with clone3(2)'s
//! `CLONE_INTO_CGROUP` (5.7), passing [`JobCgroup::dir_fd`]. It moves only the server itself,
//! once, into a leaf of its own cgroup when that is what it takes to pass the `memory` and
//! `pids` controllers down to job cgroups ([`CgroupRoot::open`]).
//!
//! Observed on Linux 6.18 (tests of this module): a killed process leaves `cgroup.procs`, and
//! `populated` drops to 0, as soon as it has exited, while still an unreaped zombie, so rmdir
//! succeeds before its parent waits; `cgroup.kill` empties a frozen cgroup without a thaw;
//! frozen processes show state `S` in /proc/<pid>/stat; a child cloned into a frozen cgroup
//! starts frozen; clone3 takes an `O_PATH` (or `O_RDONLY`) directory fd, and refuses a file's
//! fd with EBADF. Once a cgroup (or an ancestor) has been `cgroup.kill`ed, every child cloned
//! into it is SIGKILLed at birth (kernel/cgroup/cgroup.c compares the destination's `kill_seq`
//! with the spawner's cgroup's), so a killed job cgroup must never be spawned into again (one
//! created after the kill is unaffected).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Name prefix of a server's base cgroup; the rest is the server's pid.
const BASE_PREFIX: &str = "ccx-";
/// How long open() (stale bases) and Drop wait for killed processes to exit.
const CLEANUP_LIMIT: Duration = Duration::from_secs(5);
/// First and longest interval between two reads of `cgroup.events` while waiting.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);
/// statfs(2) `f_type` of cgroup2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 subtree under which this server makes one cgroup per job: the base directory
/// `<v2 mount><parent>/ccx-<server pid>-<n>` (`n` counts the roots this process opened).
/// Dropping it kills and removes every job
/// cgroup left below the base, then the base.
pub struct CgroupRoot {
    base: PathBuf,
}

impl CgroupRoot {
    /// Finds the cgroup2 hierarchy in /proc/self/mountinfo and creates `ccx-<pid>-<n>` below
    /// `parent`, a path inside the hierarchy such as "/ccx.slice" that must already exist;
    /// `None` means this process's own cgroup (`0::` in /proc/self/cgroup; under systemd this
    /// needs `Delegate=yes`). First removes stale `ccx-<pid>…` siblings whose pid is not alive:
    /// `cgroup.kill`,
    /// wait up to 5 s until empty, rmdir with their children. A sibling whose pid was reused by
    /// another live process is left alone. Checks that the base has `cgroup.kill` (Linux >=
    /// 5.14) and `cgroup.freeze` (>= 5.2). Passes `memory` and `pids` down from `parent` where
    /// it offers them, moving the server into `ccx-<pid>-server` below its own cgroup when
    /// that is needed (see `delegate_controllers`); a failure there is only logged.
    ///
    /// Errors: a human-readable reason naming what is missing (no cgroup2 mount, parent not
    /// found or not writable, no `cgroup.kill`, ...).
    pub fn open(parent: Option<&str>) -> Result<CgroupRoot, String> {
        let (mount, mount_root) = find_v2_mount()?;
        let inside = match parent {
            Some(p) => p.to_string(),
            // /proc/self/cgroup is relative to the hierarchy's root, the mount to its own root.
            None => match own_cgroup()? {
                own if mount_root == "/" => own,
                own => own
                    .strip_prefix(&mount_root)
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    .map(|rest| format!("/{}", rest.trim_start_matches('/')))
                    .ok_or_else(|| format!("own cgroup {own} is not under {mount_root}"))?,
            },
        };
        let rel = Path::new(&inside);
        let normal = |c: Component| matches!(c, Component::RootDir | Component::Normal(_));
        if !inside.starts_with('/') || !rel.components().all(normal) {
            let msg = format!("cgroup parent {inside:?} must be absolute, no . or ..");
            return Err(msg);
        }
        let parent_dir = mount.join(rel.strip_prefix("/").unwrap_or(rel));
        if !parent_dir.is_dir() {
            let p = parent_dir.display();
            let msg = format!("cgroup parent {p} does not exist (cgroup2 hierarchy)");
            return Err(msg);
        }
        remove_stale(&parent_dir);
        let leaf = format!("{BASE_PREFIX}{}-server", std::process::id());
        let own = parent.is_none().then_some(leaf.as_str());
        if let Err(why) = delegate_controllers(&parent_dir, own, std::process::id()) {
            tracing::warn!(cgroup = %parent_dir.display(), "{why}");
        }
        // The counter: several roots in one process (tests, an embedding program) each have
        // their own base.
        static ROOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = ROOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = parent_dir.join(format!("{BASE_PREFIX}{}-{n}", std::process::id()));
        fs::create_dir(&base).map_err(|e| {
            let (b, p) = (base.display(), parent_dir.display());
            format!("cannot create cgroup {b}: {e} (is {p} writable, delegated to this user?)")
        })?;
        for (file, kernel) in [("cgroup.kill", "5.14"), ("cgroup.freeze", "5.2")] {
            if !base.join(file).exists() {
                let _ = fs::remove_dir(&base);
                let m = mount.display();
                return Err(format!("cgroup2 at {m} has no {file} (Linux >= {kernel})"));
            }
        }
        Ok(CgroupRoot { base })
    }

    /// The base directory, e.g. "/sys/fs/cgroup/unified/ccx-1234" (for /health).
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Makes the job's cgroup `<base>/<name>` and opens it. `name` is a job id: 1 to 64 of
    /// `[0-9a-f-]`. Errors: `InvalidInput` for another name, `AlreadyExists`, or mkdir's error.
    pub fn create_job(&self, name: &str) -> io::Result<JobCgroup> {
        let allowed = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-');
        if name.is_empty() || name.len() > 64 || !name.bytes().all(allowed) {
            let msg = format!("job cgroup name {name:?} is not [0-9a-f-]{{1,64}}");
            return Err(invalid(msg));
        }
        let path = self.base.join(name);
        fs::create_dir(&path)?;
        JobCgroup::open(&path).inspect_err(|_| {
            let _ = fs::remove_dir(&path);
        })
    }
}

impl Drop for CgroupRoot {
    /// Best effort: `cgroup.kill` on the base (every job below it), waits up to 5 s for the
    /// processes to exit, removes the job cgroups and the base. Failures are logged.
    fn drop(&mut self) {
        if let Err(e) = kill_and_remove(&self.base, CLEANUP_LIMIT) {
            let path = self.base.display();
            tracing::warn!(%path, error = %e, "cannot remove the server's cgroup");
        }
    }
}

/// One job's cgroup: its path and a directory fd for clone3. Dropping it only closes the fd;
/// the cgroup stays until [`JobCgroup::remove`] (or the [`CgroupRoot`]'s Drop).
pub struct JobCgroup {
    path: PathBuf,
    fd: OwnedFd,
}

impl JobCgroup {
    /// Opens the cgroup directory [`CgroupRoot::create_job`] has just made.
    /// Errors: open(2)'s (`NotFound`, ...), `InvalidInput` if not on cgroup2.
    fn open(path: &Path) -> io::Result<JobCgroup> {
        // O_PATH is enough: clone3 finds the cgroup from the fd's dentry (std adds O_CLOEXEC).
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = OwnedFd::from(
            OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(path)?,
        );
        // SAFETY: statfs is plain old data; fstatfs fills it from a valid fd.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
            let p = path.display();
            return Err(invalid(format!("{p} is not a cgroup2 directory")));
        }
        let path = path.to_path_buf();
        Ok(JobCgroup { path, fd })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory fd (`O_PATH | O_DIRECTORY | O_CLOEXEC`) for clone3's `CLONE_INTO_CGROUP`
    /// (`clone_args.cgroup`).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Pids of the processes in it and in its child cgroups now (`cgroup.procs`; zombies are
    /// not listed). Pids outside this pid namespace (shown as 0) are skipped. Errors: reading.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        collect_pids(&self.path, &mut out)?;
        Ok(out)
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to every process of [`pids`](Self::pids), ignoring
    /// ESRCH (already gone); returns how many were signalled. A pid could be reused between
    /// the read and kill(2): freeze first for a race-free delivery (frozen processes cannot
    /// exit by themselves; the signal acts on thaw). Errors: reading, kill(2)'s other errors.
    pub fn signal_all(&self, sig: i32) -> io::Result<usize> {
        let mut sent = 0;
        for pid in self.pids()? {
            // SAFETY: kill(2) with a positive pid signals that process only.
            if unsafe { libc::kill(pid, sig) } == 0 {
                sent += 1;
            } else if io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(sent)
    }

    /// SIGKILLs every process in it and in its child cgroups (writes "1" to `cgroup.kill`),
    /// frozen or not. Does not wait for them to exit. Afterwards the kernel also kills every
    /// child cloned into it, so spawn nothing more here. Errors: the write's.
    pub fn kill(&self) -> io::Result<()> {
        write_file(&self.path.join("cgroup.kill"), "1")
    }

    /// Freezes (`true`) or thaws (`false`) every process in it and below (`cgroup.freeze`);
    /// does not wait for it to take effect (`frozen 1` in `cgroup.events`). Errors: the write's.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        let value = if frozen { "1" } else { "0" };
        write_file(&self.path.join("cgroup.freeze"), value)
    }

    /// Whether any process is left in it or below (`populated 1` in `cgroup.events`); false if
    /// unreadable (e.g. already removed).
    pub fn is_populated(&self) -> bool {
        event(&self.path, "populated")
    }

    /// Whether it is known to be empty: `populated 0` in `cgroup.events`. False when that
    /// cannot be read (out of descriptors, say), so a caller goes on to kill what may be left.
    pub fn is_known_empty(&self) -> bool {
        event_is(&self.path, "populated", "0") == Some(true)
    }

    /// Kills what is left, waits until the cgroup is empty (reads `cgroup.events` every 1 ms at
    /// first, backing off to 20 ms, for at most `limit`), then removes it and its child cgroups.
    /// Sleeps with tokio::time (needs a runtime with time enabled); the file operations take
    /// microseconds. Errors: `TimedOut` if still populated after `limit` (the directory stays),
    /// or a read, write or rmdir's error.
    pub async fn remove(self, limit: Duration) -> io::Result<()> {
        self.empty(limit).await?;
        remove_tree(&self.path)
    }

    /// Kills what is left and waits until the cgroup is empty, as [`remove`](Self::remove)
    /// does, without removing it (its counters, such as `cpu.stat`, are then final). An empty
    /// cgroup, the usual case at a job's end, costs one read of `cgroup.events`.
    pub async fn empty(&self, limit: Duration) -> io::Result<()> {
        if self.is_known_empty() {
            return Ok(());
        }
        self.kill()?;
        let mut wait = (Instant::now(), POLL_FIRST);
        while event(&self.path, "populated") {
            tokio::time::sleep(next_delay(&self.path, limit, &mut wait)?).await;
        }
        Ok(())
    }

    /// CPU time its processes have used, living and exited (`usage_usec`, `user_usec` and
    /// `system_usec` of `cpu.stat`, which cgroup v2 keeps without any controller):
    /// `(total, user, system)`. Errors: reading.
    pub fn cpu(&self) -> io::Result<(Duration, Duration, Duration)> {
        let text = fs::read_to_string(self.path.join("cpu.stat"))?;
        let get = |key: &str| {
            let usec = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0u64);
            Duration::from_micros(usec)
        };
        Ok((get("usage_usec"), get("user_usec"), get("system_usec")))
    }
}

/// The cgroup2 mount point and the root of the hierarchy it shows, from /proc/self/mountinfo
/// (proc(5): fields 4 and 5; the filesystem type follows the " - " separator).
fn find_v2_mount() -> Result<(PathBuf, String), String> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut found = info.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ').skip(3);
        let root = unescape(fields.next()?);
        Some((PathBuf::from(unescape(fields.next()?)), root))
    });
    let first = found
        .next()
        .ok_or("no cgroup2 filesystem in /proc/self/mountinfo")?;
    // Prefer a mount of the whole hierarchy over a bind mount of a part of it.
    Ok(match first.1.as_str() {
        "/" => first,
        _ => found.find(|m| m.1 == "/").unwrap_or(first),
    })
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (proc(5)).
pub(super) fn unescape(s: &str) -> String {
    let pairs = [
        ("\\040", " "),
        ("\\011", "\t"),
        ("\\012", "\n"),
        ("\\134", "\\"),
    ];
    pairs
        .iter()
        .fold(s.to_string(), |acc, (from, to)| acc.replace(from, to))
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let line = text.lines().find_map(|l| l.strip_prefix("0::"));
    let path = line.ok_or("this process has no cgroup v2 path (no 0:: in /proc/self/cgroup)")?;
    Ok(path.trim_end_matches(" (deleted)").to_string())
}

/// Kills and removes the `ccx-<pid>[-<n>]` entries of `parent` whose pid is dead.
fn remove_stale(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| {
            let rest = n.strip_prefix(BASE_PREFIX)?;
            rest.split('-').next()?.parse::<i32>().ok()
        });
        let Some(pid) = pid else { continue };
        // SAFETY: signal 0 only checks whether the pid exists; pid > 0 names one process.
        let dead = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            let path = entry.path();
            match kill_and_remove(&path, CLEANUP_LIMIT) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale cgroup"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "stale cgroup left"),
            }
        }
    }
}

/// The controllers a job's limits use in cgroup v2 (`memory.max`, `pids.max`).
const LIMIT_CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Passes `memory` and `pids` down from `parent` (`+memory +pids` in its
/// `cgroup.subtree_control`), where `parent/cgroup.controllers` offers them, so that the bases
/// made below it can enable them for job cgroups. cgroup v2 refuses that (EBUSY) while
/// processes live in `parent` itself ("no internal process" rule, cgroup-v2.rst): when
/// `parent` is the server's own cgroup (`own_leaf` is `Some(name)`: under systemd,
/// `Delegate=yes` hands the service's cgroup over with the server inside it), the server first
/// moves itself (`pid`, all its threads) into a leaf `parent/<name>` of its own, as systemd's
/// delegation notes advise. Errors: why the controllers stay off (jobs then fall back to
/// cgroup v1 or rlimits, as `/health` shows).
fn delegate_controllers(parent: &Path, own_leaf: Option<&str>, pid: u32) -> Result<(), String> {
    let listed = |file: &str| fs::read_to_string(parent.join(file)).unwrap_or_default();
    let offered = listed("cgroup.controllers");
    let enabled = listed("cgroup.subtree_control");
    let missing: Vec<&str> = LIMIT_CONTROLLERS
        .into_iter()
        .filter(|c| offered.split_whitespace().any(|o| o == *c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let control = parent.join("cgroup.subtree_control");
    let enable = || {
        let change: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        write_file(&control, &change.join(" "))
    };
    let busy = match enable() {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => e,
        Err(e) => return Err(format!("cannot enable {missing:?} for job cgroups: {e}")),
    };
    let Some(leaf) = own_leaf else {
        return Err(format!(
            "cannot enable {missing:?} for job cgroups: {busy} (processes live in the parent)"
        ));
    };
    let leaf = parent.join(leaf);
    let made = fs::create_dir(&leaf).or_else(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Ok(()),
        _ => Err(e),
    });
    made.map_err(|e| format!("cannot make {} for the server: {e}", leaf.display()))?;
    write_file(&leaf.join("cgroup.procs"), &pid.to_string())
        .map_err(|e| format!("cannot move the server into {}: {e}", leaf.display()))?;
    enable().map_err(|e| {
        format!("cannot enable {missing:?} for job cgroups: {e} (other processes live in the server's cgroup)")
    })
}

/// `cgroup.kill`s the subtree at `path`, sleeps until it is empty (at most `limit`), removes it.
fn kill_and_remove(path: &Path, limit: Duration) -> io::Result<()> {
    write_file(&path.join("cgroup.kill"), "1")?;
    let mut wait = (Instant::now(), POLL_FIRST);
    while event(path, "populated") {
        std::thread::sleep(next_delay(path, limit, &mut wait)?);
    }
    remove_tree(path)
}

/// The next sleep of a wait of at most `limit` whose state `w` is (start, delay): the delay,
/// doubling up to 20 ms, never past `limit`; or `TimedOut` once `limit` has passed.
fn next_delay(path: &Path, limit: Duration, w: &mut (Instant, Duration)) -> io::Result<Duration> {
    let left = limit.saturating_sub(w.0.elapsed());
    if left.is_zero() {
        let p = path.display();
        let msg = format!("cgroup {p} still has processes after {limit:?}");
        return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
    }
    let now = w.1.min(left);
    w.1 = (w.1 * 2).min(POLL_MAX);
    Ok(now)
}

/// rmdir(2)s the child cgroups of `path`, depth first, then `path`. A cgroup without child
/// cgroups (a job's, nearly always) is removed with one rmdir(2) and no directory listing.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        // EBUSY: it still has child cgroups (or processes, which the listing then leaves).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            for dir in subdirs(path)? {
                remove_tree(&dir)?;
            }
            fs::remove_dir(path)
        }
        other => other,
    }
}

/// The child cgroups (subdirectories) of `path`.
fn subdirs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Appends the pids in `path`'s `cgroup.procs` and its child cgroups' to `out`.
fn collect_pids(path: &Path, out: &mut Vec<i32>) -> io::Result<()> {
    let text = fs::read_to_string(path.join("cgroup.procs"))?;
    out.extend(
        text.lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&p| p > 0),
    );
    for dir in subdirs(path)? {
        collect_pids(&dir, out)?;
    }
    Ok(())
}

/// Whether `key 1` is in `path`'s `cgroup.events`; false if unreadable.
fn event(path: &Path, key: &str) -> bool {
    event_is(path, key, "1") == Some(true)
}

/// Whether `key value` is in `path`'s `cgroup.events`; `None` if unreadable.
fn event_is(path: &Path, key: &str, value: &str) -> Option<bool> {
    let text = fs::read_to_string(path.join("cgroup.events")).ok()?;
    Some(
        text.lines()
            .any(|l| l.split_once(' ') == Some((key, value))),
    )
}

/// Writes `value` to a cgroup interface file in one write(2) (no O_CREAT, no O_TRUNC).
pub(super) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    let context = |e: io::Error| {
        let msg = format!("writing {value:?} to {}: {e}", path.display());
        io::Error::new(e.kind(), msg)
    };
    f.write_all(value.as_bytes()).map_err(context)
}

/// An `InvalidInput` error.
fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
