//! A bounded in-memory cache whose entries also expire by age: `quick_cache`
//! (S3-FIFO eviction, a slot of a few tens of bytes per entry) with the time
//! each entry was cached; an entry older than the maximum age is a miss and
//! is dropped when read. Serves the access-token cache and the cache of
//! unwrapped data keys.

use std::hash::Hash;
use std::time::{Duration, Instant};

/// One value and when it was cached.
#[derive(Clone)]
struct Slot<V> {
    value: V,
    cached_at: Instant,
}

/// At most `capacity` entries, each kept at most `max_age` from when it was cached.
pub(crate) struct AgedCache<K, V> {
    entries: quick_cache::sync::Cache<K, Slot<V>>,
    max_age: Duration,
}

impl<K: Eq + Hash + Clone, V: Clone> AgedCache<K, V> {
    /// A cache of `capacity` entries (at least one), each kept at most `max_age`.
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity.max(1)),
            max_age,
        }
    }

    /// The value of `key`, if cached and young enough.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let slot = self.entries.get(key)?;
        if slot.cached_at.elapsed() > self.max_age {
            self.entries.remove(key);
            return None;
        }
        Some(slot.value)
    }

    /// Caches `value` under `key`, aged from now.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.entries.insert(
            key,
            Slot {
                value,
                cached_at: Instant::now(),
            },
        );
    }

    /// Drops `key`.
    pub(crate) fn remove(&self, key: &K) {
        self.entries.remove(key);
    }

    /// Keeps only the entries for which `keep` holds.
    pub(crate) fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        self.entries.retain(|key, slot| keep(key, &slot.value));
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        self.entries.clear();
    }

    /// Entries held (some may be past their age, until read).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The maximum age.
    pub(crate) fn max_age(&self) -> Duration {
        self.max_age
    }
}
