//! The audit files on disk: opening the current one, reading where its chain stands, and the
//! names of rotated files (`<name>.<first seq, 12 digits>-<UTC time closed>`, which sort in
//! chain order).

use super::format::{compact_utc, sha256_hex};
use serde_json::Value;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Opens `path` for reading and appending, creating it (mode 0600) and its missing parent
/// directories (mode 0700). An existing file keeps its mode.
pub fn open_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The size of the open `file` if `path` still names it (it was not deleted, renamed away
/// or replaced); `None` otherwise.
pub fn size_if_still_at(file: &File, path: &Path) -> Option<u64> {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Some(a.size()),
        _ => None,
    }
}

/// What a pass over an audit file found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Bytes in the file.
    pub len: u64,
    /// Newline-terminated lines.
    pub lines: u64,
    /// The `seq` of the first line, if it is a record.
    pub first_seq: Option<u64>,
    /// The hash of the last newline-terminated line.
    pub last_hash: Option<String>,
    /// That line's length in bytes.
    pub last_len: u64,
    /// Whether that line is a record (a JSON object with a numeric `seq` and a `prev`).
    pub last_is_record: bool,
    /// The `seq` of the last line, or of the line before it if the last is not a record.
    pub last_seq: Option<u64>,
    /// Bytes after the last newline: a line torn by a crash or a failed write.
    pub fragment: Option<Vec<u8>>,
    /// The line (1-based) whose hash is the `expected` hash the scan was given, if any is.
    pub expected_line: Option<u64>,
}

/// A line's `seq`, if the line is a record.
pub fn record_seq(line: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(line).ok()?;
    v.get("prev")?.as_str()?;
    v.get("seq")?.as_u64()
}

/// Reads `reader` to its end, hashing each line and looking for `expected` among the hashes.
/// Errors: reading fails.
pub fn scan(reader: impl Read, expected: Option<&str>) -> io::Result<Scan> {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut scan = Scan::default();
    let mut buf = Vec::new();
    let mut before_last: Option<Vec<u8>> = None;
    let mut last: Option<Vec<u8>> = None;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        scan.len += n as u64;
        if buf.last() != Some(&b'\n') {
            scan.fragment = Some(std::mem::take(&mut buf));
            break;
        }
        buf.pop();
        scan.lines += 1;
        let hash = sha256_hex(&buf);
        if scan.lines == 1 {
            scan.first_seq = record_seq(&buf);
        }
        if expected == Some(hash.as_str()) {
            scan.expected_line = Some(scan.lines);
        }
        scan.last_hash = Some(hash);
        before_last = last.replace(buf.clone());
    }
    if let Some(line) = &last {
        scan.last_len = line.len() as u64;
        scan.last_seq = record_seq(line);
        scan.last_is_record = scan.last_seq.is_some();
        if !scan.last_is_record {
            scan.last_seq = before_last.as_deref().and_then(record_seq);
        }
    }
    Ok(scan)
}

/// Scans the file at `path` (see [`scan`]).
pub fn scan_path(path: &Path, expected: Option<&str>) -> io::Result<Scan> {
    scan(File::open(path)?, expected)
}

/// Splits a rotated file's name into the current file's name and the suffix
/// (`audit.log.000000000042-20261201T061500Z` → `("audit.log", "000000000042-…")`).
pub fn split_rotated(name: &str) -> Option<(&str, &str)> {
    name.char_indices()
        .rev()
        .filter(|&(_, c)| c == '.')
        .find_map(|(i, _)| {
            let rest = &name[i + 1..];
            let b = rest.as_bytes();
            (i > 0 && b.len() > 12 && b[..12].iter().all(u8::is_ascii_digit) && b[12] == b'-')
                .then(|| (&name[..i], rest))
        })
}

/// The name a file that began with record `first_seq` gets when rotated at `now`, next to
/// `current`; one that exists already gets `-2`, `-3`, … appended.
pub fn rotated_name(current: &Path, first_seq: u64, now: SystemTime) -> PathBuf {
    let name = current.file_name().unwrap_or_default().to_string_lossy();
    let base = format!("{name}.{first_seq:012}-{}", compact_utc(now));
    let mut candidate = current.with_file_name(&base);
    let mut n = 2;
    while candidate.symlink_metadata().is_ok() {
        candidate = current.with_file_name(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// The rotated files of the log whose current file is `current`, oldest first (by name,
/// which is chain order).
/// Errors: the directory cannot be read.
pub fn rotated_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let name = current.file_name().unwrap_or_default().to_string_lossy();
    let dir = match current.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| split_rotated(n).is_some_and(|(base, _)| base == name))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| current.with_file_name(n))
        .collect())
}

/// Every file of the log whose current file is `current`, in chain order: its rotated files,
/// then `current` itself if it exists — what `ccx audit verify` checks given the current file.
/// Errors: the directory cannot be read.
pub fn chain_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_files(current)?;
    if current.is_file() {
        files.push(current.to_path_buf());
    }
    Ok(files)
}
