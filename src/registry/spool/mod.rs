//! A job's output spool: the bytes its clients receive, exactly, with their `seq` boundaries,
//! in append-only segment files `<state>/spool/<job_id>.<n>.seg` (flat: no directory per job,
//! one metadata operation less on every job's path).
//!
//! # Format
//! Segments are numbered `00000001`, `00000002`, …; each is a run of records:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, u32 LE |
//! | 1 | kind: 1 stdout, 2 stderr, 3 event (a notification as JSON) |
//! | 8 | `seq`, u64 LE: an output's own; for an event, the last output `seq` before it |
//! | 8 | an output's position in its stream (0 for events) |
//! | 8 | output bytes, both streams, before this record |
//! | n | payload: the raw bytes read, or the JSON |
//!
//! Records are written whole, in batches, and published (through [`Progress`]) only after
//! they are written, so a reader never sees half of one; a crash can leave a torn last record,
//! or the zeros that pad a segment's last block while it is written (see `segment.rs`), which
//! readers treat as the end.
//!
//! # Short jobs stay off the file system
//! Segment 1 starts in memory ([`Inline`]): creating a file per job costs more than the rest
//! of the registry's work on a short job (ext4's inode allocation; measured in the README).
//! It is written out ("spilled") to its file once it holds more than [`INLINE_MAX`] bytes,
//! or when the registry's spiller finds the job still running [`INLINE_WINDOW`] after its
//! start having written output (one that has written none yet spills at its first output).
//! A job that ends before either keeps its whole spool in its database row instead
//! (the writer's [`SpoolWriter::finish`] hands it over). The price: a crash (`kill -9`) loses
//! the output of jobs younger than [`INLINE_WINDOW`], and the spooled events of jobs that
//! never wrote output, as the record's batch window loses their newest record writes.
//!
//! # Bound
//! The first segments, up to half of `max_bytes`, are the head and always kept; of the rest
//! only the newest segments within the other half are kept. Dropping the oldest tail segment
//! widens the one gap between head and tail, which `<job_id>.gap` records (`after_seq
//! next_seq bytes`); a reader that crosses missing segments learns the gap's extent from the
//! header of the next record it finds.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

mod io;
mod read;
mod segment;
pub use io::Io;
use io::{Op, Shared};
pub use read::{Item, SpoolReader};

pub const HEADER_BYTES: usize = 29;
const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_EVENT: u8 = 3;

/// How far a live spool has been written: readers may read every segment before `segment`
/// whole, and `segment` up to `len`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub segment: u32,
    pub len: u64,
    /// The writer is done: the job ended, or the spool failed (`failed`).
    pub ended: bool,
    pub failed: bool,
}

/// The most of a spool held in memory, bytes of records.
pub const INLINE_MAX: u64 = 32 << 10;

/// How long a running job's spool may stay in memory.
pub const INLINE_WINDOW: Duration = Duration::from_millis(10);

/// Segment 1 while it is in memory, shared by the writer and the live job's readers.
#[derive(Debug, Default)]
pub struct Inline {
    /// The segment's records, as the file would hold them.
    pub bytes: Vec<u8>,
    /// Written out to segment 1's file (then `bytes` is empty): read the file.
    pub spilled: bool,
}

/// [`Inline`] as writer and readers share it.
pub type SharedInline = Arc<Mutex<Inline>>;

/// A whole spool kept in memory (an ended job's, from its row), for [`SpoolReader::open`].
pub fn kept(bytes: Vec<u8>) -> SharedInline {
    Arc::new(Mutex::new(Inline {
        bytes,
        spilled: false,
    }))
}

/// Output between head and tail that is no longer kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub after_seq: u64,
    pub next_seq: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Segment {
    index: u32,
    len: u64,
    head: bool,
    last_seq: u64,
    /// The `seq` a reader resumes at when this is the first segment after a gap: the first
    /// record's own `seq` for output, one past it for an event (whose `seq` is the output
    /// before it). Seqs of empty reads (a stream's end) are never stored, so the output seqs
    /// in a spool need not be contiguous: the gap must name the next seq that exists.
    first_seq: Option<u64>,
    output_bytes: u64,
}

/// A spool's state once its job has ended and every write is done.
pub struct Closed {
    /// The whole spool, if it never left memory (for the job's database row).
    pub kept: Option<Vec<u8>>,
    /// The first error, if any.
    pub error: Option<String>,
    /// The same, if nobody has been told of it yet ([`SpoolWriter::take_new_error`]).
    pub new_error: Option<String>,
}

/// Appends one job's records: keeps the accounts (segments, head, tail, gap) itself and
/// leaves the file operations to the [`Io`] thread. Errors never reach the job: the first
/// one is kept ([`SpoolWriter::error`]) and the spool stops there.
pub struct SpoolWriter {
    dir: PathBuf,
    segment_max: u64,
    head_budget: u64,
    tail_budget: u64,
    segments: VecDeque<Segment>,
    head_bytes: u64,
    total: u64,
    last_seq: u64,
    gap: Option<Gap>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    io: Io,
    /// Records still go to segment 1 in memory.
    in_memory: bool,
    /// The job outlived [`INLINE_WINDOW`] before writing any output: the first output
    /// spills.
    spill_due: bool,
    inline_max: u64,
    ended: bool,
}

/// `base` is `<state>/spool/<job_id>`; a segment is `<base>.<index>.seg`.
fn segment_path(base: &Path, index: u32) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(format!(".{index:08}.seg"));
    PathBuf::from(name)
}

fn gap_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(".gap");
    PathBuf::from(name)
}

/// Deletes every file of the spools of `jobs` in the spool folder `dir`.
pub fn remove(dir: &Path, jobs: &std::collections::HashSet<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let job = name.to_str().and_then(|n| n.split('.').next());
        if job.is_some_and(|j| jobs.contains(j)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl SpoolWriter {
    /// Starts a spool at `dir` (`<state>/spool/<job_id>`; the folder must exist) that keeps
    /// about `max_bytes` of output, its files written by `io`. It starts in memory: no file
    /// is touched until it spills.
    pub fn create(dir: PathBuf, max_bytes: u64, io: Io) -> SpoolWriter {
        let segment_max = (max_bytes / 8).clamp(16 << 10, 64 << 20);
        let mut w = SpoolWriter {
            dir,
            segment_max,
            head_budget: max_bytes / 2,
            tail_budget: max_bytes / 2,
            segments: VecDeque::new(),
            head_bytes: 0,
            total: 0,
            last_seq: 0,
            gap: None,
            buf: io.buffer(),
            shared: Shared::new(),
            io,
            in_memory: true,
            spill_due: false,
            inline_max: INLINE_MAX.min(segment_max),
            ended: false,
        };
        w.push_segment(1);
        w
    }

    /// Segment 1 in memory, for the live job's readers.
    pub fn inline(&self) -> SharedInline {
        self.shared.inline.clone()
    }

    /// Has segment 1 written out to its file if it is still in memory (the job outlived
    /// [`INLINE_WINDOW`]); a job that has written no output yet (its spool holds only events
    /// such as `process.started`) spills at its first output instead, so a long job that
    /// prints nothing (`sleep 60`) never makes a file. A failure stops the spool as any write
    /// error does.
    pub fn persist(&mut self) {
        if self.in_memory && !self.ended && !self.shared.failed() {
            if self.total == 0 {
                self.spill_due = true;
            } else {
                self.spill();
            }
        }
    }

    fn spill(&mut self) {
        self.in_memory = false;
        let op = Op::Open {
            job: self.shared.clone(),
            path: segment_path(&self.dir, 1),
            spill: true,
        };
        self.queue(op);
    }

    fn queue(&mut self, op: Op) {
        if !self.io.send(op) {
            self.shared
                .fail("the spool's I/O thread is gone".to_string());
        }
    }

    /// A receiver that tracks what readers may read.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// The first write error, if any (file operations run behind: an error shows here once
    /// the I/O thread has met it).
    pub fn error(&self) -> Option<String> {
        self.shared.error()
    }

    /// The error, the first time it is asked for after it happened (to count it once).
    pub fn take_new_error(&self) -> Option<String> {
        self.shared.take_new_error()
    }

    /// The output no longer kept, if any.
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The last `seq` written.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Appends one read of output.
    pub fn output(&mut self, stdout: bool, seq: u64, offset: u64, bytes: &[u8]) {
        let kind = if stdout { KIND_STDOUT } else { KIND_STDERR };
        self.append(kind, seq, offset, bytes);
        self.last_seq = self.last_seq.max(seq);
        self.total += bytes.len() as u64;
        if let Some(s) = self.segments.back_mut() {
            s.output_bytes += bytes.len() as u64;
        }
        if self.spill_due && self.total > 0 {
            self.spill_due = false;
            self.persist();
        }
    }

    /// Appends a notification (JSON) that came after output `last_seq`.
    pub fn event(&mut self, json: &[u8]) {
        self.append(KIND_EVENT, self.last_seq, 0, json);
    }

    /// The job has ended: once what was queued is written, readers that reach the end are
    /// done and `then` runs with the spool's end state — at once if the spool never left
    /// memory, else on the I/O thread.
    pub fn finish(&mut self, then: impl FnOnce(Closed) + Send + 'static) {
        self.ended = true;
        let shared = self.shared.clone();
        let closed = move |kept: Option<Vec<u8>>| Closed {
            kept,
            error: shared.error(),
            new_error: shared.take_new_error(),
        };
        if self.in_memory {
            let kept = self.shared.inline.lock().expect("lock").bytes.clone();
            self.shared.progress.send_modify(|p| p.ended = true);
            then(closed(Some(kept)));
        } else {
            let op = Op::Close {
                job: self.shared.clone(),
                then: Box::new(move || then(closed(None))),
            };
            if !self.io.send(op) {
                self.shared.progress.send_modify(|p| p.ended = true);
            }
        }
    }

    fn append(&mut self, kind: u8, seq: u64, offset: u64, payload: &[u8]) {
        if self.shared.failed() {
            return;
        }
        if self
            .segments
            .back()
            .is_some_and(|s| s.len >= self.segment_max)
        {
            self.rotate();
        }
        self.buf.clear();
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf.extend_from_slice(&self.total.to_le_bytes());
        self.buf.extend_from_slice(payload);
        let record = self.buf.len() as u64;
        let seg = self.segments.back_mut().expect("a segment is open");
        let (segment, len) = (seg.index, seg.len + record);
        if self.in_memory {
            let mut m = self.shared.inline.lock().expect("lock");
            if m.bytes.len() as u64 + record <= self.inline_max {
                m.bytes.extend_from_slice(&self.buf);
                drop(m);
                self.account(kind, seq, record);
                self.shared.progress.send_modify(|p| {
                    p.segment = segment;
                    p.len = len;
                });
                return;
            }
            drop(m);
            self.spill();
        }
        let bytes = std::mem::replace(&mut self.buf, self.io.buffer());
        self.account(kind, seq, record);
        let op = Op::Write {
            job: self.shared.clone(),
            bytes,
            segment,
            len,
        };
        self.queue(op);
    }

    /// Counts a record of `len` bytes in the current segment.
    fn account(&mut self, kind: u8, seq: u64, len: u64) {
        let seg = self.segments.back_mut().expect("a segment is open");
        let resume = if kind == KIND_EVENT { seq + 1 } else { seq };
        seg.first_seq.get_or_insert(resume);
        seg.len += len;
        seg.last_seq = seg.last_seq.max(seq);
    }

    fn push_segment(&mut self, index: u32) {
        let head = self.head_bytes < self.head_budget;
        self.segments.push_back(Segment {
            index,
            len: 0,
            head,
            last_seq: self.last_seq,
            first_seq: None,
            output_bytes: 0,
        });
    }

    /// Closes the full segment, opens the next, and drops the oldest tail segments beyond
    /// the tail budget.
    fn rotate(&mut self) {
        if self.in_memory {
            self.spill();
        }
        let full = self.segments.back().expect("a segment is open");
        if full.head {
            self.head_bytes += full.len;
        }
        let next = full.index + 1;
        self.push_segment(next);
        let op = Op::Open {
            job: self.shared.clone(),
            path: segment_path(&self.dir, next),
            spill: false,
        };
        self.queue(op);
        loop {
            let tail: u64 = self
                .segments
                .iter()
                .filter(|s| !s.head)
                .map(|s| s.len)
                .sum();
            // The new (empty) segment and the full one before it always stay: the tail keeps
            // the newest output even when one read is larger than its budget.
            let tail_count = self.segments.iter().filter(|s| !s.head).count();
            if tail <= self.tail_budget || tail_count <= 2 {
                break;
            }
            let pos = self
                .segments
                .iter()
                .position(|s| !s.head)
                .expect("a tail segment");
            let after_seq = match pos {
                0 => 0,
                p => self.segments[p - 1].last_seq,
            };
            let dropped = self.segments.remove(pos).expect("in range");
            let op = Op::Remove {
                job: self.shared.clone(),
                path: segment_path(&self.dir, dropped.index),
            };
            self.queue(op);
            let gap = self.gap.get_or_insert(Gap {
                after_seq,
                next_seq: 0,
                bytes: 0,
            });
            // The segment after the dropped one is full (the new one and the full one
            // before it always stay), so it has a first record.
            gap.next_seq = self.segments[pos].first_seq.unwrap_or(dropped.last_seq + 1);
            gap.bytes += dropped.output_bytes;
            let g = *gap;
            let op = Op::Gap {
                job: self.shared.clone(),
                path: gap_path(&self.dir),
                text: format!("{} {} {}\n", g.after_seq, g.next_seq, g.bytes),
            };
            self.queue(op);
        }
    }
}

/// Whether the spool at `dir` has reached the disk (its first segment exists).
pub fn on_disk(dir: &Path) -> bool {
    segment_path(dir, 1).exists()
}

/// The gap recorded in a spool directory, if any (for a job whose writer is gone).
pub fn read_gap(dir: &Path) -> Option<Gap> {
    let text = std::fs::read_to_string(gap_path(dir)).ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    Some(Gap {
        after_seq: it.next()??,
        next_seq: it.next()??,
        bytes: it.next()??,
    })
}

#[cfg(test)]
mod tests;
