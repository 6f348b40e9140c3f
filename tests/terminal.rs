//! Jobs on a terminal (`execute {pty}`), through the built binary: the command's stdio is a
//! `/dev/pts` device, output comes as `pty` in the exact order written, `resize` reaches
//! `stty size`, input types into it (Ctrl-C interrupts), and a replay keeps the `pty` type.

use crate::jobs::serve;
use crate::stdin::read_until;
use crate::util::{Ws, output, scratch};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_job_has_a_pts_resizes_and_keeps_the_order() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let mut ws = Ws::connect(&url).await;
    let pty = json!({"rows": 24, "cols": 80});

    // `tty` names the terminal; the output is one `pty` stream, and a replay says so too.
    let (r, events) = ws
        .run(json!({"command": "tty; test -n \"$TERM\" && echo term-set", "pty": pty}))
        .await;
    let shown = output(&events, "pty");
    assert!(shown.starts_with("/dev/pts/"), "{shown:?}");
    assert!(shown.ends_with("\r\nterm-set\r\n"), "{shown:?}");
    assert_eq!(output(&events, "stdout"), "");
    let started = events
        .iter()
        .find(|e| e["method"] == "process.started")
        .unwrap();
    assert_eq!(started["params"]["pty"], pty);
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    let r = ws.call("attach", json!({"job_id": job})).await;
    assert!(r["result"].is_object(), "{r}");
    let replay = ws.collect(&job).await;
    assert_eq!(output(&replay, "pty"), shown);

    // stdout and stderr in exactly the order written.
    let cmd = "for i in 1 2 3; do echo out$i; echo err$i >&2; done";
    let (_, events) = ws.run(json!({"command": cmd, "pty": pty})).await;
    assert_eq!(
        output(&events, "pty"),
        "out1\r\nerr1\r\nout2\r\nerr2\r\nout3\r\nerr3\r\n"
    );

    // `stty size` follows `resize`; typed input is echoed and read.
    let r = ws
        .call(
            "execute",
            json!({"command": "stty size; read line; echo got $line; stty size", "pty": pty}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    read_until(&mut ws, &job, "pty", "24 80\r\n").await;
    let r = ws
        .call("resize", json!({"job_id": job, "rows": 40, "cols": 100}))
        .await;
    assert_eq!(r["result"]["rows"], 40, "{r}");
    ws.call("input", json!({"job_id": job, "data": "hello\n"}))
        .await;
    let events = ws.collect(&job).await;
    let shown = output(&events, "pty");
    assert!(shown.contains("got hello\r\n40 100\r\n"), "{shown:?}");

    // Ctrl-C interrupts the foreground job.
    let r = ws
        .call(
            "execute",
            json!({"command": "echo ready; sleep 30", "pty": pty}),
        )
        .await;
    let job = r["result"]["job_id"].as_str().unwrap().to_string();
    read_until(&mut ws, &job, "pty", "ready").await;
    ws.call("input", json!({"job_id": job, "data": "\u{3}"}))
        .await;
    let events = ws.collect(&job).await;
    let done = &events.last().unwrap()["params"];
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["signal"] == 2 || done["exit_code"] == 130, "{done}");

    // A job without a terminal cannot be resized; a terminal of 0 rows is refused.
    let (r, _) = ws.run(json!({"command": "true"})).await;
    let job = r["result"]["job_id"].as_str().unwrap();
    let r = ws
        .call("resize", json!({"job_id": job, "rows": 10, "cols": 10}))
        .await;
    assert!(r["error"].is_object(), "{r}");
    let r = ws
        .call(
            "execute",
            json!({"command": "true", "pty": {"rows": 0, "cols": 80}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

/// A tmux server of the test's own (`-L`), killed when dropped.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane shows `text`, and returns the pane.
    async fn shows(&self, text: &str) -> String {
        let mut pane = String::new();
        let seen = crate::util::eventually(crate::util::WAIT, || {
            pane = self.run(&["capture-pane", "-p", "-t", "t"]);
            pane.contains(text)
        })
        .await;
        assert!(seen, "the pane never showed {text:?}:\n{pane}");
        pane
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccx_exec_it_bash_driven_through_tmux() {
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    let tmux = Tmux(format!("ccx-test-{}", std::process::id()));
    let shell = format!(
        "{} exec --url {url} -it bash --norc --noprofile; echo EXITED rc=$?; sleep 60",
        crate::util::CCX
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "40",
        &shell,
    ]);
    tmux.shows("bash-").await;

    // Typed keys reach the remote shell; it has a terminal the size of the local one.
    tmux.run(&[
        "send-keys",
        "-t",
        "t",
        "echo hi-$((6*7)); tty; stty size",
        "Enter",
    ]);
    let pane = tmux.shows("40 120").await;
    assert!(
        pane.contains("hi-42") && pane.contains("/dev/pts/"),
        "{pane}"
    );

    // A resize of the local window follows.
    tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tmux.run(&["send-keys", "-t", "t", "stty size", "Enter"]);
    tmux.shows("30 100").await;

    // Ctrl-C interrupts the remote foreground command, not ccx.
    tmux.run(&["send-keys", "-t", "t", "sleep 100", "Enter"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tmux.run(&["send-keys", "-t", "t", "C-c"]);
    tmux.run(&["send-keys", "-t", "t", "echo after-$((1+1))", "Enter"]);
    tmux.shows("after-2").await;

    // The shell's exit code is ccx's.
    tmux.run(&["send-keys", "-t", "t", "exit 3", "Enter"]);
    tmux.shows("EXITED rc=3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ccx_exec_i_forwards_stdin_exactly() {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let dir = scratch();
    let (_server, url) = serve(dir.path(), "", &[]);
    // 3 MB of arbitrary bytes: more than the job's 1 MiB input buffer, so the client waits
    // for the command to read; `sha256sum` sees every byte.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = std::process::Command::new(crate::util::CCX)
        .args(["exec", "--url", &url, "-i", "--", "sha256sum"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).map(|_| data));
    let out = child.wait_with_output().unwrap();
    let data = writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{out:?}");
    let want: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}  -\n"));
}
