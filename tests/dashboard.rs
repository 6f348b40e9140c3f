//! The dashboard at `/ui` in a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) against a live `ccx serve` running jobs, driven over the DevTools
//! protocol on a WebSocket (the page's data arrives over its own WebSocket, which
//! `--dump-dom` would not wait for). It asserts what the page shows — live, queued and ended
//! jobs, a job's output following live, the hooks table and reload state, a wrong token, a
//! server that goes away — and takes a screenshot into the test's scratch dir (`CCX_UPDATE_SCREENSHOT=1` copies it to
//! `docs/dashboard.png`).
//!
//! Without `chromium` on the PATH the test is skipped with a message, except under `CI`,
//! where it fails.

use crate::util::{KillOnDrop, WAIT, Ws, build_hooks, http, root, scratch};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "dash-token-7f3a";
/// How long the page may take to show something (generous: CI machines are slow and busy).
const SHOW: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_jobs_output_and_hooks_in_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs it (apt-get install chromium)"
        );
        eprintln!(
            "SKIPPED the_dashboard_shows_jobs_output_and_hooks_in_chromium: chromium is not \
             installed (apt-get install chromium); on CI it runs"
        );
        return;
    };
    let hook = build_hooks(&["deny-dangerous"]).remove(0);
    let dir = scratch();
    let rest = format!(
        "[[server.tokens]]\nlabel = \"dash\"\ntoken = \"{TOKEN}\"\n\n\
         [[hooks]]\nname = \"deny-dangerous\"\npath = \"{}\"\non_failure = \"deny\"\n",
        hook.display()
    );
    let (server, url) = crate::jobs::serve(dir.path(), &rest, &[]);
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let base = format!("http://{addr}");

    // The page's files: served without the token, never cached, no inline script allowed.
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let (code, headers) = get_headers(&addr, path).await;
        assert_eq!(code, 200, "{path}");
        assert!(
            headers["content-type"].starts_with(kind),
            "{path}: {headers:?}"
        );
        assert_eq!(headers["cache-control"], "no-store", "{path}");
        assert!(
            headers["content-security-policy"].contains("script-src 'self';"),
            "{path}: {headers:?}"
        );
    }
    // Its data is not: the token, and an Origin that is the server's own or allowed.
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(http(&addr, "GET", "/hooks", &[], "").await.0, 401);
    let own = [
        ("Authorization", bearer.as_str()),
        ("Origin", base.as_str()),
    ];
    assert_eq!(http(&addr, "GET", "/hooks", &own, "").await.0, 200);
    let foreign = [
        ("Authorization", bearer.as_str()),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(http(&addr, "GET", "/hooks", &foreign, "").await.0, 403);

    // Jobs: three that ended (exit 0, exit 3, denied by the hook), a long detached one with
    // output, and one queued behind it.
    let mut a = Ws::connect(&format!("{url}?token={TOKEN}")).await;
    let (ok, _) = a
        .run(json!({"command": "echo hello from the dashboard test"}))
        .await;
    let ok_id = ok["result"]["job_id"].as_str().unwrap().to_string();
    let (failed, _) = a.run(json!({"command": "echo oops >&2; exit 3"})).await;
    let failed_id = failed["result"]["job_id"].as_str().unwrap().to_string();
    let denied = a.call("execute", json!({"command": "rm -rf /"})).await;
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
    let mut b = Ws::connect(&format!("{url}?token={TOKEN}")).await;
    // Long enough (10 minutes) never to end on its own while a slow machine runs the test; it
    // is canceled before the server goes away.
    let long_cmd = "for i in $(seq 1 3000); do echo line $i; sleep 0.2; done";
    let long = b
        .call(
            "execute",
            json!({"command": long_cmd, "timeout": 600, "detach": true}),
        )
        .await;
    assert_eq!(long["result"]["status"], "started", "{long}");
    let long_id = long["result"]["job_id"].as_str().unwrap().to_string();
    let queued = b
        .call("execute", json!({"command": "echo after the long one"}))
        .await;
    assert_eq!(queued["result"]["status"], "queued", "{queued}");
    let queued_id = queued["result"]["job_id"].as_str().unwrap().to_string();

    let started = Instant::now();
    let profile = scratch();
    let mut browser = Browser::launch(&chromium, profile.path()).await;
    browser
        .open(&format!("{base}/ui?token={TOKEN}"), (1400, 900))
        .await;
    let loaded = "document.querySelector('#conn').textContent === 'connected' \
        && document.querySelector('#hooks-table tr[data-hook]') !== null \
        && document.querySelectorAll('#recent-jobs tr[data-job-id]').length >= 3 \
        && document.querySelectorAll('#active-jobs tr[data-job-id]').length >= 2";
    browser.wait_for(loaded).await;
    let page = browser.eval(PAGE_STATE).await;

    // The token left the address bar and the page, and stayed in sessionStorage.
    assert!(!page["url"].as_str().unwrap().contains(TOKEN), "{page}");
    assert!(
        !page["html"].as_str().unwrap().contains(TOKEN),
        "token in the page"
    );
    assert_eq!(page["stored"], TOKEN);

    let row = |id: &str| -> Value {
        page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {id}: {page:#}"))
    };
    let long_row = row(&long_id);
    assert_eq!(long_row["table"], "active-jobs");
    assert_eq!(long_row["status"], "running");
    let text = long_row["text"].as_str().unwrap();
    for shown in ["running", long_cmd, "detached", "of 10 m 00 s"] {
        assert!(text.contains(shown), "{shown:?} in {text:?}");
    }
    assert!(long_row["progress"].as_f64().unwrap() > 0.0, "{long_row}");
    let q = row(&queued_id);
    assert_eq!(
        (&q["table"], &q["status"]),
        (&json!("active-jobs"), &json!("queued"))
    );
    assert!(
        q["text"]
            .as_str()
            .unwrap()
            .contains("echo after the long one")
    );
    let done = row(&ok_id);
    assert_eq!(
        (&done["table"], &done["status"]),
        (&json!("recent-jobs"), &json!("completed"))
    );
    assert!(done["text"].as_str().unwrap().contains("exit 0"), "{done}");
    let bad = row(&failed_id);
    assert_eq!(bad["status"], "failed");
    assert!(bad["text"].as_str().unwrap().contains("exit 3"), "{bad}");
    let refused = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "denied")
        .unwrap_or_else(|| panic!("no denied job: {page:#}"));
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("denied by deny-dangerous"),
        "{refused}"
    );
    assert_eq!(page["counts"]["running"], "1", "{page:#}");
    assert_eq!(page["counts"]["queued"], "1", "{page:#}");
    assert_eq!(page["counts"]["detached"], "1", "{page:#}");

    // The hooks table and the reload state.
    assert_eq!(
        page["hook_headers"],
        json!([
            "Hook",
            "State",
            "Stages",
            "Calls",
            "Decisions",
            "p50",
            "p99",
            "Failures",
            "Last error"
        ])
    );
    let h = &page["hooks"][0];
    assert_eq!(h["cells"][0], "deny-dangerous", "{h}");
    assert_eq!(h["cells"][1], "loaded", "{h}");
    assert_eq!(h["cells"][2], "pre", "{h}");
    // a, failed, denied and the long job were judged (the queued one not yet).
    assert!(
        h["cells"][3].as_str().unwrap().parse::<u64>().unwrap() >= 4,
        "{h}"
    );
    assert!(h["cells"][4].as_str().unwrap().contains("deny 1"), "{h}");
    for p in [&h["cells"][5], &h["cells"][6]] {
        let p = p.as_str().unwrap();
        assert!(p.ends_with(" µs") || p.ends_with(" ms"), "{h}");
    }
    assert_eq!(h["cells"][7], "0", "{h}");
    assert_eq!(h["cells"][8], "none", "{h}");
    let reload = page["reload"].as_str().unwrap();
    for shown in ["hooks ready", "generation 1", "last reload ok"] {
        assert!(reload.contains(shown), "{shown:?} in {reload:?}");
    }
    assert!(
        page["server"].as_str().unwrap().contains("healthy"),
        "{page:#}"
    );

    // Following the long job: its output from the start, then live.
    browser
        .eval(&format!(
            "document.querySelector('tr[data-job-id=\"{long_id}\"] a.job-link').click(); true"
        ))
        .await;
    browser
        .wait_for("document.querySelector('#output').textContent.includes('line 3\\n')")
        .await;
    let seen = browser
        .eval("Math.max(...(document.querySelector('#output').textContent.match(/\\d+/g) || [0]).map(Number))")
        .await
        .as_u64()
        .unwrap();
    browser
        .wait_for(&format!(
            "document.querySelector('#output').textContent.includes('line {}\\n')",
            seen + 3
        ))
        .await;
    let follow = browser.eval(FOLLOW_STATE).await;
    assert!(
        follow["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/ui?follow={long_id}")),
        "{follow}"
    );
    assert_eq!(follow["id"], long_id.as_str());
    let meta = follow["meta"].as_str().unwrap();
    assert!(meta.contains(long_cmd), "{meta}");
    assert!(meta.contains("of 10 m 00 s timeout"), "{meta}");
    assert!(!meta.contains("stdout 0 B"), "bytes so far: {meta}");
    assert!(
        follow["output"]
            .as_str()
            .unwrap()
            .starts_with("line 1\nline 2\n"),
        "{follow}"
    );
    assert_eq!(follow["selected"], long_id.as_str());

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000);
    let shot = profile.path().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    if std::env::var_os("CCX_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::copy(&shot, root().join("docs/dashboard.png")).unwrap();
    }

    // Closing the page closes its sessions; the job it followed neither belonged to them nor
    // ends with them.
    browser.close_page().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rec = a.call("get_job", json!({"job_id": long_id})).await;
    assert_eq!(rec["result"]["status"], "running", "{rec}");

    // A wrong token: the page says so (and offers to enter one) instead of showing nothing.
    browser
        .open(&format!("{base}/ui?token=wrong"), (1400, 900))
        .await;
    browser
        .wait_for("!document.querySelector('#banner').hidden")
        .await;
    let refused = browser.eval(REFUSED_STATE).await;
    assert!(
        refused["banner"]
            .as_str()
            .unwrap()
            .contains("refused the token (HTTP 401"),
        "{refused}"
    );
    assert_eq!(refused["conn"], "token refused");
    assert_eq!(refused["form"], true);
    assert_eq!(refused["rows"], 0);
    browser.close_page().await;

    // The server going away (killed: nothing would end the long job then, so cancel it
    // first): the page says so and keeps trying.
    let canceled = a
        .call("control", json!({"job_id": long_id, "type": "CANCEL"}))
        .await;
    assert!(canceled.get("error").is_none(), "{canceled}");
    browser
        .open(&format!("{base}/ui?token={TOKEN}"), (1400, 900))
        .await;
    browser
        .wait_for("document.querySelector('#conn').textContent === 'connected'")
        .await;
    drop(server);
    browser
        .wait_for(
            "/^disconnected \\(connection lost\\), retrying in \\d+ s$/\
             .test(document.querySelector('#conn').textContent)",
        )
        .await;
    browser.close().await;
    eprintln!("dashboard in chromium: {:?}", started.elapsed());
}

/// What the test reads from the loaded page, as one JSON value.
const PAGE_STATE: &str = r#"(() => {
  const text = (s) => (document.querySelector(s) || {}).innerText || '';
  const rows = [...document.querySelectorAll('tr[data-job-id]')].map((tr) => ({
    id: tr.dataset.jobId,
    status: tr.dataset.status,
    table: tr.closest('table').id,
    text: tr.innerText,
    progress: (tr.querySelector('progress') || {}).value || 0,
  }));
  const counts = {};
  for (const c of document.querySelectorAll('[data-count]')) {
    counts[c.dataset.count] = c.querySelector('b').textContent;
  }
  return {
    url: location.href,
    html: document.documentElement.outerHTML,
    stored: sessionStorage.getItem('ccx.token'),
    rows,
    counts,
    hook_headers: [...document.querySelectorAll('#hooks-table th')].map((th) => th.textContent),
    hooks: [...document.querySelectorAll('#hooks-table tr[data-hook]')].map((tr) => ({
      cells: [...tr.cells].map((td) => td.innerText.trim()),
    })),
    reload: text('#reload-state'),
    server: text('#server-info'),
  };
})()"#;

const FOLLOW_STATE: &str = r#"(() => ({
  url: location.href,
  id: document.querySelector('#follow-id').textContent,
  meta: document.querySelector('#follow-meta').innerText,
  output: document.querySelector('#output').textContent,
  selected: (document.querySelector('tr.selected') || {dataset: {}}).dataset.jobId || null,
}))()"#;

const REFUSED_STATE: &str = r#"(() => ({
  banner: document.querySelector('#banner').textContent,
  conn: document.querySelector('#conn').textContent,
  form: !document.querySelector('#token-form').hidden,
  rows: document.querySelectorAll('tr[data-job-id]').length,
}))()"#;

/// GET `path`: the status and the headers (lowercase names).
async fn get_headers(addr: &str, path: &str) -> (u16, std::collections::HashMap<String, String>) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (resp.status().as_u16(), headers)
}

/// Headless Chromium and one page in it, over the DevTools protocol.
struct Browser {
    child: KillOnDrop,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// The page's session (flat mode: its commands go over the browser's socket).
    session: Option<String>,
    target: Option<String>,
    log: PathBuf,
}

impl Browser {
    async fn launch(chromium: &Path, profile: &Path) -> Browser {
        let log = profile.join("chromium.log");
        let child = std::process::Command::new(chromium)
            .args([
                "--headless",
                // Needed as root; harmless otherwise for a browser that loads one local page.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--force-color-profile=srgb",
                "--window-size=1400,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.join("profile").display()
            ))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting chromium");
        let child = KillOnDrop(child);
        // Chromium writes its DevTools port and path once it listens.
        let port_file = profile.join("profile/DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("connecting to chromium's DevTools");
        Browser {
            child,
            ws,
            next_id: 1,
            session: None,
            target: None,
            log,
        }
    }

    /// Sends a command (to the page when one is open) and returns its result.
    async fn cmd(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session
            && !method.starts_with("Target.")
            && !method.starts_with("Browser.")
        {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from chromium"));
            let Some(Ok(Message::Text(text))) = next else {
                panic!("{method}: chromium closed its DevTools socket: {next:?}");
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Closes the page commands go to.
    async fn close_page(&mut self) {
        let target = self.target.take().expect("an open page");
        self.cmd("Target.closeTarget", json!({"targetId": target}))
            .await;
        self.session = None;
    }

    /// Opens `url` in a new page of `size` and makes it the page commands go to.
    async fn open(&mut self, url: &str, (width, height): (u32, u32)) {
        let target = self
            .cmd("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let session = self
            .cmd(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        self.session = Some(session["sessionId"].as_str().unwrap().to_string());
        self.target = Some(target["targetId"].as_str().unwrap().to_string());
        self.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        let nav = self.cmd("Page.navigate", json!({"url": url})).await;
        assert!(nav.get("errorText").is_none(), "{url}: {nav}");
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {:#}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `condition` until it is true, or fails showing the page's text.
    async fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + SHOW;
        loop {
            let probe = format!(
                "(() => {{ try {{ return !!({condition}); }} catch (_) {{ return false; }} }})()"
            );
            if self.eval(&probe).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!(
                    "the page did not show {condition} within {SHOW:?}; it shows:\n{}\n\
                     chromium's log: {}",
                    body.as_str().unwrap_or_default(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .cmd("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }

    /// Closes the browser and waits for it, so that its helper processes end with it.
    async fn close(mut self) {
        let msg = json!({"id": self.next_id, "method": "Browser.close"});
        let _ = self.ws.send(Message::Text(msg.to_string().into())).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
