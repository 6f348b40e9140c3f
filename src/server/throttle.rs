//! Throttling of failed authentication, per peer address: after [`FAILURES_ALLOWED`] missing or
//! wrong tokens from one IP address within [`WINDOW`], its further failures are answered
//! `429 Too Many Requests` with `Retry-After` (RFC 9110 §10.2.3; RFC 6585 §4) until the window
//! ends, and are neither audited nor logged one by one (one line says the peer is throttled). A
//! request with a valid token is always served, from any address: clients behind the same
//! address (every local client is 127.0.0.1) are never locked out by someone else's guesses.
//! The throttle protects the logs, the audit log and the server's time; a token's secrecy
//! rests on its length (see docs/security.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts one address may make per window before it is throttled.
pub const FAILURES_ALLOWED: u32 = 10;
/// How long a window lasts (and so the longest `Retry-After`).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses tracked at once; past it, windows that ended are dropped, then the oldest.
const MAX_PEERS: usize = 10_000;

/// One address's failures in the current window.
#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What a failure means for its peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit: answer 401 and audit it as usual.
    Refuse,
    /// The failure that crossed the limit: answer 429, and say once that the peer is
    /// throttled.
    StartThrottling(Duration),
    /// Throttled already: answer 429 quietly.
    Throttled(Duration),
}

/// Failed authentication per peer address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    peers: Mutex<HashMap<IpAddr, Window>>,
}

impl AuthThrottle {
    /// Records a failed attempt from `ip` at `now`; says how to answer it.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, w| now.duration_since(w.started) < WINDOW);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| *k)
            {
                peers.remove(&oldest);
            }
        }
        let window = peers.entry(ip).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        let retry_after = WINDOW.saturating_sub(now.duration_since(window.started));
        match window.failures {
            n if n <= FAILURES_ALLOWED => Verdict::Refuse,
            n if n == FAILURES_ALLOWED + 1 => Verdict::StartThrottling(retry_after),
            _ => Verdict::Throttled(retry_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_window_is_throttled_until_the_window_ends() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let start = Instant::now();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(t.failed(ip, start), Verdict::Refuse);
        }
        let later = start + Duration::from_secs(15);
        assert_eq!(
            t.failed(ip, later),
            Verdict::StartThrottling(Duration::from_secs(45))
        );
        assert_eq!(
            t.failed(ip, later),
            Verdict::Throttled(Duration::from_secs(45))
        );
        // Another address has its own window.
        assert_eq!(t.failed(other, later), Verdict::Refuse);
        // A new window starts once this one has passed.
        assert_eq!(t.failed(ip, start + WINDOW), Verdict::Refuse);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 100) {
            t.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
