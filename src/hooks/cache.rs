//! The on-disk cache of compiled components.
//!
//! Compiling a component takes 60 ms for a small Rust guest and 6–15 s for a Python or JS one;
//! mapping a cached artifact back in takes a few milliseconds. Artifacts are keyed by a SHA-256
//! of the component's bytes and the engine's `precompile_compatibility_hash` (wasmtime version
//! and every setting that changes generated code), so a changed hook or a changed engine never
//! maps a stale artifact. Files are written to a temporary name and renamed into place, so a
//! reader never sees half a file, and concurrent writers of the same key are harmless.
//!
//! Artifacts are memory-mapped while in use: never modify a cache file in place (truncating a
//! mapped file makes the process fault). Deleting files, or the whole directory, is safe.
//!
//! Safety: `Component::deserialize_file` trusts its input (it is native code). The cache only
//! maps files named by a key it computed, in a directory it creates with mode 0700; whoever can
//! write there can already run code as this user.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

impl ArtifactCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut sha = Sha256::new();
        engine
            .precompile_compatibility_hash()
            .hash(&mut ShaHasher(&mut sha));
        ArtifactCache {
            dir,
            engine_key: hex(&sha.finalize()),
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
        Some(dir.join(format!("{}.cwasm", hex(&sha.finalize()))))
    }

    /// Maps the component from the cache, or compiles it and stores the artifact.
    ///
    /// A cache that cannot be read or written only costs time: the error is logged and the
    /// component is compiled in memory.
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
                Ok(component) => return Ok((component, LoadSource::Cache)),
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
        if let Err(err) = store(&path, &artifact) {
            tracing::warn!(hook, path = %path.display(), cause = %format!("{err:#}"), "could not cache hook artifact");
        }
        // SAFETY: `artifact` was produced by `precompile_component` on this engine just now.
        let component =
            unsafe { Component::deserialize(engine, &artifact) }.map_err(anyhow::Error::from)?;
        Ok((component, LoadSource::Compiled))
    }
}

/// Writes `artifact` to `path` atomically: a unique temporary file in the same directory, then
/// a rename over the final name.
fn store(path: &Path, artifact: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact"),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&tmp, artifact).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })?;
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
