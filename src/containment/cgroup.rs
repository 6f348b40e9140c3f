//! Per-job containment in cgroup v2: one cgroup per job below `<v2 mount><parent>/ccx-<server pid>`.
//!
//! Behaviour comes from the kernel's Documentation/admin-guide/cgroup-v2.rst: `cgroup.kill`
//! (Linux 5.14) SIGKILLs every process of a subtree, `cgroup.freeze` (5.2) freezes one,
//! `cgroup.events` reports `populated` and `frozen`, `cgroup.procs` lists the processes, and
//! rmdir(2) fails with EBUSY while a cgroup has processes or child cgroups. The hierarchy is
//! found in /proc/self/mountinfo (fstype `cgroup2`), never assumed. This module never moves
//! processes: the server starts children straight inside a job with clone3(2)'s
//! `CLONE_INTO_CGROUP` (5.7), passing [`JobCgroup::dir_fd`].
//!
//! Observed on Linux 6.18 (tests of this module): a killed process leaves `cgroup.procs` and
//! `populated` drops to 0 as soon as it has exited, while it is still an unreaped zombie, so
//! rmdir succeeds before the parent waits; `cgroup.kill` kills a frozen cgroup without thawing
//! it; frozen processes show state `S` in /proc/<pid>/stat (not `T`); clone3 accepts an `O_PATH`
//! directory fd as `clone_args.cgroup`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
/// `<v2 mount><parent>/ccx-<server pid>`. One per (process, parent): a second `open` in the
/// same process treats the first one's base as stale. Dropping it kills and removes every job
/// cgroup left below the base, then the base.
pub struct CgroupRoot {
    base: PathBuf,
}

impl CgroupRoot {
    /// Finds the cgroup2 hierarchy in /proc/self/mountinfo and creates `ccx-<pid>` below
    /// `parent`, a path inside the hierarchy such as "/ccx.slice" that must already exist;
    /// `None` means this process's own cgroup (`0::` in /proc/self/cgroup; under systemd this
    /// needs `Delegate=yes`). First removes stale `ccx-<pid>` siblings whose pid is not alive
    /// (or is this process's pid, left by an earlier run in a pid namespace): `cgroup.kill`,
    /// wait up to 5 s until empty, rmdir with their children. A sibling whose pid was reused by
    /// another live process is left alone. Checks that the base has `cgroup.kill` (Linux >=
    /// 5.14) and `cgroup.freeze` (>= 5.2).
    ///
    /// Errors: a human-readable reason naming what is missing (no cgroup2 mount, parent not
    /// found or not writable, no `cgroup.kill`, ...).
    pub fn open(parent: Option<&str>) -> Result<CgroupRoot, String> {
        let (mount, mount_root) = find_v2_mount()?;
        let inside = match parent {
            Some(p) => p.to_string(),
            None => {
                let own = own_cgroup()?;
                let stripped = if mount_root == "/" { Some(own.as_str()) } else { own.strip_prefix(&mount_root) };
                stripped
                    .filter(|s| s.is_empty() || s.starts_with('/'))
                    .ok_or_else(|| format!("this process's cgroup {own} is outside the cgroup2 mount {} (root {mount_root})", mount.display()))?
                    .to_string()
            }
        };
        let rel = Path::new(&inside);
        if !inside.starts_with('/') || rel.components().any(|c| !matches!(c, Component::RootDir | Component::Normal(_))) {
            return Err(format!("cgroup parent {inside:?} must be an absolute path without . or .."));
        }
        let parent_dir = mount.join(rel.strip_prefix("/").unwrap_or(rel));
        if !parent_dir.is_dir() {
            return Err(format!("cgroup parent {} does not exist in the cgroup2 hierarchy at {}", parent_dir.display(), mount.display()));
        }
        remove_stale(&parent_dir);
        let base = parent_dir.join(format!("{BASE_PREFIX}{}", std::process::id()));
        fs::create_dir(&base).map_err(|e| {
            format!("cannot create cgroup {}: {e} (is {} delegated to this user and writable?)", base.display(), parent_dir.display())
        })?;
        for (file, kernel) in [("cgroup.kill", "5.14"), ("cgroup.freeze", "5.2")] {
            if !base.join(file).exists() {
                let _ = fs::remove_dir(&base);
                return Err(format!("cgroup2 at {} has no {file} (needs Linux >= {kernel})", mount.display()));
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
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-')) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("job cgroup name {name:?} is not [0-9a-f-]{{1,64}}")));
        }
        let path = self.base.join(name);
        fs::create_dir(&path)?;
        JobCgroup::open_existing(&path).inspect_err(|_| {
            let _ = fs::remove_dir(&path);
        })
    }
}

impl Drop for CgroupRoot {
    /// Best effort: `cgroup.kill` on the base (every job below it), waits up to 5 s for the
    /// processes to exit, removes the job cgroups and the base. Failures are logged.
    fn drop(&mut self) {
        if let Err(e) = kill_and_remove(&self.base, CLEANUP_LIMIT) {
            tracing::warn!(path = %self.base.display(), error = %e, "cannot remove the cgroup base");
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
    /// Opens an existing cgroup directory, e.g. one a previous run left (crash recovery: kill
    /// and remove it). Errors: open(2)'s (`NotFound`, ...), `InvalidInput` if not on cgroup2.
    pub fn open_existing(path: &Path) -> io::Result<JobCgroup> {
        // O_PATH is enough: clone3 looks up the cgroup from the fd's dentry.
        let file = OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(path)?;
        let fd = OwnedFd::from(file);
        // SAFETY: statfs is plain old data, filled by the kernel from a valid fd.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a cgroup2 directory", path.display())));
        }
        Ok(JobCgroup { path: path.to_path_buf(), fd })
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
    /// ESRCH (already gone); returns how many were signalled. A pid could be reused between the
    /// read and the kill(2): freeze first for a race-free delivery (frozen processes cannot exit
    /// by themselves; the signal is delivered on thaw). Errors: reading, or kill(2)'s other errors.
    pub fn signal_all(&self, sig: i32) -> io::Result<usize> {
        let mut sent = 0;
        for pid in self.pids()? {
            // SAFETY: kill(2) with a positive pid signals that process only.
            if unsafe { libc::kill(pid, sig) } == 0 {
                sent += 1;
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
        Ok(sent)
    }

    /// SIGKILLs every process in it and in its child cgroups (writes "1" to `cgroup.kill`);
    /// works on a frozen cgroup too. Does not wait for them to exit. Errors: the write's.
    pub fn kill(&self) -> io::Result<()> {
        write_file(&self.path.join("cgroup.kill"), "1")
    }

    /// Freezes (`true`) or thaws (`false`) every process in it (`cgroup.freeze`); does not wait
    /// (see [`is_frozen`](Self::is_frozen)). Errors: the write's.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        write_file(&self.path.join("cgroup.freeze"), if frozen { "1" } else { "0" })
    }

    /// Whether the freeze has taken effect (`frozen 1` in `cgroup.events`); false if unreadable.
    pub fn is_frozen(&self) -> bool {
        event(&self.path, "frozen")
    }

    /// Whether any process is left in it or below (`populated 1` in `cgroup.events`); false if
    /// unreadable (e.g. already removed).
    pub fn is_populated(&self) -> bool {
        event(&self.path, "populated")
    }

    /// Kills what is left, waits until the cgroup is empty (reads `cgroup.events` every 1 ms at
    /// first, backing off to 20 ms, for at most `limit`), then removes it and its child cgroups.
    /// Returns how many processes were in it when called (before the kill). Sleeps with
    /// tokio::time, so it needs a tokio runtime with time enabled. Errors: `TimedOut` if still
    /// populated after `limit` (the directory stays), or the read/write/rmdir's error.
    pub async fn remove(self, limit: Duration) -> io::Result<usize> {
        let count = self.pids()?.len();
        self.kill()?;
        let start = Instant::now();
        let mut delay = POLL_FIRST;
        while event(&self.path, "populated") {
            tokio::time::sleep(next_delay(&self.path, start, limit, &mut delay)?).await;
        }
        remove_tree(&self.path)?;
        Ok(count)
    }

    /// [`remove`](Self::remove), blocking the calling thread (for Drop paths and startup).
    pub fn remove_blocking(self, limit: Duration) -> io::Result<usize> {
        let count = self.pids()?.len();
        self.kill()?;
        wait_empty_blocking(&self.path, limit)?;
        remove_tree(&self.path)?;
        Ok(count)
    }
}

/// The cgroup2 mount point and the root of the hierarchy it shows, from /proc/self/mountinfo
/// (proc(5): fields 4 and 5; the filesystem type follows the " - " separator).
fn find_v2_mount() -> Result<(PathBuf, String), String> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut found = info.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ').skip(3);
        let root = unescape(fields.next()?);
        Some((PathBuf::from(unescape(fields.next()?)), root))
    });
    let first = found.next().ok_or("no cgroup2 filesystem is mounted (no cgroup2 line in /proc/self/mountinfo)")?;
    // Prefer a mount of the whole hierarchy over a bind mount of a part of it.
    Ok(if first.1 == "/" { first } else { found.find(|m| m.1 == "/").unwrap_or(first) })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup v2 path (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Result<String, String> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
        .ok_or_else(|| "this process has no cgroup v2 path (no 0:: line in /proc/self/cgroup)".to_string())
}

/// Kills and removes the `ccx-<pid>` entries of `parent` whose pid is dead or is ours.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let own = std::process::id() as i32;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(BASE_PREFIX)).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the pid exists; pid > 0 names one process.
        let dead = pid > 0 && unsafe { libc::kill(pid, 0) } != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if pid == own || dead {
            match kill_and_remove(&entry.path(), CLEANUP_LIMIT) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed a stale cgroup"),
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale cgroup"),
            }
        }
    }
}

/// `cgroup.kill`s the subtree at `path`, waits up to `limit` until it is empty, removes it.
fn kill_and_remove(path: &Path, limit: Duration) -> io::Result<()> {
    write_file(&path.join("cgroup.kill"), "1")?;
    wait_empty_blocking(path, limit)?;
    remove_tree(path)
}

/// Sleeps until `populated 0` in `path`'s `cgroup.events`, for at most `limit`.
fn wait_empty_blocking(path: &Path, limit: Duration) -> io::Result<()> {
    let start = Instant::now();
    let mut delay = POLL_FIRST;
    while event(path, "populated") {
        std::thread::sleep(next_delay(path, start, limit, &mut delay)?);
    }
    Ok(())
}

/// The next sleep of a wait begun at `start` (doubling `delay` up to 20 ms, never past
/// `limit`), or `TimedOut` once `limit` has passed.
fn next_delay(path: &Path, start: Instant, limit: Duration, delay: &mut Duration) -> io::Result<Duration> {
    let left = limit.saturating_sub(start.elapsed());
    if left.is_zero() {
        let msg = format!("cgroup {} still has processes after {limit:?}", path.display());
        return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
    }
    let now = (*delay).min(left);
    *delay = (*delay * 2).min(POLL_MAX);
    Ok(now)
}

/// rmdir(2)s the child cgroups of `path`, depth first, then `path`.
fn remove_tree(path: &Path) -> io::Result<()> {
    for dir in subdirs(path)? {
        remove_tree(&dir)?;
    }
    fs::remove_dir(path)
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
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|&p| p > 0));
    for dir in subdirs(path)? {
        collect_pids(&dir, out)?;
    }
    Ok(())
}

/// Whether `key 1` is in `path`'s `cgroup.events`; false if unreadable.
fn event(path: &Path, key: &str) -> bool {
    fs::read_to_string(path.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.split_once(' ') == Some((key, "1"))))
        .unwrap_or(false)
}

/// Writes `value` to a cgroup interface file in one write(2) (no O_CREAT, no O_TRUNC).
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}
