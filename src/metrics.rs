//! Prometheus metrics for `GET /metrics`, through `prometheus-client` (the Prometheus
//! project's Rust client), in the Prometheus text format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>).
//!
//! Two kinds of series:
//! - counted as things happen, by the executor and the faces ([`Metrics`]): jobs by final
//!   status, job duration and spawn latency histograms, output bytes by stream, config
//!   reloads, refused requests;
//! - read when scraped ([`Snapshot`]): sessions, running, queued and detached jobs, spool
//!   errors, audit-log errors, and every hook's calls, latency, failures and fuel from the
//!   hook counters (kept by the hook runtime, which never waits on this module).
//!
//! Names follow the conventions (<https://prometheus.io/docs/practices/naming/>): a `ccx_`
//! prefix, base units (`_seconds`, `_bytes`), `_total` on counters (added by the encoder).
//! Updates are atomic increments: nothing on a job's path waits on a scrape.

use crate::protocol::{Completion, JobStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use std::time::Duration;

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The series counted as things happen; one per process, shared by the executor and the
/// faces.
pub struct Metrics {
    registry: Registry,
    jobs: Family<StatusLabel, Counter>,
    duration: Histograms<StatusLabel>,
    spawn: Histogram,
    output: Family<StreamLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Job durations: 10 ms to ~3 h in factors of 4.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every series registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ccx");
        let jobs = Family::<StatusLabel, Counter>::default();
        registry.register("jobs", "Jobs ended, by final status", jobs.clone());
        let duration: Histograms<StatusLabel> = Family::new_with_constructor(duration_buckets);
        registry.register_with_unit(
            "job_duration",
            "Time from spawn to the end of a job's output, by final status",
            Unit::Seconds,
            duration.clone(),
        );
        // 100 µs to ~3 s in factors of 2.
        let spawn = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register_with_unit(
            "spawn_latency",
            "Time from a job's turn to its process running (pre-hooks included)",
            Unit::Seconds,
            spawn.clone(),
        );
        let output = Family::<StreamLabel, Counter>::default();
        registry.register_with_unit(
            "output",
            "Output bytes sent to clients, by stream, counted when each job ends",
            Unit::Bytes,
            output.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config file reloads, by result (ok, failed)",
            reloads.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests refused before a job existed, by reason (auth, origin, queue_full, \
             max_sessions)",
            refused.clone(),
        );
        for status in ["completed", "failed", "timed_out", "canceled", "denied"] {
            let _ = jobs.get_or_create(&StatusLabel { status });
        }
        for stream in ["stdout", "stderr"] {
            let _ = output.get_or_create(&StreamLabel { stream });
        }
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create(&ResultLabel { result });
        }
        Metrics {
            registry,
            jobs,
            duration,
            spawn,
            output,
            reloads,
            refused,
        }
    }

    /// A job's one terminal event.
    pub fn job_ended(&self, c: &Completion) {
        let status = status_name(c.status);
        self.jobs.get_or_create(&StatusLabel { status }).inc();
        if c.pid.is_some() {
            self.duration
                .get_or_create(&StatusLabel { status })
                .observe(c.execution_time);
        }
        let out = |stream, bytes| {
            self.output
                .get_or_create(&StreamLabel { stream })
                .inc_by(bytes);
        };
        out("stdout", c.stdout_bytes);
        out("stderr", c.stderr_bytes);
    }

    /// A job's process started `latency` after the job's turn came.
    pub fn spawned(&self, latency: Duration) {
        self.spawn.observe(latency.as_secs_f64());
    }

    /// A job a previous run left unfinished was settled `lost` at the start (the executor
    /// never saw it end).
    pub fn job_lost(&self) {
        self.jobs
            .get_or_create(&StatusLabel {
                status: status_name(JobStatus::Lost),
            })
            .inc();
    }

    /// A config reload was applied (`ok`) or refused.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// A request refused before any job existed: `auth`, `origin`, `queue_full`,
    /// `max_sessions`.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The exposition: every series, then `snapshot`'s. Errors only if formatting fails,
    /// which writing to a `String` does not.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        let mut out = String::new();
        let mut now = Registry::with_prefix("ccx");
        now.register_collector(Box::new(snapshot));
        let encode = prometheus_client::encoding::prometheus_text::encode;
        let _ = encode(&mut out, &self.registry);
        let _ = encode(&mut out, &now);
        out
    }
}

fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::TimedOut => "timed_out",
        JobStatus::Canceled => "canceled",
        JobStatus::Denied => "denied",
        JobStatus::Lost => "lost",
    }
}

/// What a scrape reads from the server at that moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// WebSocket and MCP sessions holding a `max_sessions` permit.
    pub active_sessions: u64,
    pub running_jobs: u64,
    /// Jobs accepted and not yet running (in a session's queue, waiting for hooks).
    pub queued_jobs: u64,
    pub detached_jobs: u64,
    /// Spool write failures since start.
    pub spool_errors: u64,
    /// Audit-log write failures and records dropped (queue full), when the audit log is on.
    pub audit_write_errors: Option<u64>,
    pub audit_dropped: Option<u64>,
    /// The `hooks` array of `/hooks` (one object per hook with `name` and `stats`).
    pub hooks: Vec<Value>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookCall {
    hook: String,
    stage: String,
    decision: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookFailure {
    hook: String,
    kind: &'static str,
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges: [(&str, &str, u64); 4] = [
            (
                "active_sessions",
                "Sessions connected now (WebSocket and MCP)",
                self.active_sessions,
            ),
            (
                "running_jobs",
                "Jobs whose process runs now",
                self.running_jobs,
            ),
            (
                "queued_jobs",
                "Jobs accepted and waiting for their turn or their hooks",
                self.queued_jobs,
            ),
            (
                "detached_jobs",
                "Jobs running on after their connection closed",
                self.detached_jobs,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "spool_errors",
            "Output spool write failures since start",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.spool_errors).encode(metric)?;
        let audit = [
            (
                "audit_write_errors",
                "Audit-log writes that failed",
                self.audit_write_errors,
            ),
            (
                "audit_dropped_records",
                "Audit records dropped because the writer's queue was full",
                self.audit_dropped,
            ),
        ];
        for (name, help, value) in audit {
            if let Some(value) = value {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value).encode(metric)?;
            }
        }
        self.encode_hooks(&mut encoder)
    }
}

impl Snapshot {
    fn encode_hooks(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Calls by hook, stage and decision; `failed` calls are those that hit a limit or
        // answered wrongly (see the failures family for the kind).
        let mut calls = encoder.encode_descriptor(
            "hook_calls",
            "Hook calls by hook, stage (pre, post, output, input), decision (would_* for warn \
             and dry-run hooks) and mode",
            None,
            MetricType::Counter,
        )?;
        for h in &self.hooks {
            let (Some(name), Some(s)) = (h["name"].as_str(), h.get("stats")) else {
                continue;
            };
            let Some(rows) = s.get("calls_by").and_then(Value::as_array) else {
                continue;
            };
            for row in rows {
                let label = |key: &str| row[key].as_str().unwrap_or("").to_string();
                let labels = HookCall {
                    hook: name.to_string(),
                    stage: label("stage"),
                    decision: label("decision"),
                    mode: label("mode"),
                };
                ConstCounter::new(u64_at(row, "calls")).encode(calls.encode_family(&labels)?)?;
            }
        }
        let mut failures = encoder.encode_descriptor(
            "hook_failures",
            "Hook calls that failed, by hook and kind (fuel, timeout, memory, trap, invalid, load)",
            None,
            MetricType::Counter,
        )?;
        for h in &self.hooks {
            let (Some(name), Some(f)) = (h["name"].as_str(), h["stats"].get("failures")) else {
                continue;
            };
            for kind in ["fuel", "timeout", "memory", "trap", "invalid", "load"] {
                let labels = HookFailure {
                    hook: name.to_string(),
                    kind,
                };
                ConstCounter::new(u64_at(f, kind)).encode(failures.encode_family(&labels)?)?;
            }
        }
        let mut fuel = encoder.encode_descriptor(
            "hook_fuel_used",
            "WebAssembly fuel the hook's calls used (about one unit per instruction)",
            None,
            MetricType::Counter,
        )?;
        for h in &self.hooks {
            let Some(name) = h["name"].as_str() else {
                continue;
            };
            let labels = HookLabel {
                hook: name.to_string(),
            };
            ConstCounter::new(u64_at(&h["stats"], "fuel_total"))
                .encode(fuel.encode_family(&labels)?)?;
        }
        let mut latency = encoder.encode_descriptor(
            "hook_latency",
            "Hook call latency: a fresh instance and the call",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for h in &self.hooks {
            let (Some(name), Some(hist)) = (h["name"].as_str(), h["stats"].get("latency")) else {
                continue;
            };
            let bounds = hist["le_us"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let counts = hist["counts"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            // Per bucket, not cumulative: the encoder sums them and adds `+Inf` (= count).
            let buckets: Vec<(f64, u64)> = bounds
                .iter()
                .zip(counts)
                .map(|(le, n)| (le.as_f64().unwrap_or(0.0) / 1e6, n.as_u64().unwrap_or(0)))
                .collect();
            let count = u64_at(&h["stats"], "calls");
            let sum = hist["sum_us"].as_f64().unwrap_or(0.0) / 1e6;
            let labels = HookLabel {
                hook: name.to_string(),
            };
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}
