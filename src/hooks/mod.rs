// Over 500 lines: the host and the plain data every stage shares (specs, failure kinds,
// reports) are one contract with the executor, kept in one place.
//! The hook runtime: runs the sandboxed WebAssembly components that vet commands before they
//! run (pre-hooks: allow, deny or modify) and annotate or judge them after (post-hooks).
//!
//! Types are named by how long they live:
//! - [`HookHost`], one per process: the wasmtime `Engine` (fuel, epochs, pooling allocator when
//!   the machine allows it), the epoch ticker thread, the linker, the on-disk artifact cache, and
//!   the per-hook counters and kv stores, which are keyed by hook name so they survive reloads.
//! - [`HookSet`], one per config generation: the hooks in config order, each compiled once
//!   (or mapped from the cache) into an `InstancePre` with the stages it exports.
//! - `CallState` (private), one per call: a fresh `Store` with fuel, a memory limiter, an epoch
//!   deadline that yields every tick, and an outer deadline. Nothing survives a call except what
//!   the hook puts in its kv store.
//!
//! Layout, by lifetime:
//! - this file: the host (per process), its options, and the plain data the executor exchanges
//!   with the hooks (specs, stages, failure kinds, chain reports).
//! - `set`: the [`HookSet`] type, one generation's hooks and their states.
//! - `load`: loading a set, its hooks in parallel with per-hook progress; [`LoadError`].
//! - `chain`: running a set's hooks at a stage — one runner for the pre and the post chain.
//! - `status`: a set's hooks as status pages show them ([`HookStatus`]).
//! - `run_once`: `ccx hooks run`, one hook called once outside any set; `trial`: one hook
//!   loaded once and called on many requests (`ccx hooks test`, `ccx hooks replay`).
//! - `call`: one call — store, limits, host functions, failure classification; `capture`: the
//!   call's bounded guest stdout/stderr.
//! - `bindings`: `bindgen!` output for `wit/hooks.wit`; `types`: plain, serde-friendly mirrors
//!   of the WIT types and the checks on guest answers.
//! - `cache` (the size-capped artifact cache), `kv` (the per-hook kv store), `stats` (the
//!   per-hook counters): per-process services the host owns.
//!
//! This module depends on no other ccx module: the executor calls it with plain data.

mod bindings;
mod cache;
mod call;
mod capture;
mod chain;
mod convert;
pub mod decision_log;
mod input_stage;
mod kv;
mod load;
mod output_stage;
mod parse;
mod policy;
mod run_once;
mod set;
mod spare;
mod stats;
mod status;
mod trial;
mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use cache::{LoadSource, default_cache_dir};
pub use call::{LOG_MESSAGE_MAX_BYTES, LOG_MESSAGES_PER_CALL, MAX_TABLE_ELEMENTS};
pub use capture::OUTPUT_CAP_BYTES;
pub use kv::{KV_MAX_KEY_BYTES, KV_MAX_KEYS, KV_MAX_TOTAL_BYTES, KV_MAX_VALUE_BYTES, KvPersist};
pub use load::LoadError;
pub use output_stage::{
    DEFAULT_FLUSH_MS, DEFAULT_JOB_FUEL, DEFAULT_MAX_LINE_BYTES, Filtered, Granularity, OutStream,
    OutputFilter, OutputReport, OutputSpec, OutputWarning,
};
pub use parse::{Parse, SimpleCommand};
pub use policy::{HookMode, MatchSpec, Matcher};
pub use run_once::{RunFailure, RunInput, RunReport, run_once};
pub use set::HookSet;
pub use spare::{MAX_SPARES, SpareStats};
pub use stats::{FailureCounts, HookStats, LastFailure, STATS_WINDOW};
pub use status::{HookState, HookStatus};
pub use trial::{TrialCall, TrialDecision, TrialHook};
pub use types::{
    HookLimits, HookRequest, HookResult, JobStatus, MAX_ANNOTATION_KEY_BYTES,
    MAX_ANNOTATION_VALUE_BYTES, MAX_ANNOTATIONS, MAX_ANSWER_BYTES, MAX_PATCH_ENV, MAX_REASON_BYTES,
    PostOutcome, PreDecision, RequestPatch, StdinMode, Submitter, TerminalSize, Verdict,
};

/// Default fuel per call. A Rust hook uses about 4,400 units per call and a componentize-py one
/// about 155,000, but a JavaScript one about 3,000,000: 500 million leaves interpreted hooks
/// two orders of magnitude of room while still stopping a runaway loop in well under a second.
pub const DEFAULT_FUEL: u64 = 500_000_000;
/// Default deadline per call. A fresh interpreted instance takes about 1 ms; 1 s is generous for
/// real work yet short enough that a stuck hook is noticed before a client gives up.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default memory limit per linear memory. Interpreted guests start with 20–40 MiB of heap;
/// 64 MiB fits them with room to spare.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Largest `memory_mb` a hook may ask for (the pooling allocator's 4 GiB slot size).
pub const MAX_MEMORY_MB: u64 = 4096;
/// Default size cap of the artifact cache: 1 GiB, room for about 25 compiled interpreted
/// hooks (a componentize-py or componentize-js artifact is about 40 MB; a Rust one, under 1 MB).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;
/// The epoch tick: how often a running guest yields to the async runtime, and so the slack past
/// a hook's deadline (plus the timer's own millisecond granularity).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What a hook does when it fails (trap, fuel, deadline, memory, invalid answer, load error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail open: skip the hook, add a warning, go on.
    #[default]
    Allow,
    /// Fail closed: a pre-hook failure denies the request; a post-hook failure is a failing
    /// verdict. Either way the failure is the reason, and a warning is added too.
    Deny,
}

/// A hook as configured: plain data, built by the config module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Unique within a config; the key for counters and the kv store.
    pub name: String,
    /// Absolute path of the component file.
    pub path: PathBuf,
    /// A disabled hook is listed in status but never loaded or called.
    pub enabled: bool,
    /// Fuel per call; 0 means unlimited (the deadline still applies).
    pub fuel: u64,
    /// Deadline per call, in milliseconds, covering instantiation and the call.
    pub timeout_ms: u64,
    /// Limit on each linear memory, in MiB.
    pub memory_mb: u64,
    pub on_failure: OnFailure,
    /// What its decisions do.
    #[serde(default)]
    pub mode: HookMode,
    /// Which jobs it sees; `None`: every job.
    #[serde(default)]
    pub matcher: Option<MatchSpec>,
    /// The component's pinned SHA-256 (hex): a file with another digest is refused at load.
    #[serde(default)]
    pub sha256: Option<String>,
    /// How the output stage cuts, bounds and fails (`output = {…}`), for a hook exporting it.
    #[serde(default)]
    pub output: OutputSpec,
    /// Returned to the hook by `host.config()`.
    pub config: Vec<(String, String)>,
}

impl HookSpec {
    /// A spec with the default limits, enabled, failing open, with no config.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        HookSpec {
            name: name.into(),
            path: path.into(),
            enabled: true,
            fuel: DEFAULT_FUEL,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_mb: DEFAULT_MEMORY_MB,
            on_failure: OnFailure::Allow,
            mode: HookMode::Enforce,
            matcher: None,
            sha256: None,
            output: OutputSpec::default(),
            config: Vec::new(),
        }
    }
}

/// The stage a hook runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pre,
    Post,
}

/// Why a hook call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// Ran out of fuel.
    Fuel,
    /// Passed its deadline (spinning, or blocked in a host or WASI call).
    Timeout,
    /// Tried to grow a memory past its limit.
    Memory,
    /// Any other trap: panic, stack overflow, `unreachable`, a failing host call.
    Trap,
    /// Answered something out of bounds or malformed.
    Invalid,
    /// Could not be loaded or instantiated.
    Load,
    /// Not a failure: a `warn`-mode hook denied (the job ran).
    Deny,
    /// Not a failure: a `warn`-mode hook asked for a change (not applied).
    Modify,
}

/// What one hook did in one chain.
#[derive(Clone, Debug, Serialize)]
pub struct HookReport {
    pub hook: String,
    pub stage: Stage,
    /// Pre only: `"allow"`, `"deny"` or `"modify"`; `None` when the call failed.
    pub decision: Option<String>,
    /// Post only: notes for the completion event (a JSON object).
    #[serde(serialize_with = "types::serialize_pairs")]
    pub annotations: Vec<(String, String)>,
    /// Post only: the verdict, or a failing one when a fail-closed hook failed.
    pub verdict: Option<Verdict>,
    /// The failure message when the call failed.
    pub error: Option<String>,
    pub duration_us: u64,
    pub fuel_used: u64,
    /// The hook's mode when it is not `enforce` (its decision was then not applied).
    pub mode: Option<HookMode>,
    /// The matcher rule that let the hook see the job, when it has a matcher.
    pub matched: Option<String>,
    /// Pre only: the hook's patch when it answered `modify` (applied only in `enforce`).
    pub patch: Option<RequestPatch>,
}

/// A hook failure that did not stop the chain (or, when the hook fails closed, the failure
/// that did).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookWarning {
    pub hook: String,
    pub stage: Stage,
    pub kind: FailureKind,
    /// `warn` for a warn-mode hook's decision (kind `deny` or `modify`) or failure.
    pub mode: Option<HookMode>,
    pub message: String,
}

/// The result of the pre-hook chain.
#[derive(Clone, Debug, Serialize)]
pub struct PreChain {
    pub outcome: PreOutcome,
    pub reports: Vec<HookReport>,
    pub warnings: Vec<HookWarning>,
}

/// Whether the request runs, and as what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "decision")]
pub enum PreOutcome {
    /// Run `request` (the original with every patch applied, in order).
    Allow {
        request: Box<HookRequest>,
        /// Names of the hooks whose patches were applied, in order.
        modified_by: Vec<String>,
    },
    /// Do not run it: the first denying hook and its reason.
    Deny { hook: String, reason: String },
}

/// The result of the post-hook chain.
#[derive(Clone, Debug, Serialize)]
pub struct PostChain {
    pub reports: Vec<HookReport>,
    pub warnings: Vec<HookWarning>,
}

impl PostChain {
    /// All annotations of all hooks, in order, each key prefixed with `hook.` so two hooks
    /// cannot overwrite each other's notes.
    pub fn annotations(&self) -> Vec<(String, String)> {
        self.reports
            .iter()
            .flat_map(|r| {
                r.annotations
                    .iter()
                    .map(move |(k, v)| (format!("{}.{k}", r.hook), v.clone()))
            })
            .collect()
    }

    /// The first failing verdict, as `(hook, reason)`.
    pub fn failed(&self) -> Option<(&str, &str)> {
        self.reports.iter().find_map(|r| match &r.verdict {
            Some(Verdict::Fail(reason)) => Some((r.hook.as_str(), reason.as_str())),
            _ => None,
        })
    }
}

/// Settings of the [`HookHost`].
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Where compiled components are cached; `None` disables the cache. Defaults to
    /// [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Try the pooling allocator (falls back to on-demand allocation when the machine refuses
    /// its virtual memory reservation).
    pub pooling: bool,
    /// Most hook calls running at once; also the size of the instance pool. A call waits for a
    /// slot, and the wait counts against its deadline.
    pub max_concurrent_calls: u32,
    /// Size cap of the artifact cache, in bytes (the config's `[sandbox] cache_max_mb`). After
    /// writing a new artifact the cache deletes its least recently used entries until their
    /// total is at most this; the new artifact itself is always kept, so a cap below one
    /// artifact keeps only the newest. Defaults to [`DEFAULT_CACHE_MAX_BYTES`].
    pub cache_max_bytes: u64,
    /// Fresh instances kept ready per hook, made in the background so calls skip
    /// instantiation (`[sandbox] spare_instances`); 0 turns spares off. At most
    /// [`MAX_SPARES`] live at once across all hooks. Defaults to 0: measured on a 2-core
    /// machine, instantiating with the pooling allocator costs 10–35 µs for Rust and JavaScript
    /// guests and ~1 ms for Python, and the background work of spares cost more than it saved
    /// when jobs come back to back (`cargo bench --bench examples`).
    pub spare_instances: u32,
    /// Largest total linear memory of all spare instances, in bytes (`[sandbox]
    /// spare_memory_mb`); a spare that would not fit is not made. Defaults to 256 MiB.
    pub spare_memory_bytes: u64,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            cache_dir: default_cache_dir(),
            pooling: true,
            max_concurrent_calls: 32,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            spare_instances: 0,
            spare_memory_bytes: 256 << 20,
        }
    }
}

/// The process-wide hook runtime.
pub struct HookHost {
    engine: Engine,
    linker: Linker<call::CallState>,
    cache: cache::ArtifactCache,
    /// Bounds concurrent calls to the instance pool's capacity.
    call_slots: Arc<tokio::sync::Semaphore>,
    /// The bounds of spare instances (slots and memory), shared by every set's pools.
    spares: spare::SpareBudget,
    pooling: bool,
    counters: std::sync::Mutex<std::collections::HashMap<String, Arc<stats::HookCounters>>>,
    kv: std::sync::Mutex<std::collections::HashMap<String, kv::SharedKv>>,
    kv_persist: std::sync::Mutex<Option<KvPersist>>,
    /// Where each decision is logged, when `[sandbox] decision_log` is set.
    decision_log: std::sync::Mutex<Option<decision_log::DecisionLog>>,
}

impl std::fmt::Debug for HookHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookHost")
            .field("pooling", &self.pooling)
            .field("cache_dir", &self.cache.dir())
            .finish_non_exhaustive()
    }
}

fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config
}

/// Pool sizes for `calls` concurrent component instances, sized for interpreted guests
/// (componentize-py uses ~50 core instances, 8 tables and 200,000 table elements).
fn pooling_config(calls: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // Every concurrent call can hold a full-size interpreted guest, so a burst never fails on
    // pool exhaustion; slots are virtual memory, committed only when used.
    pool.total_component_instances(calls)
        .total_core_instances(calls * 64)
        .max_core_instances_per_component(64)
        .total_memories(calls * 4)
        .max_memories_per_component(16)
        .total_tables(calls * 8)
        .max_tables_per_component(16)
        .table_elements(200_000)
        .total_stacks(calls)
        .max_memory_size((MAX_MEMORY_MB as usize) << 20)
        // Resetting a slot with `madvise` costs a TLB shootdown on every call; with the kernel's
        // PAGEMAP_SCAN (Linux 6.7+) only the pages a call dirtied are reset with memset, and
        // the slot stays resident for the next call.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(4 << 20)
        .table_keep_resident(1 << 20);
    pool
}

impl HookHost {
    /// Builds the engine (pooling if the machine allows it) and starts the epoch ticker.
    pub fn new(opts: HostOptions) -> anyhow::Result<Arc<HookHost>> {
        let calls = opts.max_concurrent_calls.max(1);
        // Spares hold instance slots of their own beside the calls'.
        let slots = calls
            + if opts.spare_instances > 0 {
                MAX_SPARES
            } else {
                0
            };
        let (engine, pooling) = if opts.pooling {
            let mut config = engine_config();
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(slots)));
            match Engine::new(&config) {
                Ok(engine) => (engine, true),
                Err(err) => {
                    tracing::warn!(cause = %err, "pooling allocator unavailable; using on-demand allocation");
                    (
                        Engine::new(&engine_config()).map_err(anyhow::Error::from)?,
                        false,
                    )
                }
            }
        } else {
            (
                Engine::new(&engine_config()).map_err(anyhow::Error::from)?,
                false,
            )
        };
        let mut linker = Linker::new(&engine);
        call::add_to_linker(&mut linker).context("adding host functions to the linker")?;
        spawn_epoch_ticker(&engine)?;
        let cache = cache::ArtifactCache::new(&engine, opts.cache_dir, opts.cache_max_bytes);
        tracing::debug!(pooling, cache_dir = ?cache.dir(), "hook host ready");
        Ok(Arc::new(HookHost {
            engine,
            linker,
            cache,
            call_slots: Arc::new(tokio::sync::Semaphore::new(calls as usize)),
            spares: spare::SpareBudget::new(
                opts.spare_instances,
                usize::try_from(opts.spare_memory_bytes).unwrap_or(usize::MAX),
            ),
            pooling,
            counters: Default::default(),
            kv: Default::default(),
            kv_persist: Default::default(),
            decision_log: Default::default(),
        }))
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Spare instances: `(linear memory they hold now, the budget)`, in bytes.
    pub fn spare_memory(&self) -> (usize, usize) {
        (self.spares.memory_used(), self.spares.memory_cap)
    }

    /// The artifact cache directory, if caching is on.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.dir()
    }

    /// A copy of one hook's counters (zero if the hook never ran).
    pub fn stats(&self, hook: &str) -> HookStats {
        self.counters_for(hook).snapshot()
    }

    fn counters_for(&self, hook: &str) -> Arc<stats::HookCounters> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(hook.to_string()).or_default().clone()
    }

    fn kv_for(&self, hook: &str) -> kv::SharedKv {
        let mut map = self.kv.lock().unwrap_or_else(|e| e.into_inner());
        let persist = self
            .kv_persist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        map.entry(hook.to_string())
            .or_insert_with(|| {
                Arc::new(std::sync::Mutex::new(match persist {
                    Some(p) => kv::KvStore::persistent(hook, p),
                    None => kv::KvStore::default(),
                }))
            })
            .clone()
    }

    /// Makes the hooks' kv stores outlive the process: `seed` holds the values persisted
    /// before (hook, key, value), and `persist` takes every accepted write from now on. Call
    /// it before any hook is loaded (stores made earlier stay in memory only).
    /// Logs every hook decision from now on to `log`.
    pub fn set_decision_log(&self, log: decision_log::DecisionLog) {
        *self.decision_log.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
    }

    pub(crate) fn decision_log(&self) -> Option<decision_log::DecisionLog> {
        self.decision_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn persist_kv(&self, seed: Vec<(String, String, String)>, persist: KvPersist) {
        *self.kv_persist.lock().unwrap_or_else(|e| e.into_inner()) = Some(persist);
        for (hook, key, value) in seed {
            let store = self.kv_for(&hook);
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .seed(key, value);
        }
    }
}

/// Ticks the engine's epoch every [`EPOCH_TICK`] from a plain thread that holds only a weak
/// handle, so it stops once the engine (host, sets and components) is gone (spin's pattern).
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("ccx-hook-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(())
}
