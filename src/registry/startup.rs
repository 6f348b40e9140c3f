//! What happens once, when the registry opens: the state directory's lock, and settling the
//! jobs a previous run left unfinished.

use super::reap::{self, ProcessIdentity};
use super::store::{self, Row};
use super::{Inner, gap_note, now, spool};
use crate::protocol::JobState;
use std::path::Path;
use tracing::warn;

impl Inner {
    /// Jobs the registry says are unfinished belong to a server that stopped without ending
    /// them: kill what is left of their processes (same boot and same processes only; see
    /// `reap`) and record them `lost`.
    pub(super) fn recover(&self) -> rusqlite::Result<()> {
        let unfinished = self.store.read_now(store::unfinished)?;
        for Row {
            mut record,
            request_hash,
            identity,
            ..
        } in unfinished
        {
            let ident: Option<ProcessIdentity> = identity
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok());
            // Without a recorded identity (a crash right after the spawn), the job's own
            // `CCX_JOB_ID` still finds its processes: a UUID no other process carries.
            let ident = ident.unwrap_or_else(|| ProcessIdentity {
                boot_id: self.boot_id.clone().unwrap_or_default(),
                pid: 0,
                pgid: 0,
                start_ticks: 0,
            });
            let killed = reap::reap(&record.job_id, &ident).killed;
            warn!(job = %record.job_id, killed = killed.len(),
                "job of a previous run was still running; its processes are killed, its record `lost`");
            let dir = self.spool_root.join(&*record.job_id);
            record.status = JobState::Lost;
            record.ended_at = Some(now());
            let mut error = format!(
                "the server stopped while the job ran; {} of its processes were left and killed at the next start",
                killed.len()
            );
            if !spool::on_disk(&dir) {
                error.push_str(&format!(
                    "; its output was lost with the server (a job's first {} ms of output is held in memory)",
                    spool::INLINE_WINDOW.as_millis()
                ));
            }
            record.error = Some(error);
            record.output_gap = spool::read_gap(&dir).map(|g| gap_note(&record.job_id, g));
            // Written now: the first request after the start must see `lost`.
            self.settled.lock().expect("lock").push(record.clone());
            let row = Row {
                record,
                request_hash,
                identity: None,
                spool: None,
            };
            self.store.read_now(|c| store::put_row(c, &row))?;
        }
        Ok(())
    }
}

pub(super) enum LockError {
    Busy,
    Io(std::io::Error),
}

/// Creates `dir` (folders it makes are the server user's alone, mode 0700: spools hold job
/// output, which may hold secrets) and takes an exclusive lock on `dir/lock` (flock(2),
/// released by the kernel when the process dies, however it dies).
pub(super) fn open_locked(dir: &Path) -> Result<std::fs::File, LockError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("spool"))
        .map_err(LockError::Io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(LockError::Io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(LockError::Busy),
        Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let _ = std::fs::write(dir.join("lock.pid"), format!("{}\n", std::process::id()));
    Ok(file)
}
