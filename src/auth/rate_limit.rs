//! Failed-authentication limiting per peer address (GCRA via `governor`):
//! a peer that keeps presenting bad credentials is refused for a while
//! without its credentials even being checked.

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Instant;

/// Tracks failures per peer and which peers are currently refused.
#[derive(Debug)]
pub struct FailureLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked_until: DashMap<IpAddr, Instant>,
    clock: DefaultClock,
}

impl FailureLimiter {
    /// Allows `per_minute` failures a minute per peer (0 turns limiting off).
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            blocked_until: DashMap::new(),
            clock: DefaultClock::default(),
        }
    }

    /// Whether `peer` is refused right now.
    pub fn is_blocked(&self, peer: IpAddr) -> bool {
        let Some(until) = self.blocked_until.get(&peer).map(|u| *u) else {
            return false;
        };
        if Instant::now() < until {
            true
        } else {
            self.blocked_until.remove(&peer);
            false
        }
    }

    /// Records a failure; returns `true` when it puts the peer over the limit.
    pub fn record_failure(&self, peer: IpAddr) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
        match limiter.check_key(&peer) {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                self.blocked_until.insert(peer, Instant::now() + wait);
                if self.blocked_until.len() > 100_000 {
                    let now = Instant::now();
                    self.blocked_until.retain(|_, until| *until > now);
                    limiter.retain_recent();
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_blocked_after_its_allowance() {
        let limiter = FailureLimiter::new(3);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(!limiter.record_failure(peer));
        assert!(!limiter.record_failure(peer));
        assert!(!limiter.record_failure(peer));
        assert!(!limiter.is_blocked(peer));
        assert!(limiter.record_failure(peer));
        assert!(limiter.is_blocked(peer));
        assert!(!limiter.is_blocked(other));
    }

    #[test]
    fn zero_turns_it_off() {
        let limiter = FailureLimiter::new(0);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert!(!limiter.record_failure(peer));
        }
        assert!(!limiter.is_blocked(peer));
    }
}
