//! Loading a generation's hooks: each enabled hook is read, compiled or mapped from the artifact
//! cache, linked and checked for its stages, in parallel, with progress reported per hook.
//! Runs once per config generation (and once per `ccx hooks run`), on blocking threads.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::ScopedJoinHandle;
use std::time::Instant;

use super::bindings::{post, pre, v1};
use super::call::{HookIdentity, Limits, PostExport, PreExport};
use super::set::{HookSet, LoadedHook, Ready, Slot};
use super::spare::SparePool;
use super::{HookHost, HookSpec, MAX_MEMORY_MB};
use sha2::Digest;

/// Why a hook could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read hook `{hook}` from {path}: {source}")]
    Read {
        hook: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hook `{hook}` ({path}) is not a valid component: {message}")]
    Compile {
        hook: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "hook `{hook}` ({path}) cannot be linked (it may import only WASI 0.2 and ccx:hooks): {message}"
    )]
    Link {
        hook: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "hook `{hook}` ({path}) exports none of `pre-execute`, `post-execute`, `check-input`, `filter-output`"
    )]
    NoExports { hook: String, path: PathBuf },
    #[error("hook `{hook}` ({path}): export `{export}` has the wrong type: {message}")]
    ExportType {
        hook: String,
        path: PathBuf,
        export: &'static str,
        message: String,
    },
    #[error("hook `{hook}` ({path}) is pinned to sha256 {expected}, but the file's is {found}")]
    Digest {
        hook: String,
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("hook `{hook}`: {message}")]
    Limits { hook: String, message: String },
    #[error("hook `{hook}` appears twice in the config; names must be unique")]
    Duplicate { hook: String },
}

/// Compiles (or maps) one hook and finds its stages. Blocking: reading the file and compiling
/// take up to seconds.
pub(super) fn load_one(host: &HookHost, spec: &HookSpec) -> Result<Ready, LoadError> {
    let hook = spec.name.clone();
    let path = spec.path.clone();
    if spec.memory_mb == 0 || spec.memory_mb > MAX_MEMORY_MB {
        return Err(LoadError::Limits {
            hook,
            message: format!(
                "memory_mb must be 1..={MAX_MEMORY_MB}, not {}",
                spec.memory_mb
            ),
        });
    }
    if spec.timeout_ms == 0 {
        return Err(LoadError::Limits {
            hook,
            message: "timeout_ms must be at least 1".into(),
        });
    }
    let started = Instant::now();
    let bytes = std::fs::read(&spec.path).map_err(|source| LoadError::Read {
        hook: hook.clone(),
        path: path.clone(),
        source,
    })?;
    let sha256: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(expected) = &spec.sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(LoadError::Digest {
            hook,
            path,
            expected: expected.clone(),
            found: sha256,
        });
    }
    let (component, source) = host
        .cache
        .load(&host.engine, &spec.name, &bytes)
        .map_err(|e| LoadError::Compile {
            hook: hook.clone(),
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let instance_pre = host
        .linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link {
            hook: hook.clone(),
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
    let has = |export: &str| component.get_export_index(None, export).is_some();
    let type_err = |export: &'static str, e: wasmtime::Error| LoadError::ExportType {
        hook: hook.clone(),
        path: path.clone(),
        export,
        message: format!("{e:#}"),
    };
    // The newest contract version whose types the export matches; the error reported is the
    // newest version's.
    let pre = if has("pre-execute") {
        Some(match pre::PreHookIndices::new(&instance_pre) {
            Ok(i) => PreExport::V2(i),
            Err(e) => v1::pre::PreHookIndices::new(&instance_pre)
                .map(PreExport::V1)
                .map_err(|_| type_err("pre-execute", e))?,
        })
    } else {
        None
    };
    let post = if has("post-execute") {
        Some(match post::PostHookIndices::new(&instance_pre) {
            Ok(i) => PostExport::V2(i),
            Err(e) => v1::post::PostHookIndices::new(&instance_pre)
                .map(PostExport::V1)
                .map_err(|_| type_err("post-execute", e))?,
        })
    } else {
        None
    };
    let input = if has("check-input") {
        Some(
            super::bindings::input::InputHookIndices::new(&instance_pre)
                .map_err(|e| type_err("check-input", e))?,
        )
    } else {
        None
    };
    let output = if has("filter-output") {
        Some(
            super::bindings::output::OutputHookIndices::new(&instance_pre)
                .map_err(|e| type_err("filter-output", e))?,
        )
    } else {
        None
    };
    let old = matches!(pre, Some(PreExport::V1(_))) || matches!(post, Some(PostExport::V1(_)));
    let contract = if old { "0.1.0" } else { "0.2.0" };
    if pre.is_none() && post.is_none() && input.is_none() && output.is_none() {
        return Err(LoadError::NoExports { hook, path });
    }
    tracing::info!(
        hook = %spec.name,
        path = %spec.path.display(),
        ?source,
        load_ms,
        pre = pre.is_some(),
        post = post.is_some(),
        contract,
        "hook loaded"
    );
    Ok(Ready {
        instance_pre,
        pre,
        post,
        input,
        output,
        contract,
        sha256,
        source,
        load_ms,
    })
}

/// Loads one hook and tells the observer how it went, as soon as it is known.
fn load_and_report(
    host: &HookHost,
    spec: &HookSpec,
    observer: &(dyn Fn(&str, Result<(), &str>) + Sync),
) -> Slot {
    match load_one(host, spec) {
        Ok(ready) => {
            observer(&spec.name, Ok(()));
            Slot::Ready(Box::new(ready))
        }
        Err(err) => {
            tracing::warn!(hook = %spec.name, cause = %err, "hook failed to load");
            observer(&spec.name, Err(&err.to_string()));
            Slot::Failed(err)
        }
    }
}

/// A hook's slot while the set loads.
enum Pending<'scope> {
    Known(Slot),
    Loading(ScopedJoinHandle<'scope, Slot>),
}

impl HookSet {
    /// Compiles (or maps from the disk cache) every enabled hook, in parallel. Blocking; call
    /// from `spawn_blocking`. The same as [`HookSet::load_observed`] without an observer.
    ///
    /// A hook that fails to load is kept with its load error — the set itself still loads; the
    /// caller decides whether a set with load errors replaces the previous one.
    pub fn load(host: &Arc<HookHost>, specs: &[HookSpec]) -> HookSet {
        HookSet::load_observed(host, specs, &|_, _| {})
    }

    /// Compiles (or maps from the disk cache) every enabled hook, one thread per hook (each
    /// compile also uses wasmtime's parallel compilation), and returns the set in config order.
    /// Blocking: it returns when every hook is loaded or has failed (cold compiles of Python or
    /// JavaScript hooks take seconds); call from `spawn_blocking`.
    ///
    /// `observer(name, state)` is called once for every hook that is loaded or fails to load —
    /// every spec except disabled ones — from the loading thread, as soon as that hook is done,
    /// so in completion order, not config order: `Ok(())` when it loaded, `Err(message)` with
    /// the load error (the same text as in [`HookSet::load_errors`]) when it failed. A duplicate
    /// name fails at once, before any hook is compiled. The call must not block for long: it
    /// delays the hook's thread, not the others.
    ///
    /// A hook that fails to load is kept with its load error — the set itself still loads; the
    /// caller decides whether a set with load errors replaces the previous one. A panic while
    /// loading a hook is re-raised here once every other hook has finished.
    pub fn load_observed(
        host: &Arc<HookHost>,
        specs: &[HookSpec],
        observer: &(dyn Fn(&str, Result<(), &str>) + Sync),
    ) -> HookSet {
        // Settle what needs no loading first, so duplicates are reported at once.
        let mut seen = HashSet::new();
        let settled: Vec<Option<Slot>> = specs
            .iter()
            .map(|spec| {
                if !seen.insert(spec.name.as_str()) {
                    let err = LoadError::Duplicate {
                        hook: spec.name.clone(),
                    };
                    observer(&spec.name, Err(&err.to_string()));
                    Some(Slot::Failed(err))
                } else if !spec.enabled {
                    Some(Slot::Disabled)
                } else {
                    None
                }
            })
            .collect();
        let to_load = settled.iter().filter(|s| s.is_none()).count();

        let slots: Vec<Slot> = std::thread::scope(|scope| {
            // Loading threads log in the caller's span (a reload, a CLI command).
            let span = tracing::Span::current();
            let pending: Vec<Pending<'_>> = specs
                .iter()
                .zip(settled)
                .map(|(spec, settled)| {
                    if let Some(slot) = settled {
                        return Pending::Known(slot);
                    }
                    if to_load == 1 {
                        return Pending::Known(load_and_report(host, spec, observer));
                    }
                    let span = span.clone();
                    let spawned = std::thread::Builder::new()
                        .name("ccx-hook-load".into())
                        .spawn_scoped(scope, move || {
                            let _entered = span.enter();
                            load_and_report(host, spec, observer)
                        });
                    match spawned {
                        Ok(handle) => Pending::Loading(handle),
                        Err(err) => {
                            tracing::warn!(hook = %spec.name, cause = %err, "no thread to load the hook on; loading it here");
                            Pending::Known(load_and_report(host, spec, observer))
                        }
                    }
                })
                .collect();
            pending
                .into_iter()
                .map(|p| match p {
                    Pending::Known(slot) => slot,
                    Pending::Loading(handle) => handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                })
                .collect()
        });

        let hooks = specs
            .iter()
            .zip(slots)
            .map(|(spec, slot)| {
                let counters = host.counters_for(&spec.name);
                if let Slot::Failed(err) = &slot {
                    // Counted once per load, not once per chain that skips it.
                    counters.record_load_failure(&err.to_string());
                }
                let ident = Arc::new(HookIdentity {
                    name: spec.name.clone(),
                    config: spec.config.clone(),
                    kv: host.kv_for(&spec.name),
                });
                // Spares serve every stage: a call's fresh instance, or an output hook's
                // job-long one.
                let spares = match &slot {
                    Slot::Ready(r) if host.spares.per_hook > 0 =>
                    {
                        let limits = Limits::from_spec(spec);
                        Some(SparePool::new(host, &r.instance_pre, &ident, limits))
                    }
                    _ => None,
                };
                LoadedHook {
                    matcher: spec.matcher.as_ref().and_then(|m| {
                        m.compile()
                            .inspect_err(|e| tracing::warn!(hook = %spec.name, "match {e}: the hook sees every job"))
                            .ok()
                    }),
                    ident,
                    counters,
                    spec: spec.clone(),
                    slot,
                    spares,
                }
            })
            .collect();
        let set = HookSet {
            host: host.clone(),
            hooks,
            generation: Default::default(),
        };
        // No cold call after start or a reload: the first spares are made now.
        set.prime();
        set
    }
}
