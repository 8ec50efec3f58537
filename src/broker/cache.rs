//! The in-memory access-token cache: bounded, each entry kept at most a short
//! maximum age (from when it was cached) as a backstop behind explicit
//! invalidation, and compact (see `BENCHMARKS.md` for the bytes per entry).

use crate::aged_cache::AgedCache;
use crate::store::ScopeSet;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Scopes as one shared, sorted, space-separated string (scope tokens hold
/// no spaces, RFC 6749 §3.3): one allocation, shared by every token of a
/// grant that carries them all.
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeText(Arc<str>);

impl ScopeText {
    /// The scopes of `scopes`, in their set's order.
    pub fn of(scopes: &ScopeSet) -> Self {
        Self(Arc::from(crate::store::scopes_to_text(scopes)))
    }

    /// Each scope.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(' ').filter(|s| !s.is_empty())
    }

    /// Whether `scope` is one of them.
    pub fn contains(&self, scope: &str) -> bool {
        self.iter().any(|s| s == scope)
    }

    /// The scopes as owned strings (for a response or an audit event).
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl std::fmt::Debug for ScopeText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A token ready to hand out, kept compact (the cache holds one per
/// connection and scope set): every string is one allocation, the scope
/// lists are shared, and the token type is always `Bearer` (the provider
/// layer accepts no other).
pub struct CachedToken {
    /// `tenant_id`, `user_id` then `provider`, in one allocation.
    owner: Box<str>,
    /// Where `user_id` starts in `owner`.
    user_at: u32,
    /// Where `provider` starts in `owner`.
    provider_at: u32,
    /// The access token.
    pub access_token: SecretString,
    /// Scopes the token carries.
    pub scopes: ScopeText,
    /// Scopes granted to the connection (subset checks on hits).
    pub granted: ScopeText,
    /// When the provider said it expires.
    pub expires_at: DateTime<Utc>,
    /// When tokenvault received it (its lifetime is `expires_at - issued_at`).
    pub issued_at: DateTime<Utc>,
}

/// Whose a cached token is: the connection's tenant, user and provider.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// Owning tenant.
    pub tenant_id: &'a str,
    /// Owning user.
    pub user_id: &'a str,
    /// Catalog name of the connection's provider (capabilities resolve against it).
    pub provider: &'a str,
}

impl<'a> Owner<'a> {
    /// The owner of `connection`'s tokens.
    pub fn of(connection: &'a crate::store::Connection) -> Self {
        Self {
            tenant_id: &connection.tenant_id,
            user_id: &connection.user_id,
            provider: &connection.provider,
        }
    }
}

impl CachedToken {
    /// A token of `owner` carrying `scopes` out of the grant's `granted`.
    pub fn new(
        owner: Owner<'_>,
        access_token: SecretString,
        scopes: &ScopeSet,
        granted: &ScopeSet,
        expires_at: DateTime<Utc>,
        issued_at: DateTime<Utc>,
    ) -> Self {
        let granted_text = ScopeText::of(granted);
        let scopes = if scopes == granted {
            granted_text.clone()
        } else {
            ScopeText::of(scopes)
        };
        let offset = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        Self {
            owner: format!("{}{}{}", owner.tenant_id, owner.user_id, owner.provider).into_boxed_str(),
            user_at: offset(owner.tenant_id.len()),
            provider_at: offset(owner.tenant_id.len() + owner.user_id.len()),
            access_token,
            scopes,
            granted: granted_text,
            expires_at,
            issued_at,
        }
    }

    /// Owning tenant (checked against the caller on every hit).
    pub fn tenant_id(&self) -> &str {
        self.owner.get(..self.user_at as usize).unwrap_or_default()
    }

    /// Owning user (for invalidation when the user is deleted).
    pub fn user_id(&self) -> &str {
        self.owner
            .get(self.user_at as usize..self.provider_at as usize)
            .unwrap_or_default()
    }

    /// The connection's provider (capabilities resolve against its catalog entry).
    pub fn provider(&self) -> &str {
        self.owner.get(self.provider_at as usize..).unwrap_or_default()
    }
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("tenant_id", &self.tenant_id())
            .field("access_token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Cache key: connection and canonical scope key (empty for the full grant).
pub type CacheKey = (Uuid, String);

/// The cache, plus an epoch that every invalidation advances: a reader that
/// started before an invalidation must not insert what it read.
///
/// Entries live in a bounded `quick_cache` (S3-FIFO eviction, a few tens of
/// bytes of bookkeeping per entry); an entry older than `max_age` is a miss
/// and is dropped when read. A connection's entries are found without a
/// scan: its full-grant key directly, its narrowed scope keys (rare) through
/// a small side index.
pub struct TokenCache {
    entries: Option<AgedCache<CacheKey, Arc<CachedToken>>>,
    narrowed: Mutex<HashMap<Uuid, Vec<String>>>,
    capacity: usize,
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.as_ref().map(|c| c.len()))
            .field("max_age", &self.entries.as_ref().map(|c| c.max_age()))
            .finish()
    }
}

impl TokenCache {
    /// A cache of `capacity` entries (0 disables it), each kept at most `max_age`.
    pub fn new(capacity: u64, max_age: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            entries: (capacity > 0).then(|| AgedCache::new(capacity, max_age)),
            narrowed: Mutex::new(HashMap::new()),
            capacity,
            epoch: AtomicU64::new(0),
        }
    }

    /// The entry for `key`, if cached and younger than the maximum age.
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
            if !key.1.is_empty() {
                self.index_narrowed(key);
            }
            entries.insert(key.clone(), token.clone());
        }
        if self.epoch() != epoch {
            // An invalidation raced with this insert: undo it.
            for key in keys {
                entries.remove(key);
            }
        }
    }

    /// Remembers a narrowed key of its connection; past the cache's capacity
    /// the index is dropped and connection invalidation falls back to a scan.
    fn index_narrowed(&self, key: &CacheKey) {
        let mut narrowed = self.narrowed.lock().unwrap_or_else(|e| e.into_inner());
        let keys = narrowed.entry(key.0).or_default();
        if !keys.contains(&key.1) {
            keys.push(key.1.clone());
        }
        if narrowed.len() > self.capacity {
            narrowed.clear();
            narrowed.insert(Uuid::nil(), Vec::new()); // marks the index as incomplete
        }
    }

    /// Drops every entry of one connection.
    pub fn invalidate_connection(&self, id: Uuid) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let Some(entries) = &self.entries else { return };
        entries.remove(&(id, String::new()));
        let (keys, incomplete) = {
            let mut narrowed = self.narrowed.lock().unwrap_or_else(|e| e.into_inner());
            (narrowed.remove(&id), narrowed.contains_key(&Uuid::nil()))
        };
        for scope_key in keys.into_iter().flatten() {
            entries.remove(&(id, scope_key));
        }
        if incomplete {
            entries.retain(|key, _| key.0 != id);
        }
    }

    /// Drops every entry of one user (a scan: deletions and restores are rare).
    pub fn invalidate_user(&self, tenant_id: &str, user_id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.retain(|_, token| !(token.tenant_id() == tenant_id && token.user_id() == user_id));
        }
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.clear();
        }
        self.narrowed.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| c.len() as u64)
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
