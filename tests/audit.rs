//! The audit log through a real `ccx serve` and the built `ccx audit verify`: one `job`
//! record for each kind of ending (completed, failed, timed out, canceled, denied, and lost
//! across a `kill -9`), `refused` records for a bad token and a full queue, the chain
//! continuing across the restart; then `verify` passing, and failing on an edited, a deleted
//! and a reordered line, and on a cut tail (the hash kept in the state store).

use crate::jobs::serve;
use crate::util::{CCX, Ws, scratch};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "audit-test-token";

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the audit file has a record for which `pred` holds.
async fn wait_for(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + crate::util::WAIT;
    loop {
        if let Some(r) = records(path).into_iter().find(&pred) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} record in {}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ccx audit verify ARGS…`: (exit code, stdout).
fn verify(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(CCX)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn job_id(ws: &mut Ws, params: Value) -> String {
    let r = ws.call("execute", params).await;
    r["result"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_and_refusal_is_audited_and_verify_finds_each_tampering() {
    let dir = scratch();
    let audit = dir.path().join("audit").join("audit.log");
    let config = format!(
        "[execution]\nmax_queue = 1\n\n[audit]\npath = \"{}\"\n\n[[hooks]]\nname = \"guard\"\npath = \"{{deny-dangerous}}\"\n",
        audit.display()
    );
    let env = [("CCX_TOKEN", TOKEN)];
    let (mut server, url) = serve(dir.path(), &config, &env);
    let url = format!("{url}?token={TOKEN}");
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // A job that the crash below interrupts: `lost` at the next start.
    let mut other = Ws::connect(&url).await;
    let lost = job_id(
        &mut other,
        json!({"command": "sleep 30", "detach": true, "env": {"API_TOKEN": "hunter2"}}),
    )
    .await;

    let mut ws = Ws::connect(&url).await;
    let done = job_id(&mut ws, json!({"command": "echo audited"})).await;
    ws.collect(&done).await;
    let failed = job_id(&mut ws, json!({"command": "exit 3"})).await;
    ws.collect(&failed).await;
    let timed_out = job_id(&mut ws, json!({"command": "sleep 5", "timeout": 0.3})).await;
    ws.collect(&timed_out).await;
    // One running, one queued, the third refused: the queue holds one.
    let canceled = job_id(&mut ws, json!({"command": "sleep 30"})).await;
    let queued = job_id(&mut ws, json!({"command": "rm -rf /"})).await;
    let r = ws.call("execute", json!({"command": "echo refused"})).await;
    assert_eq!(r["error"]["code"], -32004, "{r}");
    ws.call("control", json!({"job_id": canceled, "type": "CANCEL"}))
        .await;
    ws.collect(&canceled).await;
    ws.collect(&queued).await;
    // A bad token.
    let (status, _) = crate::util::http(
        &addr,
        "GET",
        "/health",
        &[("Authorization", "Bearer wrong")],
        "",
    )
    .await;
    assert_eq!(status, 401);

    let status_of = |id: &str| {
        let id = id.to_string();
        move |r: &Value| r["kind"] == "job" && r["job_id"] == id.as_str()
    };
    for (id, status) in [
        (&done, "completed"),
        (&failed, "failed"),
        (&timed_out, "timed_out"),
        (&canceled, "canceled"),
        (&queued, "denied"),
    ] {
        let r = wait_for(&audit, status, status_of(id)).await;
        assert_eq!(r["status"], status, "{r}");
    }
    let r = wait_for(&audit, "completed", status_of(&done)).await;
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["token_label"], "default");
    assert_eq!(r["stdout_bytes"], 8);
    assert_eq!(r["stdout_sha256"].as_str().unwrap().len(), 64);
    let r = wait_for(&audit, "denied", status_of(&queued)).await;
    assert_eq!(r["denied_by"], "guard", "{r}");
    let r = wait_for(&audit, "queue_full", |r| r["reason"] == "queue_full").await;
    assert_eq!(r["kind"], "refused");
    assert_eq!(r["command"], "echo refused");
    let r = wait_for(&audit, "auth", |r| r["reason"] == "auth").await;
    assert_eq!(r["detail"], "invalid token");

    // kill -9, then a new server on the same state and audit file.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    let (server, url) = serve(dir.path(), &config, &env);
    let r = wait_for(&audit, "lost", status_of(&lost)).await;
    assert_eq!(r["status"], "lost");
    assert_eq!(r["env"]["API_TOKEN"], "***", "secret values masked: {r}");
    // The job settled `lost` at the start is counted in `/metrics` too.
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let auth = format!("Bearer {TOKEN}");
    let (status, body) =
        crate::util::http(addr, "GET", "/metrics", &[("Authorization", &auth)], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines()
            .any(|l| l == r#"ccx_jobs_total{status="lost"} 1"#),
        "{body}"
    );
    // Stop it gracefully: the last hash is then in the state store.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let mut server = server;
    server.0.wait().unwrap();

    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let file = audit.to_str().unwrap();
    let (code, out) = verify(&[file, "--state-dir", state]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the last hash matches"), "{out}");

    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 9, "{text}");
    let write = |lines: &[String]| std::fs::write(&audit, lines.join("\n") + "\n").unwrap();
    let original: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    // Edited: the exit code of the failed job.
    let at = original
        .iter()
        .position(|l| l.contains(&failed) && l.contains("\"exit_code\":3"))
        .unwrap();
    let mut edited = original.clone();
    edited[at] = edited[at].replace("\"exit_code\":3", "\"exit_code\":0");
    write(&edited);
    let (code, out) = verify(&[file, "--state-dir", state]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("line {}", at + 2)), "{out}");
    // Deleted.
    let mut deleted = original.clone();
    deleted.remove(at);
    write(&deleted);
    let (code, out) = verify(&[file, "--state-dir", state]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("line {}", at + 1)), "{out}");
    // Reordered.
    let mut reordered = original.clone();
    reordered.swap(at, at + 1);
    write(&reordered);
    let (code, out) = verify(&[file, "--state-dir", state]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("line {}", at + 1)), "{out}");
    // A cut tail passes on its own, not against the state store's hash.
    write(&original[..original.len() - 2]);
    let (code, out) = verify(&[file, "--expect-last", "none", "--state-dir", state]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = verify(&[file, "--state-dir", state]);
    assert_eq!(code, 1, "a cut tail: {out}");
    let (code, out) = verify(&[file, "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "without a kept hash: {out}");
    assert!(out.contains("a cut tail would not be seen"), "{out}");
}
