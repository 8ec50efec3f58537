//! The cached path: a hit served from memory (no database, no await), and how
//! every token is issued: capped by the maximum lease, tallied for usage, and
//! cached under the keys it answers.

use super::{Broker, BrokerError, CacheKey, CachedToken, Issuance, IssuedToken, Requester, TokenRequest};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

/// The cache keys one token answers: the scope key it is stored under
/// (`effective`; empty for the full grant) and the key the caller asked with,
/// when that is another.
#[derive(Debug, Clone)]
pub(super) struct TokenKeys {
    connection_id: Uuid,
    effective: String,
    requested: String,
}

impl TokenKeys {
    /// The keys of a token stored under `effective`, asked for as `requested`.
    pub(super) fn new(requested: &CacheKey, effective: String) -> Self {
        Self {
            connection_id: requested.0,
            effective,
            requested: requested.1.clone(),
        }
    }

    /// The scope key the token is stored under.
    pub(super) fn effective(&self) -> &str {
        &self.effective
    }

    /// Every cache key the token answers, its effective key first.
    fn all(&self) -> Vec<CacheKey> {
        let mut keys = vec![(self.connection_id, self.effective.clone())];
        if self.requested != self.effective {
            keys.push((self.connection_id, self.requested.clone()));
        }
        keys
    }
}

/// Refuses `token` when the caller insisted on a `min_ttl` it does not meet
/// (checked before the issuance is counted: a refusal is not an issuance).
fn insisted_min_ttl(request: &TokenRequest, token: &CachedToken, now: DateTime<Utc>) -> Result<(), BrokerError> {
    let remaining = token.expires_at - now;
    if !request.require_min_ttl || remaining >= request.min_ttl {
        return Ok(());
    }
    Err(BrokerError::MinTtlUnattainable {
        remaining_seconds: remaining.num_seconds().max(0),
        min_ttl_seconds: request.min_ttl.num_seconds(),
        lifetime_seconds: (token.expires_at - token.issued_at).num_seconds().max(0),
    })
}

impl Broker {
    /// The cached path: no database, no await. `None` when nothing fresh enough is cached.
    pub(super) fn cached(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        key: &CacheKey,
        now: DateTime<Utc>,
    ) -> Option<Result<IssuedToken, BrokerError>> {
        let token = self.cache.get(key)?;
        if !who.tenants.allows(token.tenant_id()) {
            return Some(Err(BrokerError::WrongTenant));
        }
        if let Some(refused) =
            request.not_granted(request.connection_id, token.provider(), |s| token.granted.contains(s))
        {
            return Some(Err(refused));
        }
        if !self.fresh_enough(token.expires_at, token.issued_at, request.min_ttl, now) {
            return None;
        }
        if let Err(refused) = insisted_min_ttl(request, &token, now) {
            return Some(Err(refused));
        }
        self.record(who, request.connection_id, &key.1, &token, "cache_hit", now);
        Some(Ok(self.issue(&token, now)))
    }

    /// Whether a token issued at `issued_at` and expiring at `expires_at`
    /// stays valid `min_ttl` (plus the refresh skew) from `now`.
    ///
    /// A `min_ttl` that no token of this provider can meet (the token's whole
    /// lifetime is shorter than `min_ttl` plus the skew) is not asked of it: a
    /// refresh would bring back no better token, so the token is served, with
    /// its true expiry, until it is due like any other — one upstream refresh
    /// per expiry, whatever callers ask. The skew is at most a quarter of the
    /// lifetime, so that very short-lived tokens are not refreshed on every call.
    pub(super) fn fresh_enough(
        &self,
        expires_at: DateTime<Utc>,
        issued_at: DateTime<Utc>,
        min_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> bool {
        let lifetime = (expires_at - issued_at).max(chrono::Duration::zero());
        let skew = self.skew.min(lifetime / 4);
        let min_ttl = if min_ttl + skew > lifetime {
            chrono::Duration::zero()
        } else {
            min_ttl
        };
        expires_at - now >= min_ttl + skew
    }

    /// Caches `token` under `keys` (unless an invalidation came after `epoch`) and issues it.
    pub(super) fn cache_and_issue(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: &TokenKeys,
        epoch: u64,
        token: CachedToken,
        outcome: &'static str,
    ) -> Result<IssuedToken, BrokerError> {
        self.cache_shared_and_issue(who, request, keys, epoch, Arc::new(token), outcome)
    }

    /// [`Broker::cache_and_issue`] for a token already shared (a flight's).
    pub(super) fn cache_shared_and_issue(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: &TokenKeys,
        epoch: u64,
        token: Arc<CachedToken>,
        outcome: &'static str,
    ) -> Result<IssuedToken, BrokerError> {
        let now = self.clock.now();
        self.cache.insert_if_current(epoch, &keys.all(), token.clone());
        insisted_min_ttl(request, &token, now)?;
        self.record(who, request.connection_id, keys.effective(), &token, outcome, now);
        Ok(self.issue(&token, now))
    }

    /// Issues `token` without caching it.
    pub(super) fn issue_uncached(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: &TokenKeys,
        token: &CachedToken,
        outcome: &'static str,
    ) -> Result<IssuedToken, BrokerError> {
        let now = self.clock.now();
        insisted_min_ttl(request, token, now)?;
        self.record(who, request.connection_id, keys.effective(), token, outcome, now);
        Ok(self.issue(token, now))
    }

    /// The token as handed out: its expiry capped by the maximum lease, and
    /// whether it is a token that never expires (then `expires_at` is only
    /// the cap).
    fn issue(&self, token: &CachedToken, now: DateTime<Utc>) -> IssuedToken {
        IssuedToken {
            access_token: token.access_token.clone(),
            token_type: "Bearer".to_owned(),
            expires_at: token.expires_at.min(now + self.max_lease),
            never_expires: crate::provider::never_expires(token.issued_at, token.expires_at),
            scopes: token.scopes.to_vec(),
        }
    }

    /// Counts one issuance (metrics now, usage tallies for the next flush).
    fn record(
        &self,
        who: &Requester<'_>,
        id: Uuid,
        key: &str,
        token: &CachedToken,
        outcome: &'static str,
        now: DateTime<Utc>,
    ) {
        self.metrics.issuance(outcome);
        tracing::debug!(connection_id = %id, outcome, scopes = key, "token: issued");
        self.usage.record(
            Issuance {
                actor: who.actor,
                connection_id: id,
                tenant_id: token.tenant_id(),
                user_id: token.user_id(),
                scope_key: key,
                scopes: &token.scopes,
                outcome,
                request_id: who.request_id,
            },
            now,
        );
    }
}
