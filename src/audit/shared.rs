//! What the writer thread and the [`super::AuditLog`] handles share: the messages between
//! them, the counters `/health` reads, the chain's tip and the `on_written` callback.

use serde_json::Value;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::SyncSender;
use std::time::SystemTime;
use tracing::warn;

/// The callback told each new last hash (after it is synced to disk).
pub type OnWritten = Box<dyn Fn(&str) + Send + Sync>;

/// What the writer and the handles share: counters for `/health` and the chain's tip.
pub struct Shared {
    pub path: Option<PathBuf>,
    pub written: AtomicU64,
    pub lost: AtomicU64,
    pub write_errors: AtomicU64,
    pub dropped: AtomicU64,
    pub suppressed: AtomicU64,
    pub queued: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// `seq` and hash of the last record written.
    pub tip: Mutex<(u64, Option<String>)>,
    /// Held while the callback runs, so its calls come in order.
    pub hook: Mutex<Option<OnWritten>>,
}

impl Shared {
    pub fn new(path: Option<PathBuf>) -> Shared {
        Shared {
            path,
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            last_error: Mutex::new(None),
            tip: Mutex::new((0, None)),
            hook: Mutex::new(None),
        }
    }

    pub fn tip(&self) -> (u64, Option<String>) {
        self.tip.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_tip(&self, seq: u64, hash: Option<String>) {
        *self.tip.lock().unwrap_or_else(|e| e.into_inner()) = (seq, hash);
    }

    pub fn set_error(&self, msg: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    /// Tells the callback, if there is one, the current last hash.
    pub fn publish(&self) {
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(f), (_, Some(hash))) = (hook.as_ref(), self.tip()) {
            let call = std::panic::AssertUnwindSafe(|| f(&hash));
            if std::panic::catch_unwind(call).is_err() {
                warn!("audit log: the on_written callback panicked");
            }
        }
    }
}

/// A message to the writer thread.
pub enum Msg {
    /// A record; `dropped_before` records were refused by the full queue since the last
    /// message that got through.
    Record {
        kind: String,
        body: Value,
        time: SystemTime,
        dropped_before: u64,
    },
    /// Write what is pending, sync, and answer on `done`.
    Flush {
        dropped_before: u64,
        done: SyncSender<()>,
    },
}
