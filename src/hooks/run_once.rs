//! One-off runs for `ccx hooks run FILE --pre JSON | --post JSON`: load one hook, call it once
//! with its spec's limits, and report the answer, the failure and the guest's output. Lives for
//! one CLI command; nothing of it joins a hook set.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cache::LoadSource;
use super::call::{self, HookIdentity, Input};
use super::chain::{self, Checked, stage_name};
use super::load::load_one;
use super::types::{HookRequest, HookResult};
use super::{FailureKind, HookHost, HookSpec, Stage};

/// The input of a one-off run: `{"pre": {...request...}}` or `{"post": {...result...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunInput {
    Pre(Box<HookRequest>),
    Post(Box<HookResult>),
}

/// What a one-off run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub hook: String,
    pub stage: Stage,
    /// The checked answer as JSON: `"allow"`, `{"deny": reason}`, `{"modify": patch}` for a
    /// pre-hook, `{"annotations": {...}, "verdict": ...}` for a post-hook; `None` when the call
    /// failed.
    pub answer: Option<serde_json::Value>,
    /// The failure, when the call failed (including an invalid answer).
    pub failure: Option<RunFailure>,
    pub fuel_used: u64,
    /// Time of the call (fresh store, instantiation and the call), in microseconds.
    pub duration_us: u64,
    /// The guest's captured stdout and stderr.
    pub stdout: String,
    pub stderr: String,
    pub source: LoadSource,
}

/// A failed one-off run.
#[derive(Clone, Debug, Serialize)]
pub struct RunFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Runs one hook once with the spec's limits (for `ccx hooks run FILE --pre JSON | --post
/// JSON`). Loads the hook even when the spec is disabled; a load error, or a component that
/// lacks the requested stage, is an error. Failures of the call itself are in the report.
pub async fn run_once(
    host: &Arc<HookHost>,
    spec: &HookSpec,
    input: RunInput,
) -> anyhow::Result<RunReport> {
    let ready = {
        let host = host.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || load_one(&host, &spec)).await??
    };
    let stage = match input {
        RunInput::Pre(_) => Stage::Pre,
        RunInput::Post(_) => Stage::Post,
    };
    if !ready.exports(stage) {
        anyhow::bail!(
            "hook `{}` ({}) does not export `{}-execute`",
            spec.name,
            spec.path.display(),
            stage_name(stage)
        );
    }
    let ident = Arc::new(HookIdentity {
        name: spec.name.clone(),
        config: spec.config.clone(),
        kv: host.kv_for(&spec.name),
    });
    // The host's parse, as a chain would give it.
    let input = match &input {
        RunInput::Pre(req) => {
            let mut req = req.clone();
            req.parse();
            Input::Pre(req)
        }
        RunInput::Post(res) => {
            let mut res = res.clone();
            res.request.parse();
            res.received.parse();
            Input::Post(res)
        }
    };
    let out = call::call(host, &ready.callable(&ident, spec), input).await;
    let checked = out
        .result
        .and_then(|answer| chain::check(&spec.name, answer));
    let (answer, failure) = match checked {
        Ok(checked) => {
            let value = match checked {
                Checked::Pre(decision) => serde_json::to_value(decision),
                Checked::Post(outcome) => serde_json::to_value(outcome),
            };
            (Some(value.unwrap_or(serde_json::Value::Null)), None)
        }
        Err(f) => (
            None,
            Some(RunFailure {
                kind: f.kind,
                message: f.message,
            }),
        ),
    };
    Ok(RunReport {
        hook: spec.name.clone(),
        stage,
        answer,
        failure,
        fuel_used: out.fuel_used,
        duration_us: out.duration.as_micros() as u64,
        stdout: out.stdout,
        stderr: out.stderr,
        source: ready.source,
    })
}
