//! The writer across restarts and accidents: the chain continued after a restart, a tail cut
//! or a line torn while ccx was down, a file deleted, cut or unwritable while it runs.

use super::tests::{WAIT, config, job, kinds, read_lines};
use super::verify::verify;
use super::*;
use std::sync::mpsc;

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..3 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let last = log.health().last_hash;
    drop(log);
    let log = AuditLog::open(&cfg, last.clone()).unwrap();
    // Told at once where the chain stands.
    let (tx, rx) = mpsc::channel();
    log.on_written(Box::new(move |h| tx.send(h.to_string()).unwrap()));
    assert_eq!(rx.recv_timeout(WAIT).ok(), last);
    log.record("job", job(3, "failed", Some(1), None));
    assert!(log.flush(WAIT));
    let path = cfg.path.unwrap();
    let lines = read_lines(&path);
    assert_eq!(kinds(&lines), ["chain-start", "job", "job", "job", "job"]);
    let h = log.health();
    assert_eq!(h.last_seq, 5);
    let report = verify(&[path], h.last_hash.as_deref()).unwrap();
    assert_eq!(report.records, 5);
    assert!(report.incidents.is_empty());
}

#[test]
fn a_cut_tail_at_restart_is_recorded_as_a_chain_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..4 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let stored = log.health().last_hash.unwrap();
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    // Without the kept hash the cut does not show; with it, it does.
    assert!(verify(std::slice::from_ref(&path), None).is_ok());
    assert!(verify(std::slice::from_ref(&path), Some(&stored)).is_err());

    let log = AuditLog::open(&cfg, Some(stored.clone())).unwrap();
    assert!(log.flush(WAIT));
    let lines = read_lines(&path);
    assert_eq!(
        kinds(&lines),
        ["chain-start", "job", "job", "chain-mismatch"]
    );
    assert_eq!(lines[3]["expected"], stored.as_str());
    assert_eq!(lines[3]["seq"], 4);
    let report = verify(&[path], log.health().last_hash.as_deref()).unwrap();
    assert_eq!(report.incidents.len(), 1);
    assert_eq!(report.incidents[0].kind, "chain-mismatch");
    assert_eq!(report.incidents[0].at.line, 4);
}

#[test]
fn a_torn_last_line_is_noted_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..3 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let stored = log.health().last_hash;
    drop(log);
    // A crash mid-write.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, br#"{"seq":5,"time":"2026-12-0"#).unwrap();
    drop(f);
    let err = verify(std::slice::from_ref(&path), None).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Broken { at, problem: verify::Problem::TornLine } if at.line == 5),
        "{err}"
    );

    let log = AuditLog::open(&cfg, stored).unwrap();
    log.record("job", job(3, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[4], Value::Null);
    assert_eq!(lines[5]["kind"], "torn-tail");
    assert_eq!(lines[5]["seq"], 5);
    assert_eq!(lines[5]["fragment_bytes"], 26);
    assert_eq!(lines[6]["seq"], 6);
    let report = verify(&[path], log.health().last_hash.as_deref()).unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(report.incidents.len(), 1, "{:?}", report.incidents);
    assert_eq!(
        (
            report.incidents[0].kind.as_str(),
            report.incidents[0].at.line
        ),
        ("torn-line", 5)
    );
}

#[test]
fn a_failed_write_is_counted_and_noted_once_the_file_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    let cfg = config(&sub);
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    log.record("job", job(0, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let before = log.health().last_hash.unwrap();
    // The directory goes, and a file takes its name: the file cannot be reopened.
    std::fs::remove_dir_all(&sub).unwrap();
    std::fs::write(&sub, b"").unwrap();
    log.record("job", job(1, "completed", Some(0), None));
    log.record("job", job(2, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let h = log.health();
    assert_eq!(h.records_lost, 2);
    assert!(h.write_errors >= 2);
    assert!(
        h.last_error.as_deref().is_some_and(|e| e.contains("sub")),
        "{h:?}"
    );
    // Back: a new file continues the chain and says what was lost.
    std::fs::remove_file(&sub).unwrap();
    log.record("job", job(3, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let lines = read_lines(&path);
    assert_eq!(
        kinds(&lines),
        ["chain-start", "chain-mismatch", "write-failed", "job"]
    );
    assert_eq!(lines[0]["cause"], "reopen");
    assert_eq!(lines[0]["prev"], before.as_str());
    assert_eq!(lines[1]["found"], Value::Null);
    assert_eq!(lines[2]["count"], 2);
    assert_eq!(lines[3]["job_id"], "job-3");
    let report = verify(&[path], log.health().last_hash.as_deref()).unwrap();
    assert_eq!(report.continues_from.as_deref(), Some(before.as_str()));
    let kinds: Vec<&str> = report.incidents.iter().map(|i| i.kind.as_str()).collect();
    assert_eq!(kinds, ["reopened", "chain-mismatch", "write-failed"]);
}

#[test]
fn a_file_deleted_under_the_writer_is_begun_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    log.record("job", job(0, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    std::fs::remove_file(&path).unwrap();
    log.record("job", job(1, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let lines = read_lines(&path);
    assert_eq!(kinds(&lines), ["chain-start", "chain-mismatch", "job"]);
    assert_eq!(log.health().write_errors, 0);
}

#[test]
fn a_file_cut_under_the_writer_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = cfg.path.clone().unwrap();
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..3 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(WAIT));
    let cut = log.health().last_hash.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let keep = text.lines().take(2).map(|l| l.len() + 1).sum::<usize>();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep as u64)
        .unwrap();
    log.record("job", job(3, "completed", Some(0), None));
    assert!(log.flush(WAIT));
    let lines = read_lines(&path);
    assert_eq!(
        kinds(&lines),
        ["chain-start", "job", "chain-mismatch", "job"]
    );
    assert_eq!(lines[2]["expected"], cut.as_str());
    assert_eq!(lines[2]["seq"], 3);
    let report = verify(&[path], log.health().last_hash.as_deref()).unwrap();
    assert_eq!(report.incidents.len(), 1);
}

#[test]
fn a_missing_file_with_a_kept_hash_starts_again_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let kept = "ab".repeat(32);
    let log = AuditLog::open(&cfg, Some(kept.clone())).unwrap();
    assert!(log.flush(WAIT));
    let lines = read_lines(cfg.path.as_ref().unwrap());
    assert_eq!(kinds(&lines), ["chain-start", "chain-mismatch"]);
    assert_eq!(
        (lines[0]["cause"].as_str(), lines[0]["prev"].as_str()),
        (Some("reopen"), Some(kept.as_str()))
    );
    assert_eq!(lines[1]["found"], Value::Null);
}

#[test]
fn opening_fails_where_no_file_can_be() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let err = AuditLog::open(&config(&blocker), None).err().unwrap();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
