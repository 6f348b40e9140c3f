// Over 500 lines: one call's whole path (store, limiter, host functions, the bounded call for
// each stage and contract version, the failure's classification) reads best in one place.
//! One hook call: a fresh `Store` whose data (`CallState`) carries the call's limits and serves
//! the `ccx:hooks/host` functions, instantiation through the hook's `InstancePre`, the call
//! itself bounded from outside, and the classification of whatever went wrong into a
//! [`FailureKind`] with a message that names the limit.
//!
//! A store lives for exactly one call (spin's rule): nothing leaks between calls, a trapped
//! instance is never reused, and a store never crosses tasks. The output stage is the one
//! exception (a store per job, `output_stage.rs`); it builds its stores with [`new_store`] and
//! classifies failures with [`classify`] from here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{InstancePre, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host, input, post, pre, types as wit, v1};
use super::capture::Capture;
use super::kv::SharedKv;
use super::spare::SparePool;
use super::types::{HookRequest, HookResult};
use super::{FailureKind, HookHost, HookSpec};

/// Longest `host.log` message kept, in bytes; longer ones are cut with a note.
pub const LOG_MESSAGE_MAX_BYTES: usize = 4 * 1024;
/// Most `host.log` messages one call may emit; later ones are counted and dropped.
pub const LOG_MESSAGES_PER_CALL: u32 = 100;
/// Most elements a guest table may grow to (componentize-py needs about 200,000).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// What a hook knows about itself during a call: its name, its config table and its kv store.
/// Shared by every call of the hook in this generation.
#[derive(Debug)]
pub(crate) struct HookIdentity {
    pub(crate) name: String,
    pub(crate) config: Vec<(String, String)>,
    pub(crate) kv: SharedKv,
}

/// Per-call limits, copied from the spec.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// 0 means unlimited.
    pub(crate) fuel: u64,
    pub(crate) timeout: Duration,
    pub(crate) memory_bytes: usize,
}

impl Limits {
    pub(crate) fn from_spec(spec: &HookSpec) -> Self {
        Limits {
            fuel: spec.fuel,
            timeout: Duration::from_millis(spec.timeout_ms),
            memory_bytes: usize::try_from(spec.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
        }
    }
}

/// The store data of one call.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    ident: Arc<HookIdentity>,
    limiter: CallLimiter,
    log_messages: u32,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A memory limiter that remembers refusing a growth. A Rust guest that cannot allocate
/// aborts, which surfaces as an `unreachable` trap; the note lets us report `memory` instead.
struct CallLimiter {
    memory_bytes: usize,
    refused: Option<usize>,
    /// Bytes of linear memory granted so far (creation counts as growth from 0).
    granted: usize,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.granted += desired.saturating_sub(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    // Interpreted guests (componentize-py) use dozens of core instances per component.
    fn instances(&self) -> usize {
        100
    }
    fn tables(&self) -> usize {
        100
    }
    fn memories(&self) -> usize {
        100
    }
}

impl host::Host for CallState {
    fn log(&mut self, level: host::Level, mut message: String) {
        self.log_messages += 1;
        if self.log_messages > LOG_MESSAGES_PER_CALL {
            return; // counted; reported once when the call ends
        }
        if message.len() > LOG_MESSAGE_MAX_BYTES {
            let total = message.len();
            message.truncate(message.floor_char_boundary(LOG_MESSAGE_MAX_BYTES));
            message.push_str(&format!(" … [cut: message was {total} bytes]"));
        }
        let hook = self.ident.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(hook, "{message}"),
            host::Level::Debug => tracing::debug!(hook, "{message}"),
            host::Level::Info => tracing::info!(hook, "{message}"),
            host::Level::Warn => tracing::warn!(hook, "{message}"),
            host::Level::Error => tracing::error!(hook, "{message}"),
        }
    }

    fn config(&mut self) -> Vec<(String, String)> {
        self.ident.config.clone()
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        lock(&self.ident.kv).get(&key)
    }

    fn kv_set(&mut self, key: String, value: String) {
        if let Err(why) = lock(&self.ident.kv).set(key, value) {
            tracing::warn!(hook = %self.ident.name, "kv-set ignored: {why}");
        }
    }
}

impl wit::Host for CallState {}

/// A 0.1.0 hook's `host` imports: the same services.
impl v1::host::Host for CallState {
    fn log(&mut self, level: v1::host::Level, message: String) {
        host::Host::log(self, super::convert::level_v1(level), message)
    }

    fn config(&mut self) -> Vec<(String, String)> {
        host::Host::config(self)
    }

    fn kv_get(&mut self, key: String) -> Option<String> {
        host::Host::kv_get(self, key)
    }

    fn kv_set(&mut self, key: String, value: String) {
        host::Host::kv_set(self, key, value)
    }
}

impl v1::types::Host for CallState {}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds what a hook may import to the linker: all of WASI preview 2 (sandboxed by the
/// `WasiCtx` each call builds) and `ccx:hooks/host`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<CallState>,
) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    host::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(linker, |s| s)?;
    v1::host::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(linker, |s| s)?;
    Ok(())
}

// ---- the call ---------------------------------------------------------------------------------

/// A hook's `pre-execute` export, in the contract version it was built against.
#[derive(Clone)]
pub(crate) enum PreExport {
    V1(v1::pre::PreHookIndices),
    V2(pre::PreHookIndices),
}

/// A hook's `post-execute` export, in the contract version it was built against.
#[derive(Clone)]
pub(crate) enum PostExport {
    V1(v1::post::PostHookIndices),
    V2(post::PostHookIndices),
}

/// What a loaded hook needs to be called. Owned (a few reference counts), so a call can run
/// on a task of its own.
#[derive(Clone)]
pub(crate) struct Callable {
    pub(crate) ident: Arc<HookIdentity>,
    pub(crate) limits: Limits,
    pub(crate) instance_pre: InstancePre<CallState>,
    pub(crate) pre: Option<PreExport>,
    pub(crate) post: Option<PostExport>,
    pub(crate) input: Option<input::InputHookIndices>,
    /// Fresh instances made ahead of time; `None`: every call instantiates.
    pub(crate) spares: Option<Arc<SparePool>>,
}

/// The input of one call, converted at the call to the hook's contract version.
pub(crate) enum Input {
    Pre(Box<HookRequest>),
    Post(Box<HookResult>),
    /// `check-input`: the job's request and the bytes typed or piped into it.
    Typed(Box<HookRequest>, Vec<u8>),
}

/// A guest's raw answer, before checking.
pub(crate) enum Answer {
    Pre(wit::PreDecision),
    Post(wit::PostOutcome),
    Input(wit::InputDecision),
}

/// A failed call: what kind, and a message naming the hook and the limit.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

/// Everything one call produced.
pub(crate) struct CallOutcome {
    pub(crate) result: Result<Answer, Failure>,
    pub(crate) fuel_used: u64,
    pub(crate) duration: Duration,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl CallOutcome {
    /// A call that failed before its instance existed (or whose task failed).
    pub(crate) fn failed(failure: Failure, duration: Duration) -> CallOutcome {
        CallOutcome {
            result: Err(failure),
            fuel_used: 0,
            duration,
            stdout: String::new(),
            stderr: String::new(),
        }
    }
}

/// Where an error came from, which decides its kind when it is not a trap.
pub(crate) enum Phase {
    Instantiate,
    Call,
}

/// Runs one call of one hook in a fresh store.
///
/// Bounds: fuel (checked by wasm code), a memory limiter, an epoch deadline that yields to the
/// executor every tick (so a spinning guest never holds a tokio worker for more than a tick) and
/// an outer `tokio::time::timeout` around instantiation and the call (so a guest blocked in a
/// host or WASI call, such as a sleep, is cut too: its future is dropped). The call therefore
/// returns within `timeout` plus about one tick and the timer's granularity.
///
/// With a spare ready (see `spare`), the call takes it instead of instantiating: the fuel and
/// the deadline then start at the call itself, and `fuel_used` leaves out what instantiation
/// burned.
pub(crate) async fn call(host: &HookHost, hook: &Callable, input: Input) -> CallOutcome {
    let name = hook.ident.name.as_str();
    let fuel = if hook.limits.fuel == 0 {
        u64::MAX
    } else {
        hook.limits.fuel
    };
    let started = Instant::now();
    let limits = hook.limits;
    // A slot in the instance pool, held until the store (which holds the slot) is dropped, so
    // a new call never finds the pool full of instances that are on their way out. Waiting
    // for it counts against the deadline.
    let slots = host.call_slots.clone();
    let permit = tokio::time::timeout(limits.timeout, slots.acquire_owned()).await;
    let permit = match permit {
        Ok(Ok(permit)) => permit,
        Ok(Err(closed)) => {
            let err = wasmtime::Error::msg(closed.to_string());
            let failure = classify(name, &limits, None, Phase::Instantiate, &err, "");
            return CallOutcome::failed(failure, started.elapsed());
        }
        Err(_elapsed) => {
            let failure = Failure {
                kind: FailureKind::Timeout,
                message: format!(
                    "hook `{name}` passed its deadline of {} ms waiting for a free instance slot",
                    limits.timeout.as_millis()
                ),
            };
            return CallOutcome::failed(failure, started.elapsed());
        }
    };
    let (mut store, ready, stdout, stderr) = match hook.spares.as_ref().and_then(|p| p.take()) {
        Some((store, instance, stdout, stderr)) => (store, Some(instance), stdout, stderr),
        None => {
            let (store, stdout, stderr) = new_store(host, &hook.ident, &hook.limits);
            (store, None, stdout, stderr)
        }
    };
    let fuel_set = store.set_fuel(fuel).is_ok();
    // The deadline counts from now (a spare's store was made earlier).
    store.set_epoch_deadline(1);
    let remaining = limits.timeout.saturating_sub(started.elapsed());
    let timed = tokio::time::timeout(remaining, async {
        let instance = match ready {
            Some(instance) => instance,
            None => hook
                .instance_pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (Phase::Instantiate, e))?,
        };
        match input {
            Input::Pre(req) => {
                let no_export = || {
                    let e = wasmtime::Error::msg("hook has no pre-execute export");
                    (Phase::Call, e)
                };
                match hook.pre.as_ref().ok_or_else(no_export)? {
                    PreExport::V2(indices) => {
                        let bound = indices
                            .load(&mut store, &instance)
                            .map_err(|e| (Phase::Instantiate, e))?;
                        let req = wit::ExecRequest::from(&*req);
                        bound.call_pre_execute(&mut store, &req).await
                    }
                    PreExport::V1(indices) => {
                        let bound = indices
                            .load(&mut store, &instance)
                            .map_err(|e| (Phase::Instantiate, e))?;
                        let req = v1::types::ExecRequest::from(&*req);
                        let answer = bound.call_pre_execute(&mut store, &req).await;
                        answer.map(super::convert::pre_decision_v1)
                    }
                }
                .map(Answer::Pre)
                .map_err(|e| (Phase::Call, e))
            }
            Input::Typed(req, data) => {
                let Some(indices) = hook.input.as_ref() else {
                    let e = wasmtime::Error::msg("hook has no check-input export");
                    return Err((Phase::Call, e));
                };
                let bound = indices
                    .load(&mut store, &instance)
                    .map_err(|e| (Phase::Instantiate, e))?;
                let req = wit::ExecRequest::from(&*req);
                bound
                    .call_check_input(&mut store, &req, &data)
                    .await
                    .map(Answer::Input)
                    .map_err(|e| (Phase::Call, e))
            }
            Input::Post(job) => {
                let no_export = || {
                    let e = wasmtime::Error::msg("hook has no post-execute export");
                    (Phase::Call, e)
                };
                match hook.post.as_ref().ok_or_else(no_export)? {
                    PostExport::V2(indices) => {
                        let bound = indices
                            .load(&mut store, &instance)
                            .map_err(|e| (Phase::Instantiate, e))?;
                        let job = wit::ExecResult::from(&*job);
                        bound.call_post_execute(&mut store, &job).await
                    }
                    PostExport::V1(indices) => {
                        let bound = indices
                            .load(&mut store, &instance)
                            .map_err(|e| (Phase::Instantiate, e))?;
                        let job = v1::types::ExecResult::from(&*job);
                        let answer = bound.call_post_execute(&mut store, &job).await;
                        answer.map(super::convert::post_outcome_v1)
                    }
                }
                .map(Answer::Post)
                .map_err(|e| (Phase::Call, e))
            }
        }
    })
    .await;
    let duration = started.elapsed();

    let fuel_used = if fuel_set {
        fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    };
    let refused = store.data().limiter.refused;
    let dropped_logs = store
        .data()
        .log_messages
        .saturating_sub(LOG_MESSAGES_PER_CALL);
    // Tearing an instance down resets its pool slot (0.1–0.3 ms for an interpreted guest's
    // memories): done beside the job, not in its way. The call slot goes with the store.
    let teardown = move || {
        drop(store);
        drop(permit);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(async move { teardown() })),
        Err(_) => teardown(),
    }
    if dropped_logs > 0 {
        tracing::warn!(
            hook = name,
            dropped = dropped_logs,
            "hook logged more than {LOG_MESSAGES_PER_CALL} messages in one call; the rest were dropped"
        );
    }

    let stdout = stdout.text();
    let stderr = stderr.text();
    let result = match timed {
        Err(_elapsed) => Err(Failure {
            kind: FailureKind::Timeout,
            message: format!(
                "hook `{name}` passed its deadline of {} ms",
                limits.timeout.as_millis()
            ),
        }),
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err((phase, err))) => Err(classify(name, &limits, refused, phase, &err, &stderr)),
    };
    CallOutcome {
        result,
        fuel_used,
        duration,
        stdout,
        stderr,
    }
}

/// A store for calls of the hook `ident` within `limits` (memory; fuel is set per call), with
/// the guest's stdout and stderr captured.
///
/// A store's epoch deadline starts at 0; every store must get one. It yields at each tick and
/// keeps going: the caller's outer timeout decides when a call is over. The yield is tokio's
/// `yield_now`, which defers the wake-up until the worker has polled its timer and I/O
/// drivers; wasmtime's plain yield wakes the task at once, and tokio then polls its drivers
/// only every ~61 polls, so a spinning guest would delay every timer on its worker by ~60 ms.
pub(crate) fn new_store(
    host: &HookHost,
    ident: &Arc<HookIdentity>,
    limits: &Limits,
) -> (Store<CallState>, Capture, Capture) {
    let stdout = Capture::default();
    let stderr = Capture::default();
    let wasi = WasiCtx::builder()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .build();
    let mut store = Store::new(
        &host.engine,
        CallState {
            wasi,
            table: ResourceTable::new(),
            ident: ident.clone(),
            limiter: CallLimiter {
                memory_bytes: limits.memory_bytes,
                refused: None,
                granted: 0,
            },
            log_messages: 0,
        },
    );
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    (store, stdout, stderr)
}

/// Bytes of linear memory the limiter has granted `store`'s instances (their total size).
pub(crate) fn memory_bytes(store: &Store<CallState>) -> usize {
    store.data().limiter.granted
}

/// The memory growth the limiter refused in `store`, if any (for [`classify`]).
pub(crate) fn refused(store: &Store<CallState>) -> Option<usize> {
    store.data().limiter.refused
}

/// Turns a wasmtime error into a failure kind and a message a person can act on.
pub(crate) fn classify(
    name: &str,
    limits: &Limits,
    refused: Option<usize>,
    phase: Phase,
    err: &wasmtime::Error,
    stderr: &str,
) -> Failure {
    // Checked first: a Rust guest that cannot grow its memory aborts with `unreachable`.
    if let Some(desired) = refused {
        return Failure {
            kind: FailureKind::Memory,
            message: format!(
                "hook `{name}` exceeded its memory limit of {} MiB (a memory asked to grow to {} MiB)",
                limits.memory_bytes >> 20,
                desired.div_ceil(1 << 20)
            ),
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure {
            kind: FailureKind::Fuel,
            message: format!("hook `{name}` ran out of fuel (limit {})", limits.fuel),
        },
        Some(Trap::Interrupt) => Failure {
            kind: FailureKind::Timeout,
            message: format!(
                "hook `{name}` passed its deadline of {} ms",
                limits.timeout.as_millis()
            ),
        },
        Some(trap) => {
            let mut message = format!("hook `{name}` trapped: {trap}");
            if let Some(note) = stderr_note(stderr) {
                message.push_str(&format!(" (guest stderr: {note})"));
            }
            Failure {
                kind: FailureKind::Trap,
                message,
            }
        }
        None => match phase {
            Phase::Instantiate => Failure {
                kind: FailureKind::Load,
                message: format!("hook `{name}` could not be instantiated: {err:#}"),
            },
            Phase::Call => Failure {
                kind: FailureKind::Trap,
                message: format!("hook `{name}` failed: {err:#}"),
            },
        },
    }
}

/// The last non-empty lines of a guest's stderr (where a Rust panic message goes), short.
fn stderr_note(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let tail = lines[lines.len().saturating_sub(2)..].join(" / ");
    Some(tail[..tail.floor_char_boundary(512)].to_string())
}
