//! The reload trigger: polls the config file and the hook files it names for changes, and
//! listens for SIGHUP.

use super::Config;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a file looked like when last checked: modification time, size and inode, or
/// nothing when it was missing.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamps(config: &Path, hooks: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    std::iter::once(config)
        .chain(hooks.iter().map(PathBuf::as_path))
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// Watches the config file and the hook files it names: every `interval` (if any) it checks
/// whether one of them changed, and on SIGHUP it reloads regardless. Each reload sends the
/// freshly validated config, or the reason it did not validate, to `tx`. The files are
/// compared with how they look when this is *called* (not when the future first runs), so a
/// change made right after is not missed. The future returns when the receiver is gone.
pub fn watch_config(
    path: PathBuf,
    hooks: Vec<PathBuf>,
    interval: Option<Duration>,
    tx: tokio::sync::mpsc::Sender<Result<Config>>,
) -> impl std::future::Future<Output = ()> + Send {
    let last = stamps(&path, &hooks);
    // SIGHUP is taken over now too, so a signal sent right after start is not lost.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    watch(path, hooks, last, hup, interval, tx)
}

async fn watch(
    path: PathBuf,
    mut hooks: Vec<PathBuf>,
    mut last: Vec<Stamp>,
    mut hup: Option<tokio::signal::unix::Signal>,
    interval: Option<Duration>,
    tx: tokio::sync::mpsc::Sender<Result<Config>>,
) {
    let mut tick = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let forced = tokio::select! {
            _ = async { tick.as_mut().expect("guarded").tick().await }, if tick.is_some() => false,
            _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => true,
            _ = tx.closed() => return,
        };
        let now = stamps(&path, &hooks);
        if !forced && now == last {
            continue;
        }
        last = now;
        let result = Config::load(&path).map(|mut c| {
            c.apply_token_env();
            c
        });
        if let Ok(c) = &result {
            let paths: Vec<PathBuf> = c.hooks.iter().map(|h| h.path.clone()).collect();
            if paths != hooks {
                hooks = paths;
                last = stamps(&path, &hooks);
            }
        }
        if tx.send(result).await.is_err() {
            return;
        }
    }
}
