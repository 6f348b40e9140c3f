//! The input stage: `check-input(request, data)` of every hook that exports it, before bytes
//! reach a job's stdin or terminal (`input`), so an interactive shell is no way around the
//! pre-hooks. Hooks run in config order, each in a fresh instance with its limits; the first
//! deny refuses the bytes (the job goes on). A failure follows the hook's `on_failure` in
//! `enforce` mode (`deny` refuses the bytes); `warn` and `dry-run` hooks never refuse.

use super::bindings::types as wit;
use super::call::{self, Answer, Input};
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
            if hook.sees(request).is_none() {
                continue;
            }
            let name = hook.spec.name.clone();
            let enforce = hook.spec.mode == HookMode::Enforce;
            let callable = hook.callable(ready);
            let input = Input::Typed(Box::new(request.clone()), data.to_vec());
            let out = call::call(&self.host, &callable, input).await;
            let (duration, fuel) = (out.duration, out.fuel_used);
            let mode = hook.spec.mode;
            let count = |tally| {
                hook.counters
                    .record(CallStage::Input, mode, duration, fuel, tally)
            };
            let refusal = match out.result {
                Ok(Answer::Input(wit::InputDecision::Allow)) => {
                    count(Tally::Decision("allow"));
                    None
                }
                Ok(Answer::Input(wit::InputDecision::Deny(mut reason))) => {
                    count(if enforce {
                        Tally::Decision("deny")
                    } else {
                        Tally::Would("deny")
                    });
                    if reason.len() > MAX_REASON_BYTES {
                        reason.truncate(reason.floor_char_boundary(MAX_REASON_BYTES));
                    }
                    Some(reason)
                }
                Ok(_) => {
                    let message = "an answer of the wrong stage";
                    count(Tally::Failure(FailureKind::Invalid, message));
                    Some(message.into())
                }
                Err(failure) => {
                    count(Tally::Failure(failure.kind, &failure.message));
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
