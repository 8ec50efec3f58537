//! A keyed rate limiter with bounded memory: GCRA (the "generic cell rate
//! algorithm" of `governor`, one 8-byte theoretical arrival time per key)
//! over a `quick_cache` of at most `capacity` keys. S3-FIFO eviction keeps
//! keys that come back (a repeat offender) over a flood of keys seen once,
//! and a key that is evicted simply starts afresh: memory stays at the cap
//! whatever number of distinct keys arrive.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `per_minute` events a minute per key (a burst of all of them allowed), for at most `capacity` keys.
pub struct KeyedLimiter<K> {
    states: quick_cache::sync::Cache<K, Arc<AtomicU64>>,
    /// Nanoseconds between two events at the sustained rate.
    emission: u64,
    /// Nanoseconds of burst tolerance (`per_minute` emissions: one minute).
    tolerance: u64,
    epoch: Instant,
}

impl<K: Eq + Hash + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("keys", &self.states.len())
            .field("capacity", &self.states.capacity())
            .finish()
    }
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// Allows `per_minute` events a minute per key, tracking at most `capacity` keys (at least one).
    pub fn new(per_minute: NonZeroU32, capacity: usize) -> Self {
        let minute = Duration::from_secs(60).as_nanos() as u64;
        let emission = minute / u64::from(per_minute.get());
        Self {
            states: quick_cache::sync::Cache::new(capacity.max(1)),
            emission,
            tolerance: emission * u64::from(per_minute.get()),
            epoch: Instant::now(),
        }
    }

    /// Counts one event for `key` now: `Ok` when allowed, else how long until the next one is.
    pub fn check<Q>(&self, key: &Q) -> Result<(), Duration>
    where
        Q: Hash + quick_cache::Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        self.check_at(key, Instant::now())
    }

    /// [`check`](Self::check) at a given instant (for tests).
    pub fn check_at<Q>(&self, key: &Q, now: Instant) -> Result<(), Duration>
    where
        Q: Hash + quick_cache::Equivalent<K> + ToOwned<Owned = K> + ?Sized,
    {
        let state = match self
            .states
            .get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(Arc::new(AtomicU64::new(0))))
        {
            Ok(state) => state,
            Err(never) => match never {},
        };
        // Offset by the tolerance so a fresh key (TAT 0) never needs a negative time.
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64 + self.tolerance;
        let mut tat = state.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + self.emission;
            if next - now > self.tolerance {
                return Err(Duration::from_nanos(next - now - self.tolerance));
            }
            match state.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Keys tracked now (never more than the capacity).
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The most keys tracked at once.
    pub fn capacity(&self) -> u64 {
        self.states.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, capacity: usize) -> KeyedLimiter<String> {
        KeyedLimiter::new(NonZeroU32::new(per_minute).unwrap(), capacity)
    }

    #[test]
    fn a_burst_of_the_allowance_then_one_per_interval() {
        let limiter = limiter(3, 10);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", start).is_ok());
        }
        let wait = limiter.check_at("a", start).unwrap_err();
        assert!(
            wait <= Duration::from_secs(20) && wait > Duration::from_secs(19),
            "{wait:?}"
        );
        // Another key is untouched.
        assert!(limiter.check_at("b", start).is_ok());
        // One more event is allowed 20 s later (60 s / 3), and only one.
        let later = start + Duration::from_secs(20);
        assert!(limiter.check_at("a", later).is_ok());
        assert!(limiter.check_at("a", later).is_err());
        // A full minute of quiet restores the whole burst.
        let quiet = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check_at("a", quiet).is_ok());
        }
        assert!(limiter.check_at("a", quiet).is_err());
    }

    #[test]
    fn memory_stays_at_the_cap() {
        let limiter: KeyedLimiter<u64> = KeyedLimiter::new(NonZeroU32::new(5).unwrap(), 1000);
        let now = Instant::now();
        for key in 0..200_000u64 {
            let _ = limiter.check_at(&key, now);
        }
        assert!(limiter.len() as u64 <= limiter.capacity(), "{}", limiter.len());
        assert!(!limiter.is_empty());
    }
}
