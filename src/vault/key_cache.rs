//! The cache of unwrapped data keys: bounded (`quick_cache`), each key kept
//! at most a fixed age from when it was unwrapped; about a hundred bytes per
//! key (the 32 raw bytes, the id, the slot).

use super::DataKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One cached key and when it was cached.
#[derive(Clone)]
struct Slot {
    key: Arc<DataKey>,
    cached_at: Instant,
}

/// Unwrapped data keys by id.
pub(super) struct KeyCache {
    entries: quick_cache::sync::Cache<Uuid, Slot>,
    max_age: Duration,
}

impl KeyCache {
    /// At most `capacity` keys (at least one), each for at most `max_age`.
    pub(super) fn new(capacity: u64, max_age: Duration) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(usize::try_from(capacity.max(1)).unwrap_or(usize::MAX)),
            max_age,
        }
    }

    /// The key `id`, if cached and young enough.
    pub(super) fn get(&self, id: &Uuid) -> Option<Arc<DataKey>> {
        let slot = self.entries.get(id)?;
        if slot.cached_at.elapsed() > self.max_age {
            self.entries.remove(id);
            return None;
        }
        Some(slot.key)
    }

    /// Caches `key`.
    pub(super) fn insert(&self, key: Arc<DataKey>) {
        let id = key.id();
        self.entries.insert(
            id,
            Slot {
                key,
                cached_at: Instant::now(),
            },
        );
    }

    /// Drops `id`.
    pub(super) fn remove(&self, id: &Uuid) {
        self.entries.remove(id);
    }

    /// Drops everything.
    pub(super) fn clear(&self) {
        self.entries.clear();
    }
}
