//! The registry's SQLite database, `<state>/ccx.db`: one row per job (its record as JSON,
//! plus the columns queries need) and the hooks' kv store.
//!
//! Writes go through one writer thread that commits them in batches, so a job never waits
//! for the disk: it gathers writes for up to [`BATCH_WINDOW`] after the first, keeps only the
//! newest row of each job (a short job's queued → running → ended become one write), and
//! commits them in one transaction. Readers that must see every write so far call
//! [`Store::flush`] first (which ends the window at once). Reads use their own connection
//! (WAL: readers and the writer do not block each other).
//!
//! A commit that fails (a full disk, an I/O error) loses nothing at once: its writes are kept,
//! newest row per job, and retried with the next batch or after [`RETRY_EVERY`], up to
//! [`MAX_RETAINED`] of them (the oldest go first beyond that). [`Store::write_health`] counts
//! the failures for `/health`.

use crate::protocol::{JobRecord, JobState};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    identity TEXT,
    record TEXT NOT NULL,
    spool BLOB
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS kv (
    hook TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (hook, key)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// A job row as the writer stores it.
#[derive(Debug, Clone)]
pub struct Row {
    pub record: JobRecord,
    pub request_hash: Option<String>,
    /// The recorded process identity (JSON), while the job may have processes.
    pub identity: Option<String>,
    /// The job's whole spool, when it never left memory (see `spool`'s module notes).
    pub spool: Option<Vec<u8>>,
}

/// How long the writer gathers writes before it commits them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// How often the writer retries writes whose commit failed, when nothing new arrives.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Most writes kept for a retry after failed commits.
pub const MAX_RETAINED: usize = 10_000;

/// The writer's failures, as `/health` shows them.
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Commits that failed since the start.
    pub errors: std::sync::atomic::AtomicU64,
    /// The last failure's message.
    pub last_error: Mutex<Option<String>>,
    /// Writes waiting for a retry now.
    pub retained: std::sync::atomic::AtomicUsize,
}

/// Runs after the write it came with is committed (or its commit failed: it then waits for a
/// retry without its callback, so nothing waits on the disk).
pub type OnCommit = Box<dyn FnOnce() + Send>;

enum Op {
    Put(Box<Row>, Option<OnCommit>),
    KvSet(String, String, Vec<u8>),
    KvDelete(String, String),
    MetaSet(String, String),
    Flush(oneshot::Sender<()>),
}

/// The database: a writer thread and a read connection.
pub struct Store {
    tx: Mutex<std_mpsc::Sender<Op>>,
    read: Arc<Mutex<Connection>>,
    health: Arc<WriteHealth>,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let writer = open(path)?;
        writer.execute_batch(SCHEMA)?;
        migrate(&writer)?;
        let read = open(path)?;
        let (tx, rx) = std_mpsc::channel();
        let health = Arc::new(WriteHealth::default());
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("ccx-registry".into())
            .spawn(move || write_loop(writer, rx, &writer_health))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Store {
            tx: Mutex::new(tx),
            read: Arc::new(Mutex::new(read)),
            health,
        })
    }

    /// The writer's failed commits so far.
    pub fn write_health(&self) -> &WriteHealth {
        &self.health
    }

    fn send(&self, op: Op) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(op);
    }

    /// Stores a job's row (insert or replace), asynchronously.
    pub fn put(&self, row: Row) {
        self.send(Op::Put(Box::new(row), None));
    }

    /// Stores a job's row, then runs `on_commit` once it is committed.
    pub fn put_then(&self, row: Row, on_commit: OnCommit) {
        self.send(Op::Put(Box::new(row), Some(on_commit)));
    }

    pub fn kv_set(&self, hook: &str, key: &str, value: Vec<u8>) {
        self.send(Op::KvSet(hook.into(), key.into(), value));
    }

    pub fn kv_delete(&self, hook: &str, key: &str) {
        self.send(Op::KvDelete(hook.into(), key.into()));
    }

    /// Sets one of the server's own values (the audit log's last hash, …), asynchronously.
    pub fn meta_set(&self, key: &str, value: &str) {
        self.send(Op::MetaSet(key.into(), value.into()));
    }

    /// Waits until every write sent before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(tx));
        let _ = rx.await;
    }

    /// Runs `f` on the read connection, off the async workers.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let conn = self.read.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .unwrap_or_else(|e| Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
    }

    /// Runs `f` on the read connection on this thread (startup only).
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        f(&self.read.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Brings a database from an older ccx up to [`SCHEMA`].
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // Before short jobs' spools were kept in their rows.
    let has_spool = conn
        .prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = 'spool'")?
        .exists([])?;
    if !has_spool {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN spool BLOB")?;
    }
    Ok(())
}

fn write_loop(mut conn: Connection, rx: std_mpsc::Receiver<Op>, health: &WriteHealth) {
    use std::sync::atomic::Ordering;
    // Writes of failed commits, oldest first.
    let mut retained: Vec<Op> = Vec::new();
    let mut failing = false;
    loop {
        let first = if retained.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(op) => Some(op),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        // Sleep through the window rather than wake for each write: senders then never
        // wake this thread, which matters on a busy machine.
        if first.as_ref().is_some_and(|op| !matches!(op, Op::Flush(_))) {
            std::thread::sleep(BATCH_WINDOW);
        }
        let mut batch = std::mem::take(&mut retained);
        batch.extend(first);
        let most = batch.len() + 4096;
        while batch.len() < most {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Only the newest row of each job is written.
        let mut newest: std::collections::HashMap<Arc<str>, usize> = Default::default();
        for (i, op) in batch.iter().enumerate() {
            if let Op::Put(row, _) = op {
                newest.insert(row.record.job_id.clone(), i);
            }
        }
        let is_newest = |i: usize, op: &Op| match op {
            Op::Put(row, _) => newest.get(&row.record.job_id) == Some(&i),
            _ => true,
        };
        let writes: Vec<&Op> = (batch.iter().enumerate())
            .filter(|(i, op)| is_newest(*i, op))
            .map(|(_, op)| op)
            .collect();
        let result = match commit(&mut conn, &writes) {
            Err(e) if !transient(&e) => {
                // A write itself is at fault (a constraint, a row too big): commit each on
                // its own, so only the faulty ones are lost.
                for op in &writes {
                    if let Err(e) = commit(&mut conn, &[op]) {
                        tracing::error!(error = %e, "the job registry dropped a write it cannot store");
                    }
                }
                Ok(())
            }
            other => other,
        };
        drop(writes);
        let failed = result.is_err();
        let mut acks = Vec::new();
        let mut callbacks = Vec::new();
        for (i, op) in batch.into_iter().enumerate() {
            let keep = failed && is_newest(i, &op);
            match op {
                Op::Put(row, on_commit) => {
                    callbacks.extend(on_commit);
                    if keep {
                        retained.push(Op::Put(row, None));
                    }
                }
                Op::Flush(ack) => acks.push(ack),
                op if keep => retained.push(op),
                _ => {}
            }
        }
        match result {
            Err(e) => {
                health.errors.fetch_add(1, Ordering::Relaxed);
                *health.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                let over = retained.len().saturating_sub(MAX_RETAINED);
                retained.drain(..over);
                // Once per outage, not once per retry.
                if !failing {
                    tracing::error!(
                        error = %e,
                        retained = retained.len(),
                        "the job registry could not commit; its writes are kept and retried"
                    );
                }
                if over > 0 {
                    tracing::error!(
                        dropped = over,
                        "the job registry dropped its oldest kept writes"
                    );
                }
                failing = true;
            }
            Ok(()) if failing => {
                tracing::info!("the job registry commits again; its kept writes are stored");
                failing = false;
            }
            Ok(()) => {}
        }
        health.retained.store(retained.len(), Ordering::Relaxed);
        for f in callbacks {
            f();
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Commits `writes` in one transaction.
fn commit(conn: &mut Connection, writes: &[&Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in writes {
        match op {
            Op::Put(row, _) => put_row(&tx, row)?,
            Op::KvSet(hook, key, value) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO kv (hook, key, value) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![hook, key, value])?;
            }
            Op::KvDelete(hook, key) => {
                tx.prepare_cached("DELETE FROM kv WHERE hook = ?1 AND key = ?2")?
                    .execute(params![hook, key])?;
            }
            Op::MetaSet(key, value) => {
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                    .execute(params![key, value])?;
            }
            Op::Flush(_) => {}
        }
    }
    tx.commit()
}

/// Whether a failed commit may succeed later as it is (a full disk, an I/O error, a lock,
/// memory): its writes are then kept and retried. Any other failure lies in the writes.
fn transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | ReadOnly
                | OutOfMemory
        )
    )
}

/// Writes one row now, on `conn` (startup, before the writer has anything queued).
pub fn put_row(conn: &Connection, row: &Row) -> rusqlite::Result<()> {
    let r = &row.record;
    let json = serde_json::to_string(r).expect("records serialize");
    conn.prepare_cached(
        "INSERT OR REPLACE INTO jobs
         (job_id, status, created_at, ended_at, idempotency_key, request_hash, identity, record,
          spool)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        &*r.job_id,
        r.status.as_str(),
        r.created_at,
        r.ended_at,
        r.idempotency_key,
        row.request_hash,
        row.identity,
        json,
        row.spool
    ])?;
    Ok(())
}

fn parse_record(json: String) -> rusqlite::Result<JobRecord> {
    serde_json::from_str(&json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// One job's record.
pub fn get(conn: &Connection, job_id: &str) -> rusqlite::Result<Option<JobRecord>> {
    conn.prepare_cached("SELECT record FROM jobs WHERE job_id = ?1")?
        .query_row(params![job_id], |r| r.get::<_, String>(0))
        .optional()?
        .map(parse_record)
        .transpose()
}

/// The spool kept in a job's row (a job that never spilled to files), if any.
pub fn kept_spool(conn: &Connection, job_id: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT spool FROM jobs WHERE job_id = ?1")?
        .query_row(params![job_id], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?
        .flatten())
}

/// Records, newest first.
pub fn list(
    conn: &Connection,
    status: Option<JobState>,
    limit: usize,
) -> rusqlite::Result<Vec<JobRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT record FROM jobs WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, job_id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![status.map(|s| s.as_str()), limit as i64], |r| {
        r.get::<_, String>(0)
    })?;
    rows.map(|r| r.and_then(parse_record)).collect()
}

/// Jobs not ended, with their request hash and recorded process identity (JSON).
pub fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(
        "SELECT record, request_hash, identity FROM jobs
         WHERE status IN ('queued', 'running', 'paused')",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    rows.map(|r| {
        r.and_then(|(rec, request_hash, identity)| {
            Ok(Row {
                record: parse_record(rec)?,
                request_hash,
                identity,
                spool: None,
            })
        })
    })
    .collect()
}

/// The job an idempotency key names, with its request hash.
pub fn by_idempotency_key(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<Option<(String, Option<String>)>> {
    conn.prepare_cached("SELECT job_id, request_hash FROM jobs WHERE idempotency_key = ?1")?
        .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Deletes ended jobs beyond the newest `keep` or that ended before `before` (Unix seconds);
/// returns their ids (their spools go too).
pub fn prune(conn: &Connection, keep: u64, before: f64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "DELETE FROM jobs WHERE ended_at IS NOT NULL AND (ended_at < ?1 OR job_id IN (
             SELECT job_id FROM jobs WHERE ended_at IS NOT NULL
             ORDER BY ended_at DESC LIMIT -1 OFFSET ?2))
         RETURNING job_id",
    )?;
    let rows = stmt.query_map(params![before, keep as i64], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Every kv entry (hook, key, value).
pub fn kv_all(conn: &Connection) -> rusqlite::Result<Vec<(String, String, Vec<u8>)>> {
    let mut stmt = conn.prepare("SELECT hook, key, value FROM kv")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// One of the server's own values (see [`Store::meta_set`]).
pub fn meta_get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}
