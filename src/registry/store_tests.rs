//! The registry writer when a commit fails because of a write itself: only that write is lost.
//! (A full disk, where the writes are kept and retried, is tested through the built server in
//! `tests/exhaustion.rs`.)

use std::sync::atomic::Ordering;

use super::store::{Row, Store, get};
use crate::protocol::{JobRecord, JobState};

fn row(id: &str, created_at: f64) -> Row {
    Row {
        record: JobRecord::new(id.into(), JobState::Completed, created_at, "true".into()),
        request_hash: None,
        identity: None,
        spool: None,
    }
}

#[tokio::test]
async fn a_write_that_cannot_be_stored_is_dropped_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ccx.db")).unwrap();
    // SQLite stores NaN as NULL, and `created_at` is NOT NULL: "b" can never be stored.
    store.put(row("a", 1.0));
    store.put(row("b", f64::NAN));
    store.put(row("c", 3.0));
    store.flush().await;
    let found = store
        .read(|c| {
            Ok([
                get(c, "a")?.is_some(),
                get(c, "b")?.is_some(),
                get(c, "c")?.is_some(),
            ])
        })
        .await
        .unwrap();
    assert_eq!(found, [true, false, true]);
    // Not an outage: nothing is kept for a retry.
    let health = store.write_health();
    assert_eq!(health.errors.load(Ordering::Relaxed), 0);
    assert_eq!(health.retained.load(Ordering::Relaxed), 0);
}
