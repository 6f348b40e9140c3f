//! `verify`: passing on a written log, then failing — at the right line, with the right
//! reason — on an edited, a deleted, a reordered and an inserted line, a cut tail, a torn
//! line, a missing chain-start and a missing file; and what a full rewrite gets past.

use super::format::sha256_hex;
use super::tests::{config, job};
use super::verify::{Problem, VerifyError, verify};
use super::*;
use std::path::Path;

/// A log of a chain-start and `n` job records (line k holds seq k); its path and last hash.
fn written(dir: &Path, n: u64) -> (PathBuf, String) {
    let cfg = config(dir);
    let log = AuditLog::open(&cfg, None).unwrap();
    for i in 0..n {
        log.record("job", job(i, "completed", Some(0), None));
    }
    assert!(log.flush(Duration::from_secs(10)));
    (cfg.path.unwrap(), log.health().last_hash.unwrap())
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The first broken record: (line, seq, problem).
fn broken(path: &Path, expect_last: Option<&str>) -> (u64, Option<u64>, Problem) {
    match verify(&[path.to_path_buf()], expect_last) {
        Err(VerifyError::Broken { at, problem }) => {
            assert_eq!(at.file, path);
            (at.line, at.seq, problem)
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

/// Sets `prev` of lines `from..` to the hash of the line before, as a forger would.
fn rechain(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
        v["prev"] = sha256_hex(lines[i - 1].as_bytes()).into();
        lines[i] = v.to_string();
    }
}

#[test]
fn passes_then_fails_on_an_edited_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, last) = written(dir.path(), 8);
    let report = verify(std::slice::from_ref(&path), Some(&last)).unwrap();
    assert_eq!(report.records, 9);

    let mut lines = lines_of(&path);
    lines[4] = lines[4].replace(r#""exit_code":0"#, r#""exit_code":1"#);
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (6, Some(6)));
    assert!(
        matches!(problem, Problem::HashMismatch { prev_line: 5, .. }),
        "{problem}"
    );
    let msg = verify(std::slice::from_ref(&path), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("audit.log line 6 (seq 6)") && msg.contains("line 5 was edited"),
        "{msg}"
    );
}

#[test]
fn fails_on_a_deleted_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written(dir.path(), 8);
    let mut lines = lines_of(&path);
    lines.remove(4);
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (5, Some(6)));
    assert_eq!(
        problem,
        Problem::SeqGap {
            expected: 5,
            found: 6
        }
    );
    assert!(
        problem.to_string().contains("record 5 is missing"),
        "{problem}"
    );
}

#[test]
fn fails_on_a_deleted_line_even_with_seqs_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written(dir.path(), 8);
    let mut lines = lines_of(&path);
    lines.remove(4);
    for (i, l) in lines.iter_mut().enumerate().skip(4) {
        *l = l.replacen(
            &format!(r#"{{"seq":{}"#, i + 2),
            &format!(r#"{{"seq":{}"#, i + 1),
            1,
        );
    }
    write_lines(&path, &lines);
    let (line, _, problem) = broken(&path, None);
    assert_eq!(line, 5);
    assert!(
        matches!(problem, Problem::HashMismatch { prev_line: 4, .. }),
        "{problem}"
    );
}

#[test]
fn fails_on_a_reordered_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written(dir.path(), 8);
    let mut lines = lines_of(&path);
    lines.swap(4, 5);
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (5, Some(6)));
    assert_eq!(
        problem,
        Problem::SeqGap {
            expected: 5,
            found: 6
        }
    );
    assert!(problem.to_string().contains("reordered"), "{problem}");
}

#[test]
fn fails_on_an_inserted_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written(dir.path(), 8);
    let original = lines_of(&path);
    // A well-formed record that even chains onto the line before it.
    let mut lines = original.clone();
    let forged = format!(
        r#"{{"seq":5,"time":"2026-12-01T06:15:00.000Z","kind":"job","prev":"{}","status":"completed"}}"#,
        sha256_hex(lines[3].as_bytes())
    );
    lines.insert(4, forged);
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (6, Some(5)));
    assert_eq!(
        problem,
        Problem::SeqGap {
            expected: 6,
            found: 5
        }
    );
    assert!(problem.to_string().contains("inserted"), "{problem}");
    // A line that is not a record at all.
    let mut lines = original;
    lines.insert(4, "hello".into());
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (5, None));
    assert!(matches!(problem, Problem::NotARecord(_)), "{problem}");
}

#[test]
fn a_cut_tail_shows_only_against_the_last_hash_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (path, last) = written(dir.path(), 8);
    let mut lines = lines_of(&path);
    lines.truncate(7);
    write_lines(&path, &lines);
    assert_eq!(
        verify(std::slice::from_ref(&path), None).unwrap().records,
        7
    );
    let (line, seq, problem) = broken(&path, Some(&last));
    assert_eq!((line, seq), (7, Some(7)));
    assert!(matches!(&problem, Problem::TruncatedTail { expected, .. } if *expected == last));
    // A kept hash a few records back (the store lags a batch): not a cut.
    let earlier = sha256_hex(lines[4].as_bytes());
    let report = verify(std::slice::from_ref(&path), Some(&earlier)).unwrap();
    assert_eq!(report.records_after_expected, Some(2));
}

#[test]
fn fails_on_a_torn_last_line_and_a_missing_chain_start() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = written(dir.path(), 4);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 20]).unwrap();
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq, problem), (5, None, Problem::TornLine));

    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.remove(0);
    write_lines(&path, &lines);
    let (line, seq, problem) = broken(&path, None);
    assert_eq!((line, seq), (1, Some(2)));
    assert_eq!(
        problem,
        Problem::MissingChainStart {
            found: "job".into()
        }
    );

    std::fs::write(&path, "").unwrap();
    assert_eq!(broken(&path, None).2, Problem::EmptyFile);
    assert!(matches!(verify(&[], None), Err(VerifyError::NoFiles)));
    let missing = verify(&[dir.path().join("nope")], None).unwrap_err();
    assert!(matches!(missing, VerifyError::Io { .. }), "{missing}");
}

#[test]
fn a_missing_or_misplaced_file_breaks_the_link_between_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        max_file_bytes: 1500,
        ..config(dir.path())
    };
    let log = AuditLog::open(&cfg, None).unwrap();
    for n in 0..12 {
        log.record("job", job(n, "completed", Some(0), None));
    }
    assert!(log.flush(Duration::from_secs(10)));
    let files = chain_files(cfg.path.as_ref().unwrap()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert!(verify(&files, None).is_ok());
    let mut gap = files.clone();
    gap.remove(1);
    match verify(&gap, None) {
        Err(VerifyError::Broken {
            at,
            problem: Problem::BrokenLink { previous, .. },
        }) => {
            assert_eq!((at.file, at.line), (files[2].clone(), 1));
            assert_eq!(previous, files[0]);
        }
        other => panic!("{other:?}"),
    }
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    assert!(matches!(
        verify(&swapped, None),
        Err(VerifyError::Broken {
            problem: Problem::BrokenLink { .. },
            ..
        })
    ));
}

#[test]
fn a_rewrite_from_the_edit_on_passes_unless_the_last_hash_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (path, last) = written(dir.path(), 8);
    let mut lines = lines_of(&path);
    lines[4] = lines[4].replace(r#""status":"completed""#, r#""status":"failed""#);
    rechain(&mut lines, 5);
    write_lines(&path, &lines);
    // What the chain cannot prove: someone who can write the file rewrote it consistently.
    assert!(verify(std::slice::from_ref(&path), None).is_ok());
    // The last hash kept elsewhere catches it.
    let (line, _, problem) = broken(&path, Some(&last));
    assert_eq!(line, 9);
    assert!(
        matches!(problem, Problem::TruncatedTail { .. }),
        "{problem}"
    );
}
