//! A set's hooks as status pages show them (`/health`, `/hooks`, `ccx hooks list`): each hook's
//! state, stages, limits and counters, copied out of the set at the moment of asking.

use std::path::PathBuf;

use serde::Serialize;

use super::cache::LoadSource;
use super::set::{HookSet, Slot};
use super::{HookStats, OnFailure, SpareStats, Stage};

/// A hook's state in a set. Serializes as `{"state": "loaded"}`, `{"state": "disabled"}` or
/// `{"state": "failed", "error": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "error")]
pub enum HookState {
    /// Compiled and ready to call.
    Loaded,
    /// Disabled in the config: never loaded, never called.
    Disabled,
    /// Failed to load: the message. Each chain reports it as a `load` failure.
    Failed(String),
}

/// One hook of a set, for status pages.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub name: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub state: HookState,
    /// The stages the component exports, of `pre`, `post`, `input`, `output` (empty unless
    /// loaded).
    pub stages: Vec<&'static str>,
    /// Compiled now or mapped from the cache (unless not loaded).
    pub source: Option<LoadSource>,
    /// Time to compile or map the component, in milliseconds.
    pub load_ms: Option<f64>,
    /// The contract version the component was built against (`0.1.0` or `0.2.0`; unless not
    /// loaded).
    pub contract: Option<&'static str>,
    /// SHA-256 (hex) of the component file as loaded (unless not loaded).
    pub sha256: Option<String>,
    pub fuel: u64,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub on_failure: OnFailure,
    /// Keys in the hook's kv store.
    pub kv_keys: usize,
    pub stats: HookStats,
    /// Its spare instances (absent when spares are off or it is not loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spares: Option<SpareStats>,
}

impl HookSet {
    /// Every hook of the set, in config order, with its state, limits and counters.
    pub fn status(&self) -> Vec<HookStatus> {
        self.hooks
            .iter()
            .map(|h| {
                let (contract, sha256) = match &h.slot {
                    Slot::Ready(r) => (Some(r.contract), Some(r.sha256.clone())),
                    _ => (None, None),
                };
                let (state, stages, source, load_ms) = match &h.slot {
                    Slot::Ready(r) => {
                        let stages = [
                            ("pre", r.exports(Stage::Pre)),
                            ("post", r.exports(Stage::Post)),
                            ("input", r.input.is_some()),
                            ("output", r.output.is_some()),
                        ]
                        .into_iter()
                        .filter_map(|(name, has)| has.then_some(name))
                        .collect();
                        (HookState::Loaded, stages, Some(r.source), Some(r.load_ms))
                    }
                    Slot::Disabled => (HookState::Disabled, vec![], None, None),
                    Slot::Failed(e) => (HookState::Failed(e.to_string()), vec![], None, None),
                };
                HookStatus {
                    name: h.spec.name.clone(),
                    path: h.spec.path.clone(),
                    state,
                    stages,
                    source,
                    load_ms,
                    contract,
                    sha256,
                    fuel: h.spec.fuel,
                    timeout_ms: h.spec.timeout_ms,
                    memory_mb: h.spec.memory_mb,
                    on_failure: h.spec.on_failure,
                    kv_keys: h.ident.kv.lock().map(|kv| kv.len()).unwrap_or(0),
                    stats: h.counters.snapshot(),
                    spares: h.spares.as_ref().map(|p| p.stats()),
                }
            })
            .collect()
    }
}
