//! The built `ccx` binary: `ccx serve` and `ccx exec` as a user runs them.

use crate::util::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `ccx serve` on a free loopback port with `config` (default: a quick kill grace) written
/// into `dir`; returns the server, killed when dropped, and its address.
fn spawn_server(dir: &Path, config: Option<&str>) -> (KillOnDrop, String) {
    let cfg = dir.join("ccx.toml");
    std::fs::write(&cfg, config.unwrap_or("[execution]\nkill_grace = 0.3\n")).unwrap();
    let (child, addr, _) = spawn_ccx_serve(CCX, &cfg, &[]);
    (KillOnDrop(child), addr)
}

fn exec(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(CCX)
        .args(["exec", "--url", &format!("ws://{addr}/ws")])
        .args(args)
        .env_remove("CCX_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn exec_passes_output_through_and_exits_with_the_commands_code() {
    let dir = scratch();
    let (_server, addr) = spawn_server(dir.path(), None);

    let out = exec(&addr, &["--", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = exec(&addr, &["-e", "WHO=world", "--", "echo hello $WHO"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");

    let out = exec(&addr, &["--", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));

    let out = exec(&addr, &["--timeout", "0.3", "--", "sleep 30"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));

    let out = exec(&addr, &["--cwd", "/no/such/dir", "--", "true"]);
    assert_eq!(out.status.code(), Some(126));

    let out = exec(&addr, &["--timeout", "-5", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
}

#[test]
fn exec_reports_an_unreachable_server() {
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = exec(&format!("127.0.0.1:{port}"), &["--", "true"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn ctrl_c_on_exec_cancels_the_remote_job() {
    let dir = scratch();
    let (_server, addr) = spawn_server(dir.path(), None);
    let mut client = Command::new(CCX)
        .args([
            "exec",
            "--url",
            &format!("ws://{addr}/ws"),
            "--",
            "echo $$; sleep 300",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(client.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let pgid: i64 = first.trim().parse().unwrap();
    assert!(!group_members(pgid).is_empty());
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let status = wait_with_timeout(&mut client, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(group_members(pgid).is_empty(), "remote job still running");
}

#[test]
fn sigterm_stops_the_server_after_terminal_events() {
    let dir = scratch();
    let (mut child, addr) = spawn_server(dir.path(), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
        let reply = ws.call("execute", json!({"command": "sleep 300"})).await;
        let job = reply["result"]["job_id"].as_str().unwrap().to_string();
        let pgid = reply["result"]["pgid"].as_i64().unwrap();
        let started = Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let events = ws.collect(&job).await;
        assert_eq!(completion(&events)["status"], "canceled");
        let status = wait_with_timeout(&mut child, Duration::from_secs(10));
        assert!(status.success(), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(group_members(pgid).is_empty());
    });
}

#[test]
fn serve_rejects_a_bad_config_naming_the_key() {
    let dir = scratch();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[execution]\nkill_grace = 2\nmax_queeu = 3\n").unwrap();
    let out = Command::new(CCX)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_queeu") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let mut child = Command::new(CCX)
        .args(["serve", "--listen", "0.0.0.0:0", "--config", "/dev/null"])
        .env_remove("CCX_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("without an auth token"), "{err}");
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_only_its_own_job_and_loses_nothing() {
    let dir = scratch();
    let (server, addr) = spawn_server(dir.path(), None);
    let pid = server.id();
    let url = format!("ws://{addr}/ws");
    let mut slow = Ws::connect(&url).await;
    let mut other = Ws::connect(&url).await;
    let before = rss_mib(pid);
    let total: u64 = 300_000_000;
    let reply = slow
        .call(
            "execute",
            json!({"command": format!("head -c {total} /dev/zero | tr '\\0' a")}),
        )
        .await;
    let job = reply["result"]["job_id"].as_str().unwrap().to_string();
    // The slow client reads nothing for a while; the job must stall, not buffer 300 MB.
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let (_, events) = other.run(json!({"command": "echo quick"})).await;
        assert_eq!(output(&events, "stdout"), "quick\n");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let grown = rss_mib(pid).saturating_sub(before);
    assert!(
        grown < 100,
        "server memory grew by {grown} MiB behind a slow reader"
    );
    let status = slow.call("status", json!({})).await;
    assert_eq!(
        status["result"]["running"]["job_id"],
        job.as_str(),
        "still running: stalled"
    );
    // Now read it all: every byte arrives.
    let mut received = 0u64;
    loop {
        let m = slow.next().await;
        match m["method"].as_str() {
            Some("process.output") => {
                received += m["params"]["data"].as_str().unwrap().len() as u64
            }
            Some("process.completed") => {
                assert_eq!(m["params"]["status"], "completed");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(received, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_leave_no_descriptors_or_zombies_behind() {
    let dir = scratch();
    let (server, addr) = spawn_server(dir.path(), None);
    let pid = server.id();
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let zombie_children = || {
        let me = pid.to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.len() > 2 && f[0] == "Z" && f[1] == me
            })
            .count()
    };
    let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
    // Warm up whatever the runtime allocates once.
    ws.run(json!({"command": "true"})).await;
    let before = open_fds();
    for i in 0..30 {
        let cmd = match i % 3 {
            0 => "echo x; echo y >&2",
            1 => "sleep 5 & exit 1",
            _ => "sleep 10",
        };
        let timeout = if i % 3 == 2 { Some(0.1) } else { None };
        let mut params = json!({"command": cmd});
        if let Some(t) = timeout {
            params["timeout"] = json!(t);
        }
        ws.run(params).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || open_fds() <= before
            && zombie_children() == 0)
        .await,
        "fds {} -> {}, zombies {}",
        before,
        open_fds(),
        zombie_children()
    );
}

#[test]
fn hooks_new_scaffolds_a_project_and_refuses_to_overwrite() {
    let tmp = scratch();
    let dir = tmp.path();
    let new = |name: &str| {
        Command::new(CCX)
            .args([
                "hooks", "new", name, "--lang", "python", "--stage", "post", "--dir",
            ])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = new("my-check");
    assert!(out.status.success(), "{out:?}");
    assert!(dir.join("my-check/wit/hooks.wit").exists());
    assert!(dir.join("my-check/README.md").exists());
    let again = new("my-check");
    assert_eq!(again.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&again.stderr).is_empty());
    let bad = new("Not A Name");
    assert_eq!(bad.status.code(), Some(2));
}
