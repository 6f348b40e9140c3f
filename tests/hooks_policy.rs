//! `ccx hooks test` and `ccx hooks replay` through the built binary: the shipped corpora pass
//! against the example config, a failing case fails the run by name, a corpus that cannot be
//! used is an error, and a decision log written by a real server replays through a candidate.

use crate::util::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

/// `ccx ARGS` in `dir`, with no config from the environment.
fn ccx(dir: &Path, args: &[&str]) -> Output {
    Command::new(CCX)
        .args(args)
        .current_dir(dir)
        .env_remove("CCX_CONFIG")
        .output()
        .expect("running ccx")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `[[case]]` entries of every corpus in `dir`.
fn count_cases(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let corpus: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            corpus["case"].as_array().map_or(0, Vec::len)
        })
        .sum()
}

#[test]
fn the_shipped_corpora_pass_against_the_example_config() {
    let dir = scratch();
    let config = dir.path().join("ccx.toml");
    std::fs::write(&config, example_config(&shared_cache())).unwrap();
    let corpora = root().join("hooks/corpora");
    let cases = count_cases(&corpora);
    assert!(cases >= 10, "only {cases} cases in {}", corpora.display());

    let out = ccx(
        dir.path(),
        &[
            "hooks",
            "test",
            corpora.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("\n{cases} passed, 0 failed\n")),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// A config with `guard` (denies what contains `forbidden`) in warn mode, and `git-guard`
/// (denies everything it sees) matching only `git`.
fn guard_config(dir: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        0.0,
        r#"
[[hooks]]
name = "guard"
path = "{test-hook}"
mode = "warn"
config = { mode = "deny-if-contains", needle = "forbidden" }

[[hooks]]
name = "git-guard"
path = "{test-hook}"
match = { programs = ["git"] }
config = { mode = "deny", reason = "no git here" }
"#,
    )
}

#[test]
fn a_failing_case_fails_the_run_and_is_named() {
    let dir = scratch();
    let config = guard_config(dir.path());
    std::fs::write(
        dir.path().join("guard.toml"),
        r#"
hook = "guard"

[[case]]
request = { command = "echo forbidden", env = { A = "1" }, labels = { team = "x" } }
expect = "deny"
reason_contains = "forbidden"

[[case]]
name = "ls is denied"
request = { command = "ls" }
expect = "deny"

[[case]]
hook = "git-guard"
request = { command = "cd repo && git push" }
expect = "deny"
reason_contains = "no git"

[[case]]
name = "git-guard never sees ls"
hook = "git-guard"
request = { command = "ls" }
expect = "allow"

[[case]]
name = "pre-only refuses rm"
hook = "pre"
request = { command = "rm -rf /", cwd = "/tmp" }
expect = "deny"
reason_contains = "rm -rf /"
"#,
    )
    .unwrap();
    let pre_only = format!("pre={}", component("pre-only").display());
    let out = ccx(
        dir.path(),
        &[
            "hooks",
            "test",
            "guard.toml",
            "--config",
            config.to_str().unwrap(),
            "--hook",
            &pre_only,
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let failing = stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line: {stdout}"));
    assert!(failing.contains("guard.toml:ls is denied"), "{stdout}");
    assert!(
        failing.contains("deny") && failing.ends_with("allow"),
        "{stdout}"
    );
    assert!(stdout.contains("why: allowed"), "{stdout}");
    assert!(stdout.contains("4 passed, 1 failed"), "{stdout}");
    // The matcher is evaluated as a server would: `ls` never reaches `git-guard`.
    let unmatched = stdout
        .lines()
        .find(|l| l.contains("git-guard never sees ls"))
        .unwrap();
    assert!(
        unmatched.starts_with("PASS") && unmatched.ends_with("allow (not matched)"),
        "{stdout}"
    );
    // A warn-mode hook is tested on its own decision, and the run says so.
    assert!(stdout.contains("`guard` has mode = \"warn\""), "{stdout}");
}

#[test]
fn a_corpus_that_cannot_be_used_is_an_error_naming_it() {
    let dir = scratch();
    let config = guard_config(dir.path());
    let config = config.to_str().unwrap();
    let cases = [
        ("syntax.toml", "[[case]\nhook = \"guard\"\n", "syntax.toml"),
        (
            "expect.toml",
            "[[case]]\nname = \"odd\"\nhook = \"guard\"\nrequest = { command = \"ls\" }\n\
             expect = \"maybe\"\n",
            "expect.toml: case 1 (`odd`)",
        ),
        (
            "unknown.toml",
            "[[case]]\nhook = \"guard\"\nrequest = { command = \"ls\" }\nexpect = \"allow\"\n\
             [[case]]\nhook = \"gaurd\"\nrequest = { command = \"pwd\" }\nexpect = \"allow\"\n",
            "unknown.toml: case 2 (`pwd`): unknown hook `gaurd`",
        ),
        (
            "typo.toml",
            "[[case]]\nhook = \"guard\"\nrequest = { command = \"ls\", cdw = \"/\" }\n\
             expect = \"allow\"\n",
            "cdw",
        ),
    ];
    for (file, corpus, named) in cases {
        std::fs::write(dir.path().join(file), corpus).unwrap();
        let out = ccx(dir.path(), &["hooks", "test", file, "--config", config]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {stdout}\n{stderr}");
        assert!(stderr.contains(named), "{file}: {stderr}");
    }
    // A component that cannot be loaded.
    std::fs::write(
        dir.path().join("ok.toml"),
        "[[case]]\nhook = \"x\"\nrequest = { command = \"ls\" }\nexpect = \"allow\"\n",
    )
    .unwrap();
    let out = ccx(
        dir.path(),
        &["hooks", "test", "ok.toml", "--hook", "x=missing.wasm"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out).1.contains("cannot load hook `x`"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lists_the_requests_a_candidate_decides_differently() {
    let dir = scratch();
    let log = dir.path().join("decisions.jsonl");
    // The first line lands in the harness's `[sandbox]` table.
    let config = format!(
        r#"decision_log = "{}"

[[hooks]]
name = "guard"
path = "{{test-hook}}"
config = {{ mode = "deny-if-contains", needle = "forbidden" }}

[[hooks]]
name = "other"
path = "{{pre-only}}"
"#,
        log.display()
    );
    let (server, url) = crate::jobs::serve(dir.path(), &config, &[]);
    let mut ws = Ws::connect(&url).await;
    ws.run(json!({"command": "echo ok", "env": {"API_TOKEN": "s3cret"}}))
        .await;
    let r = ws
        .call("execute", json!({"command": "echo forbidden"}))
        .await;
    assert_eq!(r["error"]["data"]["hook"], "guard", "{r}");
    // `guard` allows it; `other` (pre-only) denies it.
    let r = ws
        .call("execute", json!({"command": "echo 'rm -rf /tmp/x'"}))
        .await;
    assert_eq!(r["error"]["data"]["hook"], "other", "{r}");
    let recorded = eventually(WAIT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // Whole lines only: the server may be writing the last one as it is read.
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["hook"] == "guard" && l["stage"] == "pre")
            .count()
            == 3
    })
    .await;
    assert!(recorded, "{}", std::fs::read_to_string(&log).unwrap());
    drop(server);

    let cfg = dir.path().join("ccx.toml");
    let replay = |candidate: &str| {
        let hook = format!("guard={}", component(candidate).display());
        ccx(
            dir.path(),
            &[
                "hooks",
                "replay",
                "--log",
                log.to_str().unwrap(),
                "--hook",
                &hook,
                "--config",
                cfg.to_str().unwrap(),
            ],
        )
    };
    // pre-only denies `rm -rf /` and nothing else.
    let out = replay("pre-only");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let changed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("CHANGED"))
        .collect();
    assert_eq!(changed.len(), 2, "{stdout}");
    assert!(changed[0].ends_with("echo forbidden"), "{stdout}");
    assert!(changed[1].ends_with("echo 'rm -rf /tmp/x'"), "{stdout}");
    assert!(
        stdout.contains("    recorded: deny: command contains `forbidden`\n    now:      allow\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    recorded: allow\n    now:      deny: pre-only refuses `rm -rf /`\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replayed 3: 1 unchanged, 2 changed"),
        "{stdout}"
    );

    // The recorded component with its config decides as it did. A rotated log is read whole:
    // its older part, FILE.1 (here up to `guard`'s first record), then FILE.
    let whole = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = whole.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains(r#""hook":"guard""#) && l.contains(r#""stage":"pre""#))
        .unwrap();
    let older: String = lines[..=first].iter().map(|l| format!("{l}\n")).collect();
    let newer: String = lines[first + 1..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("decisions.jsonl.1"), older).unwrap();
    std::fs::write(&log, newer).unwrap();
    let out = replay("test-hook");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("replayed 3: 3 unchanged, 0 changed"),
        "{stdout}"
    );
    assert!(!stdout.contains("CHANGED"), "{stdout}");
}
