// Over 500 lines: the stage's config, its job-long sessions and the line cutting share one
// lifetime (a job's) and one set of rules, which read best together.
//! The output stage: hooks exporting `start-output` and `filter-output` (world `output-hook`)
//! see a job's output while it flows and may pass, replace or drop each chunk, or end the job,
//! before anything leaves the host.
//!
//! Unlike the other stages, one instance (one `Store`) lives for the whole job, so a hook keeps
//! state from chunk to chunk (a secret split across two reads). Fuel and the deadline apply
//! per call, the memory limit to the instance, and `output.job_fuel` to the sum of the job's
//! calls. Hooks run in config order, each seeing what the one before it let through. A call
//! that fails (fuel, deadline, memory, trap, no free instance slot, the job's fuel budget) ends
//! that hook's instance: a trapped or interrupted instance is never entered again. Then
//! `output.on_failure` decides (default `deny`: a redaction hook that fails open would leak
//! what it exists to hold back): `deny` withholds the chunk and everything after it and ends
//! the job; `allow` passes the chunk unchanged, sends `hook.warning`, and the rest of the job's
//! output goes past the hook. In `warn` and `dry-run` modes the hook's answers are counted but
//! never applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::Store;

use super::bindings::output::OutputHook;
use super::bindings::types as wit;
use super::call::{self, CallState, Failure, Limits, Phase};
use super::set::{HookSet, Slot};
use super::stats::{CallStage, HookCounters, Tally};
use super::types::{HookRequest, MAX_REASON_BYTES};
use super::{FailureKind, HookMode, OnFailure};

/// Default `output.job_fuel`: the fuel all of one job's output calls may burn together.
pub const DEFAULT_JOB_FUEL: u64 = 100_000_000_000;
/// Default `output.max_line_bytes` (granularity `line`).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// Default `output.flush_ms` (granularity `line`).
pub const DEFAULT_FLUSH_MS: u64 = 50;

/// How the host cuts a stream into the chunks an output hook sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Each read of the pipe, as it comes (up to 64 KiB).
    #[default]
    Chunk,
    /// Whole lines (newline included), up to `max_line_bytes`; a partial line goes out after
    /// `flush_ms` without a newline (so prompts appear) or at the end of the stream.
    Line,
}

/// `[[hooks]] output = {granularity, max_line_bytes, flush_ms, job_fuel, on_failure}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub granularity: Granularity,
    /// Longest line delivered whole, in bytes (granularity `line`).
    pub max_line_bytes: usize,
    /// How long a partial line waits for its newline, in milliseconds (granularity `line`).
    pub flush_ms: u64,
    /// Fuel for all of one job's calls together; 0: unlimited (each call is still bounded).
    pub job_fuel: u64,
    /// What a failure does at this stage (see the module doc); default `deny`.
    pub on_failure: OnFailure,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            granularity: Granularity::Chunk,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            flush_ms: DEFAULT_FLUSH_MS,
            job_fuel: DEFAULT_JOB_FUEL,
            on_failure: OnFailure::Deny,
        }
    }
}

/// Which stream a chunk belongs to (a terminal's output is `Stdout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutStream {
    Stdout,
    Stderr,
}

impl OutStream {
    fn index(self) -> usize {
        match self {
            OutStream::Stdout => 0,
            OutStream::Stderr => 1,
        }
    }
}

/// What one hook did to one job's output, for `process.completed`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutputReport {
    pub hook: String,
    /// Calls of `filter-output` (end-of-stream calls included).
    pub calls: u64,
    /// Chunks replaced or dropped (in `warn`/`dry-run`: that would have been).
    pub chunks_changed: u64,
    /// Bytes the hook received, and the bytes it let through.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub fuel_used: u64,
    /// The failure that ended its instance, if any.
    pub error: Option<String>,
    /// `warn` or `dry-run` when its answers were not applied.
    pub mode: Option<HookMode>,
}

/// A failure that let the output through, or a `warn` hook's first would-be change:
/// `(hook, kind, message)`, for `hook.warning`.
pub type OutputWarning = (String, FailureKind, String);

/// The result of passing one piece of output through the stage.
#[derive(Debug, Default)]
pub struct Filtered {
    /// The bytes to send on (possibly empty: nothing to send for this read).
    pub data: Vec<u8>,
    /// A hook ended the job (or failed closed): `(hook, reason)`. `data` is what went before.
    pub end: Option<(String, String)>,
    pub warnings: Vec<OutputWarning>,
}

/// One hook's job-long instance.
struct Session {
    name: String,
    mode: HookMode,
    on_failure: OnFailure,
    limits: Limits,
    job_fuel: u64,
    store: Store<CallState>,
    bound: Option<OutputHook>,
    /// Its slot in the instance pool, held as long as the instance lives.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    report: OutputReport,
    warned: bool,
    /// The hook's counters (`/hooks`, `/metrics`): one call per `filter-output`.
    counters: Arc<HookCounters>,
}

/// The output stage of one job: the job-long instances of every output hook that matched its
/// request, in config order. Dropping it drops the instances.
pub struct OutputFilter {
    sessions: Vec<Session>,
    /// Line granularity: the partial line held per stream (stdout, stderr).
    spec: OutputSpec,
    partial: [Vec<u8>; 2],
    ended: bool,
}

impl HookSet {
    /// Whether any loaded hook exports the output stage.
    pub fn has_output_stage(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| matches!(&h.slot, Slot::Ready(r) if r.output.is_some()))
    }

    /// Starts the output stage for the job `request` describes (as it runs): instantiates each
    /// output hook whose matcher matches and calls its `start-output`. `None` when no hook takes
    /// part. A hook that cannot start fails like a call: `Err((hook, reason))` when it fails
    /// closed (the job must not run), else it is left out with a warning in the `Ok` value.
    pub async fn start_output(
        &self,
        request: &HookRequest,
    ) -> Result<(Option<OutputFilter>, Vec<OutputWarning>), (String, String)> {
        let mut sessions = Vec::new();
        let mut warnings = Vec::new();
        let mut spec = None;
        for hook in &self.hooks {
            let Slot::Ready(ready) = &hook.slot else {
                continue;
            };
            let Some(indices) = &ready.output else {
                continue;
            };
            if hook.sees(request).is_none() {
                continue;
            }
            // The first output hook's cutting applies to the stage (one stream, one cut).
            let out = &hook.spec.output;
            spec.get_or_insert_with(|| out.clone());
            let name = hook.spec.name.clone();
            let limits = Limits::from_spec(&hook.spec);
            // The instance holds a slot of the instance pool for the whole job; a job never
            // waits for one (it could wait for as long as other jobs run).
            let slot = self.host.call_slots.clone().try_acquire_owned();
            // A spare instance when one is ready (never one without a slot to hold).
            let spare = match (&slot, &hook.spares) {
                (Ok(_), Some(pool)) => pool.take(),
                _ => None,
            };
            let (mut store, made, stderr) = match spare {
                Some((store, instance, _stdout, stderr)) => (store, Some(instance), stderr),
                None => {
                    let (store, _stdout, stderr) =
                        call::new_store(&self.host, &hook.ident, &limits);
                    (store, None, stderr)
                }
            };
            let started = with_fuel(&mut store, &limits, u64::MAX);
            let began = Instant::now();
            let timed = tokio::time::timeout(limits.timeout, async {
                if slot.is_err() {
                    let e = wasmtime::Error::msg(
                        "no free instance slot for a job-long instance \
                         (raise [sandbox] max_concurrent_calls)",
                    );
                    return Err((Phase::Instantiate, e));
                }
                let instance = match made {
                    Some(instance) => instance,
                    None => ready
                        .instance_pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| (Phase::Instantiate, e))?,
                };
                let bound = indices
                    .load(&mut store, &instance)
                    .map_err(|e| (Phase::Instantiate, e))?;
                let req = wit::ExecRequest::from(request);
                bound
                    .call_start_output(&mut store, &req)
                    .await
                    .map_err(|e| (Phase::Call, e))?;
                Ok::<_, (Phase, wasmtime::Error)>(bound)
            })
            .await;
            let fuel_used = started.used(&store);
            let result = outcome(&name, &limits, &store, timed, &stderr.text());
            let tally = match &result {
                Ok(_) => Tally::Decision("start"),
                Err(f) => Tally::Failure(f.kind, &f.message),
            };
            let took = began.elapsed();
            let mode = hook.spec.mode;
            hook.counters
                .record(CallStage::Output, mode, took, fuel_used, tally);
            match result {
                Ok(bound) => sessions.push(Session {
                    name: name.clone(),
                    mode: hook.spec.mode,
                    on_failure: out.on_failure,
                    limits,
                    job_fuel: out.job_fuel,
                    store,
                    bound: Some(bound),
                    _slot: slot.ok(),
                    report: OutputReport {
                        hook: name,
                        fuel_used,
                        mode: (hook.spec.mode != HookMode::Enforce).then_some(hook.spec.mode),
                        ..Default::default()
                    },
                    warned: false,
                    counters: hook.counters.clone(),
                }),
                Err(f) => {
                    let enforce = hook.spec.mode == HookMode::Enforce;
                    if enforce && out.on_failure == OnFailure::Deny {
                        return Err((name, f.message));
                    }
                    if hook.spec.mode != HookMode::DryRun {
                        warnings.push((name, f.kind, f.message));
                    }
                }
            }
        }
        let Some(spec) = spec.filter(|_| !sessions.is_empty()) else {
            return Ok((None, warnings));
        };
        Ok((
            Some(OutputFilter {
                sessions,
                spec,
                partial: [Vec::new(), Vec::new()],
                ended: false,
            }),
            warnings,
        ))
    }
}

impl OutputFilter {
    /// With granularity `line`, how long a partial line may wait ([`OutputFilter::flush`]).
    pub fn flush_after(&self) -> Option<Duration> {
        (self.spec.granularity == Granularity::Line)
            .then(|| Duration::from_millis(self.spec.flush_ms))
    }

    /// Whether a partial line waits in `stream` (granularity `line`).
    pub fn holds(&self, stream: OutStream) -> bool {
        !self.partial[stream.index()].is_empty()
    }

    /// Passes one read of `stream` through the hooks (granularity `line`: its whole lines;
    /// the rest waits for its newline). `seq` is the read's.
    pub async fn filter(&mut self, stream: OutStream, seq: u64, data: &[u8]) -> Filtered {
        if self.spec.granularity == Granularity::Chunk {
            return self.run(stream, seq, data.to_vec(), false).await;
        }
        let max = self.spec.max_line_bytes.max(1);
        let buf = &mut self.partial[stream.index()];
        buf.extend_from_slice(data);
        // Whole lines, and lines cut at the limit, go now.
        let mut cut = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if buf.len() - cut >= max {
            cut = buf.len() - (buf.len() - cut) % max;
        }
        if cut == 0 {
            return Filtered::default();
        }
        let rest = buf.split_off(cut);
        let lines = std::mem::replace(buf, rest);
        self.run(stream, seq, lines, false).await
    }

    /// Granularity `line`: sends the partial line of `stream` without waiting for its newline.
    pub async fn flush(&mut self, stream: OutStream, seq: u64) -> Filtered {
        let data = std::mem::take(&mut self.partial[stream.index()]);
        if data.is_empty() {
            return Filtered::default();
        }
        self.run(stream, seq, data, false).await
    }

    /// `stream` has ended: what is held is sent, then every hook gets its end-of-stream call
    /// (and the next hook what it releases).
    pub async fn end(&mut self, stream: OutStream, seq: u64) -> Filtered {
        let data = std::mem::take(&mut self.partial[stream.index()]);
        self.run(stream, seq, data, true).await
    }

    /// What each hook did, for `process.completed`.
    pub fn reports(&self) -> Vec<OutputReport> {
        self.sessions.iter().map(|s| s.report.clone()).collect()
    }

    /// Runs `data` through every session in order; with `end`, each session's end-of-stream
    /// call follows the data it gets.
    async fn run(&mut self, stream: OutStream, seq: u64, data: Vec<u8>, end: bool) -> Filtered {
        let mut out = Filtered {
            data,
            ..Default::default()
        };
        if self.ended {
            out.data.clear();
            return out;
        }
        for s in &mut self.sessions {
            let mut passed = Vec::new();
            let mut calls = Vec::new();
            if !out.data.is_empty() {
                calls.push((std::mem::take(&mut out.data), false));
            }
            if end {
                calls.push((Vec::new(), true));
            }
            for (data, last) in calls {
                match s.call(stream, seq, data, last, &mut out.warnings).await {
                    Step::Pass(bytes) => passed.extend_from_slice(&bytes),
                    Step::End(reason) => {
                        self.ended = true;
                        out.data = passed;
                        out.end = Some((s.name.clone(), reason));
                        return out;
                    }
                }
            }
            out.data = passed;
        }
        out
    }
}

/// A session's answer, once applied.
enum Step {
    Pass(Vec<u8>),
    End(String),
}

impl Session {
    /// One `filter-output` call, its answer applied as the mode and the failure policy say.
    async fn call(
        &mut self,
        stream: OutStream,
        seq: u64,
        data: Vec<u8>,
        end: bool,
        warnings: &mut Vec<OutputWarning>,
    ) -> Step {
        let Some(bound) = &self.bound else {
            // Failed open earlier: the rest goes past it.
            return Step::Pass(data);
        };
        self.report.calls += 1;
        self.report.bytes_in += data.len() as u64;
        let left = match self.job_fuel {
            0 => u64::MAX,
            budget => budget.saturating_sub(self.report.fuel_used),
        };
        let budget_spent = || Failure {
            kind: FailureKind::Fuel,
            message: format!(
                "hook `{}` used up the job's output fuel budget (output.job_fuel = {})",
                self.name, self.job_fuel
            ),
        };
        let began = Instant::now();
        let fuel_before = self.report.fuel_used;
        let answer = if left == 0 {
            Err(budget_spent())
        } else {
            let fuel = with_fuel(&mut self.store, &self.limits, left);
            let chunk = wit::OutputChunk {
                source: match stream {
                    OutStream::Stdout => wit::OutputStream::Stdout,
                    OutStream::Stderr => wit::OutputStream::Stderr,
                },
                seq,
                data: data.clone(),
                end,
            };
            let store = &mut self.store;
            let timed = tokio::time::timeout(self.limits.timeout, async {
                bound
                    .call_filter_output(&mut *store, &chunk)
                    .await
                    .map_err(|e| (Phase::Call, e))
            })
            .await;
            self.report.fuel_used += fuel.used(&self.store);
            match outcome(&self.name, &self.limits, &self.store, timed, "") {
                // Out of fuel with less than a call's worth given: the budget ran out.
                Err(f) if f.kind == FailureKind::Fuel && fuel.given < per_call(&self.limits) => {
                    Err(budget_spent())
                }
                other => other,
            }
        };
        let applies = self.mode == HookMode::Enforce;
        let decision = match &answer {
            Ok(wit::OutputAction::Pass) => "pass",
            Ok(wit::OutputAction::Replace(new)) if *new == data => "pass",
            Ok(wit::OutputAction::Drop) if data.is_empty() => "pass",
            Ok(wit::OutputAction::Replace(_)) => "replace",
            Ok(wit::OutputAction::Drop) => "drop",
            Ok(wit::OutputAction::EndJob(_)) => "end_job",
            Err(_) => "failed",
        };
        let tally = match &answer {
            Err(f) => Tally::Failure(f.kind, &f.message),
            Ok(_) if applies || decision == "pass" => Tally::Decision(decision),
            Ok(_) => Tally::Would(decision),
        };
        let fuel = self.report.fuel_used - fuel_before;
        self.counters
            .record(CallStage::Output, self.mode, began.elapsed(), fuel, tally);
        let (bytes, end_reason) = match answer {
            Ok(wit::OutputAction::Pass) => (data, None),
            // Nothing changed: an unchanged replacement, or nothing dropped.
            Ok(wit::OutputAction::Replace(new)) if new == data => (data, None),
            Ok(wit::OutputAction::Drop) if data.is_empty() => (data, None),
            Ok(wit::OutputAction::Replace(new)) => {
                self.changed(warnings, "replace");
                if applies { (new, None) } else { (data, None) }
            }
            Ok(wit::OutputAction::Drop) => {
                self.changed(warnings, "drop");
                if applies {
                    (Vec::new(), None)
                } else {
                    (data, None)
                }
            }
            Ok(wit::OutputAction::EndJob(mut reason)) => {
                // Cut as the input stage cuts a deny reason: it goes into the job's error.
                if reason.len() > MAX_REASON_BYTES {
                    reason.truncate(reason.floor_char_boundary(MAX_REASON_BYTES));
                }
                self.changed(warnings, &format!("end the job: {reason}"));
                if applies {
                    (Vec::new(), Some(reason))
                } else {
                    (data, None)
                }
            }
            Err(f) => {
                // Never enter a failed instance again.
                self.bound = None;
                self.report.error = Some(f.message.clone());
                if applies && self.on_failure == OnFailure::Deny {
                    return Step::End(f.message);
                }
                if self.mode != HookMode::DryRun {
                    warnings.push((self.name.clone(), f.kind, f.message));
                }
                (data, None)
            }
        };
        if let Some(reason) = end_reason {
            return Step::End(format!("hook `{}` ended the job: {reason}", self.name));
        }
        self.report.bytes_out += bytes.len() as u64;
        Step::Pass(bytes)
    }

    /// Counts a change; a `warn` hook tells the client about its first one.
    fn changed(&mut self, warnings: &mut Vec<OutputWarning>, what: &str) {
        self.report.chunks_changed += 1;
        if self.mode == HookMode::Warn && !self.warned {
            self.warned = true;
            let message = format!("would {what} (and maybe more of this job's output)");
            warnings.push((self.name.clone(), FailureKind::Modify, message));
        }
    }
}

/// Fuel given to the next call: the per-call limit, at most `left`.
struct FuelGiven {
    given: u64,
    set: bool,
}

impl FuelGiven {
    fn used(&self, store: &Store<CallState>) -> u64 {
        if !self.set {
            return 0;
        }
        self.given.saturating_sub(store.get_fuel().unwrap_or(0))
    }
}

/// A call's own fuel limit (`fuel = 0`: unlimited).
fn per_call(limits: &Limits) -> u64 {
    if limits.fuel == 0 {
        u64::MAX
    } else {
        limits.fuel
    }
}

fn with_fuel(store: &mut Store<CallState>, limits: &Limits, left: u64) -> FuelGiven {
    let given = per_call(limits).min(left);
    // A fresh deadline for this call too.
    store.set_epoch_deadline(1);
    FuelGiven {
        given,
        set: store.set_fuel(given).is_ok(),
    }
}

/// The result of a bounded call as a [`Failure`] on error.
fn outcome<T>(
    name: &str,
    limits: &Limits,
    store: &Store<CallState>,
    timed: Result<Result<T, (Phase, wasmtime::Error)>, tokio::time::error::Elapsed>,
    stderr: &str,
) -> Result<T, Failure> {
    match timed {
        Err(_) => Err(Failure {
            kind: FailureKind::Timeout,
            message: format!(
                "hook `{name}` passed its deadline of {} ms",
                limits.timeout.as_millis()
            ),
        }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err((phase, err))) => Err(call::classify(
            name,
            limits,
            call::refused(store),
            phase,
            &err,
            stderr,
        )),
    }
}
