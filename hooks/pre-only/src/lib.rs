//! A hook that exports only `pre-execute`: it proves single-stage components load and are
//! skipped at the stage they lack. It denies commands containing `rm -rf /`.

wit_bindgen::generate!({
    path: "../../wit",
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
