//! What the registry offers the server's observers: each job's final record as it is
//! written ([`Registry::on_job_end`]), and a few values of the server's own kept in the
//! database's `meta` table ([`Registry::meta_get`], [`Registry::meta_set`]; the audit log's
//! last hash, so a truncated audit file is detected).

use super::{Registry, store};
use crate::protocol::JobRecord;

/// Called with every job's final record, on the registry's threads: it must not block.
pub type EndListener = Box<dyn Fn(&JobRecord) + Send + Sync>;

impl Registry {
    /// Sets the one listener told each job's final record (the same record `get_job`
    /// answers), from now on; the jobs settled `lost` at the start are told at once. A second
    /// call is ignored. With the registry off, nothing is ever told.
    pub fn on_job_end(&self, listener: EndListener) {
        let Some(inner) = &self.inner else { return };
        if inner.on_end.set(listener).is_err() {
            return;
        }
        let settled = std::mem::take(&mut *inner.settled.lock().expect("lock"));
        if let Some(listener) = inner.on_end.get() {
            settled.iter().for_each(listener);
        }
    }

    /// A value set by [`Registry::meta_set`] (committed or not yet: reads the database, so a
    /// value set moments ago may be missing), or `None` (also when the registry is off).
    pub fn meta_get(&self, key: &str) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let key = key.to_string();
        inner
            .store
            .read_now(move |c| store::meta_get(c, &key))
            .ok()
            .flatten()
    }

    /// Keeps `value` under `key`, asynchronously (committed with the next batch).
    pub fn meta_set(&self, key: &str, value: &str) {
        if let Some(inner) = &self.inner {
            inner.store.meta_set(key, value);
        }
    }
}

/// Reads one `meta` value from the database of the state directory `dir`, read-only (for
/// `ccx audit verify`, beside a running server or without one). `Ok(None)` when there is no
/// database or no such key.
pub fn read_meta(dir: &std::path::Path, key: &str) -> rusqlite::Result<Option<String>> {
    let path = dir.join("ccx.db");
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    match store::meta_get(&conn, key) {
        // A database from before the `meta` table.
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
            Ok(None)
        }
        other => other,
    }
}
