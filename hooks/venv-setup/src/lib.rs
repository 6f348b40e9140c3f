//! `venv-setup`: a pre-hook that runs Python tooling inside a configured virtualenv.
//!
//! When any part of a command line runs `python*`, `pip*`, `pytest`, `uv`, `uvx` or another
//! program from the `commands` list (looking through `sudo`, `env`, `timeout`, …, and
//! `.venv/bin/`-style paths alike), the hook answers `modify` with:
//! - `PATH` = `<venv>/bin:<base>`, where `<base>` is the request's own `PATH` when it sets one,
//!   else `base_path`. A hook sees only the request's variables, never the server's, and the
//!   request's variables override the server's `pass_env`, so `base_path` must be a complete
//!   search path for the server's machine;
//! - `VIRTUAL_ENV` = `<venv>`, and `PYTHONHOME` removed (what `bin/activate` does).
//!
//! Other commands are allowed unchanged.
//!
//! Config:
//! - `venv` (default `.venv`): the virtualenv's directory; a relative one is taken from the
//!   request's `cwd` (and left alone when the request has none).
//! - `base_path` (default `/usr/local/bin:/usr/bin:/bin`).
//! - `commands`: programs that trigger the hook, separated by spaces or commas, replacing the
//!   default list; a name ending in `*` matches by prefix (`python*` matches `python3.12`).

wit_bindgen::generate!({
    path: "../../wit",
    world: "pre-hook",
});

use ccx::hooks::host::{self, Level};
use ccx::hooks::types::RequestPatch;

const DEFAULT_COMMANDS: &str = "python* pip* pytest py.test uv uvx poetry pdm hatch tox nox \
    ruff mypy black isort flake8 pylint pyright ipython jupyter* pre-commit django-admin \
    gunicorn uvicorn celery coverage";
const DEFAULT_BASE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

struct VenvSetup;

impl Guest for VenvSetup {
    fn pre_execute(request: ExecRequest) -> PreDecision {
        let config = host::config();
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let commands = get("commands").unwrap_or(DEFAULT_COMMANDS);
        let patterns: Vec<&str> = commands
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        let runs_python = shell_split::parse(&request.command).commands().any(|cmd| {
            shell_split::unwrap(&cmd.words)
                .first()
                .is_some_and(|program| patterns.iter().any(|p| shell_split::glob_match(p, program)))
        });
        if !runs_python {
            return PreDecision::Allow;
        }

        let venv = get("venv").unwrap_or(".venv").trim_end_matches('/');
        let venv = if venv.starts_with('/') {
            venv.to_string()
        } else if let Some(cwd) = &request.cwd {
            format!("{}/{venv}", cwd.trim_end_matches('/'))
        } else {
            host::log(
                Level::Warn,
                &format!("relative venv `{venv}` and no cwd in the request: left unchanged"),
            );
            return PreDecision::Allow;
        };
        let bin = format!("{venv}/bin");
        let base = request
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(get("base_path").unwrap_or(DEFAULT_BASE_PATH));
        // Prepend once: a request that already starts with the venv keeps its PATH.
        let path = if base.split(':').next() == Some(bin.as_str()) {
            base.to_string()
        } else if base.is_empty() {
            bin
        } else {
            format!("{bin}:{base}")
        };
        PreDecision::Modify(RequestPatch {
            command: None,
            cwd: None,
            set_env: vec![("PATH".into(), path), ("VIRTUAL_ENV".into(), venv)],
            unset_env: vec!["PYTHONHOME".into()],
            timeout_ms: None,
            limits: None,
        })
    }
}

export!(VenvSetup);
