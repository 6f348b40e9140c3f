//! The writer thread: owns the current audit file, appends each queued record to the chain,
//! rotates by size, and reopens the file after an error or when it was moved, truncated or
//! replaced under it. Nothing here blocks a job: producers only ever `try_send`.

use super::files::{self, Scan};
use super::format::{self, new_seed, rfc3339_ms, sha256_hex};
use super::shared::{Msg, Shared};
use serde_json::{Map, Value, json};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};
use tracing::warn;

/// Records written between two syncs (and calls of the `on_written` callback) at most.
const BATCH: usize = 64;

/// How long the writer gathers records after the first of a batch before it writes and
/// syncs them: one `fdatasync` per window rather than per record, so a busy server's jobs do
/// not pay a disk flush each (measured: +8% on an `execute "true"` round trip without it).
/// A flush request is served at once.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// At most one warning about failing writes this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The file a new file's chain-start continues from.
struct Prior {
    name: String,
    seq: u64,
    hash: String,
    /// Whether the hash the resume expected is one of that file's lines.
    expected_found: bool,
}

/// The writer's state: the open file and where the chain stands.
pub struct Writer {
    path: PathBuf,
    max_file_bytes: u64,
    keep_files: usize,
    shared: Arc<Shared>,
    file: Option<File>,
    /// Bytes in the current file, as this writer left it.
    size: u64,
    /// Lines in the current file (0 before its chain-start).
    lines: u64,
    /// `seq` of the current file's first record.
    first_seq: u64,
    /// `seq` and hash of the last line written.
    seq: u64,
    last: Option<String>,
    /// The hash the next reopen expects instead of `last` (the state store's, at start).
    expect: Option<String>,
    opened_once: bool,
    /// Records whose write failed, not yet noted in the chain, and why.
    lost: u64,
    lost_error: String,
    /// Records refused by the full queue, not yet noted in the chain.
    dropped: u64,
    /// Rotated files deleted (`keep_files`), to be named by the next chain-start.
    pruned: Vec<String>,
    /// Written since the last sync.
    dirty: bool,
    published: Option<String>,
    warned_at: Option<Instant>,
    warn_skipped: u64,
}

impl Writer {
    pub fn new(
        path: PathBuf,
        max_file_bytes: u64,
        keep_files: usize,
        shared: Arc<Shared>,
    ) -> Writer {
        Writer {
            path,
            max_file_bytes,
            keep_files,
            shared,
            file: None,
            size: 0,
            lines: 0,
            first_seq: 0,
            seq: 0,
            last: None,
            expect: None,
            opened_once: false,
            lost: 0,
            lost_error: String::new(),
            dropped: 0,
            pruned: Vec::new(),
            dirty: false,
            published: None,
            warned_at: None,
            warn_skipped: 0,
        }
    }

    /// Opens the file and continues its chain, `expected` being the last hash the state
    /// store kept. Errors: the file cannot be opened or read (a failed write of the
    /// records the start adds is only counted, and retried with the next record).
    pub fn start(&mut self, expected: Option<String>) -> io::Result<()> {
        self.expect = expected;
        if let Err(e) = self.ensure_open() {
            if !self.opened_once {
                let msg = format!("audit log {}: {e}", self.path.display());
                return Err(io::Error::new(e.kind(), msg));
            }
            self.note_error("open", &e);
        }
        self.settle();
        Ok(())
    }

    /// Handles messages until every sender is gone, syncing after each batch.
    pub fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            if matches!(first, Msg::Record { .. }) {
                std::thread::sleep(GATHER);
            }
            let mut done = Vec::new();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(msg) = next {
                match msg {
                    Msg::Record {
                        kind,
                        body,
                        time,
                        dropped_before,
                    } => {
                        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                        self.dropped += dropped_before;
                        self.write(Some((&kind, &body, time)));
                    }
                    Msg::Flush {
                        dropped_before,
                        done: d,
                    } => {
                        self.dropped += dropped_before;
                        if self.dropped > 0 || self.lost > 0 {
                            self.write(None);
                        }
                        done.push(d);
                    }
                }
                n += 1;
                next = if n < BATCH { rx.try_recv().ok() } else { None };
            }
            self.settle();
            for d in done {
                let _ = d.send(());
            }
        }
        self.settle();
    }

    /// Writes the pending notes and then `rec`, if any; a failure is counted (and `rec`
    /// lost), the file reopened with the next record.
    fn write(&mut self, rec: Option<(&str, &Value, SystemTime)>) {
        if let Err(e) = self.try_write(rec) {
            if rec.is_some() {
                self.lost += 1;
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
            }
            self.note_error("write", &e);
            self.file = None;
        }
    }

    fn try_write(&mut self, rec: Option<(&str, &Value, SystemTime)>) -> io::Result<()> {
        self.ensure_open()?;
        if self.lost > 0 {
            let body = json!({"count": self.lost, "error": self.lost_error,
                "note": "records lost: their writes failed"});
            self.emit("write-failed", &body)?;
            self.lost = 0;
        }
        if self.dropped > 0 {
            let body = json!({"count": self.dropped,
                "note": "records lost: the writer's queue was full"});
            self.emit("dropped", &body)?;
            self.dropped = 0;
        }
        let Some((kind, body, time)) = rec else {
            return Ok(());
        };
        let mut line = self.compose(kind, body, time);
        let over = self.size + line.len() as u64 + 1 > self.max_file_bytes;
        // A file holding only its chain-start takes the record whatever its size.
        if self.max_file_bytes > 0 && self.lines > 1 && over && self.rotate()? {
            line = self.compose(kind, body, time);
        }
        self.append(line)
    }

    fn compose(&self, kind: &str, body: &Value, time: SystemTime) -> String {
        let prev = self.last.as_deref().unwrap_or_default();
        format::line(self.seq + 1, &rfc3339_ms(time), kind, prev, body)
    }

    /// Appends `line` (without its newline) as record `seq + 1`.
    fn append(&mut self, mut line: String) -> io::Result<()> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("not open"))?;
        let hash = sha256_hex(line.as_bytes());
        line.push('\n');
        let mut f: &File = file;
        f.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        self.lines += 1;
        self.seq += 1;
        self.last = Some(hash.clone());
        self.dirty = true;
        self.shared.written.fetch_add(1, Ordering::Relaxed);
        self.shared.set_tip(self.seq, Some(hash));
        Ok(())
    }

    /// Appends a record of the writer's own, timed now.
    fn emit(&mut self, kind: &str, body: &Value) -> io::Result<()> {
        let line = self.compose(kind, body, SystemTime::now());
        self.append(line)
    }

    /// Makes sure the file is open and is still the one at the path, as this writer left it;
    /// otherwise (re)opens it and continues the chain.
    fn ensure_open(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            let size = files::size_if_still_at(f, &self.path);
            if size == Some(self.size) {
                return Ok(());
            }
            let what = if size.is_some() {
                "changed by someone else"
            } else {
                "moved or deleted"
            };
            warn!(path = %self.path.display(), "audit log: the file was {what}; reopening it");
            self.file = None;
        }
        let expected = self.expect.take().or_else(|| self.last.clone());
        self.resume(expected.clone(), None).inspect_err(|_| {
            self.file = None;
            self.expect = expected;
        })
    }

    /// Opens the file and continues the chain: from its last line, or — an empty file —
    /// with a chain-start after `prior` (else the newest rotated file, else `expected`,
    /// else a new seed). Adds a `torn-tail` record after a last line that is not a record,
    /// and a `chain-mismatch` record if `expected` is not a line of the file continued.
    fn resume(&mut self, expected: Option<String>, prior: Option<Prior>) -> io::Result<()> {
        let file = files::open_append(&self.path)?;
        let mut scan = files::scan(&file, expected.as_deref())?;
        self.opened_once = true;
        if scan.fragment.is_some() && scan.lines == 0 {
            warn!(path = %self.path.display(), "audit log: the file held only a torn line; emptied");
            file.set_len(0)?;
            scan = Scan::default();
        }
        let torn = scan.fragment.take();
        if torn.is_some() {
            (&file).write_all(b"\n")?;
            scan.len += 1;
            scan.lines += 1;
        }
        self.file = Some(file);
        self.size = scan.len;
        self.lines = scan.lines;
        self.dirty = true;
        let Some(last_hash) = scan.last_hash.clone() else {
            return self.start_file(expected, prior);
        };
        self.seq = scan.last_seq.unwrap_or(self.seq);
        self.first_seq = scan.first_seq.unwrap_or(self.seq);
        let unrecorded = match &torn {
            Some(frag) => Some((frag.len() as u64, sha256_hex(frag))),
            None if !scan.last_is_record => Some((scan.last_len, last_hash.clone())),
            None => None,
        };
        self.last = Some(unrecorded.as_ref().map_or(last_hash, |(_, h)| h.clone()));
        self.shared.set_tip(self.seq, self.last.clone());
        if let Some((bytes, hash)) = unrecorded {
            let body = json!({"fragment_bytes": bytes, "fragment_sha256": hash,
                "note": "the line before this one is not a record (a write torn by a crash \
                         or an error); the chain goes on from its hash"});
            self.emit("torn-tail", &body)?;
        }
        if let Some(exp) = expected.filter(|_| scan.expected_line.is_none()) {
            let body = json!({"expected": exp, "found": scan.last_hash,
                "note": "the last hash kept elsewhere is not a line of this file: records \
                         were removed from its end, or the file was replaced"});
            self.emit("chain-mismatch", &body)?;
        }
        Ok(())
    }

    /// Begins the empty current file with a chain-start (see [`Writer::resume`]).
    fn start_file(&mut self, expected: Option<String>, prior: Option<Prior>) -> io::Result<()> {
        let prior = prior.or_else(|| self.newest_rotated(expected.as_deref()));
        let seed = new_seed();
        let mut body = Map::new();
        body.insert("seed".into(), seed.clone().into());
        let (prev, cause) = match (&prior, &expected) {
            (Some(p), _) => {
                self.seq = p.seq;
                body.insert("previous_file".into(), p.name.clone().into());
                (p.hash.clone(), "rotation")
            }
            (None, Some(h)) => (h.clone(), "reopen"),
            (None, None) => (seed, "new"),
        };
        body.insert("cause".into(), cause.into());
        if !self.pruned.is_empty() {
            body.insert("pruned".into(), self.pruned.clone().into());
        }
        self.first_seq = self.seq + 1;
        let line = format::line(
            self.seq + 1,
            &rfc3339_ms(SystemTime::now()),
            "chain-start",
            &prev,
            &Value::Object(body),
        );
        self.append(line)?;
        self.pruned.clear();
        let found = prior.as_ref().is_some_and(|p| p.expected_found);
        if let Some(exp) = expected.filter(|_| !found) {
            let note = match &prior {
                None => "the audit file was missing or empty where records were expected",
                Some(_) => "the last hash kept elsewhere is not a line of the previous file",
            };
            let body = json!({"expected": exp, "found": prior.map(|p| p.hash), "note": note});
            self.emit("chain-mismatch", &body)?;
        }
        Ok(())
    }

    /// The last line of the newest rotated file that has one.
    fn newest_rotated(&self, expected: Option<&str>) -> Option<Prior> {
        let rotated = files::rotated_files(&self.path).ok()?;
        rotated.iter().rev().find_map(|path| {
            let scan = files::scan_path(path, expected).ok()?;
            Some(Prior {
                name: path.file_name()?.to_string_lossy().into_owned(),
                seq: scan.last_seq.unwrap_or(0),
                hash: scan.last_hash?,
                expected_found: scan.expected_line.is_some(),
            })
        })
    }

    /// Renames the current file to its rotated name, deletes rotated files past
    /// `keep_files`, and starts a new file. `false` if the rename failed (counted; the
    /// record goes to the current file).
    fn rotate(&mut self) -> io::Result<bool> {
        if let Some(f) = &self.file
            && let Err(e) = f.sync_data()
        {
            self.note_error("sync", &e);
        }
        let target = files::rotated_name(&self.path, self.first_seq, SystemTime::now());
        if let Err(e) = std::fs::rename(&self.path, &target) {
            self.note_error("rotate", &e);
            return Ok(false);
        }
        self.file = None;
        self.prune();
        let prior = Prior {
            name: target
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            seq: self.seq,
            hash: self.last.clone().unwrap_or_default(),
            expected_found: true,
        };
        self.resume(self.last.clone(), Some(prior))?;
        Ok(true)
    }

    /// Deletes the oldest rotated files past `keep_files` (0: keeps all).
    fn prune(&mut self) {
        if self.keep_files == 0 {
            return;
        }
        let rotated = match files::rotated_files(&self.path) {
            Ok(r) => r,
            Err(e) => return self.note_error("list rotated files", &e),
        };
        let excess = rotated.len().saturating_sub(self.keep_files);
        for path in &rotated[..excess] {
            match std::fs::remove_file(path) {
                Ok(()) => self.pruned.push(
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into(),
                ),
                Err(e) => self.note_error("delete a rotated file", &e),
            }
        }
    }

    /// Syncs what was written and tells the callback the new last hash.
    fn settle(&mut self) {
        if self.dirty
            && let Some(f) = &self.file
        {
            if let Err(e) = f.sync_data() {
                self.note_error("sync", &e);
                self.file = None;
                return;
            }
            self.dirty = false;
        }
        let (_, hash) = self.shared.tip();
        if hash.is_some() && hash != self.published {
            self.shared.publish();
            self.published = hash;
        }
    }

    /// Counts a failed operation, keeps it as the last error, and warns (at most once a
    /// minute, saying how many failures went unreported in between).
    fn note_error(&mut self, what: &str, e: &io::Error) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what} {}: {e}", self.path.display());
        self.shared.set_error(msg.clone());
        self.lost_error = msg;
        let now = Instant::now();
        if self
            .warned_at
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.warn_skipped += 1;
            return;
        }
        warn!(error = %self.lost_error, more_since_last_warning = self.warn_skipped,
            "audit log: {what} failed");
        self.warned_at = Some(now);
        self.warn_skipped = 0;
    }
}
