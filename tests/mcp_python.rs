//! The MCP job tools driven by the official MCP Python SDK (`mcp` on PyPI, pinned in
//! `tests/python/requirements.txt`), at both protocol revisions it speaks: 2026-07-28 (no
//! initialize handshake) and 2025-11-25, over stdio (`ccx mcp`) and Streamable HTTP (`/mcp`).
//! The scenario itself is `tests/python/mcp_jobs.py`.

use crate::util::{AppServer, CCX, root, scratch, write_config};
use std::process::Command;
use std::sync::OnceLock;

/// The virtualenv's python, set up once per process by `tests/python/setup.sh`.
pub(crate) fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("tests/python/setup.sh"))
            .output()
            .expect("running tests/python/setup.sh");
        assert!(
            out.status.success(),
            "tests/python/setup.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Runs the scenario and checks that it passed, at `revision`.
fn scenario(args: &[&str], revision: &str) {
    let out = Command::new(python())
        .arg(root().join("tests/python/mcp_jobs.py"))
        .args(args)
        .env_remove("CCX_TOKEN")
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\nok"),
        "mcp_jobs.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("protocol {revision}")),
        "negotiated {revision}: {stdout}"
    );
}

fn stdio(mode: &str, revision: &str) {
    let dir = scratch();
    let config = write_config(dir.path(), 0.0, "");
    let config = config.to_str().unwrap();
    scenario(&[mode, "stdio", CCX, "mcp", "--config", config], revision);
}

#[test]
fn python_sdk_stdio_at_2026_07_28() {
    stdio("auto", "2026-07-28");
}

#[test]
fn python_sdk_stdio_at_2025_11_25() {
    stdio("legacy", "2025-11-25");
}

async fn http(mode: &str, revision: &str) {
    let server = AppServer::with_config(0.0, "").await;
    let url = format!("http://{}/mcp", server.addr);
    let (mode, revision) = (mode.to_string(), revision.to_string());
    tokio::task::spawn_blocking(move || scenario(&[&mode, "http", &url], &revision))
        .await
        .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_http_at_2026_07_28() {
    http("auto", "2026-07-28").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_http_at_2025_11_25() {
    http("legacy", "2025-11-25").await;
}
