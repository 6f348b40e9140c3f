//! `attach`'s replay: a job's spooled events and output after a `seq`, then (for a live job)
//! what follows, then its `process.completed` — each exactly once, in `seq` order, in the
//! notification shapes of a live job.

use super::spool::{Item, SpoolReader};
use super::{Inner, gap_note, store};
use crate::events::{Completion, Event, JobId, JobStatus};
use crate::protocol::output::OutputEncoder;
use crate::protocol::{AttachResult, JobRecord, JobState, OutputEncoding, OutputGap, Stream};
use std::sync::Arc;
use tracing::warn;

/// A replay in progress; [`Replay::next`] yields its notifications, `None` after the
/// terminal one.
pub struct Replay {
    inner: Arc<Inner>,
    job_id: JobId,
    result: AttachResult,
    reader: SpoolReader,
    encoder: OutputEncoder,
    writer_ended: bool,
    /// Per stream (stdout, stderr): the last output's `seq` and the offset after it, where a
    /// character left incomplete at the stream's end is flushed.
    stream_end: [(u64, u64); 2],
    /// The job ran on a terminal: its output (kept as stdout) is replayed as `pty`.
    tty: bool,
    /// Set once the spool is read to its end; then come the final gap (if output is
    /// missing) and the terminal event.
    tail: Option<Vec<Event>>,
}

impl Replay {
    /// A replay of `record`'s job through `reader` (opened at the `after_seq` asked for).
    pub(super) fn new(
        inner: Arc<Inner>,
        record: JobRecord,
        reader: SpoolReader,
        encoding: Option<OutputEncoding>,
        result: AttachResult,
    ) -> Replay {
        let job_id = record.job_id.clone();
        Replay {
            inner,
            result,
            reader,
            encoder: OutputEncoder::new(job_id.clone(), encoding.unwrap_or(record.output_encoding)),
            job_id,
            writer_ended: false,
            stream_end: [(0, 0); 2],
            tty: record.pty.is_some(),
            tail: None,
        }
    }

    /// The `attach` answer.
    pub fn result(&self) -> &AttachResult {
        &self.result
    }

    /// The next notification; waits while a live job has nothing new. `None` after the
    /// terminal `process.completed`.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(tail) = self.tail.as_mut() {
                return (!tail.is_empty()).then(|| tail.remove(0));
            }
            match self.reader.read_next() {
                Ok(Some(item)) => {
                    if let Some(ev) = self.convert(item) {
                        return Some(ev);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(job = %self.job_id, error = %e, "reading the spool failed; the replay skips to the end");
                    self.end().await;
                    continue;
                }
            }
            if self.writer_ended {
                self.end().await;
                continue;
            }
            if !self.reader.wait().await {
                // Read once more to the end: the last records may have come with the end.
                self.writer_ended = true;
            }
        }
    }

    fn convert(&mut self, item: Item) -> Option<Event> {
        match item {
            Item::Event(json) => {
                let event = serde_json::from_slice(&json).ok();
                // A replay made before the job started learns of its terminal here.
                if let Some(Event::Started(s)) = &event {
                    self.tty |= s.pty.is_some();
                }
                event
            }
            Item::Gap(g) => {
                self.encoder.reset();
                Some(Event::OutputGap(gap_note(&self.job_id, g)))
            }
            Item::Output {
                stdout,
                seq,
                offset,
                bytes,
            } => {
                let stream = match (stdout, self.tty) {
                    (true, false) => Stream::Stdout,
                    (true, true) => Stream::Pty,
                    (false, _) => Stream::Stderr,
                };
                self.stream_end[usize::from(!stdout)] = (seq, offset + bytes.len() as u64);
                self.encoder
                    .encode(stream, seq, offset, &bytes)
                    .map(Event::Output)
            }
        }
    }

    /// The spool is read: queue the gap for output it lacks (a spool that failed, a crash)
    /// and the terminal event, from the job's final record.
    async fn end(&mut self) {
        let record = self.final_record().await;
        let mut tail = Vec::new();
        // A character cut off by the end of its stream becomes U+FFFD, as it did live.
        let first = if self.tty {
            Stream::Pty
        } else {
            Stream::Stdout
        };
        for (i, stream) in [first, Stream::Stderr].into_iter().enumerate() {
            let (seq, offset) = self.stream_end[i];
            if let Some(o) = self.encoder.encode(stream, seq, offset, &[]) {
                tail.push(Event::Output(o));
            }
        }
        let (last_seq, seen) = self.reader.position();
        let total = record.stdout_bytes + record.stderr_bytes;
        if total > seen {
            tail.push(Event::OutputGap(OutputGap {
                job_id: self.job_id.clone(),
                after_seq: last_seq,
                next_seq: record.last_seq.max(last_seq) + 1,
                bytes: total - seen,
            }));
        }
        tail.push(Event::Completed(completion(record)));
        self.tail = Some(tail);
    }

    async fn final_record(&self) -> JobRecord {
        let live = self
            .inner
            .live
            .lock()
            .expect("lock")
            .get(&self.job_id)
            .cloned();
        if let Some(live) = live {
            return live.record.lock().expect("lock").clone();
        }
        self.inner.store.flush().await;
        let id = self.job_id.to_string();
        match self.inner.store.read(move |c| store::get(c, &id)).await {
            Ok(Some(r)) => r,
            _ => {
                let mut c = Completion::without_process(self.job_id.clone(), JobStatus::Lost);
                c.error = Some("the job's record is gone (pruned?)".into());
                record_of(c)
            }
        }
    }
}

/// The terminal event a record stands for.
pub(super) fn completion(r: JobRecord) -> Completion {
    let status = match r.status {
        JobState::Completed => JobStatus::Completed,
        JobState::Failed => JobStatus::Failed,
        JobState::TimedOut => JobStatus::TimedOut,
        JobState::Canceled => JobStatus::Canceled,
        JobState::Denied => JobStatus::Denied,
        JobState::Lost | JobState::Queued | JobState::Running | JobState::Paused => JobStatus::Lost,
    };
    Completion {
        job_id: r.job_id,
        status,
        exit_code: r.exit_code,
        signal: r.signal,
        execution_time: r.execution_time.unwrap_or(0.0),
        stdout_bytes: r.stdout_bytes,
        stderr_bytes: r.stderr_bytes,
        stdout_raw_bytes: None,
        stderr_raw_bytes: None,
        stdout_sha256: r.stdout_sha256,
        stderr_sha256: r.stderr_sha256,
        pid: r.pid,
        pgid: r.pgid,
        error: r.error,
        hook: r.denied_by,
        reason: r.denied_reason,
        hooks: r.post_hooks,
        leftovers_killed: r.leftovers_killed,
        limit: r.limit,
        usage: r.usage,
    }
}

fn record_of(c: Completion) -> JobRecord {
    let mut r = JobRecord::new(c.job_id, JobState::Lost, 0.0, String::new());
    r.error = c.error;
    r
}
