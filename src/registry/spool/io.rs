//! The spools' file operations, on a thread of their own ([`Io`]): a job's output task only
//! queues its records, so the disk's cost runs beside the job's live stream instead of in
//! it. The queue is bounded ([`QUEUE_OPS`] operations, each at most one read of output): when
//! the disk falls behind, queuing blocks, which is the same backpressure a direct write gave.
//!
//! Operations run in the order queued, so each job's records land in order; what a reader
//! may read ([`Progress`]) is published only after its bytes are written. Records of one job
//! that follow one another in the queue are gathered and written at once (at most
//! [`BATCH_BYTES`]); a large batch bypasses the page cache ([`SegmentFile`]).

use super::segment::{SegmentFile, Staging};
use super::{Progress, SharedInline};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The most bytes one write gathers (give or take a record).
pub const BATCH_BYTES: usize = 2 << 20;

/// The least a batch must hold to be written with `O_DIRECT`: below it, the device's round
/// trip costs more than the page cache's copy (on this project's machines, 1 GB in 64 KiB
/// direct writes took 1.23 s of system time, in 256 KiB ones 0.30 s, through the page cache
/// 0.86 s plus its writeback).
pub const DIRECT_MIN: usize = 256 << 10;

/// How long a batch smaller than [`DIRECT_MIN`] waits for more of its job's records (its
/// readers see them that much later; any other operation ends the wait).
pub const GATHER: Duration = Duration::from_millis(5);

/// The staging buffer's memory kept between batches.
const STAGING_KEEP: usize = 2 * BATCH_BYTES;

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
    file: Mutex<Option<SegmentFile>>,
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
    /// Record buffers the thread is done with, for the writers to fill again (at most
    /// [`SPARE_BUFFERS`]): a fresh 64 KiB allocation per read of output costs page faults.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// How many record buffers wait for reuse.
const SPARE_BUFFERS: usize = 16;

/// A record buffer's capacity: a header and one read of output.
const RECORD_CAPACITY: usize = super::HEADER_BYTES + 64 * 1024;

impl Io {
    /// Starts the thread (`ccx-spool-io`).
    pub fn start() -> std::io::Result<Io> {
        let (tx, rx) = sync_channel::<Op>(QUEUE_OPS);
        let spare = Arc::new(Mutex::new(Vec::with_capacity(SPARE_BUFFERS)));
        let mut thread = Thread {
            staging: Staging::new(),
            refused: false,
            spare: spare.clone(),
        };
        std::thread::Builder::new()
            .name("ccx-spool-io".into())
            .spawn(move || thread.serve(&rx))?;
        Ok(Io { tx, spare })
    }

    /// An empty buffer for a record: one the thread is done with, or a new one.
    pub(super) fn buffer(&self) -> Vec<u8> {
        let reused = self.spare.lock().expect("lock").pop();
        reused.unwrap_or_else(|| Vec::with_capacity(RECORD_CAPACITY))
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

/// What the I/O thread keeps between operations.
struct Thread {
    /// Where a batch is gathered.
    staging: Staging,
    /// `O_DIRECT` was refused once: the state directory's file system does not take it, and
    /// no later batch asks for it.
    refused: bool,
    /// Shared with [`Io::buffer`].
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Thread {
    /// The thread's loop: runs each operation, gathering a job's queued writes into batches.
    fn serve(&mut self, rx: &Receiver<Op>) {
        let mut next: Option<Op> = None;
        loop {
            let op = match next.take() {
                Some(op) => op,
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                },
            };
            next = match op {
                Op::Write {
                    job,
                    bytes,
                    segment,
                    len,
                } => self.write_batch(rx, job, bytes, segment, len),
                op => {
                    self.run(op);
                    None
                }
            };
        }
    }

    /// Gives a record buffer back for reuse (at most [`SPARE_BUFFERS`] wait).
    fn recycle(&self, mut bytes: Vec<u8>) {
        let mut spare = self.spare.lock().expect("lock");
        if spare.len() < SPARE_BUFFERS && bytes.capacity() <= 2 * RECORD_CAPACITY {
            bytes.clear();
            spare.push(bytes);
        }
    }

    /// Writes what `staging` gathered to `file` (begun with [`SegmentFile::begin`]), with
    /// `O_DIRECT` if `direct` and it was never refused; empties `staging`.
    fn commit(&mut self, file: &mut SegmentFile, direct: bool) -> std::io::Result<()> {
        let written = file.commit(&mut self.staging, direct && !self.refused);
        self.refused |= file.refused();
        self.staging.clear(STAGING_KEEP);
        written
    }

    /// Writes `bytes` and the records of the same job and segment that follow it in the queue
    /// (about [`BATCH_BYTES`] at most; while fewer than [`DIRECT_MIN`] are gathered, waiting
    /// up to [`GATHER`] for more) with one write, then publishes them. Returns the operation
    /// that ended the batch, if one was taken from the queue.
    ///
    /// A write error stops the spool at the last batch published: records of the failed
    /// batch that reached the file anyway may be replayed after the job, though no live
    /// reader saw them.
    fn write_batch(
        &mut self,
        rx: &Receiver<Op>,
        job: Arc<Shared>,
        bytes: Vec<u8>,
        segment: u32,
        mut len: u64,
    ) -> Option<Op> {
        if job.failed() {
            self.recycle(bytes);
            return None;
        }
        let begun = {
            let slot = job.file.lock().expect("lock");
            slot.as_ref()
                .map(|file| file.begin(&mut self.staging))
                .is_some()
        };
        if !begun {
            job.fail("cannot write the spool: no segment is open".to_string());
            return None;
        }
        self.staging.push(&bytes);
        self.recycle(bytes);
        let deadline = Instant::now() + GATHER;
        let mut next = None;
        while self.staging.len() < BATCH_BYTES {
            let op = match rx.try_recv() {
                Ok(op) => op,
                Err(TryRecvError::Empty) if self.staging.len() < DIRECT_MIN => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(op) => op,
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            };
            match op {
                Op::Write {
                    job: j,
                    bytes,
                    segment: s,
                    len: l,
                } if Arc::ptr_eq(&j, &job) && s == segment => {
                    self.staging.push(&bytes);
                    self.recycle(bytes);
                    len = l;
                }
                op => {
                    next = Some(op);
                    break;
                }
            }
        }
        let direct = self.staging.len() >= DIRECT_MIN;
        let result = {
            let mut slot = job.file.lock().expect("lock");
            slot.as_mut().map(|file| self.commit(file, direct))
        };
        match result {
            Some(Ok(())) => job.progress.send_modify(|p| {
                p.segment = segment;
                p.len = len;
            }),
            Some(Err(e)) => job.fail(format!("cannot write the spool: {e}")),
            // The spool failed meanwhile.
            None => self.staging.clear(STAGING_KEEP),
        }
        next
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Open { job, path, spill } => {
                if job.failed() {
                    return;
                }
                let result = (|| {
                    let mut file = SegmentFile::create(&path)?;
                    if spill {
                        let mut m = job.inline.lock().expect("lock");
                        file.begin(&mut self.staging);
                        self.staging.push(&m.bytes);
                        self.commit(&mut file, false)?;
                        m.spilled = true;
                        m.bytes = Vec::new();
                    }
                    std::io::Result::Ok(file)
                })();
                match result {
                    Ok(file) => {
                        let done = job.file.lock().expect("lock").replace(file);
                        if let Some(Err(e)) = done.map(SegmentFile::finish) {
                            job.fail(format!("cannot finish a spool segment: {e}"));
                        }
                    }
                    Err(e) => job.fail(format!("cannot create {}: {e}", path.display())),
                }
            }
            Op::Write { .. } => unreachable!("`serve` writes in batches"),
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
                let file = job.file.lock().expect("lock").take();
                if let Some(Err(e)) = file.map(SegmentFile::finish) {
                    job.fail(format!("cannot finish the spool: {e}"));
                }
                job.progress.send_modify(|p| p.ended = true);
                then();
            }
            Op::Barrier(ack) => {
                let _ = ack.send(());
            }
        }
    }
}
