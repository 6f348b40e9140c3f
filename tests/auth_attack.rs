//! Authentication under attack, against the built binary: bad tokens from one address are
//! answered 401, then 429 with `Retry-After`; a valid token from the same address is still
//! served; and no token, right or wrong, in a header or in `?token=`, appears in the log, even
//! at `RUST_LOG=debug`.

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{KillOnDrop, scratch};

const TOKEN: &str = "valid-token-Zq81-for-the-auth-attack-test";
const GUESS: &str = "wrong-guess-Xk52";

/// One HTTP/1.1 request over a plain socket: (status, headers lowercased, body).
fn request(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (top, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = top.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn bad_tokens_are_throttled_valid_ones_served_and_none_is_logged() {
    let tmp = scratch();
    let config = tmp.path().join("ccx.toml");
    std::fs::write(&config, "[server]\nwatch_interval = 0\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccx"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .env("CCX_STATE_DIR", tmp.path().join("state"))
        .env("CCX_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ccx serve");
    let stderr = child.stderr.take().unwrap();
    let guard = KillOnDrop(child);
    // Every log line, kept to search once the server is gone.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "listening" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_string());
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server listening");

    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = request(&addr, "/health", &[("Authorization", &bearer)]);
    assert_eq!(status, 200);
    // Ten failures are refused one by one; the eleventh starts the throttle.
    for i in 0..10 {
        let path = if i % 2 == 0 {
            format!("/health?token={GUESS}-{i}")
        } else {
            "/health".into()
        };
        let auth = format!("Bearer {GUESS}-{i}");
        let (status, _, body) = request(&addr, &path, &[("Authorization", &auth)]);
        assert_eq!(status, 401, "attempt {i}: {body}");
    }
    for i in 10..14 {
        let path = format!("/ws?token={GUESS}-{i}");
        let (status, headers, body) = request(&addr, &path, &[]);
        assert_eq!(status, 429, "attempt {i}: {body}");
        let retry: u64 = header(&headers, "retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("Retry-After in {headers:?}"));
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // The same address with the valid token, in a header and in the query: served.
    let (status, _, body) = request(&addr, "/health", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(&addr, &format!("/hooks?token={TOKEN}"), &[]);
    assert_eq!(status, 200, "{body}");

    drop(guard);
    std::thread::sleep(Duration::from_millis(200));
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("too many failed authentications")),
        "the throttle is logged once:\n{}",
        log.join("\n")
    );
    for line in log.iter() {
        assert!(!line.contains(TOKEN), "the valid token is logged: {line}");
        assert!(!line.contains(GUESS), "a wrong token is logged: {line}");
    }
}
