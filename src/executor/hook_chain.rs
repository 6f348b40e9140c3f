//! The hook points filled by a [`HookSet`]: converts the executor's request and outcome into
//! the hooks' plain types and back. This is the only place where jobs and hooks meet.

use super::{Hooks, JobContext, JobRequest, PostResult, PreResult, PreVerdict};
use crate::events::{HookReport, HookWarning, JobId, JobStatus, PreHooks};
use crate::hooks::{self, HookRequest, HookResult, HookSet, PreOutcome, Stage};
use crate::jobs::ProcessOutcome;
use crate::protocol::Verdict;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;

/// One hook set generation as the executor's hook points.
pub struct HookChain {
    set: Arc<HookSet>,
    tail_bytes: usize,
}

impl HookChain {
    pub fn new(set: Arc<HookSet>, tail_bytes: usize) -> HookChain {
        HookChain { set, tail_bytes }
    }

    pub fn set(&self) -> &Arc<HookSet> {
        &self.set
    }
}

/// The request as the hooks see it.
fn hook_request(ctx: &JobContext, request: &JobRequest) -> HookRequest {
    HookRequest {
        session_id: ctx.session_id.to_string(),
        job_id: ctx.job_id.to_string(),
        command: request.command.clone(),
        cwd: request.cwd.clone(),
        env: request.env.clone().into_iter().collect(),
        timeout_ms: request.timeout.map(|t| t.as_millis() as u64),
    }
}

fn stage_name(stage: Stage) -> String {
    match stage {
        Stage::Pre => "pre",
        Stage::Post => "post",
    }
    .to_string()
}

/// A hook's report as `process.started` and `process.completed` carry it.
fn wire_reports(reports: &[hooks::HookReport]) -> Vec<HookReport> {
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
        })
        .collect()
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
                        request,
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
                        modified_by: modified_by.clone(),
                        reports: wire_reports(&chain.reports),
                    });
                    if modified_by.is_empty() {
                        PreVerdict::Allow { request, info }
                    } else {
                        // A patch is the hook's word, but it must still be a request we can run.
                        let checked = JobRequest::new(
                            changed.command,
                            changed.timeout_ms.map(|ms| ms as f64 / 1000.0),
                            changed.cwd,
                            changed.env.into_iter().collect(),
                        );
                        match checked {
                            // What the contract does not carry stays as the client asked.
                            Ok(changed) => PreVerdict::Allow {
                                request: JobRequest {
                                    detach: request.detach,
                                    output_encoding: request.output_encoding,
                                    idempotency_key: request.idempotency_key.clone(),
                                    stdin: request.stdin.clone(),
                                    merge_stderr: request.merge_stderr,
                                    ..changed
                                },
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
                reports: wire_reports(&chain.reports),
                warnings: wire_warnings(&ctx.job_id, &chain.warnings),
            }
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
