//! The writer: records of every kind of job ending, rotation, drops, refusals, bodies and
//! the config section — each log checked with [`verify`]. Restarts and accidents are in
//! `reopen_tests.rs`.

use super::verify::verify;
use super::*;
use serde_json::json;
use std::path::Path;
use std::sync::mpsc;

pub(super) const WAIT: Duration = Duration::from_secs(10);

pub(super) fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        path: Some(dir.join("audit.log")),
        ..AuditConfig::default()
    }
}

pub(super) fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

pub(super) fn kinds(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("?"))
        .collect()
}

/// A `job` record as the server would fill it.
pub(super) fn job(n: u64, status: &str, exit_code: Option<i32>, signal: Option<i32>) -> Value {
    json!({
        "job_id": format!("job-{n}"), "peer": "192.0.2.7", "token_label": "ci",
        "request": {"command": "make test", "env": {"API_KEY": "***"}},
        "hooks": [{"hook": "deny-dangerous", "point": "pre", "decision": "allow"}],
        "command": "make test", "started": "2026-12-01T06:15:00.000Z",
        "ended": "2026-12-01T06:15:02.500Z", "status": status,
        "exit_code": exit_code, "signal": signal,
        "streams": {"stdout": {"bytes": 12, "sha256": "ab"}, "stderr": {"bytes": 0, "sha256": "cd"}},
    })
}

#[test]
fn a_record_per_job_ending_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = AuditLog::open(&cfg, None).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    log.on_written(Box::new(move |h| s.lock().unwrap().push(h.to_string())));
    let endings = [
        ("completed", Some(0), None),
        ("failed", Some(2), None),
        ("failed", None, Some(11)),
        ("timed_out", None, Some(9)),
        ("canceled", None, Some(15)),
        ("denied", None, None),
        ("lost", None, None),
    ];
    for (n, (status, code, sig)) in endings.iter().enumerate() {
        log.record("job", job(n as u64, status, *code, *sig));
    }
    log.record(
        "refused",
        json!({"peer": "192.0.2.8", "reason": "denied", "detail": "hook no-force"}),
    );
    assert!(log.flush(WAIT));
    let path = cfg.path.as_ref().unwrap();
    let lines = read_lines(path);
    assert_eq!(lines.len(), 9);
    let start = &lines[0];
    assert_eq!(start["kind"], "chain-start");
    assert_eq!(start["cause"], "new");
    assert_eq!(start["prev"], start["seed"]);
    for (i, (l, (status, code, sig))) in lines[1..8].iter().zip(endings).enumerate() {
        assert_eq!(l["seq"], i as u64 + 2);
        assert_eq!(l["kind"], "job");
        assert_eq!(l["status"], status);
        assert_eq!(l["exit_code"], json!(code));
        assert_eq!(l["signal"], json!(sig));
        assert_eq!(l["request"]["env"]["API_KEY"], "***");
        let time = l["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "{time}"
        );
    }
    assert_eq!(lines[8]["kind"], "refused");
    let mode = std::fs::metadata(path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let h = log.health();
    assert_eq!(
        (h.records_written, h.write_errors, h.dropped, h.queued),
        (9, 0, 0, 0)
    );
    assert_eq!(h.last_seq, 9);
    let last = h.last_hash.clone().unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&last));
    let report = verify(std::slice::from_ref(path), Some(&last)).unwrap();
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (9, 1, 9)
    );
    assert_eq!(report.last_hash, last);
    assert_eq!(report.records_after_expected, Some(0));
    assert!(report.continues_from.is_none() && report.incidents.is_empty());
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 2000,
        ..config(dir.path())
    };
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..40 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let files = chain_files(&path).unwrap();
    assert!(files.len() >= 5, "{files:?}");
    assert_eq!(files.last(), Some(&path));
    for (i, f) in files.iter().enumerate() {
        let lines = read_lines(f);
        assert_eq!(lines[0]["kind"], "chain-start");
        if i > 0 {
            let previous = files[i - 1].file_name().unwrap().to_str().unwrap();
            assert_eq!(lines[0]["previous_file"], previous);
            assert_eq!(lines[0]["cause"], "rotation");
        }
        if i + 1 < files.len() {
            assert!(std::fs::metadata(f).unwrap().len() <= 2000);
        }
    }
    let last = log.health().last_hash;
    let report = verify(&files, last.as_deref()).unwrap();
    assert_eq!(report.records, 40 + files.len() as u64);
    assert_eq!(report.files.len(), files.len());
    assert!(report.continues_from.is_none());
    // A directory stands for its files in order.
    assert_eq!(
        verify(&[dir.path().to_path_buf()], last.as_deref()).unwrap(),
        report
    );
    // The current file alone continues the chain of the ones before.
    let alone = verify(std::slice::from_ref(&path), last.as_deref()).unwrap();
    assert!(alone.continues_from.is_some());
    // Reopened after a crash between the rename and the new chain-start, the chain goes on
    // from the newest rotated file.
    drop(log);
    std::fs::rename(
        &path,
        dir.path().join("audit.log.999999999999-20991231T000000Z"),
    )
    .unwrap();
    let log = AuditLog::open(&cfg, last).unwrap();
    assert!(log.flush(WAIT));
    let report = verify(
        &[dir.path().to_path_buf()],
        log.health().last_hash.as_deref(),
    )
    .unwrap();
    assert!(report.incidents.is_empty(), "{:?}", report.incidents);
}

#[test]
fn keep_files_deletes_the_oldest_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 1500,
        keep_files: 2,
        ..config(dir.path())
    };
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..40 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let path = cfg.path.unwrap();
    assert_eq!(files::rotated_files(&path).unwrap().len(), 2);
    let report = verify(
        &[dir.path().to_path_buf()],
        log.health().last_hash.as_deref(),
    )
    .unwrap();
    assert!(report.continues_from.is_some());
    assert!(
        report.incidents.iter().any(|i| i.kind == "pruned"),
        "{:?}",
        report.incidents
    );
}

#[test]
fn a_full_queue_counts_drops_and_the_chain_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        queue: 4,
        ..config(dir.path())
    };
    let log = AuditLog::open(&cfg, None).unwrap();
    // The callback holds the writer while the gate is shut.
    let gate = Arc::new(Mutex::new(()));
    let (entered, in_callback) = mpsc::channel();
    let g = gate.clone();
    log.on_written(Box::new(move |_| {
        let _ = entered.send(());
        drop(g.lock().unwrap());
    }));
    in_callback.recv_timeout(WAIT).unwrap();
    let shut = gate.lock().unwrap();
    log.record("job", job(0, "completed", Some(0), None));
    in_callback.recv_timeout(WAIT).unwrap();
    for n in 1..=7 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    let h = log.health();
    assert_eq!((h.dropped, h.queued), (3, 4));
    drop(shut);
    assert!(log.flush(WAIT));
    let path = cfg.path.unwrap();
    let lines = read_lines(&path);
    assert_eq!(
        kinds(&lines),
        ["chain-start", "job", "job", "job", "job", "job", "dropped"]
    );
    assert_eq!(lines[6]["count"], 3);
    let report = verify(&[path], log.health().last_hash.as_deref()).unwrap();
    assert_eq!(report.incidents.len(), 1);
    assert_eq!(report.incidents[0].kind, "dropped");
}

#[test]
fn refusals_are_rate_limited_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        refusals_per_minute: 60,
        ..config(dir.path())
    };
    let log = AuditLog::open(&cfg, None).unwrap();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "2001:db8::1".parse().unwrap();
    for _ in 0..65 {
        log.refused(a, json!({"peer": a.to_string(), "reason": "auth"}));
    }
    log.refused(b, json!({"peer": b.to_string(), "reason": "auth"}));
    assert_eq!(log.health().suppressed_refusals, 5);
    // One token a second.
    std::thread::sleep(Duration::from_millis(1100));
    log.refused(a, json!({"peer": a.to_string(), "reason": "queue-full"}));
    assert!(log.flush(WAIT));
    let lines = read_lines(&cfg.path.unwrap());
    assert_eq!(lines.len(), 1 + 60 + 1 + 1);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["kind"].as_str(), last["reason"].as_str()),
        (Some("refused"), Some("queue-full"))
    );
    assert_eq!(last["suppressed"], 5);
    assert!(lines[..62].iter().all(|l| l.get("suppressed").is_none()));
}

#[test]
fn off_records_nothing_and_bodies_are_kept_whole() {
    let off = AuditLog::open(&AuditConfig::default(), None).unwrap();
    off.record("job", json!({}));
    off.refused("192.0.2.1".parse().unwrap(), json!({}));
    assert!(off.flush(WAIT));
    assert!(!off.health().enabled && off.health().path.is_none());

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = AuditLog::open(&cfg, None).unwrap();
    log.record("note", json!(["not", "an", "object"]));
    log.record("job", json!({"seq": 99, "prev": "forged", "x": 1}));
    assert!(log.flush(WAIT));
    let lines = read_lines(&cfg.path.unwrap());
    assert_eq!(lines[1]["body"], json!(["not", "an", "object"]));
    assert_eq!(
        (lines[2]["seq"].as_u64(), lines[2]["x"].as_u64()),
        (Some(3), Some(1))
    );
    assert_ne!(lines[2]["prev"], "forged");
}

#[test]
fn the_config_section_parses_with_defaults_and_rejects_unknown_keys() {
    let cfg: AuditConfig =
        toml::from_str("path = \"/var/log/ccx/audit.log\"\nkeep_files = 5").unwrap();
    assert_eq!(
        cfg.path.as_deref(),
        Some(Path::new("/var/log/ccx/audit.log"))
    );
    assert_eq!(
        (cfg.max_file_bytes, cfg.keep_files, cfg.queue),
        (64 << 20, 5, 4096)
    );
    assert_eq!(cfg.refusals_per_minute, 30);
    assert_eq!(
        toml::from_str::<AuditConfig>("").unwrap(),
        AuditConfig::default()
    );
    assert!(toml::from_str::<AuditConfig>("max_bytes = 1").is_err());
}
