//! The spools' file operations, on a thread of their own ([`Io`]): a job's output task only
//! queues its records, so the disk's cost runs beside the job's live stream instead of in
//! it. The queue is bounded ([`QUEUE_OPS`] operations, each at most one read of output): when
//! the disk falls behind, queuing blocks, which is the same backpressure a direct write gave.
//!
//! Operations run in the order queued, so each job's records land in order; what a reader
//! may read ([`Progress`]) is published only after its bytes are written.

use super::{Progress, SharedInline};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How many operations may wait for the thread.
pub const QUEUE_OPS: usize = 128;

/// Runs once a job's last queued write is done.
pub type AfterClose = Box<dyn FnOnce() + Send>;

/// What a job's spool shares between its writer, the I/O thread and its readers.
pub(super) struct Shared {
    pub progress: watch::Sender<Progress>,
    pub inline: SharedInline,
    error: Mutex<Option<String>>,
    failed: AtomicBool,
    reported: AtomicBool,
    /// The segment being written (I/O thread only).
    file: Mutex<Option<File>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            progress: watch::channel(Progress::default()).0,
            inline: SharedInline::default(),
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            file: Mutex::new(None),
        })
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("lock").clone()
    }

    /// The error, the first time it is asked for after it happened.
    pub fn take_new_error(&self) -> Option<String> {
        if !self.failed() || self.reported.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.error()
    }

    /// Records the first error and stops the spool; readers learn it through `failed`.
    pub fn fail(&self, msg: String) {
        let mut slot = self.error.lock().expect("lock");
        if slot.is_some() {
            return;
        }
        tracing::warn!(error = %msg, "spool stopped; the job goes on");
        *slot = Some(msg);
        self.failed.store(true, Ordering::Release);
        *self.file.lock().expect("lock") = None;
        self.progress.send_modify(|p| p.failed = true);
    }
}

pub(super) enum Op {
    /// Creates segment `index` at `path` and makes it the one written; for segment 1 of a
    /// spool that was in memory, writes those bytes first and tells readers to switch.
    Open {
        job: Arc<Shared>,
        path: PathBuf,
        spill: bool,
    },
    /// Appends `bytes` (whole records), then publishes `segment` up to `len`.
    Write {
        job: Arc<Shared>,
        bytes: Vec<u8>,
        segment: u32,
        len: u64,
    },
    /// A tail segment past the bound.
    Remove { job: Arc<Shared>, path: PathBuf },
    /// The gap file's new content.
    Gap {
        job: Arc<Shared>,
        path: PathBuf,
        text: String,
    },
    /// The job has ended: close, tell readers, then run `then`.
    Close { job: Arc<Shared>, then: AfterClose },
    /// Answers once everything queued before it is done.
    Barrier(SyncSender<()>),
}

/// The handle to the spools' I/O thread; clones share it. The thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Io {
    tx: SyncSender<Op>,
}

impl Io {
    /// Starts the thread (`ccx-spool-io`).
    pub fn start() -> std::io::Result<Io> {
        let (tx, rx) = sync_channel::<Op>(QUEUE_OPS);
        std::thread::Builder::new()
            .name("ccx-spool-io".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    run(op);
                }
            })?;
        Ok(Io { tx })
    }

    /// Queues `op`, waiting while the queue is full; `false` if the thread is gone.
    pub(super) fn send(&self, op: Op) -> bool {
        self.tx.send(op).is_ok()
    }

    /// Waits until every operation queued so far is done (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Op::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn run(op: Op) {
    match op {
        Op::Open { job, path, spill } => {
            if job.failed() {
                return;
            }
            let result = (|| {
                let mut file = File::create_new(&path)?;
                if spill {
                    let mut m = job.inline.lock().expect("lock");
                    file.write_all(&m.bytes)?;
                    m.spilled = true;
                    m.bytes = Vec::new();
                }
                std::io::Result::Ok(file)
            })();
            match result {
                Ok(file) => *job.file.lock().expect("lock") = Some(file),
                Err(e) => job.fail(format!("cannot create {}: {e}", path.display())),
            }
        }
        Op::Write {
            job,
            bytes,
            segment,
            len,
        } => {
            if job.failed() {
                return;
            }
            let result = match job.file.lock().expect("lock").as_mut() {
                Some(file) => file.write_all(&bytes),
                None => Err(std::io::Error::other("no segment is open")),
            };
            match result {
                Ok(()) => job.progress.send_modify(|p| {
                    p.segment = segment;
                    p.len = len;
                }),
                Err(e) => job.fail(format!("cannot write the spool: {e}")),
            }
        }
        Op::Remove { job, path } => {
            if let Err(e) = std::fs::remove_file(&path) {
                job.fail(format!("cannot remove {}: {e}", path.display()));
            }
        }
        Op::Gap { job, path, text } => {
            if let Err(e) = std::fs::write(&path, text) {
                job.fail(format!("cannot write {}: {e}", path.display()));
            }
        }
        Op::Close { job, then } => {
            *job.file.lock().expect("lock") = None;
            job.progress.send_modify(|p| p.ended = true);
            then();
        }
        Op::Barrier(ack) => {
            let _ = ack.send(());
        }
    }
}
