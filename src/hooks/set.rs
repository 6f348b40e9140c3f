//! A hook set: one config generation's hooks in config order, each loaded, disabled or failed
//! with its load error. Lives as long as its generation; calls never mutate it.
//!
//! Loading a set is in `load`, running its chains in `chain`, its status page in `status`.

use std::sync::Arc;

use wasmtime::component::InstancePre;

use super::cache::LoadSource;
use super::call::{CallState, Callable, HookIdentity, Limits, PostExport, PreExport};
use super::load::LoadError;
use super::spare::{SparePool, SpareStats};
use super::stats::HookCounters;
use super::{HookHost, HookSpec, Stage};

/// One generation of hooks, in config order. Cheap to share behind an `Arc`; calls never
/// mutate it.
pub struct HookSet {
    pub(super) host: Arc<HookHost>,
    pub(super) hooks: Vec<LoadedHook>,
    /// The config generation this set belongs to, as the decision log records it: set once,
    /// when the set is installed (a set loads before it is known whether it will be);
    /// 0 for a set never installed (`ccx hooks run`, `test`, `replay`).
    pub(super) generation: std::sync::atomic::AtomicU64,
}

/// A hook of a set, whatever its state.
pub(super) struct LoadedHook {
    pub(super) spec: HookSpec,
    /// The spec's matcher, compiled (a matcher that does not compile matches every job).
    pub(super) matcher: Option<super::Matcher>,
    pub(super) ident: Arc<HookIdentity>,
    pub(super) counters: Arc<HookCounters>,
    pub(super) slot: Slot,
    /// Fresh instances made ahead of time for its calls and its job-long output instances
    /// (`None`: spares are off, or it is not loaded).
    pub(super) spares: Option<Arc<SparePool>>,
}

impl LoadedHook {
    /// What a call of this (loaded) hook needs, spares included.
    pub(super) fn callable(&self, ready: &Ready) -> Callable {
        Callable {
            spares: self.spares.clone(),
            ..ready.callable(&self.ident, &self.spec)
        }
    }

    /// The rule by which it sees the job `request` describes: `Some(None)` with no matcher,
    /// `Some(Some(rule))` when its matcher matches, `None` when the job is not for it.
    pub(super) fn sees(&self, request: &super::HookRequest) -> Option<Option<String>> {
        match &self.matcher {
            None => Some(None),
            Some(m) => m
                .matches(
                    &request.command,
                    &request.commands,
                    request.unparsed.is_some(),
                )
                .map(Some),
        }
    }
}

/// A hook's state in a set.
pub(super) enum Slot {
    Ready(Box<Ready>),
    Disabled,
    Failed(LoadError),
}

/// A compiled (or mapped) hook, ready to instantiate, with the stages it exports.
pub(super) struct Ready {
    pub(super) instance_pre: InstancePre<CallState>,
    pub(super) pre: Option<PreExport>,
    pub(super) post: Option<PostExport>,
    /// `check-input` (0.2.0 only).
    pub(super) input: Option<super::bindings::input::InputHookIndices>,
    /// `start-output` and `filter-output` (0.2.0 only).
    pub(super) output: Option<super::bindings::output::OutputHookIndices>,
    /// The contract version the component was built against (`0.1.0`, `0.2.0`).
    pub(super) contract: &'static str,
    /// SHA-256 (hex) of the component file as loaded.
    pub(super) sha256: String,
    pub(super) source: LoadSource,
    /// Time to read and compile or map the component, in milliseconds.
    pub(super) load_ms: f64,
}

impl Ready {
    /// Whether the component exports `stage`.
    pub(super) fn exports(&self, stage: Stage) -> bool {
        match stage {
            Stage::Pre => self.pre.is_some(),
            Stage::Post => self.post.is_some(),
        }
    }

    /// What a call needs, with the limits of `spec`, without spares.
    pub(super) fn callable(&self, ident: &Arc<HookIdentity>, spec: &HookSpec) -> Callable {
        Callable {
            ident: ident.clone(),
            limits: Limits::from_spec(spec),
            instance_pre: self.instance_pre.clone(),
            pre: self.pre.clone(),
            post: self.post.clone(),
            input: self.input.clone(),
            spares: None,
        }
    }
}

impl Drop for HookSet {
    fn drop(&mut self) {
        self.retire();
    }
}

impl std::fmt::Debug for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hooks.iter().map(|h| &h.spec.name))
            .finish()
    }
}

impl HookSet {
    /// Records the number of the generation this set is installed as (see `generation`).
    pub fn set_generation(&self, number: u64) {
        self.generation
            .store(number, std::sync::atomic::Ordering::Relaxed);
    }

    /// The number of the generation this set was installed as; 0 before.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The hooks that failed to load, as `(hook name, error message)`, in config order.
    pub fn load_errors(&self) -> Vec<(String, String)> {
        self.hooks
            .iter()
            .filter_map(|h| match &h.slot {
                Slot::Failed(err) => Some((h.spec.name.clone(), err.to_string())),
                _ => None,
            })
            .collect()
    }

    /// True when no hook is enabled and loaded (so the chains are no-ops).
    pub fn is_empty(&self) -> bool {
        !self.hooks.iter().any(|h| matches!(h.slot, Slot::Ready(_)))
    }

    /// Starts making the spare instances of every hook that has them (in the background, on
    /// the current tokio runtime; nothing happens outside one). [`HookSet::load`] does this
    /// itself when called inside a runtime.
    pub fn prime(&self) {
        for pool in self.hooks.iter().filter_map(|h| h.spares.as_ref()) {
            pool.refill();
        }
    }

    /// Drops every spare instance of this set and makes no more: call when a new generation
    /// replaces it (jobs still running on it then instantiate on their path). Dropping the
    /// set does the same.
    pub fn retire(&self) {
        for pool in self.hooks.iter().filter_map(|h| h.spares.as_ref()) {
            pool.retire();
        }
    }

    /// The spare-instance counts of the hook `name`, if it is loaded with spares.
    pub fn spare_stats(&self, name: &str) -> Option<SpareStats> {
        let hook = self.hooks.iter().find(|h| h.spec.name == name)?;
        hook.spares.as_ref().map(|p| p.stats())
    }

    /// True when some enabled hook (loaded or failed to load) could run at `stage`. The
    /// executor may skip building inputs when false.
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.hooks.iter().any(|h| match &h.slot {
            Slot::Ready(r) => r.exports(stage),
            Slot::Failed(_) => true,
            Slot::Disabled => false,
        })
    }
}
