//! One hook on trial, outside any chain: loaded once, then called on many requests, each call
//! on a fresh instance as a server makes it (`ccx hooks test` runs corpora of cases through
//! it, `ccx hooks replay` a decision log). Lives for one CLI command; nothing of it joins a
//! hook set.
//!
//! Unlike [`super::run_once`], which loads the component for its single call, a trial loads
//! it once: a corpus or a log holds hundreds of requests, and mapping an interpreted hook back
//! from the cache costs tens of milliseconds each time.

use std::sync::{Arc, Mutex};

use super::call::{self, HookIdentity, Input};
use super::chain::{self, Checked};
use super::kv::KvStore;
use super::load::load_one;
use super::set::Ready;
use super::types::{HookRequest, PreDecision};
use super::{FailureKind, HookHost, HookSpec, Matcher, RunFailure, Stage};

/// A hook loaded for trial calls of its pre-stage, with its spec's limits, `config` and
/// matcher. Its mode and `on_failure` are not applied: a trial reports the hook's own answer.
pub struct TrialHook {
    host: Arc<HookHost>,
    spec: HookSpec,
    matcher: Option<Matcher>,
    ready: Ready,
}

/// What a hook's pre-stage made of one request.
#[derive(Clone, Debug)]
pub enum TrialDecision {
    /// Its matcher does not match the request: a server would not call it, and the job would
    /// go on as if it had allowed it.
    NotMatched,
    /// Its checked answer.
    Decided(PreDecision),
    /// The call failed: a trap, fuel, deadline, memory or an invalid answer.
    Failed(RunFailure),
}

/// One trial call.
#[derive(Clone, Debug)]
pub struct TrialCall {
    pub decision: TrialDecision,
    /// The matcher rule that matched, when the hook has a matcher.
    pub matched: Option<String>,
    pub fuel_used: u64,
    /// Time of the call (fresh store, instantiation and the call), in microseconds.
    pub duration_us: u64,
}

impl TrialHook {
    /// Loads the hook even when its spec is disabled (off the async runtime: a cold compile of
    /// an interpreted hook takes seconds). Errors: a load error (missing file, not a
    /// component, a pinned digest that does not match, bad limits), a component without
    /// `pre-execute`, or a matcher that does not compile.
    pub async fn load(host: &Arc<HookHost>, spec: &HookSpec) -> anyhow::Result<TrialHook> {
        let matcher = match &spec.matcher {
            Some(m) => Some(
                m.compile()
                    .map_err(|e| anyhow::anyhow!("hook `{}`: match {e}", spec.name))?,
            ),
            None => None,
        };
        let ready = {
            let host = host.clone();
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || load_one(&host, &spec)).await??
        };
        if !ready.exports(Stage::Pre) {
            anyhow::bail!(
                "hook `{}` ({}) does not export `pre-execute`",
                spec.name,
                spec.path.display()
            );
        }
        Ok(TrialHook {
            host: host.clone(),
            spec: spec.clone(),
            matcher,
            ready,
        })
    }

    /// The spec it was loaded with.
    pub fn spec(&self) -> &HookSpec {
        &self.spec
    }

    /// SHA-256 (hex) of the component file as loaded.
    pub fn sha256(&self) -> &str {
        &self.ready.sha256
    }

    /// Calls the pre-stage on `request` after the host's parse of its command line
    /// ([`HookRequest::parse`]), as a server's chain gives it to its first hook.
    pub async fn pre(&self, mut request: HookRequest) -> TrialCall {
        request.parse();
        self.call(request).await
    }

    /// Calls the pre-stage on `request` as recorded, with the parse it holds: the parse a hook
    /// saw on the server, whose program paths were resolved on that machine. A request without
    /// any parse (neither `commands` nor `unparsed`: a record older than the parse, or an
    /// empty line) is parsed here.
    pub async fn pre_as_recorded(&self, mut request: HookRequest) -> TrialCall {
        if request.commands.is_empty() && request.unparsed.is_none() {
            request.parse();
        }
        self.call(request).await
    }

    async fn call(&self, request: HookRequest) -> TrialCall {
        let matched = match &self.matcher {
            None => None,
            Some(m) => {
                match m.matches(
                    &request.command,
                    &request.commands,
                    request.unparsed.is_some(),
                ) {
                    Some(rule) => Some(rule),
                    None => {
                        return TrialCall {
                            decision: TrialDecision::NotMatched,
                            matched: None,
                            fuel_used: 0,
                            duration_us: 0,
                        };
                    }
                }
            }
        };
        // An empty kv store for every call: a trial's answer depends on its request alone,
        // never on the calls before it.
        let ident = Arc::new(HookIdentity {
            name: self.spec.name.clone(),
            config: self.spec.config.clone(),
            kv: Arc::new(Mutex::new(KvStore::default())),
        });
        let callable = self.ready.callable(&ident, &self.spec);
        let out = call::call(&self.host, &callable, Input::Pre(Box::new(request))).await;
        let decision = match out
            .result
            .and_then(|answer| chain::check(&self.spec.name, answer))
        {
            Ok(Checked::Pre(decision)) => TrialDecision::Decided(decision),
            Ok(Checked::Post(_)) => TrialDecision::Failed(RunFailure {
                kind: FailureKind::Invalid,
                message: "a post-execute answer to pre-execute".into(),
            }),
            Err(f) => TrialDecision::Failed(RunFailure {
                kind: f.kind,
                message: f.message,
            }),
        };
        TrialCall {
            decision,
            matched,
            fuel_used: out.fuel_used,
            duration_us: out.duration.as_micros() as u64,
        }
    }
}
