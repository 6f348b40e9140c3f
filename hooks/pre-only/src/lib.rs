//! A hook that exports only `pre-execute`: it proves single-stage components load and are
//! skipped at the stage they lack. It denies commands containing `rm -rf /`.
//!
//! Built against the old contract, `ccx:hooks@0.1.0` (`wit/v0.1.0`), on purpose: it is the
//! test that hooks built before 0.2.0 still load and behave as they did.

wit_bindgen::generate!({
    path: "../../wit/v0.1.0",
    world: "pre-hook",
});

struct PreOnly;

impl Guest for PreOnly {
    fn pre_execute(request: ExecRequest) -> PreDecision {
        if request.command.contains("rm -rf /") {
            PreDecision::Deny("pre-only refuses `rm -rf /`".into())
        } else {
            PreDecision::Allow
        }
    }
}

export!(PreOnly);
