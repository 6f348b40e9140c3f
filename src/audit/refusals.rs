//! The rate limit on `refused` records: a token bucket per peer, so a flood of bad requests
//! cannot fill the disk. Refusals over the limit are counted, and the peer's next recorded
//! refusal says how many were suppressed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Peers with a bucket of their own; past this many (only buckets that are full again with
/// nothing suppressed are forgotten), new peers share one bucket.
pub const MAX_PEERS: usize = 4096;

/// A bucket's key: an IPv4 address, an IPv6 /64 (one host usually has the whole /64), or
/// `None` for the shared bucket of peers past [`MAX_PEERS`].
type Key = Option<IpAddr>;

struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// Token buckets of `per_minute` tokens each, refilled at `per_minute` a minute.
pub struct Refusals {
    per_minute: u32,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

/// The key of `peer`'s bucket: IPv4-mapped IPv6 addresses count as IPv4, other IPv6
/// addresses by their /64.
fn key_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Refusals {
    /// Buckets of `per_minute` tokens (0: every refusal is suppressed).
    pub fn new(per_minute: u32) -> Refusals {
        Refusals {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `peer`'s bucket at `now`: `Some(n)` if the refusal is to be
    /// recorded, `n` being the refusals suppressed since the peer's last recorded one (now
    /// reset); `None` if it is suppressed (and counted).
    pub fn admit(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let refill = |b: &mut Bucket| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + secs * rate).min(cap);
            b.at = now;
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = Some(key_of(peer));
        if !buckets.contains_key(&key) && buckets.len() >= MAX_PEERS {
            buckets.retain(|k, b| {
                refill(b);
                k.is_none() || b.tokens < cap || b.suppressed > 0
            });
            if buckets.len() >= MAX_PEERS {
                key = None;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: cap,
            at: now,
            suppressed: 0,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(std::mem::take(&mut bucket.suppressed))
        } else {
            bucket.suppressed += 1;
            None
        }
    }

    /// Peers with a bucket (the shared one included).
    #[cfg(test)]
    pub fn peers(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_per_peer_refilled_over_a_minute() {
        let r = Refusals::new(30);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..30 {
            assert_eq!(r.admit(a, t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(r.admit(a, t0), None);
        }
        // Another peer is not affected.
        assert_eq!(r.admit(b, t0), Some(0));
        // 2 s later one token (30 a minute) is back; the record says 7 were suppressed.
        assert_eq!(r.admit(a, t0 + Duration::from_secs(2)), Some(7));
        assert_eq!(r.admit(a, t0 + Duration::from_secs(2)), None);
        assert_eq!(r.admit(a, t0 + Duration::from_secs(120)), Some(1));
    }

    #[test]
    fn ipv6_peers_share_a_bucket_per_64_and_zero_suppresses_all() {
        let r = Refusals::new(1);
        let t0 = Instant::now();
        assert_eq!(r.admit("2001:db8::1".parse().unwrap(), t0), Some(0));
        assert_eq!(r.admit("2001:db8::ffff:2".parse().unwrap(), t0), None);
        assert_eq!(r.admit("2001:db8:0:1::1".parse().unwrap(), t0), Some(0));
        assert_eq!(r.admit("::ffff:192.0.2.9".parse().unwrap(), t0), Some(0));
        assert_eq!(r.admit("192.0.2.9".parse().unwrap(), t0), None);
        let off = Refusals::new(0);
        assert_eq!(off.admit("192.0.2.9".parse().unwrap(), t0), None);
    }

    #[test]
    fn peers_past_the_cap_share_one_bucket() {
        let r = Refusals::new(2);
        let t0 = Instant::now();
        for i in 0..MAX_PEERS as u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            r.admit(ip, t0);
            r.admit(ip, t0);
        }
        // All buckets are empty, so none is forgotten: newcomers share one bucket.
        assert_eq!(r.admit("192.0.2.1".parse().unwrap(), t0), Some(0));
        assert_eq!(r.admit("192.0.2.2".parse().unwrap(), t0), Some(0));
        assert_eq!(r.admit("192.0.2.3".parse().unwrap(), t0), None);
        assert_eq!(r.peers(), MAX_PEERS + 1);
        // A minute later the old buckets are full again and make room.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(r.admit("192.0.2.4".parse().unwrap(), later), Some(0));
        assert_eq!(r.peers(), 2);
    }
}
