//! Reading a spool back ([`SpoolReader`]): one per `attach`, living as long as its replay,
//! while the writer (in `mod.rs`, with the format) lives as long as the job.

use super::{
    Gap, HEADER_BYTES, KIND_EVENT, KIND_STDERR, KIND_STDOUT, Progress, SharedInline, segment_path,
};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// One record read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Output {
        stdout: bool,
        seq: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// A notification as JSON.
    Event(Vec<u8>),
    /// Segments were missing here.
    Gap(Gap),
}

struct Header {
    len: u32,
    kind: u8,
    seq: u64,
    offset: u64,
    total: u64,
}

impl Header {
    /// The header in `b` if all of it was read (`got` bytes) and it is one: a record's kind
    /// is never 0, so zeros where a header should be are a segment's padding.
    fn read(got: usize, b: &[u8; HEADER_BYTES]) -> Option<Header> {
        let h = (got == HEADER_BYTES).then(|| Header::parse(b))?;
        matches!(h.kind, KIND_STDOUT | KIND_STDERR | KIND_EVENT).then_some(h)
    }

    fn parse(b: &[u8; HEADER_BYTES]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Header {
            len: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            kind: b[4],
            seq: u64_at(5),
            offset: u64_at(13),
            total: u64_at(21),
        }
    }
}

/// Where the current segment's bytes are read from.
enum Source {
    File(File),
    /// Segment 1 in memory; becomes `File` once the writer has spilled it.
    Memory(SharedInline),
}

impl Source {
    /// Reads up to `buf.len()` bytes at `pos` of the segment; fewer only at its end.
    fn read_at(&mut self, dir: &Path, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        if let Source::Memory(shared) = self {
            let m = shared.lock().expect("lock");
            if !m.spilled {
                let from = (pos as usize).min(m.bytes.len());
                let n = buf.len().min(m.bytes.len() - from);
                buf[..n].copy_from_slice(&m.bytes[from..from + n]);
                return Ok(n);
            }
            drop(m);
            *self = Source::File(File::open(segment_path(dir, 1))?);
        }
        let Source::File(file) = self else {
            unreachable!("switched above")
        };
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

/// Reads a spool from the start, skipping output up to `after_seq`. For a live job it reads
/// only what [`Progress`] has published; [`SpoolReader::read_next`] returns `None` when it has
/// caught up, and [`SpoolReader::wait`] waits for more.
pub struct SpoolReader {
    dir: PathBuf,
    /// Segment 1 while in memory (a live job's), or the whole spool (kept in the job's row).
    inline: Option<SharedInline>,
    index: u32,
    file: Option<Source>,
    pos: u64,
    progress: Option<watch::Receiver<Progress>>,
    after_seq: u64,
    /// Whether records are skipped as at or before `after_seq` (only at the start).
    skipping: bool,
    last_seq: u64,
    total_seen: u64,
    /// Found when crossing missing segments; returned before the next record.
    pending_gap: Option<Gap>,
}

impl SpoolReader {
    /// A reader of the spool in `dir`; `progress`: the live writer's, `None` for a job that
    /// has ended; `inline`: segment 1 in memory (the writer's, or the bytes kept in an ended
    /// job's row). `after_seq: None` reads everything.
    pub fn open(
        dir: PathBuf,
        progress: Option<watch::Receiver<Progress>>,
        after_seq: Option<u64>,
        inline: Option<SharedInline>,
    ) -> SpoolReader {
        SpoolReader {
            dir,
            inline,
            index: 0,
            file: None,
            pos: 0,
            progress,
            after_seq: after_seq.unwrap_or(0),
            skipping: after_seq.is_some(),
            last_seq: after_seq.unwrap_or(0),
            total_seen: 0,
            pending_gap: None,
        }
    }

    /// The last `seq` read (or skipped), and the output bytes before the next record.
    pub fn position(&self) -> (u64, u64) {
        (self.last_seq, self.total_seen)
    }

    /// The next record available now; `Ok(None)` when caught up (live) or at the end.
    pub fn read_next(&mut self) -> io::Result<Option<Item>> {
        loop {
            if self.file.is_none() && !self.advance()? {
                return Ok(None);
            }
            if let Some(gap) = self.pending_gap.take() {
                self.skipping = false;
                self.last_seq = gap.next_seq - 1;
                self.total_seen += gap.bytes;
                return Ok(Some(Item::Gap(gap)));
            }
            let limit = self.limit();
            let complete = self.segment_complete();
            let file = self.file.as_mut().expect("opened");
            if let Some(limit) = limit
                && self.pos + HEADER_BYTES as u64 > limit
            {
                // Caught up with a live writer in its current segment.
                return Ok(None);
            }
            let mut hb = [0u8; HEADER_BYTES];
            let got = file.read_at(&self.dir, self.pos, &mut hb)?;
            let header = Header::read(got, &hb);
            if limit.is_some() && header.is_none() {
                // Inside what the live writer has published: never padding.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a bad record header at byte {} of a spool segment",
                        self.pos
                    ),
                ));
            }
            let Some(h) = header else {
                // End of this segment (or a torn record, or the zeros that pad a segment's
                // last block, where its writer stopped before finishing it: a crash, a spool
                // failure).
                if complete {
                    self.file = None;
                    continue;
                }
                return Ok(None);
            };
            let is_output = h.kind == KIND_STDOUT || h.kind == KIND_STDERR;
            let skip = self.skipping
                && if is_output {
                    h.seq <= self.after_seq
                } else {
                    h.seq < self.after_seq
                };
            let end = self.pos + HEADER_BYTES as u64 + u64::from(h.len);
            if skip {
                self.pos = end;
                self.total_seen = h.total + if is_output { u64::from(h.len) } else { 0 };
                continue;
            }
            self.skipping = false;
            let mut payload = vec![0u8; h.len as usize];
            let at = self.pos + HEADER_BYTES as u64;
            if file.read_at(&self.dir, at, &mut payload)? < payload.len() {
                // A torn record: the end of what was written.
                self.file = None;
                return Ok(None);
            }
            self.pos = end;
            if is_output {
                self.last_seq = h.seq;
                self.total_seen = h.total + u64::from(h.len);
                return Ok(Some(Item::Output {
                    stdout: h.kind == KIND_STDOUT,
                    seq: h.seq,
                    offset: h.offset,
                    bytes: payload,
                }));
            }
            return Ok(Some(Item::Event(payload)));
        }
    }

    /// Waits until more may be readable; `false` once the writer has ended (read to the end,
    /// then stop).
    pub async fn wait(&mut self) -> bool {
        match self.progress.as_mut() {
            Some(rx) => {
                if rx.borrow_and_update().ended {
                    return false;
                }
                rx.changed().await.is_ok()
            }
            None => false,
        }
    }

    /// The readable length of the current segment, for a live writer's current segment.
    fn limit(&self) -> Option<u64> {
        let p = *self.progress.as_ref()?.borrow();
        (p.segment == self.index).then_some(p.len)
    }

    fn segment_complete(&self) -> bool {
        match &self.progress {
            None => true,
            Some(rx) => {
                let p = *rx.borrow();
                p.segment > self.index || p.ended
            }
        }
    }

    /// Opens the next segment that exists; a jump over missing ones queues nothing here,
    /// but is reported by [`SpoolReader::read_next`] through the first record's header.
    fn advance(&mut self) -> io::Result<bool> {
        let Some(next) = self.next_existing()? else {
            return Ok(false);
        };
        if self.index != 0 && next != self.index + 1 {
            // Missing segments: the gap's extent comes from the next record's header.
            let mut file = Source::File(File::open(segment_path(&self.dir, next))?);
            let mut hb = [0u8; HEADER_BYTES];
            let got = file.read_at(&self.dir, 0, &mut hb)?;
            if let Some(h) = Header::read(got, &hb) {
                let is_output = h.kind == KIND_STDOUT || h.kind == KIND_STDERR;
                let next_seq = if is_output { h.seq } else { h.seq + 1 };
                if next_seq > self.last_seq + 1 {
                    self.pending_gap = Some(Gap {
                        after_seq: self.last_seq,
                        next_seq,
                        bytes: h.total.saturating_sub(self.total_seen),
                    });
                }
            }
        }
        self.index = next;
        self.file = Some(match (&self.inline, next) {
            (Some(inline), 1) => Source::Memory(inline.clone()),
            _ => Source::File(File::open(segment_path(&self.dir, next))?),
        });
        self.pos = 0;
        Ok(true)
    }

    fn next_existing(&self) -> io::Result<Option<u32>> {
        let wanted = self.index + 1;
        if let Some(inline) = &self.inline {
            if wanted == 1 {
                return Ok(Some(1));
            }
            if !inline.lock().expect("lock").spilled {
                // Never left memory: segment 1 was the whole spool.
                return Ok(None);
            }
        }
        match File::open(segment_path(&self.dir, wanted)) {
            Ok(_) => return Ok(Some(wanted)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut best: Option<u32> = None;
        let (Some(dir), Some(job)) = (
            self.dir.parent(),
            self.dir.file_name().and_then(|n| n.to_str()),
        ) else {
            return Ok(None);
        };
        let prefix = format!("{job}.");
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if n > self.index && best.is_none_or(|b| n < b) {
                best = Some(n);
            }
        }
        Ok(best)
    }
}
