//! The hook points filled by a [`HookSet`]: converts the executor's request and outcome into
//! the hooks' plain types and back. This is the only place where jobs and hooks meet.

use super::{
    Hooks, JobContext, JobOutputStage, JobRequest, OutputStart, PostResult, PreResult, PreVerdict,
};
use crate::config::mask_env;
use crate::events::{Event, HookReport, HookWarning, JobId, JobStatus, PreHooks, Stream};
use crate::hooks::{self, HookRequest, HookResult, HookSet, PreOutcome, Stage};
use crate::jobs::ProcessOutcome;
use crate::jobs::{OutputStage, StageOut};
use crate::protocol::{HookPatch, Limits, OutputCounts, ReceivedRequest, Verdict};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;

/// One hook set generation as the executor's hook points.
pub struct HookChain {
    set: Arc<HookSet>,
    tail_bytes: usize,
    /// `[execution] secret_env`: whose values the recorded history masks.
    secret_env: Vec<glob::Pattern>,
}

impl HookChain {
    /// `tail_bytes`: output post-hooks see per stream; `secret_env`: variable names whose
    /// values `process.started.hooks` masks (the request as received and hooks' patches).
    pub fn new(set: Arc<HookSet>, tail_bytes: usize, secret_env: Vec<glob::Pattern>) -> HookChain {
        HookChain {
            set,
            tail_bytes,
            secret_env,
        }
    }

    pub fn set(&self) -> &Arc<HookSet> {
        &self.set
    }
}

/// The request as the hooks see it.
fn hook_request(ctx: &JobContext, request: &JobRequest) -> HookRequest {
    let stdin = match (&request.pty, request.stdin_open, &request.stdin) {
        (Some(_), _, _) => hooks::StdinMode::Terminal,
        (None, true, _) => hooks::StdinMode::Open,
        (None, false, Some(_)) => hooks::StdinMode::Text,
        (None, false, None) => hooks::StdinMode::None,
    };
    let l = request.limits.unwrap_or_default();
    HookRequest {
        session_id: ctx.session_id.to_string(),
        job_id: ctx.job_id.to_string(),
        command: request.command.clone(),
        cwd: request.cwd.clone(),
        env: request.env.clone().into_iter().collect(),
        timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
        stdin,
        terminal: request.pty.map(|p| hooks::TerminalSize {
            rows: p.rows,
            cols: p.cols,
        }),
        limits: hooks::HookLimits {
            memory_mb: l.memory_mb,
            pids: l.pids,
            cpu_seconds: l.cpu_seconds,
            open_files: l.open_files,
            file_size_mb: l.file_size_mb,
        },
        labels: request.labels.clone().into_iter().collect(),
        submitter: hooks::Submitter {
            token_label: ctx.origin.token_label.clone(),
            peer: ctx.origin.peer.clone(),
        },
        // Parsed by the hook set, only when a hook is there to see it.
        ..Default::default()
    }
}

fn stage_name(stage: Stage) -> String {
    match stage {
        Stage::Pre => "pre",
        Stage::Post => "post",
    }
    .to_string()
}

fn wire_limits(l: hooks::HookLimits) -> Limits {
    Limits {
        memory_mb: l.memory_mb,
        pids: l.pids,
        cpu_seconds: l.cpu_seconds,
        open_files: l.open_files,
        file_size_mb: l.file_size_mb,
    }
}

/// The request as received, for the recorded rewrite history.
fn received(request: &JobRequest, secret_env: &[glob::Pattern]) -> ReceivedRequest {
    ReceivedRequest {
        command: request.command.clone(),
        cwd: request.cwd.clone(),
        env: mask_env(secret_env, &request.env),
        timeout: request.timeout.map(|t| t.as_secs_f64()),
        limits: request.limits.filter(|l| *l != Limits::default()),
    }
}

/// A hook's patch as recorded (values of secret variables masked).
fn wire_patch(p: &hooks::RequestPatch, secret_env: &[glob::Pattern]) -> HookPatch {
    HookPatch {
        command: p.command.clone(),
        cwd: p.cwd.clone(),
        set_env: mask_env(secret_env, &p.set_env.iter().cloned().collect()),
        unset_env: p.unset_env.clone(),
        timeout: p.timeout_ms.map(|ms| ms as f64 / 1000.0),
        limits: p.limits.map(wire_limits),
    }
}

/// A hook's report as `process.started` and `process.completed` carry it.
fn wire_reports(reports: &[hooks::HookReport], secret_env: &[glob::Pattern]) -> Vec<HookReport> {
    reports
        .iter()
        .map(|r| HookReport {
            hook: r.hook.clone(),
            stage: stage_name(r.stage),
            decision: r.decision.clone(),
            annotations: Value::Object(
                r.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
            verdict: r.verdict.as_ref().map(|v| match v {
                hooks::Verdict::Pass => Verdict::Pass,
                hooks::Verdict::Fail(reason) => Verdict::Fail(reason.clone()),
            }),
            error: r.error.clone(),
            duration_us: r.duration_us,
            fuel_used: r.fuel_used,
            mode: r.mode.map(mode_name),
            matched: r.matched.clone(),
            patch: r.patch.as_ref().map(|p| wire_patch(p, secret_env)),
            output: None,
        })
        .collect()
}

fn mode_name(mode: hooks::HookMode) -> String {
    match mode {
        hooks::HookMode::Enforce => "enforce",
        hooks::HookMode::Warn => "warn",
        hooks::HookMode::DryRun => "dry-run",
    }
    .to_string()
}

fn kind_name(kind: hooks::FailureKind) -> &'static str {
    use hooks::FailureKind as K;
    match kind {
        K::Fuel => "fuel",
        K::Timeout => "timeout",
        K::Memory => "memory",
        K::Trap => "trap",
        K::Invalid => "invalid",
        K::Load => "load",
        K::Deny => "deny",
        K::Modify => "modify",
    }
}

/// A hook failure as the `hook.warning` notification for `job_id`.
fn wire_warnings(job_id: &JobId, warnings: &[hooks::HookWarning]) -> Vec<HookWarning> {
    warnings
        .iter()
        .map(|w| HookWarning {
            job_id: job_id.clone(),
            hook: w.hook.clone(),
            stage: stage_name(w.stage),
            kind: kind_name(w.kind).to_string(),
            mode: w.mode.map(mode_name),
            message: w.message.clone(),
        })
        .collect()
}

impl Hooks for HookChain {
    fn pre<'a>(&'a self, ctx: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult> {
        Box::pin(async move {
            if !self.set.has_stage(Stage::Pre) {
                return PreResult {
                    verdict: PreVerdict::Allow {
                        request: Box::new(request),
                        info: None,
                    },
                    warnings: Vec::new(),
                };
            }
            let chain = self.set.run_pre(hook_request(ctx, &request)).await;
            let warnings = wire_warnings(&ctx.job_id, &chain.warnings);
            let verdict = match chain.outcome {
                PreOutcome::Deny { hook, reason } => PreVerdict::Deny { hook, reason },
                PreOutcome::Allow {
                    request: changed,
                    modified_by,
                } => {
                    let info = Some(PreHooks {
                        received: Some(Box::new(received(&request, &self.secret_env))),
                        modified_by: modified_by.clone(),
                        reports: wire_reports(&chain.reports, &self.secret_env),
                    });
                    if modified_by.is_empty() {
                        PreVerdict::Allow {
                            request: Box::new(request),
                            info,
                        }
                    } else {
                        // A patch is the hook's word, but it must still be a request we can run.
                        let limits = wire_limits(changed.limits);
                        let checked = JobRequest::new(
                            changed.command,
                            changed.timeout_ms.map(|ms| ms as f64 / 1000.0),
                            changed.cwd,
                            changed.env.into_iter().collect(),
                        );
                        match checked {
                            // What the contract does not carry stays as the client asked.
                            Ok(changed) => PreVerdict::Allow {
                                request: Box::new(JobRequest {
                                    detach: request.detach,
                                    output_encoding: request.output_encoding,
                                    idempotency_key: request.idempotency_key.clone(),
                                    stdin: request.stdin.clone(),
                                    merge_stderr: request.merge_stderr,
                                    limits: Some(limits),
                                    labels: request.labels.clone(),
                                    stdin_open: request.stdin_open,
                                    pty: request.pty,
                                    ..changed
                                }),
                                info,
                            },
                            Err(e) => PreVerdict::Deny {
                                hook: modified_by.last().cloned().unwrap_or_default(),
                                reason: format!("the hook's change made an invalid request: {e}"),
                            },
                        }
                    }
                }
            };
            PreResult { verdict, warnings }
        })
    }

    fn post<'a>(
        &'a self,
        ctx: &'a JobContext,
        request: &'a JobRequest,
        outcome: &'a ProcessOutcome,
    ) -> BoxFuture<'a, PostResult> {
        Box::pin(async move {
            if !self.set.has_stage(Stage::Post) {
                return PostResult::default();
            }
            let status = match outcome.status {
                JobStatus::Completed => hooks::JobStatus::Completed,
                JobStatus::Failed | JobStatus::Denied | JobStatus::Lost => hooks::JobStatus::Failed,
                JobStatus::TimedOut => hooks::JobStatus::TimedOut,
                JobStatus::Canceled => hooks::JobStatus::Canceled,
            };
            let result = HookResult {
                request: hook_request(ctx, request),
                received: hook_request(ctx, &ctx.received),
                status,
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                duration_ms: outcome.duration.as_millis() as u64,
                stdout_bytes: outcome.stdout_bytes,
                stderr_bytes: outcome.stderr_bytes,
                stdout_tail: String::from_utf8_lossy(&outcome.stdout_tail).into_owned(),
                stderr_tail: String::from_utf8_lossy(&outcome.stderr_tail).into_owned(),
            };
            let chain = self.set.run_post(&result).await;
            PostResult {
                reports: wire_reports(&chain.reports, &self.secret_env),
                warnings: wire_warnings(&ctx.job_id, &chain.warnings),
            }
        })
    }

    fn checks_input(&self) -> bool {
        self.set.has_input_stage()
    }

    fn check_input<'a>(
        &'a self,
        ctx: &'a JobContext,
        request: &'a JobRequest,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<(), (String, String)>> {
        Box::pin(async move {
            let mut req = hook_request(ctx, request);
            req.parse();
            self.set.check_input(&req, data).await
        })
    }

    fn start_output<'a>(
        &'a self,
        ctx: &'a JobContext,
        request: &'a JobRequest,
    ) -> BoxFuture<'a, Result<OutputStart, (String, String)>> {
        Box::pin(async move {
            if !self.set.has_output_stage() {
                return Ok(OutputStart::default());
            }
            let mut req = hook_request(ctx, request);
            req.parse();
            let (filter, failed) = self.set.start_output(&req).await?;
            let warnings = failed
                .into_iter()
                .map(|w| output_warning(&ctx.job_id, w))
                .collect();
            Ok(OutputStart {
                stage: filter.map(|filter| {
                    Box::new(HookOutput {
                        filter,
                        job_id: ctx.job_id.clone(),
                    }) as Box<dyn JobOutputStage>
                }),
                warnings,
            })
        })
    }

    fn tail_bytes(&self) -> usize {
        if self.set.has_stage(Stage::Post) {
            self.tail_bytes
        } else {
            0
        }
    }
}

/// The output hooks of one job as its output stage.
struct HookOutput {
    filter: hooks::OutputFilter,
    job_id: JobId,
}

fn out_stream(stream: Stream) -> hooks::OutStream {
    match stream {
        Stream::Stdout | Stream::Pty => hooks::OutStream::Stdout,
        Stream::Stderr => hooks::OutStream::Stderr,
    }
}

/// An output hook's failure (or a `warn` hook's would-be change) as `hook.warning`.
fn output_warning(job_id: &JobId, (hook, kind, message): hooks::OutputWarning) -> HookWarning {
    HookWarning {
        job_id: job_id.clone(),
        hook,
        stage: "output".into(),
        kind: kind_name(kind).to_string(),
        mode: None,
        message,
    }
}

impl HookOutput {
    fn stage_out(&self, f: hooks::Filtered) -> StageOut {
        StageOut {
            data: f.data,
            events: f
                .warnings
                .into_iter()
                .map(|w| Event::HookWarning(output_warning(&self.job_id, w)))
                .collect(),
            end: f
                .end
                .map(|(hook, reason)| format!("output hook `{hook}`: {reason}")),
        }
    }
}

impl OutputStage for HookOutput {
    fn filter<'a>(
        &'a mut self,
        stream: Stream,
        seq: u64,
        data: &'a [u8],
    ) -> BoxFuture<'a, StageOut> {
        Box::pin(async move {
            let f = self.filter.filter(out_stream(stream), seq, data).await;
            self.stage_out(f)
        })
    }

    fn flush(&mut self, stream: Stream, seq: u64) -> BoxFuture<'_, StageOut> {
        Box::pin(async move {
            let f = self.filter.flush(out_stream(stream), seq).await;
            self.stage_out(f)
        })
    }

    fn end(&mut self, stream: Stream, seq: u64) -> BoxFuture<'_, StageOut> {
        Box::pin(async move {
            let f = self.filter.end(out_stream(stream), seq).await;
            self.stage_out(f)
        })
    }

    fn flush_after(&self) -> Option<std::time::Duration> {
        self.filter.flush_after()
    }

    fn holds(&self, stream: Stream) -> bool {
        self.filter.holds(out_stream(stream))
    }
}

impl JobOutputStage for HookOutput {
    fn reports(&self) -> Vec<HookReport> {
        self.filter
            .reports()
            .into_iter()
            .map(|r| HookReport {
                hook: r.hook,
                stage: "output".into(),
                decision: None,
                annotations: Value::Object(Default::default()),
                verdict: None,
                error: r.error,
                duration_us: 0,
                fuel_used: r.fuel_used,
                mode: r.mode.map(mode_name),
                matched: None,
                patch: None,
                output: Some(OutputCounts {
                    calls: r.calls,
                    chunks_changed: r.chunks_changed,
                    bytes_in: r.bytes_in,
                    bytes_out: r.bytes_out,
                }),
            })
            .collect()
    }
}
