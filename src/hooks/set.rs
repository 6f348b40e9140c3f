//! A hook set: one generation of configured hooks, loaded in config order, and the pre and post
//! chains that run them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime::component::InstancePre;

use super::bindings::{post, pre};
use super::cache::LoadSource;
use super::call::{
    self, Answer, CallOutcome, CallState, Callable, Failure, HookIdentity, Input, Limits,
};
use super::stats::{HookCounters, Tally};
use super::types::{self, HookRequest, HookResult, PreDecision};
use super::{
    FailureKind, HookHost, HookReport, HookSpec, HookStats, HookWarning, MAX_MEMORY_MB, OnFailure,
    PostChain, PreChain, PreOutcome, Stage, Verdict,
};

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
    #[error("hook `{hook}` ({path}) exports neither `pre-execute` nor `post-execute`")]
    NoExports { hook: String, path: PathBuf },
    #[error("hook `{hook}` ({path}): export `{export}` has the wrong type: {message}")]
    ExportType {
        hook: String,
        path: PathBuf,
        export: &'static str,
        message: String,
    },
    #[error("hook `{hook}`: {message}")]
    Limits { hook: String, message: String },
    #[error("hook `{hook}` appears twice in the config; names must be unique")]
    Duplicate { hook: String },
}

/// A hook's state in a set.
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
    /// The stages the component exports (empty unless loaded).
    pub stages: Vec<Stage>,
    /// Compiled now or mapped from the cache (unless not loaded).
    pub source: Option<LoadSource>,
    /// Time to compile or map the component, in milliseconds.
    pub load_ms: Option<f64>,
    pub fuel: u64,
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub on_failure: OnFailure,
    /// Keys in the hook's kv store.
    pub kv_keys: usize,
    pub stats: HookStats,
}

struct Ready {
    instance_pre: InstancePre<CallState>,
    pre: Option<pre::PreHookIndices>,
    post: Option<post::PostHookIndices>,
    source: LoadSource,
    load_ms: f64,
}

enum Slot {
    Ready(Box<Ready>),
    Disabled,
    Failed(LoadError),
}

struct LoadedHook {
    spec: HookSpec,
    ident: Arc<HookIdentity>,
    counters: Arc<HookCounters>,
    slot: Slot,
}

impl LoadedHook {
    fn callable(&self) -> Option<Callable<'_>> {
        match &self.slot {
            Slot::Ready(ready) => Some(Callable {
                ident: &self.ident,
                limits: Limits::from_spec(&self.spec),
                instance_pre: &ready.instance_pre,
                pre: ready.pre.as_ref(),
                post: ready.post.as_ref(),
            }),
            _ => None,
        }
    }
}

/// One generation of hooks, in config order. Cheap to share behind an `Arc`; calls never
/// mutate it.
pub struct HookSet {
    host: Arc<HookHost>,
    hooks: Vec<LoadedHook>,
}

impl std::fmt::Debug for HookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hooks.iter().map(|h| &h.spec.name))
            .finish()
    }
}

/// Compiles (or maps) one hook and finds its stages.
fn load_one(host: &HookHost, spec: &HookSpec) -> Result<Ready, LoadError> {
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
    let pre = if has("pre-execute") {
        Some(pre::PreHookIndices::new(&instance_pre).map_err(|e| type_err("pre-execute", e))?)
    } else {
        None
    };
    let post = if has("post-execute") {
        Some(post::PostHookIndices::new(&instance_pre).map_err(|e| type_err("post-execute", e))?)
    } else {
        None
    };
    if pre.is_none() && post.is_none() {
        return Err(LoadError::NoExports { hook, path });
    }
    tracing::info!(
        hook = %spec.name,
        path = %spec.path.display(),
        ?source,
        load_ms,
        pre = pre.is_some(),
        post = post.is_some(),
        "hook loaded"
    );
    Ok(Ready {
        instance_pre,
        pre,
        post,
        source,
        load_ms,
    })
}

fn warning(hook: &str, stage: Stage, failure: &Failure) -> HookWarning {
    HookWarning {
        hook: hook.to_string(),
        stage,
        kind: failure.kind,
        message: failure.message.clone(),
    }
}

/// Logs a call's captured guest output, tagged with the hook.
fn log_output(hook: &str, stage: Stage, out: &CallOutcome) {
    if !out.stdout.is_empty() {
        tracing::info!(hook, ?stage, stream = "stdout", output = %out.stdout.trim_end(), "hook output");
    }
    if !out.stderr.is_empty() {
        tracing::info!(hook, ?stage, stream = "stderr", output = %out.stderr.trim_end(), "hook output");
    }
}

impl HookSet {
    /// Compiles (or maps from the disk cache) every enabled hook. Blocking; call from
    /// `spawn_blocking`.
    ///
    /// A hook that fails to load is kept with its load error — the set itself still loads; the
    /// caller decides whether a set with load errors replaces the previous one.
    pub fn load(host: &Arc<HookHost>, specs: &[HookSpec]) -> HookSet {
        let mut seen = std::collections::HashSet::new();
        let hooks = specs
            .iter()
            .map(|spec| {
                let slot = if !seen.insert(spec.name.clone()) {
                    Slot::Failed(LoadError::Duplicate {
                        hook: spec.name.clone(),
                    })
                } else if !spec.enabled {
                    Slot::Disabled
                } else {
                    match load_one(host, spec) {
                        Ok(ready) => Slot::Ready(Box::new(ready)),
                        Err(err) => {
                            tracing::warn!(hook = %spec.name, cause = %err, "hook failed to load");
                            Slot::Failed(err)
                        }
                    }
                };
                let counters = host.counters_for(&spec.name);
                if let Slot::Failed(err) = &slot {
                    // Counted once per load, not once per chain that skips it.
                    counters.record(
                        Stage::Pre,
                        std::time::Duration::ZERO,
                        0,
                        Tally::Failure(FailureKind::Load, &err.to_string()),
                    );
                }
                LoadedHook {
                    ident: Arc::new(HookIdentity {
                        name: spec.name.clone(),
                        config: spec.config.clone(),
                        kv: host.kv_for(&spec.name),
                    }),
                    counters,
                    spec: spec.clone(),
                    slot,
                }
            })
            .collect();
        HookSet {
            host: host.clone(),
            hooks,
        }
    }

    /// The hooks that failed to load, with their errors.
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

    /// True when some enabled hook (loaded or failed to load) could run at `stage`. The
    /// executor may skip building inputs when false.
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.hooks.iter().any(|h| match &h.slot {
            Slot::Ready(r) => match stage {
                Stage::Pre => r.pre.is_some(),
                Stage::Post => r.post.is_some(),
            },
            Slot::Failed(_) => true,
            Slot::Disabled => false,
        })
    }

    /// Runs the pre-hooks in config order. Each sees the request as changed by the hooks before
    /// it; the first deny (or the first failure of a fail-closed hook) ends the chain.
    ///
    /// A hook that failed to load counts as a `load` failure at each chain (we cannot know its
    /// stages), handled by its `on_failure` like any other failure.
    pub async fn run_pre(&self, req: HookRequest) -> PreChain {
        let mut request = req;
        let mut modified_by = Vec::new();
        let mut reports = Vec::new();
        let mut warnings = Vec::new();
        for hook in &self.hooks {
            let name = hook.spec.name.as_str();
            let failure = match &hook.slot {
                Slot::Disabled => continue,
                Slot::Failed(err) => Failure {
                    kind: FailureKind::Load,
                    message: err.to_string(),
                },
                Slot::Ready(ready) => {
                    if ready.pre.is_none() {
                        continue;
                    }
                    let callable = hook.callable().expect("ready hook is callable");
                    let out =
                        call::call(&self.host, &callable, Input::Pre((&request).into())).await;
                    log_output(name, Stage::Pre, &out);
                    let checked = out.result.and_then(|answer| match answer {
                        Answer::Pre(d) => types::check_pre(d).map_err(|why| Failure {
                            kind: FailureKind::Invalid,
                            message: format!("hook `{name}` gave an invalid answer: {why}"),
                        }),
                        Answer::Post(_) => unreachable!("pre call answered as post"),
                    });
                    let mut report = HookReport {
                        hook: name.to_string(),
                        stage: Stage::Pre,
                        decision: None,
                        annotations: Vec::new(),
                        verdict: None,
                        error: None,
                        duration_us: out.duration.as_micros() as u64,
                        fuel_used: out.fuel_used,
                    };
                    match checked {
                        Ok(decision) => {
                            hook.counters.record(
                                Stage::Pre,
                                out.duration,
                                out.fuel_used,
                                Tally::Decision(decision.name()),
                            );
                            report.decision = Some(decision.name().to_string());
                            reports.push(report);
                            match decision {
                                PreDecision::Allow => {}
                                PreDecision::Modify(patch) => {
                                    request.apply(&patch);
                                    modified_by.push(name.to_string());
                                }
                                PreDecision::Deny(reason) => {
                                    return PreChain {
                                        outcome: PreOutcome::Deny {
                                            hook: name.to_string(),
                                            reason,
                                        },
                                        reports,
                                        warnings,
                                    };
                                }
                            }
                            continue;
                        }
                        Err(failure) => {
                            hook.counters.record(
                                Stage::Pre,
                                out.duration,
                                out.fuel_used,
                                Tally::Failure(failure.kind, &failure.message),
                            );
                            report.error = Some(failure.message.clone());
                            reports.push(report);
                            failure
                        }
                    }
                }
            };
            tracing::warn!(hook = name, stage = "pre", kind = ?failure.kind, on_failure = ?hook.spec.on_failure, "{}", failure.message);
            warnings.push(warning(name, Stage::Pre, &failure));
            if hook.spec.on_failure == OnFailure::Deny {
                return PreChain {
                    outcome: PreOutcome::Deny {
                        hook: name.to_string(),
                        reason: failure.message,
                    },
                    reports,
                    warnings,
                };
            }
        }
        PreChain {
            outcome: PreOutcome::Allow {
                request,
                modified_by,
            },
            reports,
            warnings,
        }
    }

    /// Runs every post-hook, in config order; each adds annotations and maybe a verdict. A
    /// fail-closed hook's failure becomes a failing verdict with the failure as its reason.
    pub async fn run_post(&self, result: &HookResult) -> PostChain {
        let mut reports = Vec::new();
        let mut warnings = Vec::new();
        let input: super::bindings::types::ExecResult = result.into();
        for hook in &self.hooks {
            let name = hook.spec.name.as_str();
            let mut report = HookReport {
                hook: name.to_string(),
                stage: Stage::Post,
                decision: None,
                annotations: Vec::new(),
                verdict: None,
                error: None,
                duration_us: 0,
                fuel_used: 0,
            };
            let failure = match &hook.slot {
                Slot::Disabled => continue,
                Slot::Failed(err) => Failure {
                    kind: FailureKind::Load,
                    message: err.to_string(),
                },
                Slot::Ready(ready) => {
                    if ready.post.is_none() {
                        continue;
                    }
                    let callable = hook.callable().expect("ready hook is callable");
                    let out = call::call(&self.host, &callable, Input::Post(input.clone())).await;
                    log_output(name, Stage::Post, &out);
                    report.duration_us = out.duration.as_micros() as u64;
                    report.fuel_used = out.fuel_used;
                    let checked = out.result.and_then(|answer| match answer {
                        Answer::Post(o) => types::check_post(o).map_err(|why| Failure {
                            kind: FailureKind::Invalid,
                            message: format!("hook `{name}` gave an invalid answer: {why}"),
                        }),
                        Answer::Pre(_) => unreachable!("post call answered as pre"),
                    });
                    match checked {
                        Ok(outcome) => {
                            let verdict = outcome.verdict.as_ref().map(|v| *v == Verdict::Pass);
                            hook.counters.record(
                                Stage::Post,
                                out.duration,
                                out.fuel_used,
                                Tally::Verdict(verdict),
                            );
                            report.annotations = outcome.annotations;
                            report.verdict = outcome.verdict;
                            reports.push(report);
                            continue;
                        }
                        Err(failure) => {
                            hook.counters.record(
                                Stage::Post,
                                out.duration,
                                out.fuel_used,
                                Tally::Failure(failure.kind, &failure.message),
                            );
                            failure
                        }
                    }
                }
            };
            tracing::warn!(hook = name, stage = "post", kind = ?failure.kind, on_failure = ?hook.spec.on_failure, "{}", failure.message);
            warnings.push(warning(name, Stage::Post, &failure));
            if hook.spec.on_failure == OnFailure::Deny {
                report.verdict = Some(Verdict::Fail(failure.message.clone()));
            }
            report.error = Some(failure.message);
            reports.push(report);
        }
        PostChain { reports, warnings }
    }

    /// Every hook of the set, in config order, with its state, limits and counters.
    pub fn status(&self) -> Vec<HookStatus> {
        self.hooks
            .iter()
            .map(|h| {
                let (state, stages, source, load_ms) = match &h.slot {
                    Slot::Ready(r) => {
                        let mut stages = Vec::new();
                        if r.pre.is_some() {
                            stages.push(Stage::Pre);
                        }
                        if r.post.is_some() {
                            stages.push(Stage::Post);
                        }
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
                    fuel: h.spec.fuel,
                    timeout_ms: h.spec.timeout_ms,
                    memory_mb: h.spec.memory_mb,
                    on_failure: h.spec.on_failure,
                    kv_keys: h.ident.kv.lock().map(|kv| kv.len()).unwrap_or(0),
                    stats: h.counters.snapshot(),
                }
            })
            .collect()
    }
}

// ---- one-off runs for `ccx hooks run` ---------------------------------------------------------

/// The input of a one-off run: `{"pre": {...request...}}` or `{"post": {...result...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunInput {
    Pre(HookRequest),
    Post(HookResult),
}

/// What a one-off run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub hook: String,
    pub stage: Stage,
    /// The checked answer as JSON: `"allow"`, `{"deny": reason}`, `{"modify": patch}` for a
    /// pre-hook, `{"annotations": {...}, "verdict": ...}` for a post-hook; `None` when the call
    /// failed.
    pub answer: Option<serde_json::Value>,
    /// The failure, when the call failed (including an invalid answer).
    pub failure: Option<RunFailure>,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// The guest's captured stdout and stderr.
    pub stdout: String,
    pub stderr: String,
    pub source: LoadSource,
}

/// A failed one-off run.
#[derive(Clone, Debug, Serialize)]
pub struct RunFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Runs one hook once with the spec's limits (for `ccx hooks run FILE --pre JSON | --post
/// JSON`). Loads the hook even when the spec is disabled; a load error, or a component that
/// lacks the requested stage, is an error. Failures of the call itself are in the report.
pub async fn run_once(
    host: &Arc<HookHost>,
    spec: &HookSpec,
    input: RunInput,
) -> anyhow::Result<RunReport> {
    let ready = {
        let host = host.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || load_one(&host, &spec)).await??
    };
    let stage = match input {
        RunInput::Pre(_) => Stage::Pre,
        RunInput::Post(_) => Stage::Post,
    };
    let missing = match stage {
        Stage::Pre => ready.pre.is_none(),
        Stage::Post => ready.post.is_none(),
    };
    if missing {
        anyhow::bail!(
            "hook `{}` ({}) does not export `{}-execute`",
            spec.name,
            spec.path.display(),
            match stage {
                Stage::Pre => "pre",
                Stage::Post => "post",
            }
        );
    }
    let ident = Arc::new(HookIdentity {
        name: spec.name.clone(),
        config: spec.config.clone(),
        kv: host.kv_for(&spec.name),
    });
    let callable = Callable {
        ident: &ident,
        limits: Limits::from_spec(spec),
        instance_pre: &ready.instance_pre,
        pre: ready.pre.as_ref(),
        post: ready.post.as_ref(),
    };
    let input = match &input {
        RunInput::Pre(req) => Input::Pre(req.into()),
        RunInput::Post(res) => Input::Post(res.into()),
    };
    let out = call::call(host, &callable, input).await;
    let checked = out.result.and_then(|answer| {
        let value = match answer {
            Answer::Pre(d) => types::check_pre(d).map(serde_json::to_value),
            Answer::Post(o) => types::check_post(o).map(serde_json::to_value),
        };
        value
            .map_err(|why| Failure {
                kind: FailureKind::Invalid,
                message: format!("hook `{}` gave an invalid answer: {why}", spec.name),
            })
            .map(|v| v.unwrap_or(serde_json::Value::Null))
    });
    let (answer, failure) = match checked {
        Ok(v) => (Some(v), None),
        Err(f) => (
            None,
            Some(RunFailure {
                kind: f.kind,
                message: f.message,
            }),
        ),
    };
    Ok(RunReport {
        hook: spec.name.clone(),
        stage,
        answer,
        failure,
        fuel_used: out.fuel_used,
        duration_us: out.duration.as_micros() as u64,
        stdout: out.stdout,
        stderr: out.stderr,
        source: ready.source,
    })
}
