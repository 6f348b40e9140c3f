//! The input stage: `check-input(request, data)` of every hook that exports it, before bytes
//! reach a job's stdin or terminal (`input`), so an interactive shell is no way around the
//! pre-hooks. Hooks run in config order, each in a fresh instance with its limits; the first
//! deny refuses the bytes (the job goes on). A failure follows the hook's `on_failure` in
//! `enforce` mode (`deny` refuses the bytes); `warn` and `dry-run` hooks never refuse.

use super::bindings::types as wit;
use super::call::{self, Answer, Input};
use super::decision_log::DecisionRecord;
use super::set::{HookSet, Slot};
use super::stats::{CallStage, Tally};
use super::types::{HookRequest, MAX_REASON_BYTES};
use super::{FailureKind, HookMode, OnFailure};

impl HookSet {
    /// Whether any loaded hook exports `check-input`.
    pub fn has_input_stage(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| matches!(&h.slot, Slot::Ready(r) if r.input.is_some()))
    }

    /// Runs the input stage on `data` for the job `request` describes (as it runs). Errors:
    /// `(hook, reason)` of the hook that refused.
    pub async fn check_input(
        &self,
        request: &HookRequest,
        data: &[u8],
    ) -> Result<(), (String, String)> {
        for hook in &self.hooks {
            let Slot::Ready(ready) = &hook.slot else {
                continue;
            };
            if ready.input.is_none() {
                continue;
            }
            let Some(matched) = hook.sees(request) else {
                continue;
            };
            let name = hook.spec.name.clone();
            let enforce = hook.spec.mode == HookMode::Enforce;
            let callable = hook.callable(ready);
            let input = Input::Typed(Box::new(request.clone()), data.to_vec());
            let out = call::call(&self.host, &callable, input).await;
            let (duration, fuel) = (out.duration, out.fuel_used);
            let mode = hook.spec.mode;
            // Every call goes to the counters and, when it is on, the decision log.
            let count = |tally: Tally<'_>, why: Option<&str>| {
                if let Some(log) = self.host.decision_log() {
                    let why = why.map(str::to_string);
                    let (decision, reason, failure) = match &tally {
                        Tally::Decision(d) | Tally::Would(d) => (d.to_string(), why, None),
                        Tally::Failure(kind, message) => {
                            ("failed".to_string(), Some(message.to_string()), Some(*kind))
                        }
                        Tally::Verdict(_) => ("none".to_string(), None, None),
                    };
                    log.record(DecisionRecord {
                        time: super::decision_log::unix_now(),
                        job_id: request.job_id.clone(),
                        hook: name.clone(),
                        sha256: Some(ready.sha256.clone()),
                        generation: self.generation(),
                        stage: "input",
                        mode,
                        matched: matched.clone(),
                        decision,
                        reason,
                        patch: None,
                        duration_us: duration.as_micros() as u64,
                        fuel,
                        failure,
                        request: request.clone(),
                    });
                }
                hook.counters
                    .record(CallStage::Input, mode, duration, fuel, tally)
            };
            let refusal = match out.result {
                Ok(Answer::Input(wit::InputDecision::Allow)) => {
                    count(Tally::Decision("allow"), None);
                    None
                }
                Ok(Answer::Input(wit::InputDecision::Deny(mut reason))) => {
                    if reason.len() > MAX_REASON_BYTES {
                        reason.truncate(reason.floor_char_boundary(MAX_REASON_BYTES));
                    }
                    let tally = if enforce {
                        Tally::Decision("deny")
                    } else {
                        Tally::Would("deny")
                    };
                    count(tally, Some(&reason));
                    Some(reason)
                }
                Ok(_) => {
                    let message = "an answer of the wrong stage";
                    count(Tally::Failure(FailureKind::Invalid, message), None);
                    Some(message.into())
                }
                Err(failure) => {
                    count(Tally::Failure(failure.kind, &failure.message), None);
                    tracing::warn!(hook = %name, kind = ?failure.kind, "check-input failed: {}", failure.message);
                    (hook.spec.on_failure == OnFailure::Deny).then_some(failure.message)
                }
            };
            match refusal {
                Some(reason) if enforce => return Err((name, reason)),
                Some(reason) => {
                    tracing::info!(hook = %name, mode = ?hook.spec.mode, "check-input would deny: {reason}")
                }
                None => {}
            }
        }
        Ok(())
    }
}
