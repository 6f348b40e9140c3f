//! The spool's writer and reader together, on a real folder.
use super::*;

fn io() -> Io {
    Io::start().unwrap()
}

/// Ends the spool and waits until it is written; returns what it kept in memory.
fn finish_now(w: &mut SpoolWriter, io: &Io) -> Option<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    w.finish(move |c| tx.send(c.kept).unwrap());
    io.flush();
    rx.recv().unwrap()
}

/// Writes `sizes` as stdout reads, then both streams' ends; returns the reader's items.
fn roundtrip(max: u64, sizes: &[usize]) -> (Vec<Item>, Option<Gap>) {
    roundtrip_with_step(max, sizes, 1)
}

/// The same, with the reads' seqs `step` apart (the seqs between: empty reads, not stored).
fn roundtrip_with_step(max: u64, sizes: &[usize], step: u64) -> (Vec<Item>, Option<Gap>) {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let mut w = SpoolWriter::create(dir.path().join("job"), max, io.clone());
    assert!(w.error().is_none());
    let mut seq = 0;
    let mut offset = 0;
    for (i, n) in sizes.iter().enumerate() {
        seq += step;
        w.output(true, seq, offset, &vec![i as u8; *n]);
        offset += *n as u64;
    }
    w.event(br#"{"method":"process.paused","params":{"job_id":"j","status":"paused"}}"#);
    w.output(true, seq + 1, offset, &[]);
    w.output(false, seq + 2, 0, &[]);
    let kept_bytes = finish_now(&mut w, &io);
    assert!(w.error().is_none(), "{:?}", w.error());
    let mut r = SpoolReader::open(dir.path().join("job"), None, None, kept_bytes.map(kept));
    let mut items = Vec::new();
    while let Some(item) = r.read_next().unwrap() {
        items.push(item);
    }
    (items, w.gap())
}

fn output_bytes(items: &[Item]) -> u64 {
    items
        .iter()
        .map(|i| match i {
            Item::Output { bytes, .. } => bytes.len() as u64,
            _ => 0,
        })
        .sum()
}

#[test]
fn everything_comes_back_in_order_when_it_fits() {
    let (items, gap) = roundtrip(1 << 20, &[10, 20, 30]);
    assert_eq!(gap, None);
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Output { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(output_bytes(&items), 60);
    assert!(
        matches!(items[3], Item::Event(_)),
        "the event keeps its place"
    );
}

#[test]
fn head_gap_and_tail_add_up_and_the_tail_keeps_the_newest_read() {
    head_gap_and_tail_add_up(1);
}

#[test]
fn the_writers_gap_names_the_next_stored_seq_when_seqs_skip() {
    // A stream's end takes a seq but stores nothing; the writer's gap (which the job's
    // record carries) must agree with what a reader finds past the missing segments.
    head_gap_and_tail_add_up(2);
}

fn head_gap_and_tail_add_up(step: u64) {
    // Reads larger than a segment (16 KiB) and than half the budget (32 KiB).
    let sizes = [65536, 65536, 1000, 65536, 65536, 7, 65536];
    let total: u64 = sizes.iter().map(|n| *n as u64).sum();
    let (items, gap) = roundtrip_with_step(65536, &sizes, step);
    let gap = gap.expect("a gap");
    let found: Vec<&Gap> = items
        .iter()
        .filter_map(|i| match i {
            Item::Gap(g) => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(*found[0], gap);
    assert_eq!(output_bytes(&items) + gap.bytes, total);
    let last_data = items.iter().rev().find_map(|i| match i {
        Item::Output { bytes, seq, .. } if !bytes.is_empty() => Some(*seq),
        _ => None,
    });
    assert_eq!(
        last_data,
        Some(sizes.len() as u64 * step),
        "the newest read is kept"
    );
}

#[test]
fn a_reader_can_start_after_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let mut w = SpoolWriter::create(dir.path().join("job"), 1 << 20, io.clone());
    for seq in 1..=5 {
        w.output(seq % 2 == 0, seq, 0, b"x");
    }
    let kept_bytes = finish_now(&mut w, &io);
    assert!(kept_bytes.is_some(), "five bytes stay in memory");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no file for a short spool"
    );
    let mut r = SpoolReader::open(dir.path().join("job"), None, Some(3), kept_bytes.map(kept));
    let mut seqs = Vec::new();
    while let Some(Item::Output { seq, .. }) = r.read_next().unwrap() {
        seqs.push(seq);
    }
    assert_eq!(seqs, [4, 5]);
}

#[test]
fn a_live_reader_follows_segment_one_from_memory_into_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("job");
    let io = io();
    let mut w = SpoolWriter::create(base.clone(), 1 << 20, io.clone());
    let mut r = SpoolReader::open(base.clone(), Some(w.subscribe()), None, Some(w.inline()));
    w.output(true, 1, 0, b"first");
    let Some(Item::Output { bytes, .. }) = r.read_next().unwrap() else {
        panic!("the first record, from memory")
    };
    assert_eq!(bytes, b"first");
    assert_eq!(r.read_next().unwrap(), None, "caught up");
    w.persist();
    io.flush();
    assert!(segment_path(&base, 1).exists(), "spilled to its file");
    // More than fits in memory afterwards goes to the file too.
    w.output(true, 2, 5, &vec![7u8; 40 << 10]);
    io.flush();
    let Some(Item::Output { seq, bytes, .. }) = r.read_next().unwrap() else {
        panic!("the second record, from the file")
    };
    assert_eq!((seq, bytes.len()), (2, 40 << 10));
    assert_eq!(
        finish_now(&mut w, &io),
        None,
        "nothing kept in memory once spilled"
    );
    assert_eq!(r.read_next().unwrap(), None);
}

#[test]
fn a_job_without_output_spills_only_at_its_first_output() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("job");
    let io = io();
    let mut w = SpoolWriter::create(base.clone(), 1 << 20, io.clone());
    w.event(br#"{"method":"process.started","params":{"job_id":"j"}}"#);
    // Past the window with no output: no file.
    w.persist();
    io.flush();
    assert!(
        !segment_path(&base, 1).exists(),
        "no file for a job without output"
    );
    // Its first output spills at once, the event before it included.
    w.output(true, 1, 0, b"late");
    io.flush();
    assert!(
        segment_path(&base, 1).exists(),
        "spilled at the first output"
    );
    assert_eq!(finish_now(&mut w, &io), None, "nothing kept in memory");
    let mut r = SpoolReader::open(base.clone(), None, None, None);
    assert!(matches!(r.read_next().unwrap(), Some(Item::Event(_))));
    let Some(Item::Output { bytes, .. }) = r.read_next().unwrap() else {
        panic!("the output, from the file")
    };
    assert_eq!(bytes, b"late");
}

#[test]
fn batched_writes_land_exactly_and_a_crashs_zero_padding_reads_as_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let io = io();
    let base = dir.path().join("job");
    let mut w = SpoolWriter::create(base.clone(), 1 << 30, io.clone());
    // Enough queued at once for batches past `DIRECT_MIN`, in reads of odd sizes.
    let mut want = Vec::new();
    for i in 0..400u64 {
        let chunk: Vec<u8> = (0..(10_000 + i as usize * 7))
            .map(|j| (i as usize + j) as u8)
            .collect();
        w.output(true, i + 1, want.len() as u64, &chunk);
        want.extend_from_slice(&chunk);
    }
    assert!(finish_now(&mut w, &io).is_none(), "spilled to its file");
    assert!(w.error().is_none(), "{:?}", w.error());
    let seg = segment_path(&base, 1);
    let records = 400 * HEADER_BYTES as u64 + want.len() as u64;
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        records,
        "no padding once finished"
    );
    let read_all = || {
        let mut r = SpoolReader::open(base.clone(), None, None, None);
        let mut got = Vec::new();
        while let Some(item) = r.read_next().unwrap() {
            match item {
                Item::Output { bytes, .. } => got.extend_from_slice(&bytes),
                other => panic!("only output was written, got {other:?}"),
            }
        }
        got
    };
    assert!(read_all() == want, "every byte back, in order");
    // A crash leaves the last block padded with zeros: read as the end, not as a record.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
    assert!(read_all() == want, "the padding is not read as records");
}
