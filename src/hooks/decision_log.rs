//! The decision log (`[sandbox] decision_log`): every hook decision as one JSON line — time,
//! job, the request the hook saw (values of secret variables masked), hook, the component's
//! SHA-256, the config generation, stage, mode, the matcher rule, decision, reason, patch, duration, fuel and failure
//! kind — as OPA's decision logs keep them, for audits and for `ccx hooks replay`.
//!
//! Lines are written by a thread of their own behind a bounded queue: a hook chain never
//! waits for the disk. When the queue is full (the disk is far behind) a record is dropped and
//! counted, never the job. The file is rotated by size: at `max_bytes` it becomes `FILE.1`
//! (the one before is removed) and a new file starts.

use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Records that may wait for the writer thread.
const QUEUE: usize = 4096;

/// One decision, as written.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub job_id: String,
    pub hook: String,
    /// SHA-256 of the component that decided; absent for a hook that failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The config generation whose hook set made the call (1 for the first, +1 with every
    /// applied reload; 0 outside a server).
    pub generation: u64,
    pub stage: &'static str,
    pub mode: super::HookMode,
    /// The matcher rule that let the hook see the job, when it has a matcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// `allow`, `deny`, `modify`, `pass`, `fail`, `annotate` or `failed`.
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<super::RequestPatch>,
    pub duration_us: u64,
    pub fuel: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<super::FailureKind>,
    /// The request the hook saw (env values of secret variables as `***`).
    pub request: super::HookRequest,
}

/// Seconds since the Unix epoch, for [`DecisionRecord::time`].
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Where decisions go; cheap to share.
#[derive(Clone)]
pub struct DecisionLog {
    tx: SyncSender<DecisionRecord>,
    secret: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    dropped: Arc<AtomicU64>,
}

impl DecisionLog {
    /// Opens (appends to) `path`, rotating at `max_bytes`; `secret(name)` says which variables'
    /// values to mask. Errors: the file cannot be opened.
    pub fn open(
        path: PathBuf,
        max_bytes: u64,
        secret: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> std::io::Result<DecisionLog> {
        let open = |p: &PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        let mut file = open(&path)?;
        let (tx, rx) = sync_channel::<DecisionRecord>(QUEUE);
        std::thread::Builder::new()
            .name("ccx-decisions".into())
            .spawn(move || {
                let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
                for record in rx {
                    let Ok(mut line) = serde_json::to_vec(&record) else {
                        continue;
                    };
                    line.push(b'\n');
                    if size > 0 && size + line.len() as u64 > max_bytes {
                        let mut old = path.clone().into_os_string();
                        old.push(".1");
                        let _ = std::fs::rename(&path, &old);
                        match open(&path) {
                            Ok(f) => (file, size) = (f, 0),
                            Err(e) => tracing::warn!(error = %e, "decision log: cannot rotate"),
                        }
                    }
                    match file.write_all(&line) {
                        Ok(()) => size += line.len() as u64,
                        Err(e) => tracing::warn!(error = %e, "decision log: write failed"),
                    }
                }
            })?;
        Ok(DecisionLog {
            tx,
            secret,
            dropped: Arc::default(),
        })
    }

    /// Queues `record` (masking its request's secret values); drops it when the queue is full.
    pub fn record(&self, mut record: DecisionRecord) {
        for (k, v) in &mut record.request.env {
            if (self.secret)(k) {
                *v = "***".into();
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "decision log is behind; records dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: usize) -> DecisionRecord {
        DecisionRecord {
            time: 0.0,
            job_id: format!("job-{job}"),
            hook: "guard".into(),
            sha256: Some("0".repeat(64)),
            generation: 1,
            stage: "pre",
            mode: super::super::HookMode::Enforce,
            matched: None,
            decision: "allow".into(),
            reason: None,
            patch: None,
            duration_us: 1,
            fuel: 1,
            failure: None,
            request: super::super::HookRequest {
                command: "echo hi".into(),
                ..Default::default()
            },
        }
    }

    /// The job ids of a JSON Lines file, each line parsed.
    fn jobs(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: `{l}`: {e}", path.display()));
                v["job_id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn the_log_rotates_at_its_size_into_file_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let rotated = dir.path().join("d.jsonl.1");
        let line = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        // Room for three lines a file: ten records rotate three times.
        let log =
            DecisionLog::open(path.clone(), 3 * line + line / 2, Arc::new(|_| false)).unwrap();
        for job in 0..10 {
            log.record(record(job));
        }
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while jobs(&path).last().map(String::as_str) != Some("job-9") {
            assert!(std::time::Instant::now() < deadline, "{:?}", jobs(&path));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The newest records in FILE, the three before them in FILE.1; older ones are gone.
        assert_eq!(jobs(&path), ["job-9"]);
        assert_eq!(jobs(&rotated), ["job-6", "job-7", "job-8"]);
        for file in [&path, &rotated] {
            assert!(std::fs::metadata(file).unwrap().len() <= 3 * line + line / 2);
        }
    }
}
