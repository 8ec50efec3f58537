//! The in-memory access-token cache: bounded (moka), each entry kept at most
//! a short maximum age as a backstop behind explicit invalidation.

use crate::store::ScopeSet;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A token ready to hand out.
pub struct CachedToken {
    /// Owning tenant (checked against the caller on every hit).
    pub tenant_id: String,
    /// Owning user (for invalidation when the user is deleted).
    pub user_id: String,
    /// The access token.
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Scopes the token carries.
    pub scopes: Vec<String>,
    /// Scopes granted to the connection (subset checks on hits).
    pub granted: ScopeSet,
    /// When the provider said it expires.
    pub expires_at: DateTime<Utc>,
    /// When tokenvault received it (its lifetime is `expires_at - issued_at`).
    pub issued_at: DateTime<Utc>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("tenant_id", &self.tenant_id)
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Cache key: connection and canonical scope key (empty for the full grant).
pub type CacheKey = (Uuid, String);

/// The cache, plus an epoch that every invalidation advances: a reader that
/// started before an invalidation must not insert what it read.
pub struct TokenCache {
    entries: Option<moka::sync::Cache<CacheKey, Arc<CachedToken>>>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

impl TokenCache {
    /// A cache of `capacity` entries (0 disables it), each kept at most `max_age`.
    pub fn new(capacity: u64, max_age: Duration) -> Self {
        let entries = (capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(max_age)
                .support_invalidation_closures()
                .build()
        });
        Self {
            entries,
            epoch: AtomicU64::new(0),
        }
    }

    /// The entry for `key`, if cached.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedToken>> {
        self.entries.as_ref()?.get(key)
    }

    /// The current epoch; pass it to [`insert_if_current`](Self::insert_if_current).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Inserts unless an invalidation happened since `epoch` was read.
    pub fn insert_if_current(&self, epoch: u64, keys: &[CacheKey], token: Arc<CachedToken>) {
        let Some(entries) = &self.entries else { return };
        for key in keys {
            entries.insert(key.clone(), token.clone());
        }
        if self.epoch() != epoch {
            // An invalidation raced with this insert: undo it.
            for key in keys {
                entries.invalidate(key);
            }
        }
    }

    /// Drops every entry of one connection.
    pub fn invalidate_connection(&self, id: Uuid) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            if entries.invalidate_entries_if(move |key, _| key.0 == id).is_err() {
                entries.invalidate_all();
            }
        }
    }

    /// Drops every entry of one user.
    pub fn invalidate_user(&self, tenant_id: &str, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            let (tenant, user) = (tenant_id.to_owned(), user_id.to_owned());
            if entries
                .invalidate_entries_if(move |_, token| token.tenant_id == tenant && token.user_id == user)
                .is_err()
            {
                entries.invalidate_all();
            }
        }
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }

    /// Entries held (approximate).
    pub fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
