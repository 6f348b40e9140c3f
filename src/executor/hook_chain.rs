//! The hook points filled by a [`HookSet`]: converts the executor's request and outcome into
//! the hooks' plain types and back. This is the only place where jobs and hooks meet.

use super::{Hooks, JobContext, JobRequest, PostResult, PreResult, PreVerdict};
use crate::events::JobStatus;
use crate::hooks::{self, HookRequest, HookResult, HookSet, PreOutcome, Stage};
use crate::jobs::ProcessOutcome;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
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

fn to_values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect()
}

impl Hooks for HookChain {
    fn pre<'a>(&'a self, ctx: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult> {
        Box::pin(async move {
            if !self.set.has_stage(Stage::Pre) {
                return PreResult {
                    verdict: PreVerdict::Allow {
                        request,
                        info: Value::Null,
                    },
                    warnings: Vec::new(),
                };
            }
            let chain = self.set.run_pre(hook_request(ctx, &request)).await;
            let warnings = to_values(&chain.warnings);
            let verdict = match chain.outcome {
                PreOutcome::Deny { hook, reason } => PreVerdict::Deny { hook, reason },
                PreOutcome::Allow {
                    request: changed,
                    modified_by,
                } => {
                    let info = json!({
                        "modified_by": modified_by,
                        "reports": to_values(&chain.reports),
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
                            Ok(request) => PreVerdict::Allow { request, info },
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
                JobStatus::Failed | JobStatus::Denied => hooks::JobStatus::Failed,
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
                reports: to_values(&chain.reports),
                warnings: to_values(&chain.warnings),
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
