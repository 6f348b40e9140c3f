//! Shared helpers for tests and benchmarks of the example hooks: builds every hook in `hooks/`
//! once per process with `hooks/build.sh` (Rust, Python and JavaScript) and writes configs
//! that load them.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Paths of the built example components.
pub struct Examples {
    pub deny_dangerous: PathBuf,
    pub venv_setup: PathBuf,
    pub counter: PathBuf,
    pub agent_result_check: PathBuf,
    pub secret_scan: PathBuf,
}

impl Examples {
    /// (name, language, path) of every example.
    pub fn all(&self) -> [(&'static str, &'static str, &Path); 5] {
        [
            ("deny-dangerous", "rust", &self.deny_dangerous),
            ("venv-setup", "rust", &self.venv_setup),
            ("counter", "rust", &self.counter),
            ("agent-result-check", "python", &self.agent_result_check),
            ("secret-scan", "js", &self.secret_scan),
        ]
    }
}

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `hooks/build.sh` once per process (it skips hooks that are up to date).
pub fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(root().join("hooks/build.sh"))
            .output()
            .expect("running hooks/build.sh");
        assert!(
            out.status.success(),
            "hooks/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let find = |name: &str| {
            let file = format!("/{name}.wasm");
            let line = stdout
                .lines()
                .find(|l| l.ends_with(&file))
                .unwrap_or_else(|| panic!("build.sh did not print {file}:\n{stdout}"));
            PathBuf::from(line.trim())
        };
        Examples {
            deny_dangerous: find("deny-dangerous"),
            venv_setup: find("venv-setup"),
            counter: find("counter"),
            agent_result_check: find("agent-result-check"),
            secret_scan: find("secret-scan"),
        }
    })
}

/// One compiled-artifact cache for every test process, so the Python and JavaScript
/// components (6-15 s to compile each) are compiled once, not once per test or per run.
/// Entries are keyed by content and engine, so sharing is safe.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("ccx-examples-cache");
    std::fs::create_dir_all(&dir).expect("creating the shared cache dir");
    dir
}

/// A fresh, empty scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ccx-examples-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("creating scratch dir");
    dir
}

/// Writes `dir/ccx.toml` with the shared cache and `hooks` (TOML `[[hooks]]` entries) in
/// which `{deny-dangerous}`, `{counter}`, … stand for the built examples' paths.
pub fn write_config(dir: &Path, hooks: &str) -> PathBuf {
    let mut hooks = hooks.to_string();
    for (name, _, path) in examples().all() {
        hooks = hooks.replace(&format!("{{{name}}}"), &path.display().to_string());
    }
    let path = dir.join("ccx.toml");
    let text = format!(
        "[server]\nwatch_interval = 0\n\n[execution]\nkill_grace = 0.3\n\n\
         [sandbox]\ncache_dir = \"{}\"\n\n{hooks}",
        cache_dir().display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}
