//! The on-disk cache of compiled components, capped in size.
//!
//! Compiling a component takes 60 ms for a small Rust guest and 6–15 s for a Python or JS one;
//! mapping a cached artifact back in takes a few milliseconds. Artifacts are keyed by a SHA-256
//! of the component's bytes and the engine's `precompile_compatibility_hash` (wasmtime version
//! and every setting that changes generated code), so a changed hook or a changed engine never
//! maps a stale artifact. Files are written to a temporary file in the cache directory and
//! renamed into place (`tempfile`'s `persist`), so a reader never sees half a file, and
//! concurrent writers of the same key are harmless.
//!
//! The cache is capped: after writing an artifact it deletes the least recently used entries
//! (by file mtime, which a load from the cache refreshes) until the entries' total size is at
//! most the cap. It never deletes the entry it just wrote, nor an entry used since then (a
//! concurrent load's fresh entry: that load evicts for itself), so a cap smaller than one
//! artifact keeps just the newest. Files whose names are not cache keys are left alone. Eviction
//! only costs time if it fails (the error is logged), never a load.
//!
//! Artifacts are memory-mapped while in use: never modify a cache file in place (truncating a
//! mapped file makes the process fault). Deleting files, or the whole directory, is safe: a
//! mapped file stays readable until unmapped, which is why eviction may delete entries in use.
//!
//! Safety: `Component::deserialize_file` trusts its input (it is native code). The cache only
//! maps files named by a key it computed, in a directory it creates with mode 0700; whoever can
//! write there can already run code as this user.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadSource {
    /// Compiled now (and written to the cache when there is one).
    Compiled,
    /// Mapped from the on-disk cache.
    Cache,
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash becomes part of a
/// stable, collision-resistant key (std's `DefaultHasher` is neither).
struct ShaHasher<'a>(&'a mut Sha256);

impl Hasher for ShaHasher<'_> {
    fn finish(&self) -> u64 {
        0 // unused: the digest is read from the Sha256 itself
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The artifact cache; `None` directory means compile every time.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    /// Hex of the engine's compatibility hash, computed once.
    engine_key: String,
    /// Most bytes the entries may take after a new one is written (see the module docs).
    max_bytes: u64,
}

/// The default cache directory: `$XDG_CACHE_HOME/ccx/hooks`, else `~/.cache/ccx/hooks`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("ccx").join("hooks"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The extension of a cache entry; its stem is the 64 hex digits of its key.
const ENTRY_EXTENSION: &str = ".cwasm";

/// Whether a file name is one this cache writes (`<sha256 hex>.cwasm`); anything else in the
/// directory, such as a writer's temporary file, is not ours to count or delete.
fn is_entry(name: &str) -> bool {
    name.strip_suffix(ENTRY_EXTENSION).is_some_and(|stem| {
        stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

impl ArtifactCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>, max_bytes: u64) -> Self {
        let mut sha = Sha256::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut ShaHasher(&mut sha));
        ArtifactCache {
            dir,
            engine_key: hex(&sha.finalize()),
            max_bytes,
        }
    }

    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cache file for these component bytes.
    pub(crate) fn path_for(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut sha = Sha256::new();
        sha.update(self.engine_key.as_bytes());
        sha.update(bytes);
        Some(dir.join(format!("{}{ENTRY_EXTENSION}", hex(&sha.finalize()))))
    }

    /// Maps the component from the cache, or compiles it, stores the artifact and evicts down
    /// to the cap.
    ///
    /// A cache that cannot be read or written only costs time: the error is logged and the
    /// component is compiled in memory. The error returned is the component's own (it does not
    /// validate or compile).
    pub(crate) fn load(
        &self,
        engine: &Engine,
        hook: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, LoadSource)> {
        let Some(path) = self.path_for(bytes) else {
            let component = Component::new(engine, bytes).map_err(anyhow::Error::from)?;
            return Ok((component, LoadSource::Compiled));
        };
        if path.is_file() {
            // SAFETY: the file is named by a key over the engine and the component bytes, in a
            // directory this cache owns, and written only by `store` below (see module docs).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    // "Least recently used" means used: a hit makes the entry young again.
                    if let Err(err) = touch(&path) {
                        tracing::debug!(hook, path = %path.display(), cause = %err, "could not touch cached hook artifact");
                    }
                    return Ok((component, LoadSource::Cache));
                }
                Err(err) => tracing::warn!(
                    hook,
                    path = %path.display(),
                    cause = %err,
                    "cached hook artifact unusable; recompiling"
                ),
            }
        }
        let started = Instant::now();
        let artifact = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)?;
        tracing::debug!(
            hook,
            ms = started.elapsed().as_millis() as u64,
            "compiled hook"
        );
        match store(&path, &artifact) {
            Ok(()) => self.evict_for(hook, &path),
            Err(err) => {
                tracing::warn!(hook, path = %path.display(), cause = %format!("{err:#}"), "could not cache hook artifact");
            }
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this engine just now.
        let component =
            unsafe { Component::deserialize(engine, &artifact) }.map_err(anyhow::Error::from)?;
        Ok((component, LoadSource::Compiled))
    }

    /// Evicts down to the cap after `written` was stored, logging what happened; never fails.
    fn evict_for(&self, hook: &str, written: &Path) {
        let Some(dir) = self.dir.as_deref() else {
            return;
        };
        match evict(dir, self.max_bytes, written) {
            Ok(e) if e.removed > 0 => tracing::info!(
                hook,
                removed = e.removed,
                freed_bytes = e.freed_bytes,
                cache_bytes = e.remaining_bytes,
                max_bytes = self.max_bytes,
                "evicted least recently used hook artifacts"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                hook,
                dir = %dir.display(),
                cause = %err,
                "could not evict hook artifacts; the cache may exceed its size cap"
            ),
        }
    }
}

/// Writes `artifact` to `path` atomically: a unique temporary file in the same directory, then
/// a rename over the final name (a reader that has the old file mapped keeps it).
fn store(path: &Path, artifact: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    create_private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(artifact)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // On failure the temporary file is dropped, which deletes it.
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the new artifact to {}", path.display()))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating cache directory {}", dir.display()))
}

/// Marks an entry as used now. Changes only its mtime, never its contents, so it is safe on a
/// file that is memory-mapped.
fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.set_modified(SystemTime::now())
}

/// What one eviction pass did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Eviction {
    removed: usize,
    freed_bytes: u64,
    /// Total size of the entries left.
    remaining_bytes: u64,
}

/// Deletes entries of `dir`, least recently used (oldest mtime) first, until their total size
/// is at most `max_bytes`. `keep` (the entry just written) and entries used no earlier than it
/// are never deleted, so the total may stay above the cap. An entry that vanishes meanwhile (a
/// concurrent eviction) counts as freed; a failure to delete one is logged and skipped.
fn evict(dir: &Path, max_bytes: u64, keep: &Path) -> std::io::Result<Eviction> {
    struct Entry {
        path: PathBuf,
        bytes: u64,
        used: SystemTime,
    }
    let mut entries = Vec::new();
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent?;
        if !dirent.file_name().to_str().is_some_and(is_entry) {
            continue;
        }
        // Metadata of a file deleted since the listing is an error: it is gone, skip it.
        let Ok(meta) = dirent.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        entries.push(Entry {
            path: dirent.path(),
            bytes: meta.len(),
            used: meta.modified()?,
        });
    }
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut done = Eviction {
        remaining_bytes: total,
        ..Eviction::default()
    };
    if total <= max_bytes {
        return Ok(done);
    }
    let kept_used = entries.iter().find(|e| e.path == keep).map(|e| e.used);
    entries.retain(|e| e.path != keep && kept_used.is_none_or(|kept| e.used < kept));
    entries.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
    for entry in entries {
        if total <= max_bytes {
            break;
        }
        match std::fs::remove_file(&entry.path) {
            Ok(()) => done.removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %entry.path.display(), cause = %err, "could not evict hook artifact");
                continue;
            }
        }
        total -= entry.bytes;
        done.freed_bytes += entry.bytes;
    }
    done.remaining_bytes = total;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Writes an entry named by `key` (any byte, repeated into 64 hex digits) of `bytes` bytes,
    /// last used `age_s` seconds ago.
    fn entry(dir: &Path, key: char, bytes: usize, age_s: u64) -> PathBuf {
        let path = dir.join(format!("{}{ENTRY_EXTENSION}", key.to_string().repeat(64)));
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let used = SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::open(&path)
            .unwrap()
            .set_modified(used)
            .unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entry_names_are_keys_only() {
        assert!(is_entry(&format!("{}.cwasm", "0a".repeat(32))));
        assert!(!is_entry(&format!("{}.cwasm", "0A".repeat(32))));
        assert!(!is_entry(&format!("{}.cwasm", "0".repeat(63))));
        assert!(!is_entry(&format!("{}.tmp", "0".repeat(64))));
        assert!(!is_entry(".tmpAbC123"));
    }

    #[test]
    fn eviction_deletes_least_recently_used_entries_until_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let oldest = entry(dir.path(), 'a', 100, 300);
        let old = entry(dir.path(), 'b', 100, 200);
        let recent = entry(dir.path(), 'c', 100, 100);
        let new = entry(dir.path(), 'd', 100, 0);
        // Not entries: never counted, never deleted.
        std::fs::write(dir.path().join("notes.txt"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join(".tmpXYZ123"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join(format!("{}.cwasm", "e".repeat(64)))).unwrap();

        let done = evict(dir.path(), 250, &new).unwrap();
        assert_eq!(
            done,
            Eviction {
                removed: 2,
                freed_bytes: 200,
                remaining_bytes: 200
            }
        );
        assert!(!oldest.exists() && !old.exists());
        assert!(recent.exists() && new.exists());
        assert_eq!(names(dir.path()).len(), 5, "{:?}", names(dir.path()));

        // Under the cap: nothing to do.
        assert_eq!(evict(dir.path(), 250, &new).unwrap().removed, 0);
    }

    #[test]
    fn the_entry_just_written_and_younger_ones_are_kept_even_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let old = entry(dir.path(), 'a', 100, 300);
        let written = entry(dir.path(), 'b', 100, 200);
        // Written by a concurrent load after ours: that load's own pass may evict ours.
        let younger = entry(dir.path(), 'c', 100, 100);
        let done = evict(dir.path(), 10, &written).unwrap();
        assert_eq!(done.removed, 1);
        assert_eq!(done.remaining_bytes, 200);
        assert!(!old.exists() && written.exists() && younger.exists());

        let done = evict(dir.path(), 10, &younger).unwrap();
        assert_eq!(done.removed, 1);
        assert!(!written.exists() && younger.exists());
    }

    #[test]
    fn a_hit_makes_an_entry_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let used_again = entry(dir.path(), 'a', 100, 300);
        let idle = entry(dir.path(), 'b', 100, 200);
        touch(&used_again).unwrap();
        let written = entry(dir.path(), 'c', 100, 0);
        std::fs::File::open(&written)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        evict(dir.path(), 200, &written).unwrap();
        assert!(used_again.exists() && !idle.exists() && written.exists());
    }

    #[test]
    fn store_replaces_an_entry_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("sub")
            .join(format!("{}.cwasm", "f".repeat(64)));
        store(&path, b"first").unwrap();
        store(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(names(path.parent().unwrap()).len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
