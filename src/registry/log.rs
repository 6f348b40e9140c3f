//! One job's handle on the registry ([`JobLog`]): the executor feeds it the job's events and
//! output; the record follows from them, and the output goes to the spool. The spiller
//! ([`start_spiller`]) writes out the in-memory spools of jobs that outlive
//! [`INLINE_WINDOW`].

use super::reap;
use super::spool::{INLINE_WINDOW, SpoolWriter};
use super::store::Row;
use super::{Inner, Live, NewJob, Registry, gap_note, now};
use crate::events::{Completion, Event};
use crate::protocol::{JobRecord, JobState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// A job whose spool may need writing out at `due`.
pub(super) type SpillDue = (Instant, Weak<LogInner>);

/// Starts the thread that writes out, [`INLINE_WINDOW`] after each job's start, the spool
/// of every job still running then. Jobs arrive in start order, so their due times are in
/// order too; the thread sleeps only while one is pending, and ends with the registry.
pub(super) fn start_spiller() -> std::io::Result<mpsc::Sender<SpillDue>> {
    let (tx, rx) = mpsc::channel::<SpillDue>();
    std::thread::Builder::new()
        .name("ccx-spool".into())
        .spawn(move || {
            while let Ok((due, job)) = rx.recv() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if let Some(l) = job.upgrade() {
                    let mut spool = l.spool.lock().expect("lock");
                    spool.persist();
                    if let Some(e) = spool.take_new_error() {
                        l.reg.spool_failed(&e);
                    }
                }
            }
        })?;
    Ok(tx)
}

impl Registry {
    /// Records a new (queued) job and returns its log.
    pub fn create(&self, job: NewJob) -> JobLog {
        let Some(inner) = &self.inner else {
            return JobLog::default();
        };
        let mut record = JobRecord::new(job.job_id.clone(), JobState::Queued, now(), job.command);
        record.cwd = job.cwd;
        record.env = job.env;
        record.peer = job.peer;
        record.token_label = job.token_label;
        record.session_id = job.session_id;
        record.detached = job.detached;
        record.output_encoding = job.output_encoding;
        record.idempotency_key = job.idempotency_key;
        record.timeout = job.timeout;
        let spool_dir = inner.spool_root.join(&*job.job_id);
        let writer = SpoolWriter::create(
            spool_dir.clone(),
            inner.cfg.max_output_bytes_per_job,
            inner.spool_io.clone(),
        );
        let live = Arc::new(Live {
            inline: writer.inline(),
            record: Mutex::new(record),
            request_hash: job.request_hash,
            identity: Mutex::new(None),
            progress: writer.subscribe(),
            spool_dir,
            detached: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
        });
        inner
            .live
            .lock()
            .expect("lock")
            .insert(job.job_id.clone(), live.clone());
        inner.put(&live);
        let log_inner = Arc::new(LogInner {
            reg: inner.clone(),
            live,
            spool: Mutex::new(writer),
        });
        let _ = inner
            .spiller
            .send((Instant::now() + INLINE_WINDOW, Arc::downgrade(&log_inner)));
        let log = JobLog {
            inner: Some(log_inner),
        };
        if job.detached {
            // Checked by the caller against the limit first.
            log.mark_detached();
        }
        log
    }
}

/// One job's handle on the registry: the executor feeds it the job's events and output.
/// The default value (registry off) records nothing.
#[derive(Clone, Default)]
pub struct JobLog {
    inner: Option<Arc<LogInner>>,
}

pub(super) struct LogInner {
    reg: Arc<Inner>,
    live: Arc<Live>,
    spool: Mutex<SpoolWriter>,
}

impl JobLog {
    /// Marks the job detached (counted against `max_detached` until it ends). `false` if it
    /// already was.
    pub fn mark_detached(&self) -> bool {
        let Some(l) = &self.inner else { return false };
        if l.live.detached.swap(true, Ordering::AcqRel) {
            return false;
        }
        l.reg.detached.fetch_add(1, Ordering::AcqRel);
        l.live.record.lock().expect("lock").detached = true;
        l.reg.put(&l.live);
        true
    }

    /// Whether the job outlives its connection.
    pub fn is_detached(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|l| l.live.detached.load(Ordering::Acquire))
    }

    /// Waits until the job's spool is written to its end (after its terminal event; at
    /// once for a spool that stayed in memory).
    pub async fn settled(&self) {
        let Some(l) = &self.inner else { return };
        let mut progress = l.live.progress.clone();
        let _ = progress.wait_for(|p| p.ended).await;
    }

    /// Records the identity of the job's process right after spawning it.
    pub fn spawned(&self, pid: u32, pgid: i32) {
        let Some(l) = &self.inner else { return };
        let ident = reap::identify(pid).map(|mut i| {
            i.pgid = pgid;
            i
        });
        *l.live.identity.lock().expect("lock") = ident.and_then(|i| serde_json::to_string(&i).ok());
        let mut r = l.live.record.lock().expect("lock");
        r.pid = Some(pid);
        r.pgid = Some(pgid);
    }

    /// Appends one read of output to the spool.
    pub fn output(&self, stdout: bool, seq: u64, offset: u64, bytes: &[u8]) {
        let Some(l) = &self.inner else { return };
        // The end of a stream (no bytes) is not stored: a replay flushes what is left of a
        // split character when it reaches the job's end.
        if bytes.is_empty() {
            return;
        }
        l.live.last_seq.store(seq, Ordering::Relaxed);
        let mut spool = l.spool.lock().expect("lock");
        spool.output(stdout, seq, offset, bytes);
        if let Some(e) = spool.take_new_error() {
            l.reg.spool_failed(&e);
        }
    }

    /// Records a job event: spooled (except the terminal one, which the record carries), and
    /// the record updated from it.
    pub fn event(&self, event: &Event) {
        let Some(l) = &self.inner else { return };
        if !matches!(event, Event::Completed(_)) {
            let json = serde_json::to_vec(event).expect("events serialize");
            let mut spool = l.spool.lock().expect("lock");
            spool.event(&json);
            if let Some(e) = spool.take_new_error() {
                l.reg.spool_failed(&e);
            }
        }
        let changed = {
            let mut r = l.live.record.lock().expect("lock");
            match event {
                Event::Started(s) => {
                    r.status = JobState::Running;
                    r.started_at = Some(now());
                    r.command_run = Some(s.command.clone());
                    r.pid = Some(s.pid);
                    r.pgid = Some(s.pgid);
                    r.timeout = Some(s.timeout);
                    r.pre_hooks = s.hooks.clone();
                    r.limits = s.limits;
                    r.pty = s.pty;
                    true
                }
                Event::Paused(_) => {
                    r.status = JobState::Paused;
                    true
                }
                Event::Resumed(_) => {
                    r.status = JobState::Running;
                    true
                }
                _ => false,
            }
        };
        if changed {
            l.reg.put(&l.live);
        }
        if let Event::Completed(c) = event {
            self.finish(l, c);
        }
    }

    fn finish(&self, l: &LogInner, c: &Completion) {
        // The record is final before the spool says it has ended: a replay that sees the end
        // reads the record next.
        let mut spool = l.spool.lock().expect("lock");
        let (spool_error, gap, last_seq) = { (spool.error(), spool.gap(), spool.last_seq()) };
        {
            let mut r = l.live.record.lock().expect("lock");
            r.status = c.status.into();
            r.ended_at = Some(now());
            r.exit_code = c.exit_code;
            r.signal = c.signal;
            r.error = c.error.clone();
            r.denied_by = c.hook.clone();
            r.denied_reason = c.reason.clone();
            r.post_hooks = c.hooks.clone();
            r.stdout_bytes = c.stdout_bytes;
            r.stderr_bytes = c.stderr_bytes;
            r.stdout_sha256 = c.stdout_sha256.clone();
            r.stderr_sha256 = c.stderr_sha256.clone();
            r.execution_time = Some(c.execution_time);
            r.leftovers_killed = c.leftovers_killed;
            r.limit = c.limit;
            r.usage = c.usage;
            r.pid = c.pid.or(r.pid);
            r.pgid = c.pgid.or(r.pgid);
            r.last_seq = last_seq.max(l.live.last_seq.load(Ordering::Relaxed));
            r.output_gap = gap.map(|g| gap_note(&r.job_id, g));
            r.spool_error = spool_error;
        }
        *l.live.identity.lock().expect("lock") = None;
        if l.live.detached.load(Ordering::Acquire) {
            l.reg.detached.fetch_sub(1, Ordering::AcqRel);
        }
        // The row is written once the spool's last write is done (readers of an ended job
        // read its files); readers find the job in the database once the row is committed,
        // until then here.
        let (live, reg) = (l.live.clone(), l.reg.clone());
        spool.finish(move |closed| {
            if let Some(e) = &closed.new_error {
                reg.spool_failed(e);
            }
            let record = {
                let mut r = live.record.lock().expect("lock");
                r.spool_error = closed.error;
                r.clone()
            };
            if let Some(listener) = reg.on_end.get() {
                listener(&record);
            }
            let id = record.job_id.clone();
            let weak = Arc::downgrade(&reg);
            reg.store.put_then(
                Row {
                    record,
                    request_hash: live.request_hash.clone(),
                    identity: None,
                    spool: closed.kept,
                },
                Box::new(move || {
                    if let Some(reg) = weak.upgrade() {
                        reg.live.lock().expect("lock").remove(&id);
                    }
                }),
            );
        });
    }
}
