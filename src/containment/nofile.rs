//! The server's open-file limit (`RLIMIT_NOFILE`, getrlimit(2)/setrlimit(2)). Each WebSocket
//! connection costs a socket, and each job three pipes or a terminal plus a pidfd and its
//! cgroup's files; the usual soft limit of 1024 would cap ccx at a few hundred connections, so
//! `ccx serve` raises its soft limit to the hard one at start. Jobs get the soft limit the
//! server started with back (a program may still use select(2), which breaks past 1024
//! descriptors), unless a job asks for its own `open_files`.

use std::sync::OnceLock;

/// The `(soft, hard)` limit the server started with, when it raised its own.
static STARTED_WITH: OnceLock<(libc::rlim_t, libc::rlim_t)> = OnceLock::new();

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit. Returns `(before, now)`
/// soft limits; errors (the kernel refused) name the limits.
pub fn raise_open_file_limit() -> Result<(libc::rlim_t, libc::rlim_t), String> {
    let lim = current().map_err(|e| format!("getrlimit: {e}"))?;
    let before = lim.rlim_cur;
    if lim.rlim_cur >= lim.rlim_max {
        return Ok((before, before));
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads one `rlimit` we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "setrlimit to {}: {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        ));
    }
    let _ = STARTED_WITH.set((before, lim.rlim_max));
    Ok((before, lim.rlim_max))
}

/// The `(soft, hard)` open-file limit a job's processes get back when the server raised its
/// own at start; `None` otherwise (they inherit the server's).
pub fn for_jobs() -> Option<(libc::rlim_t, libc::rlim_t)> {
    STARTED_WITH.get().copied()
}

/// Most sessions this process's open-file limit leaves room for: a quarter of the soft limit
/// (at least 32) is kept for the server's own files and for refusing connections clearly,
/// and each session is given two descriptors (its socket and a share of its jobs' pipes).
/// `None` when the limit cannot be read or is unlimited.
pub fn session_room() -> Option<usize> {
    let lim = current().ok()?;
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let soft = usize::try_from(lim.rlim_cur).ok()?;
    let kept = (soft / 4).max(32);
    Some((soft.saturating_sub(kept) / 2).max(1))
}

/// This process's `RLIMIT_NOFILE` (getrlimit(2)).
fn current() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}
