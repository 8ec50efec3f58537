//! Throttling of failed authentications. Only failures are counted and only
//! failures are refused: the credential is always checked first, and a valid
//! one is always served, whatever its address has been doing (behind a mesh
//! sidecar every caller shares one address).
//!
//! Two limits apply to a failure:
//! - a **global ceiling** per second over all addresses (a direct GCRA of
//!   `governor`, a few bytes), checked first, so that a distributed guesser
//!   neither churns the per-address table nor floods logs and the audit
//!   trail; past it a failure is answered `RESOURCE_EXHAUSTED` at once;
//! - a **per-address** allowance per minute, IPv6 addresses grouped by their
//!   /64 (one host can rotate through all of it), in a bounded table
//!   ([`KeyedLimiter`]): however many addresses fail, memory stays at the cap.

use crate::keyed_limiter::KeyedLimiter;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;

/// The unit failures are counted against: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// One IPv4 address (IPv4-mapped IPv6 addresses count as IPv4).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
}

impl PeerKey {
    /// The key `ip` is counted under.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => PeerKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// What the limiter says about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Within the limits: answer the failure itself (`UNAUTHENTICATED`).
    Counted,
    /// The address (or its /64) is over its allowance.
    PeerLimited,
    /// Failures over all addresses are over the global ceiling.
    GlobalLimited,
}

/// The limits, from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    /// Failures one address (IPv6: one /64) may make per minute; 0 turns the per-address limit off.
    pub per_peer_per_minute: u32,
    /// Failures all addresses together may make per second; 0 turns the ceiling off.
    pub global_per_second: u32,
    /// Addresses tracked at once (the memory bound).
    pub tracked_peers: usize,
}

/// Per-address failure allowance plus a global ceiling.
#[derive(Debug)]
pub struct FailureLimiter {
    per_peer: Option<KeyedLimiter<PeerKey>>,
    global: Option<DefaultDirectRateLimiter>,
}

impl FailureLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: FailureLimits) -> Self {
        Self {
            per_peer: NonZeroU32::new(limits.per_peer_per_minute).map(|n| KeyedLimiter::new(n, limits.tracked_peers)),
            global: NonZeroU32::new(limits.global_per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
        }
    }

    /// Counts one failed authentication from `peer` (unknown when the transport gave none).
    pub fn failure(&self, peer: Option<IpAddr>) -> FailureVerdict {
        if let Some(global) = &self.global {
            if global.check().is_err() {
                return FailureVerdict::GlobalLimited;
            }
        }
        match (&self.per_peer, peer) {
            (Some(per_peer), Some(peer)) if per_peer.check(&PeerKey::of(peer)).is_err() => FailureVerdict::PeerLimited,
            _ => FailureVerdict::Counted,
        }
    }

    /// Addresses tracked now.
    pub fn tracked_peers(&self) -> usize {
        self.per_peer.as_ref().map_or(0, KeyedLimiter::len)
    }

    /// The most addresses tracked at once.
    pub fn peer_capacity(&self) -> u64 {
        self.per_peer.as_ref().map_or(0, KeyedLimiter::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_peer_per_minute: u32, global_per_second: u32, tracked_peers: usize) -> FailureLimits {
        FailureLimits {
            per_peer_per_minute,
            global_per_second,
            tracked_peers,
        }
    }

    #[test]
    fn an_address_is_refused_past_its_allowance_and_others_are_not() {
        let limiter = FailureLimiter::new(limits(3, 0, 100));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.failure(Some(peer)), FailureVerdict::Counted);
        }
        assert_eq!(limiter.failure(Some(peer)), FailureVerdict::PeerLimited);
        assert_eq!(limiter.failure(Some(other)), FailureVerdict::Counted);
        // No address: only the global ceiling applies.
        for _ in 0..10 {
            assert_eq!(limiter.failure(None), FailureVerdict::Counted);
        }
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_by_the_ipv4_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let next_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(PeerKey::of(a), PeerKey::of(b));
        assert_ne!(PeerKey::of(a), PeerKey::of(next_net));
        assert_eq!(PeerKey::of(a), PeerKey::V6Net(0x2001_0db8_0001_0002));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(PeerKey::of(mapped), PeerKey::V4("192.0.2.7".parse().unwrap()));
        assert_ne!(
            PeerKey::of("192.0.2.7".parse().unwrap()),
            PeerKey::of("192.0.2.8".parse().unwrap())
        );

        // Rotating through the /64 does not evade the allowance.
        let limiter = FailureLimiter::new(limits(3, 0, 100));
        for host in 1..=3u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            assert_eq!(limiter.failure(Some(ip)), FailureVerdict::Counted);
        }
        let fourth: IpAddr = "2001:db8:1:2:abcd::9".parse().unwrap();
        assert_eq!(limiter.failure(Some(fourth)), FailureVerdict::PeerLimited);
        assert_eq!(limiter.failure(Some(next_net)), FailureVerdict::Counted);
    }

    #[test]
    fn a_million_failing_addresses_keep_the_table_at_its_cap() {
        let limiter = FailureLimiter::new(limits(20, 0, 10_000));
        for n in 0..1_000_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            let _ = limiter.failure(Some(ip));
        }
        assert!(
            limiter.tracked_peers() as u64 <= limiter.peer_capacity(),
            "{} tracked, cap {}",
            limiter.tracked_peers(),
            limiter.peer_capacity()
        );
        assert!(limiter.tracked_peers() > 1000);
        // A repeat offender still gets caught while the flood goes on.
        let offender: IpAddr = "192.0.2.1".parse().unwrap();
        let verdicts: Vec<_> = (0..21).map(|_| limiter.failure(Some(offender))).collect();
        assert_eq!(verdicts.last(), Some(&FailureVerdict::PeerLimited));
    }

    #[test]
    fn the_global_ceiling_comes_before_the_per_address_table() {
        let limiter = FailureLimiter::new(limits(1000, 5, 100));
        let verdicts: Vec<_> = (0..20u32)
            .map(|n| limiter.failure(Some(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))))
            .collect();
        let counted = verdicts.iter().filter(|v| **v == FailureVerdict::Counted).count();
        // governor's burst is the per-second quota; a slow test machine may earn one more.
        assert!((5..=6).contains(&counted), "{verdicts:?}");
        assert!(verdicts.contains(&FailureVerdict::GlobalLimited));
        // Refused failures never reached the per-address table.
        assert_eq!(limiter.tracked_peers(), counted);
    }

    #[test]
    fn zero_turns_both_off() {
        let limiter = FailureLimiter::new(limits(0, 0, 100));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(limiter.failure(Some(peer)), FailureVerdict::Counted);
        }
    }
}
