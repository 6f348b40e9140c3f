//! The audit log (`[audit] path`): one JSON line per ended job and per refused request,
//! each carrying the SHA-256 of the line before it, so that editing, deleting, inserting or
//! reordering a line breaks the chain ([`verify`] finds where). `docs/audit.md` gives the
//! record format and what the chain can and cannot prove.
//!
//! [`AuditLog`] is a cheap handle: [`AuditLog::record`] only queues (`try_send` on a bounded
//! channel) and never blocks; a dedicated thread owns the file, appends, syncs, rotates by
//! size and reopens after errors. Records lost to a full queue or a failed write are counted
//! for `/health` and noted in the chain by the next record written (`dropped`,
//! `write-failed`). Refusals are rate-limited per peer so a flood cannot fill the disk.
//!
//! A record: `{"seq":N,"time":"…Z","kind":"…","prev":"<64 hex>", …the body's fields}`.
//! `prev` is the hash of the line before (its exact bytes, without the newline); the first
//! line of every file is a `chain-start` with a random `seed` (its `prev` is the seed for a
//! new chain, else the last hash of the file it continues).

mod files;
mod format;
mod refusals;
mod shared;
pub mod verify;
mod writer;

#[cfg(test)]
mod reopen_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod verify_tests;

pub use files::chain_files;
pub use shared::OnWritten;
pub use verify::{VerifyError, VerifyReport};

use refusals::Refusals;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{Msg, Shared};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tracing::warn;
use writer::Writer;

/// `[audit]`: the audit log. Off unless `path` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The current audit file; rotated files are written next to it. `None`: no audit log.
    pub path: Option<PathBuf>,
    /// Bytes a file may hold before the record that would pass it goes to a new file (the
    /// writer's own notes may run over by a few hundred bytes). 0: never rotate.
    /// Default 64 MiB.
    pub max_file_bytes: u64,
    /// Rotated files kept; at each rotation the oldest past this many are deleted (the new
    /// file's chain-start names them). 0, the default: all are kept.
    pub keep_files: usize,
    /// Records waiting for the writer at most; more are dropped (counted, then noted in the
    /// chain). Default 4096.
    pub queue: usize,
    /// `refused` records per peer (an IPv4 address or an IPv6 /64) a minute, in a token
    /// bucket whose burst is as large; the rest are counted and the peer's next recorded
    /// refusal carries `suppressed: N`. 0: refusals are only counted. Default 30.
    pub refusals_per_minute: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_file_bytes: 64 << 20,
            keep_files: 0,
            queue: 4096,
            refusals_per_minute: 30,
        }
    }
}

/// What `/health` says about the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditHealth {
    pub enabled: bool,
    /// The current file.
    pub path: Option<String>,
    /// Records appended since the start (the writer's own notes included).
    pub records_written: u64,
    /// Records lost because their write failed (each is noted in the chain by a later
    /// `write-failed` record).
    pub records_lost: u64,
    /// Failed file operations (open, write, sync, rotate) since the start.
    pub write_errors: u64,
    /// Records refused by the full queue (noted in the chain by a later `dropped` record).
    pub dropped: u64,
    /// Refusals not recorded because their peer was over `refusals_per_minute`.
    pub suppressed_refusals: u64,
    /// Records queued and not yet written.
    pub queued: u64,
    /// The last failure, e.g. `write /var/log/ccx/audit.log: No space left on device (os
    /// error 28)`.
    pub last_error: Option<String>,
    /// `seq` and hash of the last record written.
    pub last_seq: u64,
    pub last_hash: Option<String>,
}

/// A handle on the audit log; clones share the writer, which ends when the last handle is
/// dropped (after writing what is queued). [`AuditLog::off`] records nothing.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// `None`: the audit log is off.
    tx: Option<SyncSender<Msg>>,
    /// Records dropped and not yet passed to the writer with a message.
    pending_drops: AtomicU64,
    refusals: Refusals,
    drop_warned: Mutex<Option<Instant>>,
}

impl AuditLog {
    /// An audit log that records nothing (`[audit] path` unset).
    pub fn off() -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(None)),
                tx: None,
                pending_drops: AtomicU64::new(0),
                refusals: Refusals::new(0),
                drop_warned: Mutex::new(None),
            }),
        }
    }

    /// Opens the log at `cfg.path` (creating missing directories with mode 0700 and the
    /// file with mode 0600) and starts its writer thread; [`AuditLog::off`] if no path is
    /// set. `last_hash`: the last record's hash as the state store kept it. The chain goes
    /// on from the file's last line (or, for an empty file, from the newest rotated file);
    /// a last line torn by a crash gets a `torn-tail` record, and a `last_hash` that is not
    /// a line of the file a `chain-mismatch` record (`expected`, `found`) — the log never
    /// refuses to start over either.
    ///
    /// Reads the whole current file (up to about `max_file_bytes`) before it returns: call
    /// it at startup, or from a blocking context.
    ///
    /// Errors: the directory or file cannot be created, opened or read (the message names
    /// the path), or the thread cannot be started. (Failing to write the start's own records
    /// is only counted, like any write error.)
    pub fn open(cfg: &AuditConfig, last_hash: Option<String>) -> std::io::Result<AuditLog> {
        let Some(path) = cfg.path.clone() else {
            return Ok(AuditLog::off());
        };
        let shared = Arc::new(Shared::new(Some(path.clone())));
        let mut writer = Writer::new(path, cfg.max_file_bytes, cfg.keep_files, shared.clone());
        writer.start(last_hash)?;
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
        std::thread::Builder::new()
            .name("ccx-audit".into())
            .spawn(move || writer.run(rx))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                pending_drops: AtomicU64::new(0),
                refusals: Refusals::new(cfg.refusals_per_minute),
                drop_warned: Mutex::new(None),
            }),
        })
    }

    /// Whether records go anywhere.
    pub fn enabled(&self) -> bool {
        self.inner.tx.is_some()
    }

    /// Queues one record, timed now; never blocks. `kind`: e.g. `job`, `refused` (not one
    /// of the writer's own: `chain-start`, `torn-tail`, `chain-mismatch`, `dropped`,
    /// `write-failed`; a `chain-start` past a file's first line fails `verify`). `body`:
    /// the record's fields (an object; anything else is kept under `body`); fields named
    /// `seq`, `time`, `kind` or `prev` are dropped, the writer sets those. With the queue
    /// full the record is dropped: counted, and the next record written is preceded by a
    /// `dropped` record saying how many were lost.
    pub fn record(&self, kind: &str, body: Value) {
        let Some(tx) = &self.inner.tx else { return };
        let shared = &self.inner.shared;
        let dropped_before = self.inner.pending_drops.swap(0, Ordering::AcqRel);
        shared.queued.fetch_add(1, Ordering::AcqRel);
        let msg = Msg::Record {
            kind: kind.to_owned(),
            body,
            time: SystemTime::now(),
            dropped_before,
        };
        if let Err(e) = tx.try_send(msg) {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let pending = dropped_before + 1;
            self.inner
                .pending_drops
                .fetch_add(pending, Ordering::AcqRel);
            let total = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let why = match e {
                TrySendError::Full(_) => "the audit queue is full",
                TrySendError::Disconnected(_) => "the audit writer has stopped",
            };
            if matches!(e, TrySendError::Disconnected(_)) {
                shared.set_error(why.into());
            }
            self.warn_dropped(why, total);
        }
    }

    /// A request refused before it became a job (bad auth, denied, queue full) from `peer`;
    /// recorded as a `refused` record unless the peer is over `refusals_per_minute`. The
    /// first one recorded after some were suppressed carries `suppressed: N`.
    pub fn refused(&self, peer: IpAddr, body: Value) {
        if self.inner.tx.is_none() {
            return;
        }
        match self.inner.refusals.admit(peer, Instant::now()) {
            Some(0) => self.record("refused", body),
            Some(n) => {
                let mut body = match body {
                    Value::Object(map) => map,
                    Value::Null => serde_json::Map::new(),
                    other => serde_json::Map::from_iter([("body".to_string(), other)]),
                };
                body.insert("suppressed".into(), n.into());
                self.record("refused", Value::Object(body));
            }
            None => {
                self.inner.shared.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters for `/health`; never blocks on the writer.
    pub fn health(&self) -> AuditHealth {
        let s = &self.inner.shared;
        let (last_seq, last_hash) = s.tip();
        AuditHealth {
            enabled: self.enabled(),
            path: s.path.as_ref().map(|p| p.display().to_string()),
            records_written: s.written.load(Ordering::Relaxed),
            records_lost: s.lost.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            suppressed_refusals: s.suppressed.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            last_seq,
            last_hash,
        }
    }

    /// Sets the callback told the last hash (64 hex digits) each time records reach the
    /// disk: on the writer thread, after each batch is synced, in order. It is called at
    /// once with the current last hash, if any, so none is missed. The server keeps the hash
    /// in its state store and passes it to the next [`AuditLog::open`]. A slow callback
    /// slows the writer (and may fill the queue), not the caller of `record`; it must not
    /// call `on_written` itself.
    pub fn on_written(&self, f: OnWritten) {
        let shared = &self.inner.shared;
        let mut hook = shared.hook.lock().unwrap_or_else(|e| e.into_inner());
        if let (_, Some(hash)) = shared.tip() {
            f(&hash);
        }
        *hook = Some(f);
    }

    /// Waits until everything queued before the call is written and synced (and the drops
    /// so far noted), for at most `timeout`. `false` on timeout or with the writer gone. A
    /// `true` does not mean the writes succeeded: see [`AuditLog::health`]. Blocks (sleeps):
    /// from async code, call it in `spawn_blocking`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.inner.tx else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let (done, wait) = mpsc::sync_channel(1);
        loop {
            let dropped_before = self.inner.pending_drops.swap(0, Ordering::AcqRel);
            let msg = Msg::Flush {
                dropped_before,
                done: done.clone(),
            };
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(e) => {
                    self.inner
                        .pending_drops
                        .fetch_add(dropped_before, Ordering::AcqRel);
                    if matches!(e, TrySendError::Disconnected(_)) || Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Warns about dropped records at most once a minute.
    fn warn_dropped(&self, why: &str, total: u64) {
        let Ok(mut at) = self.inner.drop_warned.try_lock() else {
            return;
        };
        let now = Instant::now();
        if at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
            *at = Some(now);
            warn!(dropped_total = total, "audit log: record dropped: {why}");
        }
    }
}
