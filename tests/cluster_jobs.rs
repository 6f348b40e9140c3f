//! Any job of the cluster, through any gateway: `get_job` (live from its worker while it
//! runs, as its worker recorded it once ended), `list_jobs`, `input` and `resize` reaching the
//! process on its worker, and `detach` keeping a job whose client then leaves.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::{Gateway, Nats, Worker};
use crate::util::{Ws, completion, output};

/// Reads `ws`'s notifications until `job`'s output of `stream` contains `text`.
async fn wait_for_output(ws: &mut Ws, job: &str, stream: &str, text: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let msg = ws.next().await;
        assert_eq!(msg["params"]["job_id"], job, "{msg}");
        assert_ne!(msg["method"], "process.completed", "{msg}");
        seen.push(msg);
        if output(&seen, stream).contains(text) {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_job_list_jobs_input_resize_and_detach_work_through_any_gateway() {
    let nats = Nats::start();
    let _worker = Worker::start(&nats.url, "w1", "");
    let g1 = Gateway::start(&nats.url, "30");
    let g2 = Gateway::start(&nats.url, "30");
    let mut a = g1.connect().await;
    let mut b = g2.connect().await;

    // A job reading its stdin, fed through the other gateway.
    let reply = a
        .call("execute", json!({"command": "cat", "stdin_open": true}))
        .await;
    let cat = reply["result"]["job_id"].as_str().unwrap().to_string();
    let started = a.next().await;
    assert_eq!(started["method"], "process.started", "{started}");
    let reply = b.call("get_job", json!({"job_id": cat})).await;
    let live = &reply["result"];
    assert_eq!(live["status"], "running", "{reply}");
    assert_eq!(live["worker"], "w1", "{reply}");
    assert_eq!(live["pid"], started["params"]["pid"], "{reply}");
    let reply = b
        .call("input", json!({"job_id": cat, "data": "hello\n"}))
        .await;
    assert_eq!(reply["result"]["bytes"], 6, "{reply}");
    let reply = b
        .call(
            "input",
            json!({"job_id": cat, "data": "AAE=", "encoding": "base64", "eof": true}),
        )
        .await;
    assert_eq!(reply["result"]["bytes"], 2, "{reply}");
    let events = a.collect(&cat).await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    assert_eq!(output(&events, "stdout"), "hello\n\u{0}\u{1}");
    let reply = b.call("get_job", json!({"job_id": cat})).await;
    let ended = &reply["result"];
    assert_eq!(ended["status"], "completed", "{reply}");
    assert_eq!(ended["worker"], "w1", "{reply}");
    assert_eq!(ended["exit_code"], 0, "{reply}");
    assert_eq!(ended["stdout_bytes"], 8, "{reply}");
    let sha = format!("{:x}", Sha256::digest(b"hello\n\x00\x01"));
    assert_eq!(ended["stdout_sha256"], sha, "{reply}");
    assert_eq!(ended["command"], "cat", "{reply}");
    // An ended job takes no input; an unknown one is no job at all.
    let reply = b.call("input", json!({"job_id": cat, "data": "x"})).await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ended"),
        "{reply}"
    );
    let unknown = "01234567-0000-7000-8000-000000000000";
    for method in ["get_job", "detach"] {
        let reply = b.call(method, json!({"job_id": unknown})).await;
        assert_eq!(reply["error"]["code"], -32002, "{method}: {reply}");
    }

    // A terminal, resized from the other gateway.
    let reply = a
        .call(
            "execute",
            json!({"command": "stty size; read x; stty size", "pty": {"rows": 24, "cols": 80}}),
        )
        .await;
    let tty = reply["result"]["job_id"].as_str().unwrap().to_string();
    wait_for_output(&mut a, &tty, "pty", "24 80").await;
    let reply = b
        .call("resize", json!({"job_id": tty, "rows": 30, "cols": 100}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    b.call("input", json!({"job_id": tty, "data": "go\r"}))
        .await;
    let events = a.collect(&tty).await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    assert!(output(&events, "pty").contains("30 100"), "{events:?}");

    // Detached from the other gateway, then its client leaves: it runs to its end.
    let mut c = g1.connect().await;
    let reply = c
        .call("execute", json!({"command": "sleep 1; echo kept"}))
        .await;
    let kept = reply["result"]["job_id"].as_str().unwrap().to_string();
    let reply = b.call("detach", json!({"job_id": kept})).await;
    assert_eq!(reply["result"]["detached"], true, "{reply}");
    drop(c);
    let reply = b.call("attach", json!({"job_id": kept})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let events = b.collect(&kept).await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    assert_eq!(output(&events, "stdout"), "kept\n");

    // Every job of the cluster, newest first, from either gateway.
    let reply = a.call("list_jobs", json!({})).await;
    let ids: Vec<&str> = reply["result"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [kept.as_str(), tty.as_str(), cat.as_str()], "{reply}");
    let reply = b
        .call("list_jobs", json!({"status": "completed", "limit": 1}))
        .await;
    let jobs = reply["result"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{reply}");
    assert_eq!(jobs[0]["job_id"], kept.as_str());
    assert_eq!(jobs[0]["detached"], true, "{reply}");
    let reply = b.call("list_jobs", json!({"status": "running"})).await;
    assert_eq!(reply["result"]["jobs"], json!([]), "{reply}");
    let reply = b.call("list_jobs", json!({"limit": 0})).await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_come_from_the_config_and_a_refusal_is_reported() {
    let nats = Nats::start_with(&["--user", "ccx", "--pass", "s3cret"]);
    let creds = "[cluster]\nuser = \"ccx\"\npassword = \"s3cret\"\n";
    let _worker = Worker::start_with(&nats.url, "w1", "", creds);

    // The password from the environment, the user from the file.
    let good = Gateway::start_with(
        &nats.url,
        "30",
        "[cluster]\nuser = \"ccx\"\n",
        &[("CCX_NATS_PASSWORD", "s3cret")],
    );
    let mut ws = good.connect().await;
    let (_, events) = ws.run(json!({"command": "echo in"})).await;
    assert_eq!(completion(&events)["status"], "completed", "{events:?}");
    assert_eq!(output(&events, "stdout"), "in\n");

    // A wrong password: NATS's refusal in `/health` and in the error of `execute`.
    let bad = Gateway::start_with(
        &nats.url,
        "30",
        "[cluster]\nuser = \"ccx\"\npassword = \"wrong\"\n",
        &[],
    );
    let deadline = std::time::Instant::now() + crate::util::WAIT;
    let health = loop {
        let (_, body) = crate::util::http(&bad.addr, "GET", "/health", &[], "").await;
        let health: Value = serde_json::from_str(&body).unwrap();
        if health["cluster"]["error"].is_string() || std::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    assert_ne!(health["cluster"]["state"], "connected", "{health}");
    assert!(
        health["cluster"]["error"]
            .as_str()
            .unwrap()
            .contains("authorization violation"),
        "{health}"
    );
    assert!(!health.to_string().contains("wrong"), "{health}");
    let mut ws = bad.connect().await;
    let reply = ws.call("execute", json!({"command": "echo out"})).await;
    assert_eq!(reply["error"]["code"], -32009, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("authorization violation"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_gateways_and_retry_lost_runs_a_job_again() {
    let nats = Nats::start();
    let mut workers = std::collections::HashMap::from([
        ("w-1", Worker::start(&nats.url, "w-1", "r")),
        ("w-2", Worker::start(&nats.url, "w-2", "r")),
    ]);
    let mut g1 = Gateway::start(&nats.url, "30");
    let g2 = Gateway::start(&nats.url, "30");
    let mut a = g1.connect().await;
    let mut b = g2.connect().await;

    // `retry_lost` says the command may run twice: it needs a key.
    let reply = a
        .call("execute", json!({"command": "true", "retry_lost": true}))
        .await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");

    let job = json!({
        "command": "sleep 2; echo ran",
        "requires": ["r"],
        "idempotency_key": "deploy-42",
        "retry_lost": true,
    });
    let reply = a.call("execute", job.clone()).await;
    assert_eq!(reply["result"]["status"], "queued", "{reply}");
    let id = reply["result"]["job_id"].as_str().unwrap().to_string();
    // The same request through the other gateway names the first job; another one is refused.
    let reply = b.call("execute", job.clone()).await;
    assert_eq!(reply["result"]["status"], "existing", "{reply}");
    assert_eq!(reply["result"]["job_id"], id.as_str(), "{reply}");
    let mut other = job.clone();
    other["command"] = json!("echo other");
    let reply = b.call("execute", other).await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains(id.as_str()),
        "{reply}"
    );

    // Its worker dies mid-run: the job runs again on the other one, to its end.
    let first = a.next().await;
    assert_eq!(first["method"], "process.started", "{first}");
    let first_worker = first["params"]["worker"].as_str().unwrap().to_string();
    let orphan = first["params"]["pid"].as_u64().unwrap();
    let mut doomed = workers.remove(first_worker.as_str()).unwrap();
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let events = a.collect(&id).await;
    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{events:?}");
    assert_eq!(output(&events, "stdout"), "ran\n");
    let again: Vec<&Value> = events
        .iter()
        .filter(|e| e["method"] == "process.started")
        .collect();
    assert_eq!(again.len(), 1, "one more start after the first: {events:?}");
    let second_worker = again[0]["params"]["worker"].as_str().unwrap();
    assert_ne!(second_worker, first_worker, "{events:?}");
    let reply = b.call("get_job", json!({"job_id": id})).await;
    assert_eq!(reply["result"]["status"], "completed", "{reply}");
    assert_eq!(reply["result"]["worker"], second_worker, "{reply}");
    assert_eq!(reply["result"]["idempotency_key"], "deploy-42", "{reply}");

    // A detached job whose gateway stops, then whose worker dies: nobody follows it, and
    // the other gateway's sweeper ends it lost.
    let reply = a
        .call(
            "execute",
            json!({"command": "sleep 300", "detach": true, "requires": ["r"]}),
        )
        .await;
    let unfollowed = reply["result"]["job_id"].as_str().unwrap().to_string();
    let started = a.next().await;
    assert_eq!(started["method"], "process.started", "{started}");
    let orphan2 = started["params"]["pid"].as_u64().unwrap();
    g1.child.kill().unwrap();
    g1.child.wait().unwrap();
    let mut last = workers.remove(second_worker).unwrap();
    last.child.kill().unwrap();
    last.child.wait().unwrap();
    let reply = b.call("attach", json!({"job_id": unfollowed})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let events = b.collect(&unfollowed).await;
    let done = completion(&events);
    assert_eq!(done["status"], "lost", "{events:?}");
    assert!(
        done["error"].as_str().unwrap().contains(second_worker),
        "{done}"
    );
    // The dead workers' processes have nobody left to end them; the test does.
    for pid in [orphan, orphan2] {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}
