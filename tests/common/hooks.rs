//! Shared helpers for tests and benchmarks that need real hook components: builds the guests
//! in `hooks/` once per process (via `hooks/build.sh`) and makes specs and scratch directories.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ccx::hooks::{HookRequest, HookSpec, OnFailure};

/// Paths of the built guest components.
pub struct Guests {
    /// Exports both stages; behaviour chosen by its config (see hooks/test-hook/src/lib.rs).
    pub test_hook: PathBuf,
    /// Exports only `pre-execute`.
    pub pre_only: PathBuf,
}

/// Builds the guests once per process; later calls return the same paths.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("bash")
            .arg(root.join("hooks/build.sh"))
            .output()
            .expect("running hooks/build.sh");
        assert!(
            out.status.success(),
            "hooks/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let find = |name: &str| {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_else(|| panic!("build.sh did not print {name}:\n{stdout}"));
            PathBuf::from(line.trim())
        };
        Guests {
            test_hook: find("test-hook.wasm"),
            pre_only: find("pre-only.wasm"),
        }
    })
}

/// A fresh, empty scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ccx-hooks-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("creating scratch dir");
    dir
}

/// A spec for the test hook with the given config pairs and default limits.
pub fn test_hook(name: &str, config: &[(&str, &str)]) -> HookSpec {
    let mut spec = HookSpec::new(name, &guests().test_hook);
    spec.config = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec
}

/// The same spec, failing closed.
pub fn fail_closed(mut spec: HookSpec) -> HookSpec {
    spec.on_failure = OnFailure::Deny;
    spec
}

/// A simple request.
pub fn request(command: &str) -> HookRequest {
    HookRequest {
        session_id: "s1".into(),
        job_id: "j1".into(),
        command: command.into(),
        cwd: None,
        env: vec![("KEEP".into(), "1".into())],
        timeout_ms: Some(5000),
    }
}
