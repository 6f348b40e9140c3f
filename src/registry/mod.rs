//! The job registry: every job's record in SQLite (`store`), its output in an append-only
//! spool (`spool`), and what a crash left behind (`reap`), all under `[state] dir`.
//!
//! The executor creates a [`JobLog`] per job and feeds it the job's events as they happen;
//! the record follows from them (queued → running → paused … → an end state), so the registry
//! needs no second account of a job's life. `attach` reads the spool back ([`Replay`]) and
//! follows a live job through its [`spool::Progress`]; records of ended jobs come from SQLite.
//!
//! The registry never stops a job: a spool that cannot be written, or a database that cannot
//! commit, is noted in the record and `/health`, and the job streams on (a failed commit's
//! writes are retried until the disk has room again: see `store`).
//!
//! Over 500 lines: the registry's one public face (open, health, get, list, attach, keys, kv,
//! pruning); the parts behind it are in `store`, `spool`, `log`, `replay` and `reap`.

mod log;
mod meta;
pub mod reap;
mod replay;
pub mod spool;
mod startup;
mod store;
#[cfg(test)]
mod store_tests;

pub use log::JobLog;
pub use meta::{EndListener, read_meta};
pub use replay::Replay;
use startup::{LockError, open_locked};

use crate::config::StateConfig;
use crate::events::JobId;
use crate::protocol::{AttachResult, JobRecord, JobState, OutputEncoding, OutputGap, RpcError};
use anyhow::{Context, Result};
use serde::Serialize;
use spool::Progress;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Row, Store};
use tokio::sync::watch;
use tracing::{info, warn};

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A new job as the registry first records it.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub job_id: JobId,
    pub command: String,
    pub cwd: Option<String>,
    /// Already masked (`[execution] secret_env`).
    pub env: BTreeMap<String, String>,
    pub timeout: Option<f64>,
    pub peer: Option<String>,
    pub token_label: Option<String>,
    pub session_id: Option<String>,
    pub detached: bool,
    pub output_encoding: OutputEncoding,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
}

/// What `/health` says about the registry.
#[derive(Debug, Clone, Serialize)]
pub struct StateHealth {
    pub enabled: bool,
    pub dir: String,
    /// Why the registry is unavailable, if it is.
    pub error: Option<String>,
    /// Spools that failed since the start, and the last reason.
    pub spool_errors: u64,
    pub last_spool_error: Option<String>,
    /// Commits of the database that failed since the start (a full disk, …), the last
    /// reason, and the writes kept for a retry now (0 once the disk has room again).
    pub write_errors: u64,
    pub last_write_error: Option<String>,
    pub retained_writes: usize,
    pub detached_jobs: usize,
}

/// The job registry; [`Registry::off`] when `[state] enabled = false` or the state directory
/// cannot be used.
#[derive(Clone)]
pub struct Registry {
    inner: Option<Arc<Inner>>,
    off: Arc<StateHealth>,
}

struct Inner {
    cfg: StateConfig,
    store: Store,
    spool_root: PathBuf,
    live: Mutex<HashMap<JobId, Arc<Live>>>,
    /// Keys claimed since the start (older ones are in the database).
    keys: Mutex<HashMap<String, (JobId, String)>>,
    detached: AtomicUsize,
    spool_errors: AtomicU64,
    last_spool_error: Mutex<Option<String>>,
    boot_id: Option<String>,
    /// Jobs whose in-memory spool the spiller writes out if they are still running.
    spiller: std::sync::mpsc::Sender<log::SpillDue>,
    /// The thread that does the spools' file operations.
    spool_io: spool::Io,
    /// Held for the registry's life: a second server on the same directory is refused.
    _lock: std::fs::File,
    /// Told each job's final record (the audit log); see [`Registry::on_job_end`].
    on_end: std::sync::OnceLock<EndListener>,
    /// Records of jobs settled `lost` at the start, kept for the listener set after it.
    settled: Mutex<Vec<JobRecord>>,
}

/// A job the registry is following: its current record and its spool's progress.
struct Live {
    record: Mutex<JobRecord>,
    request_hash: Option<String>,
    identity: Mutex<Option<String>>,
    progress: watch::Receiver<Progress>,
    /// The spool's segment 1 while it is in memory.
    inline: spool::SharedInline,
    spool_dir: PathBuf,
    detached: AtomicBool,
    /// The last `seq` read from the job.
    last_seq: AtomicU64,
}

impl Default for Registry {
    /// Off: nothing is recorded (an executor built without `[state]`, as in unit tests).
    fn default() -> Registry {
        Registry::off(Path::new(""), false, "the job registry is off")
    }
}

impl Registry {
    /// A registry that records nothing; its methods answer `reason`.
    pub fn off(dir: &Path, enabled: bool, reason: impl Into<String>) -> Registry {
        Registry {
            inner: None,
            off: Arc::new(StateHealth {
                enabled,
                dir: dir.display().to_string(),
                error: Some(reason.into()),
                spool_errors: 0,
                last_spool_error: None,
                write_errors: 0,
                last_write_error: None,
                retained_writes: 0,
                detached_jobs: 0,
            }),
        }
    }

    /// Opens the registry under `cfg.dir`: takes the directory's lock (a second server is
    /// refused, naming the directory), opens the database, and settles the jobs a previous
    /// server left unfinished (their processes killed, their records `lost`).
    ///
    /// Errors: the lock is held by another process. Other failures (a path that cannot be
    /// created or written) give [`Registry::off`] with the reason, so jobs still run.
    pub fn open(cfg: &StateConfig) -> Result<Registry> {
        if !cfg.enabled {
            return Ok(Registry::off(
                &cfg.dir,
                false,
                "the job registry is off (`[state] enabled = false`)",
            ));
        }
        let lock = match open_locked(&cfg.dir) {
            Ok(lock) => lock,
            Err(LockError::Busy) => anyhow::bail!(
                "the state directory {} is in use by another ccx server (its lock file is {}); \
                 stop it, or give this one its own `[state] dir`",
                cfg.dir.display(),
                cfg.dir.join("lock").display()
            ),
            Err(LockError::Io(e)) => {
                let reason = format!("cannot use the state directory {}: {e}", cfg.dir.display());
                warn!("{reason}; jobs run without a registry");
                return Ok(Registry::off(&cfg.dir, true, reason));
            }
        };
        let store = match Store::open(&cfg.dir.join("ccx.db")) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!(
                    "cannot open the job database {}: {e}",
                    cfg.dir.join("ccx.db").display()
                );
                warn!("{reason}; jobs run without a registry");
                return Ok(Registry::off(&cfg.dir, true, reason));
            }
        };
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            store,
            spool_root: cfg.dir.join("spool"),
            live: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            detached: AtomicUsize::new(0),
            spool_errors: AtomicU64::new(0),
            last_spool_error: Mutex::new(None),
            boot_id: reap::boot_id(),
            spiller: log::start_spiller().context("starting the spool thread")?,
            spool_io: spool::Io::start().context("starting the spool I/O thread")?,
            _lock: lock,
            on_end: std::sync::OnceLock::new(),
            settled: Mutex::new(Vec::new()),
        });
        inner
            .recover()
            .context("settling the jobs of the previous run")?;
        Ok(Registry {
            inner: Some(inner),
            off: Arc::new(StateHealth {
                enabled: true,
                dir: cfg.dir.display().to_string(),
                error: None,
                spool_errors: 0,
                last_spool_error: None,
                write_errors: 0,
                last_write_error: None,
                retained_writes: 0,
                detached_jobs: 0,
            }),
        })
    }

    /// Waits until every record and kv write so far is committed (before the process exits).
    pub async fn flush(&self) {
        if let Some(i) = &self.inner {
            // Spools first: a job's last write queues its row.
            let io = i.spool_io.clone();
            let _ = tokio::task::spawn_blocking(move || io.flush()).await;
            i.store.flush().await;
        }
    }

    /// Whether records are kept.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    fn inner(&self) -> Result<&Arc<Inner>, RpcError> {
        self.inner
            .as_ref()
            .ok_or_else(|| RpcError::RegistryOff(self.off.error.clone().unwrap_or_default()))
    }

    /// What `/health` reports.
    pub fn health(&self) -> StateHealth {
        match &self.inner {
            None => (*self.off).clone(),
            Some(i) => StateHealth {
                spool_errors: i.spool_errors.load(Ordering::Relaxed),
                last_spool_error: i.last_spool_error.lock().expect("lock").clone(),
                write_errors: i.store.write_health().errors.load(Ordering::Relaxed),
                last_write_error: (i.store.write_health().last_error.lock())
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                retained_writes: i.store.write_health().retained.load(Ordering::Relaxed),
                detached_jobs: i.detached.load(Ordering::Relaxed),
                ..(*self.off).clone()
            },
        }
    }

    /// Detached jobs running or queued now.
    pub fn detached_jobs(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.detached.load(Ordering::Relaxed))
    }

    /// The most detached jobs allowed at once.
    pub fn max_detached(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.cfg.max_detached)
    }

    /// One job's record: a live one's as it is now, an ended one's from the database.
    /// `-32002` when there is no such job.
    pub async fn get(&self, job_id: &str) -> Result<JobRecord, RpcError> {
        let inner = self.inner()?;
        if let Some(live) = inner.live.lock().expect("lock").get(job_id) {
            return Ok(live.record.lock().expect("lock").clone());
        }
        let id = job_id.to_string();
        inner
            .store
            .read(move |c| store::get(c, &id))
            .await
            .map_err(|e| internal("reading a job record", e))?
            .ok_or_else(|| no_such_job(job_id))
    }

    /// Records, newest first, optionally of one state; `limit` defaults to 100 (at most
    /// 10000).
    pub async fn list(
        &self,
        status: Option<JobState>,
        limit: Option<usize>,
    ) -> Result<Vec<JobRecord>, RpcError> {
        let inner = self.inner()?;
        let limit = limit.unwrap_or(100);
        if !(1..=10_000).contains(&limit) {
            return Err(RpcError::InvalidParams(format!(
                "`limit` must be between 1 and 10000, got {limit}"
            )));
        }
        inner.store.flush().await;
        inner
            .store
            .read(move |c| store::list(c, status, limit))
            .await
            .map_err(|e| internal("listing jobs", e))
    }

    /// Claims `key` for `job_id`, or names the job that already holds it: `Ok(None)`: the key
    /// is new (now held by `job_id`); `Ok(Some(id))`: job `id` holds it for the same request;
    /// `-32602` when it holds it for another request.
    pub async fn claim_key(
        &self,
        key: &str,
        request_hash: &str,
        job_id: &JobId,
    ) -> Result<Option<JobId>, RpcError> {
        let inner = self.inner()?;
        let k = key.to_string();
        let stored = inner
            .store
            .read(move |c| store::by_idempotency_key(c, &k))
            .await
            .map_err(|e| internal("looking up an idempotency key", e))?;
        let mut keys = inner.keys.lock().expect("lock");
        let held = keys
            .get(key)
            .map(|(id, h)| (id.clone(), Some(h.clone())))
            .or_else(|| stored.map(|(id, h)| (JobId::from(id), h)));
        match held {
            Some((id, h)) if h.as_deref() == Some(request_hash) => Ok(Some(id)),
            Some((id, _)) => Err(RpcError::InvalidParams(format!(
                "`idempotency_key` `{key}` was used for a different request (job {id})"
            ))),
            None => {
                keys.insert(key.to_string(), (job_id.clone(), request_hash.to_string()));
                Ok(None)
            }
        }
    }

    /// Gives back a key claimed by [`Registry::claim_key`] for a job that was then refused.
    pub fn release_key(&self, key: &str) {
        if let Some(i) = &self.inner {
            i.keys.lock().expect("lock").remove(key);
        }
    }

    /// Starts a replay of `job_id` after `after_seq` (see [`Replay`]).
    ///
    /// Errors: `-32002` unknown job; `-32005` when `after_seq` lies in output no longer kept.
    pub async fn attach(
        &self,
        job_id: &str,
        after_seq: Option<u64>,
        encoding: Option<OutputEncoding>,
    ) -> Result<Replay, RpcError> {
        let inner = self.inner()?;
        let live = inner.live.lock().expect("lock").get(job_id).cloned();
        let (record, progress, gap, dir, last_seq, inline) = match &live {
            Some(l) => {
                let record = l.record.lock().expect("lock").clone();
                let gap = spool::read_gap(&l.spool_dir).map(|g| gap_note(&record.job_id, g));
                let last_seq = l.last_seq.load(Ordering::Relaxed);
                (
                    record,
                    Some(l.progress.clone()),
                    gap,
                    l.spool_dir.clone(),
                    last_seq,
                    Some(l.inline.clone()),
                )
            }
            None => {
                let record = self.get(job_id).await?;
                let dir = inner.spool_root.join(job_id);
                let gap = spool::read_gap(&dir).map(|g| gap_note(&record.job_id, g));
                let last_seq = record.last_seq;
                let id = job_id.to_string();
                let kept = inner
                    .store
                    .read(move |c| store::kept_spool(c, &id))
                    .await
                    .map_err(|e| internal("reading a job's spool", e))?;
                (record, None, gap, dir, last_seq, kept.map(spool::kept))
            }
        };
        let after = after_seq.unwrap_or(0);
        let mut next_seq = after + 1;
        if let Some(g) = &gap
            && after >= g.after_seq
            && after + 1 < g.next_seq
        {
            if after > g.after_seq {
                return Err(RpcError::SeqNotRetained {
                    after_seq: after,
                    next_seq: g.next_seq,
                });
            }
            next_seq = g.next_seq;
        }
        let result = AttachResult {
            job_id: record.job_id.clone(),
            status: record.status,
            next_seq,
            last_seq,
        };
        Ok(Replay::new(
            inner.clone(),
            record,
            spool::SpoolReader::open(dir, progress, after_seq, inline),
            encoding,
            result,
        ))
    }

    /// Deletes ended jobs past `retain_jobs` or `retain_days`, with their spools. Runs in
    /// the background every few minutes (see [`Registry::spawn_pruner`]).
    pub async fn prune(&self) -> Result<usize, RpcError> {
        let inner = self.inner()?;
        inner.store.flush().await;
        let keep = inner.cfg.retain_jobs;
        let before = now() - inner.cfg.retain.as_secs_f64();
        let ids = inner
            .store
            .read(move |c| store::prune(c, keep, before))
            .await
            .map_err(|e| internal("pruning jobs", e))?;
        if !ids.is_empty() {
            spool::remove(&inner.spool_root, &ids.iter().cloned().collect());
        }
        Ok(ids.len())
    }

    /// Prunes now and then every `every`, until the runtime stops.
    pub fn spawn_pruner(&self, every: Duration) {
        if self.inner.is_none() {
            return;
        }
        let reg = self.clone();
        tokio::spawn(async move {
            loop {
                match reg.prune().await {
                    Ok(0) => {}
                    Ok(n) => info!(jobs = n, "pruned ended jobs past retention"),
                    Err(e) => warn!(error = %e, "pruning failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// This boot's id (for process identities).
    pub fn boot_id(&self) -> Option<String> {
        self.inner.as_ref().and_then(|i| i.boot_id.clone())
    }

    /// Every kv entry (hook, key, value), to seed the hooks' kv store at start.
    pub fn kv_load(&self) -> Vec<(String, String, Vec<u8>)> {
        self.inner
            .as_ref()
            .and_then(|i| i.store.read_now(store::kv_all).ok())
            .unwrap_or_default()
    }

    /// Persists one kv entry (`None`: deleted), asynchronously.
    pub fn kv_store(&self, hook: &str, key: &str, value: Option<Vec<u8>>) {
        if let Some(i) = &self.inner {
            match value {
                Some(v) => i.store.kv_set(hook, key, v),
                None => i.store.kv_delete(hook, key),
            }
        }
    }
}

fn internal(what: &str, e: rusqlite::Error) -> RpcError {
    warn!(error = %e, "{what}");
    RpcError::Internal
}

fn no_such_job(job_id: &str) -> RpcError {
    RpcError::NoSuchJob(format!("no job {job_id} on this server"))
}

fn gap_note(job_id: &JobId, g: spool::Gap) -> OutputGap {
    OutputGap {
        job_id: job_id.clone(),
        after_seq: g.after_seq,
        next_seq: g.next_seq,
        bytes: g.bytes,
    }
}

impl Inner {
    fn put(&self, live: &Live) {
        self.store.put(Row {
            record: live.record.lock().expect("lock").clone(),
            request_hash: live.request_hash.clone(),
            identity: live.identity.lock().expect("lock").clone(),
            spool: None,
        });
    }

    fn spool_failed(&self, error: &str) {
        self.spool_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_spool_error.lock().expect("lock") = Some(error.to_string());
    }
}
