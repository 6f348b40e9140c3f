//! Which workers a gateway hears: their heartbeats (bucket `ccx_workers`, followed with a
//! watch that starts from each worker's last entry), a direct ping for one that went quiet,
//! and the sweeper that ends the jobs of a worker that died when no gateway follows them.
//!
//! A gateway following a job judges its worker itself (the relay, within two heartbeats).
//! The sweeper covers jobs nobody follows — detached jobs whose gateway stopped, jobs of a
//! gateway that restarted — more slowly: a worker silent for three heartbeats that does not
//! answer a ping has every record still `running` on it ended `lost` (compare-and-swap on
//! each, guarded by the worker's name, so a job that moved on, or that a relay ended first,
//! is left alone), and its heartbeat entry deleted unless it wrote a new one meanwhile.

use super::{RecordState, Streams, end_event, ping_subject};
use crate::events::JobStatus;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What a gateway last heard from one worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Beat {
    pub(super) seen: Instant,
    /// The revision of its heartbeat entry then (0: heard through a ping only).
    pub(super) revision: u64,
}

/// Worker name → what this gateway last heard from it.
pub(super) type Liveness = Arc<Mutex<HashMap<String, Beat>>>;

/// Notes that `worker` was heard from now.
pub(super) fn saw(liveness: &Liveness, worker: &str) {
    let mut map = liveness.lock().expect("lock");
    let beat = map.entry(worker.to_string()).or_insert(Beat {
        seen: Instant::now(),
        revision: 0,
    });
    beat.seen = Instant::now();
}

/// When `worker` was last heard from, if ever.
pub(super) fn last_seen(liveness: &Liveness, worker: &str) -> Option<Instant> {
    liveness.lock().expect("lock").get(worker).map(|b| b.seen)
}

/// Asks a worker whose heartbeats stopped arriving whether it is there after all (a busy
/// machine can be late): `true` if it answers within one heartbeat. A dead worker has no
/// subscription left, so NATS says "no responders" at once.
pub(super) async fn answers(
    client: &async_nats::Client,
    liveness: &Liveness,
    worker: &str,
    heartbeat: Duration,
) -> bool {
    let asked = tokio::time::timeout(
        heartbeat,
        client.request(ping_subject(worker), bytes::Bytes::new()),
    )
    .await;
    let alive = matches!(asked, Ok(Ok(_)));
    if alive {
        saw(liveness, worker);
    }
    alive
}

/// Follows the heartbeats bucket into `liveness` (each worker's entry there when it starts
/// counts as heard now) until the gateway is gone.
pub(super) fn follow_heartbeats(
    mut beats: kv::Watch,
    liveness: Weak<Mutex<HashMap<String, Beat>>>,
) {
    tokio::spawn(async move {
        while let Some(beat) = beats.next().await {
            let beat = match beat {
                Ok(b) => b,
                Err(e) => {
                    debug!(cause = %e, "heartbeat watch");
                    continue;
                }
            };
            debug!(worker = %beat.key, op = ?beat.operation, "heartbeat");
            let Some(liveness) = liveness.upgrade() else {
                return;
            };
            let mut map = liveness.lock().expect("lock");
            if beat.operation == kv::Operation::Put {
                map.insert(
                    beat.key,
                    Beat {
                        seen: Instant::now(),
                        revision: beat.revision,
                    },
                );
            } else {
                map.remove(&beat.key);
            }
        }
    });
}

/// Every heartbeat, ends the running jobs of workers silent for three heartbeats that do not
/// answer a ping, until the gateway is gone.
pub(super) async fn sweep(
    streams: Streams,
    client: async_nats::Client,
    liveness: Weak<Mutex<HashMap<String, Beat>>>,
    heartbeat: Duration,
) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(liveness) = liveness.upgrade() else {
            return;
        };
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let silent: Vec<(String, Beat)> = {
            let mut map = liveness.lock().expect("lock");
            if !connected {
                // A gateway that lost NATS hears nobody and judges nobody; counted again
                // from when it hears the cluster again.
                map.values_mut().for_each(|b| b.seen = Instant::now());
                continue;
            }
            map.iter()
                .filter(|(_, b)| b.seen.elapsed() > heartbeat * 3)
                .map(|(w, b)| (w.clone(), *b))
                .collect()
        };
        for (worker, beat) in silent {
            if answers(&client, &liveness, &worker, heartbeat).await {
                continue;
            }
            if let Err(e) = end_jobs_of(&streams, &worker, beat, heartbeat).await {
                // Judged again next round.
                warn!(%worker, cause = %e, "cannot end a dead worker's jobs");
                continue;
            }
            liveness.lock().expect("lock").remove(&worker);
            // Gone for every gateway, unless it beat again meanwhile.
            let revision = (beat.revision > 0).then_some(beat.revision);
            if let Err(e) = streams
                .workers
                .delete_expect_revision(&worker, revision)
                .await
            {
                debug!(cause = %e, "a dead worker's heartbeat stays");
            }
        }
    }
}

/// Ends `lost` every record still `running` on `worker`, publishing each one's end.
async fn end_jobs_of(
    streams: &Streams,
    worker: &str,
    beat: Beat,
    heartbeat: Duration,
) -> Result<(), String> {
    let records = super::job_ops::all_records(streams)
        .await
        .map_err(|e| e.to_string())?;
    let error = format!(
        "worker {worker} stopped sending heartbeats ({:.1} s silent, heartbeat {} s) while the job ran",
        beat.seen.elapsed().as_secs_f64(),
        heartbeat.as_secs_f64()
    );
    let running = records
        .iter()
        .filter(|r| r.state == RecordState::Running && r.worker.as_deref() == Some(worker));
    for record in running {
        let job = record.job_id.as_str();
        let ended = streams
            .end_if(
                job,
                RecordState::Running,
                Some(worker),
                JobStatus::Lost,
                &error,
            )
            .await?;
        if ended {
            warn!(job, %worker, "its worker died and no gateway followed it; the job ends lost");
            let end = end_event(job, JobStatus::Lost, Some(error.clone()));
            if let Err(e) = streams.publish_event(&end).await {
                warn!(job, cause = %e, "cannot publish the job's end");
            }
        }
    }
    Ok(())
}
