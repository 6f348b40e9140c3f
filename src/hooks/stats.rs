//! Per-hook counters, kept by hook *name* in the [`super::HookHost`] so they survive reloads of
//! the hook set (a status page should not reset to zero when the config file is touched).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{FailureKind, HookMode, Stage};

/// How many recent calls the latency and fuel percentiles are computed over.
pub const STATS_WINDOW: usize = 1024;

/// Upper bounds (µs) of the latency histogram's buckets, for `/metrics`: 25 µs to ~1.6 s in
/// factors of 2 (a last, unbounded bucket is implied).
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800,
    409_600, 819_200, 1_638_400,
];

/// Counters for one hook. A std `Mutex` because updates are a few integer bumps, never held
/// across an await.
#[derive(Debug, Default)]
pub(crate) struct HookCounters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: u64,
    pre_calls: u64,
    post_calls: u64,
    output_calls: u64,
    input_calls: u64,
    /// Calls by stage, decision and mode: a handful of rows per hook, searched linearly.
    by_label: Vec<CallCount>,
    allow: u64,
    deny: u64,
    modify: u64,
    would_deny: u64,
    would_modify: u64,
    pass: u64,
    fail: u64,
    failures: FailureCounts,
    post_failures: u64,
    /// Calls per [`LATENCY_BOUNDS_US`] bucket (not cumulative; the last is the overflow).
    latency_counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: u64,
    fuel_total: u64,
    durations_us: VecDeque<u64>,
    fuel: VecDeque<u64>,
    last_failure: Option<LastFailure>,
}

/// Failures by kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailureCounts {
    pub fuel: u64,
    pub timeout: u64,
    pub memory: u64,
    pub trap: u64,
    pub invalid: u64,
    pub load: u64,
}

/// The stage of one call, for the counters: the pre- and post-hook chains, and the two
/// streaming stages (`filter-output` on a job's output, `check-input` on its input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStage {
    Pre,
    Post,
    Output,
    Input,
}

impl From<Stage> for CallStage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Pre => CallStage::Pre,
            Stage::Post => CallStage::Post,
        }
    }
}

impl CallStage {
    /// The stage's name in `/hooks` and `/metrics` labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallStage::Pre => "pre",
            CallStage::Post => "post",
            CallStage::Output => "output",
            CallStage::Input => "input",
        }
    }
}

/// Calls of one hook with one stage, decision and mode since start (`/metrics`'
/// `ccx_hook_calls_total{hook, stage, decision, mode}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallCount {
    pub stage: CallStage,
    /// Pre: `allow`, `deny`, `modify`, or `would_deny`/`would_modify` outside `enforce`.
    /// Post: `pass`, `fail`, or `none` (no verdict). Output: `start`, `pass`, `replace`,
    /// `drop`, `end_job` (`would_*` outside `enforce`). Input: `allow`, `deny`
    /// (`would_deny`). Any stage: `failed` (a limit hit or a wrong answer).
    pub decision: String,
    /// The hook's mode at the call.
    pub mode: HookMode,
    pub calls: u64,
}

/// The most recent failure of a hook.
#[derive(Clone, Debug, Serialize)]
pub struct LastFailure {
    pub stage: CallStage,
    pub kind: FailureKind,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
}

/// A copy of one hook's counters, for status pages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HookStats {
    /// Calls of every stage, including failed ones.
    pub calls: u64,
    pub pre_calls: u64,
    pub post_calls: u64,
    /// `filter-output` calls (one per chunk or line, plus the job's `start-output`).
    pub output_calls: u64,
    /// `check-input` calls.
    pub input_calls: u64,
    /// Every call by stage, decision and mode.
    pub calls_by: Vec<CallCount>,
    /// Pre-hook decisions (answers that passed the checks).
    pub allow: u64,
    pub deny: u64,
    pub modify: u64,
    /// Decisions of a `warn` or `dry-run` hook, recorded but not applied.
    pub would_deny: u64,
    pub would_modify: u64,
    /// Post-hook verdicts (answers that passed the checks).
    pub pass: u64,
    pub fail: u64,
    pub failures: FailureCounts,
    /// Latency of a call (fresh store, instantiation and the call) over the last
    /// [`STATS_WINDOW`] calls, in microseconds.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    /// Fuel used per call over the last [`STATS_WINDOW`] calls.
    pub fuel_p50: Option<u64>,
    /// Fuel used by every call since start.
    pub fuel_total: u64,
    /// Failures of post-hook calls.
    pub post_failures: u64,
    /// Every call's latency since start, in buckets.
    pub latency: LatencyHistogram,
    pub last_failure: Option<LastFailure>,
}

/// Call latencies since start: `counts[i]` calls took at most `le_us[i]` µs (and more than
/// the bound before); `counts` has one more entry, the calls above the last bound.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyHistogram {
    pub le_us: Vec<u64>,
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

/// What one call ended with, for the counters.
#[derive(Clone, Copy)]
pub(crate) enum Tally<'a> {
    Decision(&'a str),
    /// A decision of a hook not in `enforce` mode.
    Would(&'a str),
    Verdict(Option<bool>),
    Failure(FailureKind, &'a str),
}

fn push_bounded(ring: &mut VecDeque<u64>, value: u64) {
    if ring.len() == STATS_WINDOW {
        ring.pop_front();
    }
    ring.push_back(value);
}

fn percentile(ring: &VecDeque<u64>, p: f64) -> Option<u64> {
    if ring.is_empty() {
        return None;
    }
    let mut sorted: Vec<u64> = ring.iter().copied().collect();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl HookCounters {
    /// Counts one call of `stage` by a hook in `mode`: its latency, fuel and what it ended
    /// with.
    pub(crate) fn record(
        &self,
        stage: impl Into<CallStage>,
        mode: HookMode,
        duration: Duration,
        fuel: u64,
        tally: Tally<'_>,
    ) {
        let stage = stage.into();
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.calls += 1;
        match stage {
            CallStage::Pre => s.pre_calls += 1,
            CallStage::Post => s.post_calls += 1,
            CallStage::Output => s.output_calls += 1,
            CallStage::Input => s.input_calls += 1,
        }
        let us = duration.as_micros() as u64;
        let bucket = LATENCY_BOUNDS_US.partition_point(|&le| le < us);
        s.latency_counts[bucket] += 1;
        s.latency_sum_us += us;
        s.fuel_total += fuel;
        push_bounded(&mut s.durations_us, us);
        push_bounded(&mut s.fuel, fuel);
        // Static names: this runs per output chunk, so no label is built per call.
        let decision = match tally {
            Tally::Decision(d) => d,
            Tally::Would(d @ ("allow" | "pass")) => d,
            Tally::Would("deny") => "would_deny",
            Tally::Would("modify") => "would_modify",
            Tally::Would("replace") => "would_replace",
            Tally::Would("drop") => "would_drop",
            Tally::Would("end_job") => "would_end_job",
            Tally::Would(_) => "would_other",
            Tally::Verdict(Some(true)) => "pass",
            Tally::Verdict(Some(false)) => "fail",
            Tally::Verdict(None) => "none",
            Tally::Failure(..) => "failed",
        };
        match s
            .by_label
            .iter_mut()
            .find(|c| c.stage == stage && c.mode == mode && c.decision == decision)
        {
            Some(count) => count.calls += 1,
            None => s.by_label.push(CallCount {
                stage,
                decision: decision.to_string(),
                mode,
                calls: 1,
            }),
        }
        match tally {
            Tally::Decision("allow") => s.allow += 1,
            Tally::Decision("deny") => s.deny += 1,
            Tally::Decision("modify") => s.modify += 1,
            Tally::Decision(_) => {}
            Tally::Would("deny") => s.would_deny += 1,
            Tally::Would("modify") => s.would_modify += 1,
            Tally::Would("allow") => s.allow += 1,
            Tally::Would(_) => {}
            Tally::Verdict(Some(true)) => s.pass += 1,
            Tally::Verdict(Some(false)) => s.fail += 1,
            Tally::Verdict(None) => {}
            Tally::Failure(kind, message) => {
                if matches!(stage, CallStage::Post) {
                    s.post_failures += 1;
                }
                s.failure(stage, kind, message);
            }
        }
    }

    /// Counts a hook that could not be loaded: a failure of kind `load`, not a call.
    pub(crate) fn record_load_failure(&self, message: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.failure(CallStage::Pre, FailureKind::Load, message);
    }

    pub(crate) fn snapshot(&self) -> HookStats {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        HookStats {
            calls: s.calls,
            pre_calls: s.pre_calls,
            post_calls: s.post_calls,
            output_calls: s.output_calls,
            input_calls: s.input_calls,
            calls_by: s.by_label.clone(),
            allow: s.allow,
            deny: s.deny,
            modify: s.modify,
            would_deny: s.would_deny,
            would_modify: s.would_modify,
            pass: s.pass,
            fail: s.fail,
            failures: s.failures.clone(),
            latency_p50_us: percentile(&s.durations_us, 0.50),
            latency_p99_us: percentile(&s.durations_us, 0.99),
            fuel_p50: percentile(&s.fuel, 0.50),
            fuel_total: s.fuel_total,
            post_failures: s.post_failures,
            latency: LatencyHistogram {
                le_us: LATENCY_BOUNDS_US.to_vec(),
                counts: s.latency_counts.to_vec(),
                sum_us: s.latency_sum_us,
            },
            last_failure: s.last_failure.clone(),
        }
    }
}

impl Inner {
    fn failure(&mut self, stage: CallStage, kind: FailureKind, message: &str) {
        let f = &mut self.failures;
        match kind {
            FailureKind::Fuel => f.fuel += 1,
            FailureKind::Timeout => f.timeout += 1,
            FailureKind::Memory => f.memory += 1,
            FailureKind::Trap => f.trap += 1,
            FailureKind::Invalid => f.invalid += 1,
            FailureKind::Load => f.load += 1,
            // Decisions of warn-mode hooks, never tallied as failures.
            FailureKind::Deny | FailureKind::Modify => return,
        }
        self.last_failure = Some(LastFailure {
            stage,
            kind,
            message: message.to_string(),
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let ring: VecDeque<u64> = (1..=100).collect();
        assert_eq!(percentile(&ring, 0.5), Some(50));
        assert_eq!(percentile(&ring, 0.99), Some(99));
        assert_eq!(percentile(&VecDeque::new(), 0.5), None);
    }

    #[test]
    fn ring_is_bounded() {
        let c = HookCounters::default();
        for _ in 0..STATS_WINDOW + 10 {
            c.record(
                Stage::Pre,
                HookMode::Enforce,
                Duration::from_micros(5),
                7,
                Tally::Decision("allow"),
            );
        }
        let s = c.snapshot();
        assert_eq!(s.calls, (STATS_WINDOW + 10) as u64);
        assert_eq!(c.inner.lock().unwrap().durations_us.len(), STATS_WINDOW);
        assert_eq!(s.fuel_p50, Some(7));
    }
}
