//! `ccx audit verify`: checks the hash chain of audit files and names the first broken
//! record — its file, line and `seq`, and what is wrong with it.
//!
//! Each file must begin with a `chain-start`; every later record's `seq` must be one more
//! than the one before and its `prev` the SHA-256 of the line before; a file's chain-start
//! must continue the file before it (its `prev` is that file's last hash). A line that is not
//! a record passes only if the writer acknowledged it (a `torn-tail` record right after it,
//! naming its hash). With `expect_last` (the last hash the server's state store kept, or a
//! copy shipped elsewhere), that hash must be the last line's — or an earlier line's, when
//! records were written after it was taken — else the tail was cut off.

use super::files::split_rotated;
use super::format::sha256_hex;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A line of an audit file. `line` is 1-based; `seq` is the record's, if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub seq: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        match self.seq {
            Some(seq) => write!(f, " (seq {seq})"),
            None => Ok(()),
        }
    }
}

/// What is wrong at the first broken record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a record: {0}")]
    NotARecord(String),
    #[error(
        "the last line is incomplete (no newline, not a record): a write torn by a crash, or the file was cut mid-line"
    )]
    TornLine,
    #[error("the file is empty")]
    EmptyFile,
    #[error("the file does not begin with a chain-start record (its first record is a {found:?})")]
    MissingChainStart { found: String },
    #[error("a chain-start record after the first line of a file (the writer writes none there)")]
    UnexpectedChainStart,
    #[error("the chain-start's seed is missing or not 64 hex digits")]
    BadSeed,
    #[error("seq {found} where {expected} was expected: {}", seq_cause(*expected, *found))]
    SeqGap { expected: u64, found: u64 },
    #[error(
        "prev is {found}, not the hash of line {prev_line} ({expected}): line {prev_line} was edited, or lines were deleted, inserted or reordered just before this one"
    )]
    HashMismatch {
        prev_line: u64,
        expected: String,
        found: String,
    },
    #[error("prev is {found}, not the last hash of the previous file {} ({expected}): a file is missing between them, or one of them was changed", previous.display())]
    BrokenLink {
        previous: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "the last line's hash is {found}, and the expected last hash {expected} is not a line of the log: records were removed from its end (truncated), or it was rewritten"
    )]
    TruncatedTail { expected: String, found: String },
}

fn seq_cause(expected: u64, found: u64) -> String {
    if found > expected {
        let missing = match found - expected {
            1 => format!("record {expected} is"),
            n => format!("{n} records ({expected}..={}) are", found - 1),
        };
        format!("{missing} missing (deleted), or lines were reordered")
    } else {
        "a line was inserted, duplicated or moved here".into()
    }
}

/// Why verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no audit files to check")]
    NoFiles,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The first broken record.
    #[error("{at}: {problem}")]
    Broken { at: Location, problem: Problem },
}

/// A file that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Something the writer itself noted in the chain, or a line it acknowledged as torn: not a
/// break, but worth a look (records lost, a tail found cut at a restart, files deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    pub at: Location,
    /// `torn-line`, `chain-mismatch`, `dropped`, `write-failed`, `reopened`, `pruned`.
    pub kind: String,
    pub detail: String,
}

/// The files passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// In the order checked.
    pub files: Vec<FileReport>,
    /// Records checked (lines acknowledged as torn not counted).
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash of the last line: keep it to check the next run's tail.
    pub last_hash: String,
    /// The first chain-start continues a chain rather than beginning one (its `prev` is not
    /// its seed): the files before it were not given (or were deleted). Its `prev`.
    pub continues_from: Option<String>,
    /// With `expect_last`: the records after the one it names (0: it is the last).
    pub records_after_expected: Option<u64>,
    pub incidents: Vec<Incident>,
}

/// Checks `paths` in order as one chain; a directory stands for the audit files in it
/// (those beginning with a chain-start), rotated files first in name order, then the
/// current one. `expect_last`: the last hash kept elsewhere (see the module doc).
///
/// Errors: [`VerifyError::Broken`] at the first broken record; a file cannot be read; no
/// files.
pub fn verify(paths: &[PathBuf], expect_last: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let files = expand(paths)?;
    let mut chain = Chain {
        expect_last,
        prev_hash: None,
        prev_file: None,
        last_seq: None,
        expected_at: None,
        last_line: 0,
        report: VerifyReport::default(),
    };
    for file in &files {
        chain.check_file(file)?;
    }
    let Some(last_file) = files.last() else {
        return Err(VerifyError::NoFiles);
    };
    let mut report = chain.report;
    report.last_hash = chain.prev_hash.unwrap_or_default();
    report.last_seq = chain.last_seq.unwrap_or(0);
    if let Some(exp) = expect_last {
        match chain.expected_at {
            Some(at) => report.records_after_expected = Some(report.records - at),
            None => {
                return Err(VerifyError::Broken {
                    at: Location {
                        file: last_file.clone(),
                        line: chain.last_line,
                        seq: chain.last_seq,
                    },
                    problem: Problem::TruncatedTail {
                        expected: exp.into(),
                        found: report.last_hash,
                    },
                });
            }
        }
    }
    Ok(report)
}

/// `paths` with directories replaced by the audit files in them, in chain order.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(path.clone());
            continue;
        }
        let mut found: Vec<(String, u8, String)> = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io_err(path))? {
            let entry = entry.map_err(io_err(path))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_file()) && begins_chain(&entry.path()) {
                found.push(match split_rotated(&name) {
                    Some((base, suffix)) => (base.into(), 0, suffix.into()),
                    None => (name, 1, String::new()),
                });
            }
        }
        found.sort();
        for (base, rank, suffix) in found {
            let name = if rank == 0 {
                format!("{base}.{suffix}")
            } else {
                base
            };
            out.push(path.join(name));
        }
    }
    if out.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    Ok(out)
}

/// Whether the file's first line is a chain-start record.
fn begins_chain(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut line = Vec::new();
    let _ = BufReader::new(f.take(64 << 10)).read_until(b'\n', &mut line);
    parse(line.strip_suffix(b"\n").unwrap_or(&line)).is_ok_and(|r| r.kind == "chain-start")
}

/// The fields every record has.
struct Record {
    seq: u64,
    kind: String,
    prev: String,
    fields: Map<String, Value>,
}

fn parse(line: &[u8]) -> Result<Record, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(fields) = v else {
        return Err("not a JSON object".into());
    };
    let seq = fields.get("seq").and_then(Value::as_u64);
    let str_field = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(seq), Some(kind), Some(prev), Some(_)) =
        (seq, str_field("kind"), str_field("prev"), str_field("time"))
    else {
        return Err("a JSON object without a numeric seq and string kind, prev and time".into());
    };
    Ok(Record {
        seq,
        kind,
        prev,
        fields,
    })
}

/// Whether `line` is a `torn-tail` record acknowledging a line of hash `hash`.
fn acknowledges(line: &Line, hash: &str) -> bool {
    line.parsed.as_ref().is_ok_and(|r| {
        r.kind == "torn-tail"
            && r.fields.get("fragment_sha256").and_then(Value::as_str) == Some(hash)
    })
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A line of a file: its bytes without the newline, whether it had one, and the record in
/// it (or why there is none).
struct Line {
    bytes: Vec<u8>,
    terminated: bool,
    parsed: Result<Record, String>,
}

fn read_line(r: &mut impl BufRead) -> io::Result<Option<Line>> {
    let mut bytes = Vec::new();
    if r.read_until(b'\n', &mut bytes)? == 0 {
        return Ok(None);
    }
    let terminated = bytes.last() == Some(&b'\n');
    if terminated {
        bytes.pop();
    }
    let parsed = parse(&bytes);
    Ok(Some(Line {
        bytes,
        terminated,
        parsed,
    }))
}

/// The state of the check across files.
struct Chain<'a> {
    expect_last: Option<&'a str>,
    /// Hash of the last line checked, and the file it was in.
    prev_hash: Option<String>,
    prev_file: Option<PathBuf>,
    last_seq: Option<u64>,
    /// `records` when the line hashed `expect_last` was checked.
    expected_at: Option<u64>,
    last_line: u64,
    report: VerifyReport,
}

impl Chain<'_> {
    fn check_file(&mut self, path: &Path) -> Result<(), VerifyError> {
        let io_err = |source| VerifyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = BufReader::with_capacity(64 << 10, File::open(path).map_err(io_err)?);
        let broken = |line, seq, problem| VerifyError::Broken {
            at: Location {
                file: path.to_path_buf(),
                line,
                seq,
            },
            problem,
        };
        let mut cur = read_line(&mut reader).map_err(io_err)?;
        if cur.is_none() {
            return Err(broken(1, None, Problem::EmptyFile));
        }
        let (mut lineno, mut started) = (0, false);
        let mut summary = FileReport {
            path: path.to_path_buf(),
            records: 0,
            first_seq: 0,
            last_seq: 0,
        };
        while let Some(line) = cur {
            lineno += 1;
            self.last_line = lineno;
            let next = read_line(&mut reader).map_err(io_err)?;
            let hash = sha256_hex(&line.bytes);
            if next.as_ref().is_some_and(|n| acknowledges(n, &hash)) {
                let detail = format!(
                    "{} bytes that are not a record, acknowledged by the next record (a write \
                     torn by a crash or an error)",
                    line.bytes.len()
                );
                self.incident(path, lineno, None, "torn-line", detail);
                self.prev_hash = Some(hash);
                cur = next;
                continue;
            }
            let rec = line.parsed.map_err(|why| {
                let problem = if line.terminated {
                    Problem::NotARecord(why)
                } else {
                    Problem::TornLine
                };
                broken(lineno, None, problem)
            })?;
            let fail = |problem| Err(broken(lineno, Some(rec.seq), problem));
            if !started {
                if rec.kind != "chain-start" {
                    return fail(Problem::MissingChainStart { found: rec.kind });
                }
                let seed = rec.fields.get("seed").and_then(Value::as_str).unwrap_or("");
                if !is_hex64(seed) {
                    return fail(Problem::BadSeed);
                }
                match (&self.prev_hash, &self.prev_file) {
                    (Some(h), Some(previous)) if *h != rec.prev => {
                        return fail(Problem::BrokenLink {
                            previous: previous.clone(),
                            expected: h.clone(),
                            found: rec.prev,
                        });
                    }
                    (None, _) if rec.prev != seed => {
                        self.report.continues_from = Some(rec.prev.clone());
                    }
                    _ => {}
                }
            } else if rec.kind == "chain-start" {
                return fail(Problem::UnexpectedChainStart);
            }
            if let Some(last) = self.last_seq
                && rec.seq != last + 1
            {
                return fail(Problem::SeqGap {
                    expected: last + 1,
                    found: rec.seq,
                });
            }
            if started && self.prev_hash.as_deref() != Some(rec.prev.as_str()) {
                return fail(Problem::HashMismatch {
                    prev_line: lineno - 1,
                    expected: self.prev_hash.clone().unwrap_or_default(),
                    found: rec.prev,
                });
            }
            if !started {
                started = true;
                summary.first_seq = rec.seq;
            }
            if self.report.records == 0 {
                self.report.first_seq = rec.seq;
            }
            self.note(path, lineno, &rec);
            self.report.records += 1;
            summary.records += 1;
            summary.last_seq = rec.seq;
            self.last_seq = Some(rec.seq);
            if self.expect_last == Some(hash.as_str()) {
                self.expected_at = Some(self.report.records);
            }
            self.prev_hash = Some(hash);
            cur = next;
        }
        self.prev_file = Some(path.to_path_buf());
        self.report.files.push(summary);
        Ok(())
    }

    /// Notes the records that tell of an incident.
    fn note(&mut self, path: &Path, line: u64, rec: &Record) {
        let field = |k: &str| match rec.fields.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "?".into(),
        };
        let (kind, detail) = match rec.kind.as_str() {
            "dropped" => (
                "dropped",
                format!("{} records lost: the queue was full", field("count")),
            ),
            "write-failed" => (
                "write-failed",
                format!(
                    "{} records lost: writes failed ({})",
                    field("count"),
                    field("error")
                ),
            ),
            "chain-mismatch" => (
                "chain-mismatch",
                format!(
                    "at a (re)start the writer expected last hash {} and found {}: {}",
                    field("expected"),
                    field("found"),
                    field("note")
                ),
            ),
            "chain-start" if rec.fields.get("cause").and_then(Value::as_str) == Some("reopen") => (
                "reopened",
                format!(
                    "the file was begun again after it went missing or was emptied; it continues from {}",
                    rec.prev
                ),
            ),
            _ => ("", String::new()),
        };
        if !kind.is_empty() {
            self.incident(path, line, Some(rec.seq), kind, detail);
        }
        if let Some(Value::Array(names)) = rec.fields.get("pruned") {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let detail = format!("rotated files deleted (keep_files): {}", names.join(", "));
            self.incident(path, line, Some(rec.seq), "pruned", detail);
        }
    }

    fn incident(&mut self, file: &Path, line: u64, seq: Option<u64>, kind: &str, detail: String) {
        self.report.incidents.push(Incident {
            at: Location {
                file: file.to_path_buf(),
                line,
                seq,
            },
            kind: kind.into(),
            detail,
        });
    }
}
