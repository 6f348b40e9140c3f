//! Running a set's hooks at one stage: one runner walks the hooks in config order for both the
//! pre and the post chain — call, check, count, log, apply `on_failure` — and hands each answer
//! to the stage's [`Fold`], which decides what it does to the chain. Lives for one chain run.

use std::convert::Infallible;
use std::ops::ControlFlow;

use super::bindings::types as wit;
use super::call::{self, Answer, CallOutcome, Failure, Input};
use super::set::{HookSet, LoadedHook, Ready, Slot};
use super::stats::Tally;
use super::types::{self, HookRequest, HookResult, PostOutcome, PreDecision};
use super::{
    FailureKind, HookReport, HookWarning, OnFailure, PostChain, PreChain, PreOutcome, Stage,
    Verdict,
};

/// A guest's answer that passed the checks in `types`.
pub(super) enum Checked {
    Pre(PreDecision),
    Post(PostOutcome),
}

/// Checks a guest's raw answer; one out of bounds is a failure of kind `invalid`.
pub(super) fn check(hook: &str, answer: Answer) -> Result<Checked, Failure> {
    let checked = match answer {
        Answer::Pre(d) => types::check_pre(d).map(Checked::Pre),
        Answer::Post(o) => types::check_post(o).map(Checked::Post),
    };
    checked.map_err(|why| Failure {
        kind: FailureKind::Invalid,
        message: format!("hook `{hook}` gave an invalid answer: {why}"),
    })
}

/// The stage-specific half of a chain: the input each hook gets and what its outcome does.
trait Fold {
    const STAGE: Stage;
    /// Whether a hook that failed to load gets a report (besides its warning). Pre reports
    /// only the hooks it called; post reports every hook, as it always has.
    const REPORTS_LOAD_FAILURES: bool;
    /// Why the chain stopped early.
    type Stop;

    /// The input for the next hook.
    fn input(&self) -> Input;
    /// Folds a hook's checked answer into the chain and into its report, which already holds
    /// the call's timings; `Break` ends the chain.
    fn answered(
        &mut self,
        hook: &str,
        answer: Checked,
        report: &mut HookReport,
    ) -> ControlFlow<Self::Stop>;
    /// Folds the failure of a hook whose `on_failure` is `deny` into the chain and into its
    /// report (if it has one); `Break` ends the chain.
    fn failed_closed(
        &mut self,
        hook: &str,
        failure: &Failure,
        report: Option<&mut HookReport>,
    ) -> ControlFlow<Self::Stop>;
}

/// What a stage run produced.
struct Run<S> {
    reports: Vec<HookReport>,
    warnings: Vec<HookWarning>,
    stopped: Option<S>,
}

fn report(hook: &str, stage: Stage) -> HookReport {
    HookReport {
        hook: hook.to_string(),
        stage,
        decision: None,
        annotations: Vec::new(),
        verdict: None,
        error: None,
        duration_us: 0,
        fuel_used: 0,
    }
}

pub(super) fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Pre => "pre",
        Stage::Post => "post",
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
    /// Calls one loaded hook at `stage`: logs its output, checks its answer and counts the
    /// call. The report holds the call's timings.
    async fn call_checked(
        &self,
        hook: &LoadedHook,
        ready: &Ready,
        stage: Stage,
        input: Input,
    ) -> (HookReport, Result<Checked, Failure>) {
        let name = hook.spec.name.as_str();
        let callable = ready.callable(&hook.ident, &hook.spec);
        let out = call::call(&self.host, &callable, input).await;
        log_output(name, stage, &out);
        let checked = out.result.and_then(|answer| check(name, answer));
        let tally = match &checked {
            Ok(Checked::Pre(decision)) => Tally::Decision(decision.name()),
            Ok(Checked::Post(outcome)) => {
                Tally::Verdict(outcome.verdict.as_ref().map(|v| *v == Verdict::Pass))
            }
            Err(failure) => Tally::Failure(failure.kind, &failure.message),
        };
        hook.counters
            .record(stage, out.duration, out.fuel_used, tally);
        let mut report = report(name, stage);
        report.duration_us = out.duration.as_micros() as u64;
        report.fuel_used = out.fuel_used;
        (report, checked)
    }

    /// The one stage runner. Runs the hooks that export `F::STAGE`, in config order, until the
    /// fold stops the chain. A hook that failed to load counts as a `load` failure at each
    /// chain (we cannot know its stages). Every failure is logged and becomes a warning, and a
    /// fail-closed hook's failure goes to the fold.
    async fn run_stage<F: Fold>(&self, fold: &mut F) -> Run<F::Stop> {
        let stage = F::STAGE;
        let mut run = Run {
            reports: Vec::new(),
            warnings: Vec::new(),
            stopped: None,
        };
        for hook in &self.hooks {
            let name = hook.spec.name.as_str();
            let (mut report, failure) = match &hook.slot {
                Slot::Disabled => continue,
                Slot::Ready(ready) if !ready.exports(stage) => continue,
                Slot::Failed(err) => {
                    let failure = Failure {
                        kind: FailureKind::Load,
                        message: err.to_string(),
                    };
                    (
                        F::REPORTS_LOAD_FAILURES.then(|| report(name, stage)),
                        failure,
                    )
                }
                Slot::Ready(ready) => {
                    let input = fold.input();
                    match self.call_checked(hook, ready, stage, input).await {
                        (mut report, Ok(answer)) => {
                            let flow = fold.answered(name, answer, &mut report);
                            run.reports.push(report);
                            if let ControlFlow::Break(stop) = flow {
                                run.stopped = Some(stop);
                                break;
                            }
                            continue;
                        }
                        (report, Err(failure)) => (Some(report), failure),
                    }
                }
            };
            tracing::warn!(hook = name, stage = stage_name(stage), kind = ?failure.kind, on_failure = ?hook.spec.on_failure, "{}", failure.message);
            run.warnings.push(HookWarning {
                hook: name.to_string(),
                stage,
                kind: failure.kind,
                message: failure.message.clone(),
            });
            let flow = match hook.spec.on_failure {
                OnFailure::Allow => ControlFlow::Continue(()),
                OnFailure::Deny => fold.failed_closed(name, &failure, report.as_mut()),
            };
            if let Some(mut report) = report {
                report.error = Some(failure.message);
                run.reports.push(report);
            }
            if let ControlFlow::Break(stop) = flow {
                run.stopped = Some(stop);
                break;
            }
        }
        run
    }

    /// Runs the pre-hooks in config order. Each sees the request as changed by the hooks before
    /// it; the first deny (or the first failure of a fail-closed hook) ends the chain.
    ///
    /// A hook that failed to load counts as a `load` failure at each chain (we cannot know its
    /// stages), handled by its `on_failure` like any other failure.
    pub async fn run_pre(&self, req: HookRequest) -> PreChain {
        let mut fold = PreFold {
            request: req,
            modified_by: Vec::new(),
        };
        let run = self.run_stage(&mut fold).await;
        let outcome = match run.stopped {
            Some((hook, reason)) => PreOutcome::Deny { hook, reason },
            None => PreOutcome::Allow {
                request: fold.request,
                modified_by: fold.modified_by,
            },
        };
        PreChain {
            outcome,
            reports: run.reports,
            warnings: run.warnings,
        }
    }

    /// Runs every post-hook, in config order; each adds annotations and maybe a verdict. A
    /// fail-closed hook's failure becomes a failing verdict with the failure as its reason.
    pub async fn run_post(&self, result: &HookResult) -> PostChain {
        let mut fold = PostFold {
            result: result.into(),
        };
        let run = self.run_stage(&mut fold).await;
        PostChain {
            reports: run.reports,
            warnings: run.warnings,
        }
    }
}

/// The pre chain: the request as patched so far; stops at the first denial.
struct PreFold {
    request: HookRequest,
    modified_by: Vec<String>,
}

impl Fold for PreFold {
    const STAGE: Stage = Stage::Pre;
    const REPORTS_LOAD_FAILURES: bool = false;
    /// The denying hook and its reason.
    type Stop = (String, String);

    fn input(&self) -> Input {
        Input::Pre((&self.request).into())
    }

    fn answered(
        &mut self,
        hook: &str,
        answer: Checked,
        report: &mut HookReport,
    ) -> ControlFlow<Self::Stop> {
        let Checked::Pre(decision) = answer else {
            unreachable!("pre call answered as post")
        };
        report.decision = Some(decision.name().to_string());
        match decision {
            PreDecision::Allow => {}
            PreDecision::Modify(patch) => {
                self.request.apply(&patch);
                self.modified_by.push(hook.to_string());
            }
            PreDecision::Deny(reason) => return ControlFlow::Break((hook.to_string(), reason)),
        }
        ControlFlow::Continue(())
    }

    fn failed_closed(
        &mut self,
        hook: &str,
        failure: &Failure,
        _report: Option<&mut HookReport>,
    ) -> ControlFlow<Self::Stop> {
        ControlFlow::Break((hook.to_string(), failure.message.clone()))
    }
}

/// The post chain: every hook sees the same result; it never stops early.
struct PostFold {
    result: wit::ExecResult,
}

impl Fold for PostFold {
    const STAGE: Stage = Stage::Post;
    const REPORTS_LOAD_FAILURES: bool = true;
    type Stop = Infallible;

    fn input(&self) -> Input {
        Input::Post(self.result.clone())
    }

    fn answered(
        &mut self,
        _hook: &str,
        answer: Checked,
        report: &mut HookReport,
    ) -> ControlFlow<Self::Stop> {
        let Checked::Post(outcome) = answer else {
            unreachable!("post call answered as pre")
        };
        report.annotations = outcome.annotations;
        report.verdict = outcome.verdict;
        ControlFlow::Continue(())
    }

    fn failed_closed(
        &mut self,
        _hook: &str,
        failure: &Failure,
        report: Option<&mut HookReport>,
    ) -> ControlFlow<Self::Stop> {
        if let Some(report) = report {
            report.verdict = Some(Verdict::Fail(failure.message.clone()));
        }
        ControlFlow::Continue(())
    }
}
