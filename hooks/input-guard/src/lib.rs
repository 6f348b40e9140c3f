//! `input-guard`: an input hook (world `input-hook`, `check-input`) that refuses bytes bound
//! for a job's stdin or terminal when they contain the config's `needle` (default `rm -rf`),
//! so what a pre-hook would refuse as a command cannot be typed into an interactive shell
//! instead. It also refuses any input to a job whose label `interactive` is `no`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "input-hook",
});

use ccx::hooks::host;

struct InputGuard;

impl Guest for InputGuard {
    fn check_input(request: ExecRequest, data: Vec<u8>) -> InputDecision {
        if request
            .labels
            .iter()
            .any(|(k, v)| k == "interactive" && v == "no")
        {
            return InputDecision::Deny("this job takes no input (label interactive=no)".into());
        }
        let needle = host::config()
            .into_iter()
            .find(|(k, _)| k == "needle")
            .map(|(_, v)| v)
            .unwrap_or_else(|| "rm -rf".into());
        let text = String::from_utf8_lossy(&data);
        if text.contains(&needle) {
            InputDecision::Deny(format!("input contains `{needle}`"))
        } else {
            InputDecision::Allow
        }
    }
}

export!(InputGuard);
