//! The job registry from the outside: idempotency keys, `control` and `list_jobs` from any
//! connection, the state directory's lock, records (token labels, masked secrets), the
//! hooks' kv across restarts, retention, and the CLI (`exec -d`, `attach`, `logs`, `jobs`).

use crate::jobs::serve;
use crate::util::{WAIT, Ws, scratch};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_control_and_listing_work_from_any_connection() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut a = Ws::connect(&url).await;
    let first = a
        .call(
            "execute",
            json!({"command": "sleep 30", "idempotency_key": "build-42", "detach": true}),
        )
        .await;
    let job_id = first["result"]["job_id"].as_str().unwrap().to_string();

    // The same key again, from another connection: nothing runs twice.
    let mut b = Ws::connect(&url).await;
    let again = b
        .call(
            "execute",
            json!({"command": "sleep 30", "idempotency_key": "build-42", "detach": true}),
        )
        .await;
    assert_eq!(again["result"]["status"], "existing", "{again}");
    assert_eq!(again["result"]["job_id"], job_id);
    let other = b
        .call(
            "execute",
            json!({"command": "sleep 31", "idempotency_key": "build-42"}),
        )
        .await;
    assert_eq!(other["error"]["code"], -32602, "{other}");

    let listed = b.call("list_jobs", json!({"status": "running"})).await;
    let jobs = listed["result"]["jobs"].as_array().unwrap();
    assert!(jobs.iter().any(|j| j["job_id"] == job_id), "{listed}");
    // Pause and cancel it from the connection that did not start it.
    let r = b
        .call("control", json!({"type": "PAUSE", "job_id": job_id}))
        .await;
    assert_eq!(r["result"]["status"], "paused", "{r}");
    let rec = b.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(rec["status"], "paused", "{rec}");
    let r = b
        .call("control", json!({"type": "CANCEL", "job_id": job_id}))
        .await;
    assert_eq!(r["result"]["status"], "canceled", "{r}");
    let events = a.collect(&job_id).await;
    assert_eq!(events.last().unwrap()["params"]["status"], "canceled");

    // A job that is not detached dies with its connection; a detached one does not.
    let r = b.call("execute", json!({"command": "sleep 30"})).await;
    let attached_id = r["result"]["job_id"].as_str().unwrap().to_string();
    drop(b);
    let deadline = Instant::now() + WAIT;
    loop {
        let rec = a.call("get_job", json!({"job_id": attached_id})).await["result"].clone();
        if rec["status"] == "canceled" {
            break;
        }
        assert!(Instant::now() < deadline, "{rec}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_cli_detaches_attaches_lists_and_cancels() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let ccx = |args: &[&str]| {
        // The subcommand (one or two words), `--url`, then the rest.
        let n = if args[0] == "jobs" { 2 } else { 1 };
        std::process::Command::new(crate::util::CCX)
            .args(&args[..n])
            .args(["--url", &url])
            .args(&args[n..])
            .env_remove("CCX_TOKEN")
            .output()
            .unwrap()
    };
    // Binary output, a pause, and an exit code: `attach` reproduces all three.
    let out = ccx(&["exec", "-d", "--", "printf 'a\\377b'; sleep 0.5; exit 3"]);
    assert!(out.status.success(), "{out:?}");
    let job_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(job_id.len(), 36, "{job_id}");
    let out = ccx(&["attach", &job_id]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"a\xffb", "every byte, exactly");
    let out = ccx(&["logs", &job_id]);
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"a\xffb"[..])
    );

    let out = ccx(&["jobs", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&job_id) && l.contains("failed")),
        "{text}"
    );
    let out = ccx(&["jobs", "show", &job_id]);
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["exit_code"], 3);

    let out = ccx(&["exec", "-d", "--", "sleep 30"]);
    let sleeper = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = ccx(&["jobs", "cancel", &sleeper]);
    assert!(out.status.success(), "{out:?}");
    let out = ccx(&["attach", &sleeper]);
    assert_eq!(out.status.code(), Some(130), "canceled: {out:?}");
    let out = ccx(&["attach", "no-such-job"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_remember_across_restarts() {
    let dir = scratch();
    let hooks =
        "[[hooks]]\nname = \"counter\"\npath = \"{test-hook}\"\nconfig = { mode = \"counter\" }\n";
    let count = |url: String| async move {
        let mut ws = Ws::connect(&url).await;
        let events = ws
            .run_or_error(json!({"command": "echo $COUNT"}))
            .await
            .unwrap();
        events
            .iter()
            .find(|e| e["method"] == "process.output")
            .map(|e| e["params"]["data"].as_str().unwrap().trim().to_string())
            .unwrap()
    };
    let (mut server, url) = serve(dir.path(), hooks, &[]);
    assert_eq!(count(url.clone()).await, "1");
    assert_eq!(count(url).await, "2");
    // A graceful stop (SIGTERM), then a new process on the same state directory.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    server.0.wait().unwrap();
    let (_server, url) = serve(dir.path(), hooks, &[]);
    assert_eq!(count(url).await, "3", "the count went on where it stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_name_the_token_and_mask_secret_variables() {
    let dir = scratch();
    let rest = "[[server.tokens]]\nlabel = \"ci\"\ntoken = \"tok-ci-1\"\n\n\
                [[server.tokens]]\nlabel = \"agent\"\ntoken = \"tok-agent-2\"\n";
    let (_server, url) = serve(dir.path(), rest, &[]);
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let (code, _) = crate::util::http(&addr, "GET", "/ws?token=wrong", &[], "").await;
    assert_eq!(code, 401);
    let mut ws = Ws::connect(&format!("{url}?token=tok-agent-2")).await;
    let env = json!({"GITHUB_TOKEN": "ghp_secret", "MODE": "fast"});
    let r = ws
        .call(
            "execute",
            // Output is kept as it is (spooled): the command proves it sees the value without
            // printing it, so only the request could carry it to the store.
            json!({"command": "printf %s \"$GITHUB_TOKEN\" | sha256sum | cut -c1-16", "env": env}),
        )
        .await;
    let job_id = r["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&job_id).await;
    assert!(
        // sha256("ghp_secret"), first 16 hex digits.
        events
            .iter()
            .any(|e| e["params"]["data"] == "4c281411e1ccc93c\n"),
        "the command still sees the value"
    );
    let rec = ws.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(rec["token_label"], "agent", "{rec}");
    assert_eq!(rec["env"]["GITHUB_TOKEN"], "***", "{rec}");
    assert_eq!(rec["env"]["MODE"], "fast");
    assert!(rec["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let db = std::fs::read(dir.path().join("state/ccx.db")).unwrap();
    let wal = std::fs::read(dir.path().join("state/ccx.db-wal")).unwrap_or_default();
    let needle = b"ghp_secret";
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the secret never reaches the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_jobs_past_retain_jobs_are_pruned_with_their_spools() {
    let dir = scratch();
    let rest = "[state]\nretain_jobs = 2\n";
    let (mut server, url) = serve(dir.path(), rest, &[]);
    let mut ws = Ws::connect(&url).await;
    let mut ids = Vec::new();
    // Each outlives the 10 ms its spool may stay in memory, so each has files.
    for i in 0..4 {
        let events = ws
            .run_or_error(json!({"command": format!("echo job-{i}; sleep 0.2")}))
            .await
            .unwrap();
        ids.push(events[0]["params"]["job_id"].as_str().unwrap().to_string());
    }
    let spool = dir.path().join("state/spool");
    let spooled = |id: &str| {
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(id))
    };
    assert!(ids.iter().all(|id| spooled(id)));
    // The pruner runs at every start (and every 10 minutes).
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    server.0.wait().unwrap();
    let (_server, url) = serve(dir.path(), rest, &[]);
    let mut ws = Ws::connect(&url).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = ws.call("list_jobs", json!({})).await;
        let jobs: Vec<String> = listed["result"]["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect();
        // Records go first, then their spools.
        if jobs.len() == 2 && !spooled(&ids[0]) && !spooled(&ids[1]) {
            assert_eq!(
                jobs,
                [ids[3].clone(), ids[2].clone()],
                "the newest two, newest first"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(spooled(&ids[3]), "kept jobs keep their spools");
    let r = ws.call("get_job", json!({"job_id": ids[0]})).await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
}

#[test]
fn a_second_server_on_the_same_state_directory_refuses_to_start() {
    let dir = scratch();
    let (_server, _url) = serve(dir.path(), "", &[]);
    let out = std::process::Command::new(crate::util::CCX)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("ccx.toml"))
        .env("CCX_STATE_DIR", dir.path().join("state"))
        .env_remove("CCX_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another ccx server") && err.contains("state"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_detached_bounds_detached_jobs_and_a_graceful_stop_ends_them() {
    let dir = scratch();
    let (mut server, url) = serve(dir.path(), "[state]\nmax_detached = 1\n", &[]);
    let mut a = Ws::connect(&url).await;
    let first = a
        .call("execute", json!({"command": "sleep 30", "detach": true}))
        .await;
    let job_id = first["result"]["job_id"].as_str().unwrap().to_string();
    let mut b = Ws::connect(&url).await;
    let second = b
        .call("execute", json!({"command": "sleep 30", "detach": true}))
        .await;
    assert_eq!(second["error"]["code"], -32007, "{second}");
    // An attached job on another connection cannot be detached past the limit either.
    let r = b.call("execute", json!({"command": "sleep 30"})).await;
    let attached = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = b.call("detach", json!({"job_id": attached})).await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    drop(a);
    drop(b);
    // SIGTERM: the detached job ends too, with its record saying so.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    server.0.wait().unwrap();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    let rec = ws.call("get_job", json!({"job_id": job_id})).await["result"].clone();
    assert_eq!(
        rec["status"], "canceled",
        "a graceful stop ends detached jobs: {rec}"
    );
    let deadline = Instant::now() + WAIT;
    while std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("environ"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .any(|kv| kv == format!("CCX_JOB_ID={job_id}").as_bytes())
    }) {
        assert!(Instant::now() < deadline, "the job's processes are gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
