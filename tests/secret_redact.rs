//! The example output hook `secret-redact` (`hooks/secret-redact`) through a real server: a
//! secret split across reads is redacted for WebSocket, `ccx exec` and MCP clients alike, and
//! 100 MB of output arrive byte-exact except the redactions through all three; extra patterns
//! from the config through `ccx hooks run`.

use crate::util::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const HOOK: &str = r#"
[[hooks]]
name = "redact"
path = "{secret-redact}"
"#;

/// Writes `AKIA…` in two reads 0.2 s apart, then a bearer header.
const SPLIT: &str = "printf 'key=AKIAABCD'; sleep 0.2; printf 'EFGHIJKLMNOP done\\n'; \
                     echo 'Authorization: Bearer abc.def-ghi'";
const REDACTED: &str =
    "key=[REDACTED:aws-access-key-id] done\nAuthorization: Bearer [REDACTED:bearer-token]\n";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_split_across_reads_is_redacted_for_every_kind_of_client() {
    let server = AppServer::with_config(0.05, HOOK).await;
    // WebSocket.
    let mut ws = server.connect().await;
    let (_, events) = ws.run(json!({"command": SPLIT})).await;
    assert_eq!(output(&events, "stdout"), REDACTED);
    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout_bytes"], REDACTED.len());
    assert_eq!(
        done["stdout_sha256"],
        hex(&Sha256::digest(REDACTED.as_bytes()))
    );
    assert!(done["stdout_raw_bytes"].as_u64().unwrap() < REDACTED.len() as u64);
    assert!(report(done, "redact")["output"]["chunks_changed"].as_u64() >= Some(2));
    // `/hooks` says which stage it takes part in.
    let hooks = server.get("/hooks").await;
    assert_eq!(hooks["hooks"][0]["stages"], json!(["output"]), "{hooks}");

    // `ccx exec`, the built binary.
    let out = std::process::Command::new(CCX)
        .args(["exec", "--url", &format!("ws://{}/ws", server.addr), SPLIT])
        .env_remove("CCX_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), REDACTED);

    // MCP over Streamable HTTP.
    let (client, _) = crate::mcp::http_client(server.addr, None).await.unwrap();
    let r = crate::mcp::call_tool(&client, "execute", json!({"command": SPLIT})).await;
    let text: String = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert!(
        text.contains("key=[REDACTED:aws-access-key-id] done"),
        "{text} {:?}",
        r.structured_content
    );
    // (The command line, which MCP echoes, has the key in two pieces.)
    assert!(!text.contains("AKIAABCDEFGHIJKLMNOP"), "{text}");
    // The structured stdout is exactly what the other clients got, bearer value included.
    let s = r.structured_content.as_ref().unwrap();
    assert_eq!(s["stdout"], REDACTED, "{s}");
    assert_eq!(
        s["stdout_sha256"],
        hex(&Sha256::digest(REDACTED.as_bytes()))
    );
    let _ = client.cancel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_arrive_byte_exact_except_the_redactions() {
    // 100 MB of log lines with a secret of each kind every ~10 MB; the expected output is
    // built beside it.
    let line = b"2026-12-01T04:00:00Z INFO served /api/v1/items in 12 ms status=200 bytes=5120\n";
    let secrets: [(&str, &str); 4] = [
        (
            "token ghp_0123456789abcdefghijABCDEFGHIJ012345 used\n",
            "token [REDACTED:github-token] used\n",
        ),
        (
            "aws AKIAIOSFODNN7EXAMPLE here\n",
            "aws [REDACTED:aws-access-key-id] here\n",
        ),
        (
            "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6Ikpv\
             aG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c end\n",
            "jwt [REDACTED:jwt] end\n",
        ),
        (
            "slack xoxb-123456789012-abcdefABCDEF ok\n",
            "slack [REDACTED:slack-token] ok\n",
        ),
    ];
    let total = 100 * 1024 * 1024;
    let mut raw = Vec::with_capacity(total + 4096);
    let mut expected = Vec::with_capacity(total);
    let mut next_secret = 0;
    while raw.len() < total {
        raw.extend_from_slice(line);
        expected.extend_from_slice(line);
        if raw.len() / (10 << 20) > next_secret {
            let (s, r) = secrets[next_secret % secrets.len()];
            raw.extend_from_slice(s.as_bytes());
            expected.extend_from_slice(r.as_bytes());
            next_secret += 1;
        }
    }
    assert!(next_secret >= 9);
    let dir = scratch();
    let file = dir.path().join("big.log");
    std::fs::write(&file, &raw).unwrap();
    let raw_len = raw.len();

    let want = hex(&Sha256::digest(&expected));
    drop(raw);

    // One server, three clients at once: a WebSocket, `ccx exec` and MCP.
    let server = AppServer::with_config(0.05, HOOK).await;
    let command = format!("cat {}", file.display());
    let exec = {
        let (url, command) = (format!("ws://{}/ws", server.addr), command.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(CCX)
                .args(["exec", "--url", &url, &command])
                .env_remove("CCX_TOKEN")
                .output()
                .unwrap()
        })
    };
    let mcp = async {
        let (client, _) = crate::mcp::http_client(server.addr, None).await.unwrap();
        let r = crate::mcp::call_tool(&client, "execute", json!({"command": command})).await;
        let _ = client.cancel().await;
        r.structured_content.expect("structured content")
    };
    let ws = async {
        let mut ws = server.connect().await;
        ws.run(json!({"command": command})).await.1
    };
    let (events, mcp, exec) = tokio::join!(ws, mcp, exec);

    let done = completion(&events);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout_raw_bytes"], raw_len);
    assert_eq!(done["stdout_bytes"], expected.len());
    let got = output(&events, "stdout");
    assert_eq!(got.len(), expected.len());
    assert_eq!(
        hex(&Sha256::digest(got.as_bytes())),
        want,
        "the received bytes differ from the expected redaction"
    );
    assert_eq!(done["stdout_sha256"], want);

    // `ccx exec` writes every byte it got to its stdout.
    let exec = exec.unwrap();
    assert!(exec.status.success(), "{:?}", exec.status);
    assert_eq!(exec.stdout.len(), expected.len());
    assert_eq!(
        hex(&Sha256::digest(&exec.stdout)),
        want,
        "ccx exec's stdout differs"
    );

    // MCP keeps only a head and tail for the agent to read, and reports the digest of all.
    assert_eq!(mcp["status"], "completed", "{mcp}");
    assert_eq!(mcp["stdout_raw_bytes"], raw_len);
    assert_eq!(mcp["stdout_bytes"], expected.len());
    assert_eq!(mcp["stdout_sha256"], want);
    let shown = mcp["stdout"].as_str().unwrap();
    let (head, tail) = (&expected[..1000], &expected[expected.len() - 1000..]);
    assert!(shown.as_bytes().starts_with(head) && shown.as_bytes().ends_with(tail));
}

/// `ccx hooks run <secret-redact> ARGS --output @INPUT`, which must succeed.
fn hooks_run_output(input: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(CCX)
        .args(["hooks", "run"])
        .arg(component("secret-redact"))
        .args(args)
        .arg("--output")
        .arg(format!("@{}", input.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out
}

#[test]
fn hooks_run_output_passes_a_file_through_the_stage() {
    let dir = scratch();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "key AKIAIOSFODNN7EXAMPLE x\nhello\n").unwrap();
    let out = hooks_run_output(&input, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "key [REDACTED:aws-access-key-id] x\nhello\n"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(report["reports"][0]["chunks_changed"], 1, "{report}");
}

#[test]
fn hooks_run_output_takes_extra_patterns_from_the_config() {
    let dir = scratch();
    let input = dir.path().join("in.txt");
    let token = "itk_0123456789abcdef0123456789abcdef";
    std::fs::write(
        &input,
        format!("t={token} k=AKIAIOSFODNN7EXAMPLE\nitk_short\n"),
    )
    .unwrap();
    let out = hooks_run_output(
        &input,
        &["--config", "pattern.internal-token=itk_[0-9a-f]{32}"],
    );
    // The extra kind beside the built-in ones; a near miss stays.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "t=[REDACTED:internal-token] k=[REDACTED:aws-access-key-id]\nitk_short\n"
    );
}
