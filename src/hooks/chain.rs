// Over 500 lines: the one runner serves both stages, and its folds, checks and decision
// records read best beside it.
//! Running a set's hooks at one stage: one runner walks the hooks in config order for both the
//! pre and the post chain — call, check, count, log, apply `on_failure` — and hands each answer
//! to the stage's [`Fold`], which decides what it does to the chain. Lives for one chain run.
//! Post-hooks all get the same input and never see each other's answers, so their calls start
//! together, each on a task of its own; their answers are still folded in config order.

use std::convert::Infallible;
use std::ops::ControlFlow;

use super::call::{self, Answer, CallOutcome, Failure, Input};
use super::decision_log::DecisionRecord;
use super::set::{HookSet, LoadedHook, Ready, Slot};
use super::stats::Tally;
use super::types::{self, HookRequest, HookResult, PostOutcome, PreDecision};
use super::{
    FailureKind, HookMode, HookReport, HookWarning, OnFailure, PostChain, PreChain, PreOutcome,
    Stage, Verdict,
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
        Answer::Input(_) => Err("a check-input answer where pre or post was called".into()),
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
    /// Whether the stage's calls may run at once, each on a task of its own: true when every
    /// hook gets the same input and none sees another's answer (post).
    const CONCURRENT: bool;
    /// Why the chain stopped early.
    type Stop;

    /// The input for the next hook.
    fn input(&self) -> Input;
    /// The request whose parse matchers are evaluated against.
    fn request(&self) -> &HookRequest;
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
        mode: None,
        matched: None,
        patch: None,
    }
}

pub(super) fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Pre => "pre",
        Stage::Post => "post",
    }
}

/// One call as the decision log records it: the hook's component digest (`None`: it failed
/// to load), the set's generation, and what the call saw and answered.
struct Decided<'a> {
    hook: &'a LoadedHook,
    sha256: Option<&'a str>,
    stage: Stage,
    request: &'a HookRequest,
    matched: Option<&'a str>,
    took: (std::time::Duration, u64),
    checked: &'a Result<Checked, Failure>,
}

impl Decided<'_> {
    fn record(self, generation: u64) -> DecisionRecord {
        let (decision, reason, patch, failure) = match self.checked {
            Ok(Checked::Pre(PreDecision::Allow)) => ("allow".to_string(), None, None, None),
            Ok(Checked::Pre(PreDecision::Deny(r))) => ("deny".into(), Some(r.clone()), None, None),
            Ok(Checked::Pre(PreDecision::Modify(p))) => {
                ("modify".into(), None, Some(p.clone()), None)
            }
            Ok(Checked::Post(o)) => match &o.verdict {
                Some(Verdict::Pass) => ("pass".into(), None, None, None),
                Some(Verdict::Fail(r)) => ("fail".into(), Some(r.clone()), None, None),
                None => ("annotate".into(), None, None, None),
            },
            Err(f) => ("failed".into(), Some(f.message.clone()), None, Some(f.kind)),
        };
        let (duration, fuel) = self.took;
        DecisionRecord {
            time: super::decision_log::unix_now(),
            job_id: self.request.job_id.clone(),
            hook: self.hook.spec.name.clone(),
            sha256: self.sha256.map(str::to_string),
            generation,
            stage: stage_name(self.stage),
            mode: self.hook.spec.mode,
            matched: self.matched.map(str::to_string),
            decision,
            reason,
            patch,
            duration_us: duration.as_micros() as u64,
            fuel,
            failure,
            request: self.request.clone(),
        }
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
    /// Appends a decision to the decision log, when there is one.
    fn log_decision(&self, decided: Decided<'_>) {
        if let Some(log) = self.host.decision_log() {
            log.record(decided.record(self.generation()));
        }
    }

    /// Calls one loaded hook at `stage`: logs its output, checks its answer and counts the
    /// call. The report holds the call's timings.
    async fn call_checked(
        &self,
        hook: &LoadedHook,
        ready: &Ready,
        stage: Stage,
        (input, request, matched): (Input, &HookRequest, Option<&str>),
        started: Option<tokio::task::JoinHandle<CallOutcome>>,
    ) -> (HookReport, Result<Checked, Failure>) {
        let name = hook.spec.name.as_str();
        let out = match started {
            Some(task) => task.await.unwrap_or_else(|e| {
                let failure = Failure {
                    kind: FailureKind::Trap,
                    message: format!("hook `{name}`: its call's task failed: {e}"),
                };
                CallOutcome::failed(failure, std::time::Duration::ZERO)
            }),
            None => call::call(&self.host, &hook.callable(ready), input).await,
        };
        log_output(name, stage, &out);
        let (duration, fuel_used) = (out.duration, out.fuel_used);
        let checked = out.result.and_then(|answer| check(name, answer));
        self.log_decision(Decided {
            hook,
            sha256: Some(&ready.sha256),
            stage,
            request,
            matched,
            took: (duration, fuel_used),
            checked: &checked,
        });
        let enforced = hook.spec.mode == HookMode::Enforce;
        let tally = match &checked {
            Ok(Checked::Pre(decision)) if !enforced => Tally::Would(decision.name()),
            Ok(Checked::Pre(decision)) => Tally::Decision(decision.name()),
            Ok(Checked::Post(outcome)) => {
                Tally::Verdict(outcome.verdict.as_ref().map(|v| *v == Verdict::Pass))
            }
            Err(failure) => Tally::Failure(failure.kind, &failure.message),
        };
        hook.counters
            .record(stage, hook.spec.mode, out.duration, out.fuel_used, tally);
        let mut report = report(name, stage);
        report.duration_us = out.duration.as_micros() as u64;
        report.fuel_used = out.fuel_used;
        report.mode = (!enforced).then_some(hook.spec.mode);
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
        let mut started = self.start_all(&*fold);
        for (index, hook) in self.hooks.iter().enumerate() {
            let name = hook.spec.name.as_str();
            // A hook whose matcher does not match this job is not instantiated at all.
            let Some(matched) = hook.sees(fold.request()) else {
                continue;
            };
            let mode = hook.spec.mode;
            let (mut report, failure) = match &hook.slot {
                Slot::Disabled => continue,
                Slot::Ready(ready) if !ready.exports(stage) => continue,
                Slot::Failed(err) => {
                    let failure = Failure {
                        kind: FailureKind::Load,
                        message: err.to_string(),
                    };
                    // Logged as the call it stands in for: no digest, no time, no fuel.
                    self.log_decision(Decided {
                        hook,
                        sha256: None,
                        stage,
                        request: fold.request(),
                        matched: matched.as_deref(),
                        took: (std::time::Duration::ZERO, 0),
                        checked: &Err(failure.clone()),
                    });
                    (
                        F::REPORTS_LOAD_FAILURES.then(|| report(name, stage)),
                        failure,
                    )
                }
                Slot::Ready(ready) => {
                    let call = (fold.input(), fold.request(), matched.as_deref());
                    let task = started.take(index);
                    match self.call_checked(hook, ready, stage, call, task).await {
                        (mut report, Ok(answer)) if mode != HookMode::Enforce => {
                            // Recorded, never applied; `warn` tells the client.
                            report.matched = matched;
                            if let Checked::Pre(decision) = &answer {
                                report.decision = Some(decision.name().to_string());
                                if let PreDecision::Modify(patch) = decision {
                                    report.patch = Some(patch.clone());
                                }
                                let warning = match decision {
                                    PreDecision::Deny(reason) => {
                                        Some((FailureKind::Deny, format!("would deny: {reason}")))
                                    }
                                    PreDecision::Modify(patch) => Some((
                                        FailureKind::Modify,
                                        format!(
                                            "would modify: {}",
                                            serde_json::to_string(patch).unwrap_or_default()
                                        ),
                                    )),
                                    PreDecision::Allow => None,
                                };
                                if let (Some((kind, message)), HookMode::Warn) = (warning, mode) {
                                    run.warnings.push(HookWarning {
                                        hook: name.to_string(),
                                        stage,
                                        kind,
                                        mode: Some(mode),
                                        message,
                                    });
                                }
                            } else {
                                let _ = fold.answered(name, answer, &mut report);
                            }
                            run.reports.push(report);
                            continue;
                        }
                        (mut report, Ok(answer)) => {
                            report.matched = matched;
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
            tracing::warn!(hook = name, stage = stage_name(stage), kind = ?failure.kind, on_failure = ?hook.spec.on_failure, ?mode, "{}", failure.message);
            // A dry-run hook's failure is only recorded; outside `enforce` the job runs.
            if mode != HookMode::DryRun {
                run.warnings.push(HookWarning {
                    hook: name.to_string(),
                    stage,
                    kind: failure.kind,
                    mode: (mode != HookMode::Enforce).then_some(mode),
                    message: failure.message.clone(),
                });
            }
            let flow = match (hook.spec.on_failure, mode) {
                (OnFailure::Deny, HookMode::Enforce) => {
                    fold.failed_closed(name, &failure, report.as_mut())
                }
                _ => ControlFlow::Continue(()),
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

    /// For a concurrent stage, starts the call of every hook that will be called, each on a
    /// task of its own (outside a tokio runtime: none; the runner then calls in turn).
    fn start_all<F: Fold>(&self, fold: &F) -> Started {
        let mut tasks = Vec::new();
        let runtime = tokio::runtime::Handle::try_current();
        if let (true, Ok(runtime)) = (F::CONCURRENT, runtime) {
            for hook in &self.hooks {
                let task = match &hook.slot {
                    Slot::Ready(ready)
                        if ready.exports(F::STAGE) && hook.sees(fold.request()).is_some() =>
                    {
                        let host = self.host.clone();
                        let callable = hook.callable(ready);
                        let input = fold.input();
                        Some(
                            runtime.spawn(async move { call::call(&host, &callable, input).await }),
                        )
                    }
                    _ => None,
                };
                tasks.push(task);
            }
        }
        Started(tasks)
    }

    /// Runs the pre-hooks in config order. Each sees the request as changed by the hooks before
    /// it; the first deny (or the first failure of a fail-closed hook) ends the chain.
    ///
    /// A hook that failed to load counts as a `load` failure at each chain (we cannot know its
    /// stages), handled by its `on_failure` like any other failure.
    pub async fn run_pre(&self, mut req: HookRequest) -> PreChain {
        // The one parse every hook and matcher of the chain sees (again after a change).
        req.parse();
        let mut fold = PreFold {
            request: req,
            modified_by: Vec::new(),
        };
        let run = self.run_stage(&mut fold).await;
        let outcome = match run.stopped {
            Some((hook, reason)) => PreOutcome::Deny { hook, reason },
            None => PreOutcome::Allow {
                request: Box::new(fold.request),
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
        let mut result = result.clone();
        result.request.parse();
        result.received.parse();
        let mut fold = PostFold { result };
        let run = self.run_stage(&mut fold).await;
        PostChain {
            reports: run.reports,
            warnings: run.warnings,
        }
    }
}

/// The calls a concurrent stage started, by hook index; those not awaited are aborted when the
/// chain ends (or is dropped).
struct Started(Vec<Option<tokio::task::JoinHandle<CallOutcome>>>);

impl Started {
    fn take(&mut self, index: usize) -> Option<tokio::task::JoinHandle<CallOutcome>> {
        self.0.get_mut(index).and_then(Option::take)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for task in self.0.iter().flatten() {
            task.abort();
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
    const CONCURRENT: bool = false;
    /// The denying hook and its reason.
    type Stop = (String, String);

    fn input(&self) -> Input {
        Input::Pre(Box::new(self.request.clone()))
    }

    fn request(&self) -> &HookRequest {
        &self.request
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
                report.patch = Some(patch);
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
    result: HookResult,
}

impl Fold for PostFold {
    const STAGE: Stage = Stage::Post;
    const REPORTS_LOAD_FAILURES: bool = true;
    const CONCURRENT: bool = true;
    type Stop = Infallible;

    fn input(&self) -> Input {
        Input::Post(Box::new(self.result.clone()))
    }

    fn request(&self) -> &HookRequest {
        &self.result.request
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
