// Over 500 lines: the metrics tests (jobs, every hook stage and mode, gauges, reloads) and the
// trace tests share the Prometheus parser, the scrape and the server helpers above them.
//! What an operator sees, through a real `ccx serve`: `/metrics` read by the Prometheus
//! project's own text-format parser (`prometheus_client.parser`, Python, pinned in
//! `tests/python/requirements.txt`) while jobs complete, are denied and time out; the token
//! guarding it (or not, on loopback, when configured); `traceparent` reaching a job's
//! processes as `TRACEPARENT`, and the job's span exported over OTLP/HTTP to a collector (a
//! minimal one here, reading what `opentelemetry-otlp` posts) in the client's trace.

use crate::jobs::serve;
use crate::util::{Ws, scratch};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const TOKEN: &str = "metrics-test-token";

/// Every sample of a `/metrics` body as `name{k="v",…}` (labels sorted) → value, through
/// `prometheus_client.parser.text_string_to_metric_families`, which raises on malformed text.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(crate::mcp_python::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys().collect::<Vec<_>>()))
}

async fn scrape(addr: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    crate::util::http(addr, "GET", "/metrics", &headers, "").await
}

/// Waits until the server's hooks are loaded.
async fn ready(addr: &str) {
    let auth = format!("Bearer {TOKEN}");
    let deadline = std::time::Instant::now() + crate::util::WAIT;
    loop {
        let (_, body) =
            crate::util::http(addr, "GET", "/hooks", &[("Authorization", &auth)], "").await;
        if serde_json::from_str::<Value>(&body).is_ok_and(|v| v["state"] == "ready") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_denials_timeouts_refusals_and_hook_calls() {
    let dir = scratch();
    let config = r#"
[[hooks]]
name = "guard"
path = "{deny-dangerous}"
"#;
    let (_server, url) = serve(dir.path(), config, &[("CCX_TOKEN", TOKEN)]);
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    ready(&addr).await;

    // Without the token: refused, and counted.
    let (status, _) = scrape(&addr, None).await;
    assert_eq!(status, 401);
    let (status, _) = scrape(&addr, Some("wrong")).await;
    assert_eq!(status, 401);

    let mut ws = Ws::connect(&format!("{url}?token={TOKEN}")).await;
    let r = ws.call("execute", json!({"command": "echo hello"})).await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    ws.collect(&job).await;
    // Denied at once (-32001), or, when it had to queue behind the last job's end, by its
    // terminal event.
    let r = ws.call("execute", json!({"command": "rm -rf /"})).await;
    match r["result"]["job_id"].as_str() {
        Some(job) => {
            let job = job.to_string();
            let events = ws.collect(&job).await;
            assert_eq!(events.last().unwrap()["params"]["status"], "denied");
        }
        None => assert_eq!(r["error"]["code"], -32001, "{r}"),
    }
    let r = ws
        .call("execute", json!({"command": "sleep 5", "timeout": 0.3}))
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&job).await;
    assert_eq!(events.last().unwrap()["params"]["status"], "timed_out");

    let (status, body) = scrape(&addr, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let m = parse_metrics(&body);
    assert_eq!(sample(&m, r#"ccx_jobs_total{status="completed"}"#), 1.0);
    assert_eq!(sample(&m, r#"ccx_jobs_total{status="denied"}"#), 1.0);
    assert_eq!(sample(&m, r#"ccx_jobs_total{status="timed_out"}"#), 1.0);
    assert_eq!(sample(&m, r#"ccx_jobs_total{status="failed"}"#), 0.0);
    assert_eq!(
        sample(&m, r#"ccx_job_duration_seconds_count{status="completed"}"#),
        1.0
    );
    let slow = sample(&m, r#"ccx_job_duration_seconds_sum{status="timed_out"}"#);
    assert!((0.3..5.0).contains(&slow), "{slow}");
    assert_eq!(sample(&m, "ccx_spawn_latency_seconds_count{}"), 2.0);
    assert_eq!(
        sample(&m, r#"ccx_output_bytes_total{stream="stdout"}"#),
        6.0
    );
    assert_eq!(
        sample(&m, r#"ccx_refused_requests_total{reason="auth"}"#),
        2.0
    );
    assert_eq!(sample(&m, "ccx_running_jobs{}"), 0.0);
    assert_eq!(sample(&m, "ccx_active_sessions{}"), 1.0);
    assert_eq!(call_count(&m, "allow"), 2.0);
    assert_eq!(call_count(&m, "deny"), 1.0);
    assert_eq!(call_count(&m, "failed"), 0.0);
    assert_eq!(
        sample(&m, r#"ccx_hook_latency_seconds_count{hook="guard"}"#),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            r#"ccx_hook_latency_seconds_bucket{hook="guard",le="+Inf"}"#
        ),
        3.0
    );
    assert!(sample(&m, r#"ccx_hook_fuel_used_total{hook="guard"}"#) > 0.0);
    assert_eq!(
        sample(&m, r#"ccx_hook_failures_total{hook="guard",kind="fuel"}"#),
        0.0
    );

    // The counters move with the next job.
    let r = ws.call("execute", json!({"command": "exit 3"})).await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    ws.collect(&job).await;
    let m = parse_metrics(&scrape(&addr, Some(TOKEN)).await.1);
    assert_eq!(sample(&m, r#"ccx_jobs_total{status="failed"}"#), 1.0);
    assert_eq!(call_count(&m, "allow"), 3.0);
}

fn call_count(m: &BTreeMap<String, f64>, decision: &str) -> f64 {
    hook_calls(m, "guard", "pre", decision, "enforce")
}

/// `ccx_hook_calls_total` for one hook, stage, decision and mode; a series appears with its
/// first call, so an absent one is 0.
fn hook_calls(
    m: &BTreeMap<String, f64>,
    hook: &str,
    stage: &str,
    decision: &str,
    mode: &str,
) -> f64 {
    let key = format!(
        r#"ccx_hook_calls_total{{decision="{decision}",hook="{hook}",mode="{mode}",stage="{stage}"}}"#
    );
    m.get(&key).copied().unwrap_or(0.0)
}

/// Every stage and mode in `ccx_hook_calls_total` (output chunks, input, a warn-mode pre-hook),
/// a hook's failures, and the gauges and counters that only move with detached and queued
/// jobs and reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_stage_and_mode_detached_queued_jobs_and_reloads() {
    let dir = scratch();
    let log = dir.path().join("decisions.jsonl");
    // The first line lands in the harness's `[sandbox]` table.
    let hooks = format!("decision_log = \"{}\"\n", log.display())
        + r#"
[[hooks]]
name = "shout"
path = "{output-test}"
config = { mode = "upper" }

[[hooks]]
name = "watch"
path = "{deny-dangerous}"
mode = "warn"

[[hooks]]
name = "broken"
path = "{output-test}"
config = { mode = "fail-start" }
on_failure = "allow"

[[hooks]]
name = "input-guard"
path = "{input-guard}"
"#;
    let config = crate::util::write_config(dir.path(), 0.1, &hooks);
    let (child, addr, _) =
        crate::util::spawn_ccx_serve(crate::util::CCX, &config, &[("CCX_TOKEN", TOKEN)]);
    let _server = crate::util::KillOnDrop(child);
    let url = format!("ws://{addr}/ws?token={TOKEN}");
    ready(&addr).await;

    let mut ws = Ws::connect(&url).await;
    // One output chunk replaced by `shout`; `watch` would deny a pipe into a shell (warn: the
    // job runs).
    let (_, events) = ws.run(json!({"command": "echo 'echo hi' | sh"})).await;
    assert_eq!(crate::util::output(&events, "stdout"), "HI\n");
    // Input: one allowed, one refused.
    let r = ws
        .call("execute", json!({"command": "cat", "stdin_open": true}))
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = ws
        .call("input", json!({"job_id": job, "data": "ok\n"}))
        .await;
    assert_eq!(r["result"]["bytes"], 3, "{r}");
    let r = ws
        .call(
            "input",
            json!({"job_id": job, "data": "rm -rf /\n", "eof": true}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    ws.call("input", json!({"job_id": job, "data": "", "eof": true}))
        .await;
    ws.collect(&job).await;

    // A detached job whose client left, and a job queued behind another on one connection.
    let mut gone = Ws::connect(&url).await;
    let r = gone
        .call("execute", json!({"command": "sleep 30", "detach": true}))
        .await;
    let detached = r["result"]["job_id"].as_str().unwrap().to_string();
    drop(gone);
    let mut busy = Ws::connect(&url).await;
    let r = busy.call("execute", json!({"command": "sleep 30"})).await;
    let running = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = busy.call("execute", json!({"command": "true"})).await;
    let queued = r["result"]["job_id"].as_str().unwrap().to_string();

    // A reload: the config file changes (the server watches it every 0.1 s).
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n# touched\n")).unwrap();

    let deadline = std::time::Instant::now() + crate::util::WAIT;
    let m = loop {
        let m = parse_metrics(&scrape(&addr, Some(TOKEN)).await.1);
        if sample(&m, "ccx_detached_jobs{}") == 1.0
            && sample(&m, "ccx_queued_jobs{}") >= 1.0
            && sample(&m, r#"ccx_config_reloads_total{result="ok"}"#) >= 1.0
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "{m:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Output: the job-long instance's start and one replaced chunk (an end-of-stream call
    // per stream passes).
    assert!(
        hook_calls(&m, "shout", "output", "start", "enforce") >= 2.0,
        "{m:#?}"
    );
    assert!(
        hook_calls(&m, "shout", "output", "replace", "enforce") >= 1.0,
        "{m:#?}"
    );
    assert_eq!(
        hook_calls(&m, "watch", "pre", "would_deny", "warn"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(
        hook_calls(&m, "input-guard", "input", "allow", "enforce"),
        1.0,
        "{m:#?}"
    );
    assert_eq!(
        hook_calls(&m, "input-guard", "input", "deny", "enforce"),
        1.0,
        "{m:#?}"
    );
    assert!(
        hook_calls(&m, "broken", "output", "failed", "enforce") >= 2.0,
        "{m:#?}"
    );
    assert!(sample(&m, r#"ccx_hook_failures_total{hook="broken",kind="trap"}"#) >= 2.0);
    assert_eq!(sample(&m, "ccx_spool_errors_total{}"), 0.0);

    // The input stage's decisions are in the decision log too.
    let lines = std::fs::read_to_string(&log).unwrap();
    let input: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["stage"] == "input")
        .collect();
    let decisions: Vec<&str> = input
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allow", "deny"], "{lines}");
    assert_eq!(input[1]["hook"], "input-guard");
    assert_eq!(input[1]["reason"], "input contains `rm -rf`");
    assert_eq!(input[1]["request"]["job_id"], job.as_str());

    for job in [&detached, &running, &queued] {
        busy.call("control", json!({"type": "CANCEL", "job_id": job}))
            .await;
    }
    busy.collect(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_may_open_to_a_loopback_scraper_and_may_be_off() {
    let dir = scratch();
    let (_server, url) = serve(
        dir.path(),
        "[metrics]\nopen_on_loopback = true\n",
        &[("CCX_TOKEN", TOKEN)],
    );
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let (status, body) = scrape(addr, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE ccx_jobs_total counter"), "{body}");
    // Only `/metrics` opens.
    let (status, _) = crate::util::http(addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 401);

    let dir = scratch();
    let (_server, url) = serve(dir.path(), "[metrics]\nenabled = false\n", &[]);
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    assert_eq!(scrape(addr, None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_processes_run_under_the_clients_trace() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = ws
        .call(
            "execute",
            json!({"command": "printf %s \"$TRACEPARENT\"", "traceparent": parent}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&job).await;
    let seen = crate::util::output(&events, "stdout");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[0], "00");
    // Same trace, a span of the job's own as the parent, same flags.
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(parts[2].len(), 16);
    assert_ne!(parts[2], "00f067aa0ba902b7");
    assert_eq!(parts[3], "01");

    // Without one, no variable; a malformed one is refused.
    let r = ws
        .call(
            "execute",
            json!({"command": "printf %s \"${TRACEPARENT-none}\""}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let events = ws.collect(&job).await;
    assert_eq!(crate::util::output(&events, "stdout"), "none");
    let r = ws
        .call(
            "execute",
            json!({"command": "true", "traceparent": "00-abc-def-01"}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("traceparent"),
        "{r}"
    );
}

/// Each POST a collector received: (path, body).
type Exports = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector on `127.0.0.1:0`: keeps each POST's path and body, answers
/// `200` with an empty protobuf body. Returns its traces URL and what it received.
fn fake_collector() -> (String, Exports) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    keep.lock().unwrap().push((path, body));
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, received)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_spans_are_exported_over_otlp_in_the_clients_trace() {
    let (endpoint, received) = fake_collector();
    let dir = scratch();
    let (mut server, url) = serve(
        dir.path(),
        &format!("[trace]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"ccx-under-test\"\n"),
        &[],
    );
    let mut ws = Ws::connect(&url).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = ws
        .call(
            "execute",
            json!({"command": "printf %s \"$TRACEPARENT\"", "traceparent": parent}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let seen = crate::util::output(&ws.collect(&job).await, "stdout");
    let own_span = seen.split('-').nth(2).unwrap().to_string();
    // A graceful stop exports what the batch still holds.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    server.0.wait().unwrap();
    let bodies = received.lock().unwrap().clone();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let span = bodies
        .iter()
        .find(|(path, body)| path == "/v1/traces" && contains(body, job.as_bytes()))
        .unwrap_or_else(|| panic!("no span of job {job} among {} exports", bodies.len()));
    let body = &span.1;
    // The job's span: in the client's trace, under its parent, with the id the job's
    // processes were given, from the configured service.
    assert!(contains(body, &unhex("4bf92f3577b34da6a3ce929d0e0e4736")));
    assert!(contains(body, &unhex("00f067aa0ba902b7")));
    assert!(contains(body, &unhex(&own_span)));
    assert!(contains(body, b"ccx-under-test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_tool_calls_traceparent_reaches_the_job() {
    let server = crate::util::AppServer::with_config(0.0, "").await;
    let (client, _) = crate::mcp::http_client(server.addr, None).await.unwrap();
    let mut meta = rmcp::model::MetaObject::new();
    meta.set_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let args = json!({"command": "printf 'seen=%s' \"$TRACEPARENT\""});
    let mut params = rmcp::model::CallToolRequestParams::new("execute")
        .with_arguments(args.as_object().unwrap().clone());
    params.meta = Some(rmcp::model::RequestMetaObject(meta));
    let r = tokio::time::timeout(crate::util::WAIT, client.peer().call_tool(params))
        .await
        .unwrap()
        .unwrap();
    let text = serde_json::to_string(&r).unwrap();
    // The job's own span in the client's trace, not the client's span id passed through.
    assert!(
        text.contains("seen=00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{text}"
    );
    assert!(!text.contains("00f067aa0ba902b7"), "{text}");
}
