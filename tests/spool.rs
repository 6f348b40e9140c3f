//! The spool's two homes and its failures, through the built binary: a short job's spool
//! kept in its database row (no file) and replayed exactly after a restart; a spool that
//! fills its disk (or loses its folder) in the middle of a job, which goes on streaming.

use crate::jobs::serve;
use crate::util::{WAIT, Ws, scratch};
use base64::Engine;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// The stdout bytes of a job's events (base64 or text).
fn stdout_of(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let p = &e["params"];
        if e["method"] == "process.output" && p["type"] == "stdout" {
            let data = p["data"].as_str().unwrap();
            match p["encoding"].as_str() {
                Some("base64") => out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap(),
                ),
                _ => out.extend_from_slice(data.as_bytes()),
            }
        }
    }
    out
}

fn files_of(spool: &Path, job_id: &str) -> Vec<String> {
    std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(job_id))
        .collect()
}

async fn replay(url: &str, job_id: &str) -> Vec<Value> {
    let mut ws = Ws::connect(url).await;
    let r = ws
        .call(
            "attach",
            json!({"job_id": job_id, "output_encoding": "base64"}),
        )
        .await;
    assert!(r["result"].is_object(), "{r}");
    ws.collect(job_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_jobs_spool_lives_in_its_record_and_replays_exactly_after_a_restart() {
    let dir = scratch();
    let (mut server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    // Invalid UTF-8 on stdout, and stderr between.
    let cmd = "printf 'a\\377b'; printf 'err' >&2; printf 'c\\000d'";
    let live = ws
        .run_or_error(json!({"command": cmd, "output_encoding": "base64"}))
        .await
        .unwrap();
    let job_id = live[0]["params"]["job_id"].as_str().unwrap().to_string();
    let expected = b"a\xffbc\x00d".to_vec();
    assert_eq!(stdout_of(&live), expected);
    assert!(
        files_of(&dir.path().join("state/spool"), &job_id).is_empty(),
        "a job that ends within 10 ms writes no spool file"
    );

    let check = |events: &[Value]| {
        assert_eq!(events[0]["method"], "process.started", "{events:?}");
        assert_eq!(stdout_of(events), expected);
        let done = events.last().unwrap();
        assert_eq!(done["method"], "process.completed");
        assert_eq!(
            done["params"]["stdout_sha256"],
            live.last().unwrap()["params"]["stdout_sha256"]
        );
    };
    check(&replay(&url, &job_id).await);

    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    server.0.wait().unwrap();
    let (_server, url) = serve(dir.path(), "", &[]);
    check(&replay(&url, &job_id).await);
}

/// A small tmpfs mounted over `at` for the test's life (a full disk, for real); `None` where
/// mounting is not allowed.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_fails_mid_job_leaves_the_job_streaming_and_health_says_why() {
    let dir = scratch();
    let spool = dir.path().join("state/spool");
    std::fs::create_dir_all(&spool).unwrap();
    // A 64 KiB disk under the spool; where mounting is not allowed, the spool's folder is
    // replaced by a plain file once the server has started, so the job's spool cannot be
    // written out when it leaves memory.
    let disk = SmallDisk::mount(&spool, "64k");
    let (_server, url) = serve(dir.path(), "", &[]);
    if disk.is_none() {
        std::fs::remove_dir(&spool).unwrap();
        std::fs::write(&spool, "not a folder").unwrap();
    }
    let mut ws = Ws::connect(&url).await;
    // 1 MB, then a line after a pause: the job goes on after the spool has failed.
    let cmd = "head -c 1000000 /dev/zero | tr '\\0' x; sleep 0.1; echo; echo done";
    let live = ws.run_or_error(json!({"command": cmd})).await.unwrap();
    let out = stdout_of(&live);
    assert_eq!(out.len(), 1_000_006, "every byte reaches the live client");
    assert!(out.ends_with(b"x\ndone\n"));
    let done = live.last().unwrap();
    assert_eq!(done["params"]["status"], "completed", "{done}");
    let job_id = done["params"]["job_id"].as_str().unwrap();

    let rec = ws.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    let why = rec["spool_error"].as_str().unwrap_or_default();
    let expected = if disk.is_some() {
        "No space left on device"
    } else {
        "Not a directory"
    };
    assert!(why.contains(expected), "{rec}");
    assert_eq!(rec["status"], "completed");
    assert_eq!(rec["stdout_bytes"], 1_000_006);

    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (_, body) = crate::util::http(addr, "GET", "/health", &[], "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(
        health["state"]["spool_errors"].as_u64() >= Some(1),
        "{health}"
    );
    assert!(
        health["state"]["last_spool_error"]
            .as_str()
            .is_some_and(|e| e.contains(expected)),
        "{health}"
    );

    // What was kept still replays, and the replay ends.
    let deadline = Instant::now() + WAIT;
    let events = replay(&url, job_id).await;
    assert!(Instant::now() < deadline);
    assert_eq!(events.last().unwrap()["method"], "process.completed");
    // The server goes on serving.
    let again = ws
        .run_or_error(json!({"command": "echo next"}))
        .await
        .unwrap();
    assert_eq!(stdout_of(&again), b"next\n");
}
