//! The access-token broker behind `GetAccessToken`: a bounded in-memory
//! cache (no database round trip on a hit), the sealed token in the store
//! for other replicas, single-flight refresh (one task per connection in this
//! process, whatever its callers do, and one refresher across replicas
//! through the store's refresh lease, fenced by the token version), refresh-
//! token rotation stored before any caller sees the new access token, scope
//! narrowing, and the outage policy.
//!
//! A call goes [`Broker::get_access_token`] → the cache (`lookup`) → its
//! connection's flight (`flight`) → the store (`miss`) → the provider
//! (`refresh`). Module map:
//!
//! - this file: the [`Broker`], its request and answer types, and the entry
//!   point that walks a call down that path;
//! - `cache`: the bounded in-memory cache and its invalidation epoch;
//! - `lookup`: the cached path (a hit served with no database and no await)
//!   and how every token is issued, tallied and cached;
//! - `flight`: single flight in this process: a refresh is a task of its own
//!   that callers join and may leave, never lost when they do;
//! - `miss`: a cache miss, the connection and its stored token read, checked
//!   and served when fresh enough;
//! - `reader`: the coalescing reader those store reads go through;
//! - `refresh`: the upstream refresh, from the store's refresh lease through
//!   the provider call and its retries to the fenced commit, `NEEDS_REAUTH`
//!   (and an interrupted earlier attempt) and the outage fallback;
//! - `keepalive`: background refreshes of idle connections whose provider
//!   expires unused refresh tokens;
//! - `rotation`: rotated refresh tokens waiting for the database to come back;
//! - `secrets`: opening and sealing the connection's tokens with its data key;
//! - `usage`: issuance tallies, written off the hot path;
//! - `error`: [`BrokerError`].

mod cache;
mod capabilities;
mod error;
mod flight;
mod keepalive;
mod lookup;
mod miss;
mod reader;
mod refresh;
mod rotation;
mod secrets;
mod usage;

pub use cache::{CacheKey, CachedToken, Owner, ScopeText, TokenCache};
pub use capabilities::ConsentRequired;
pub use error::BrokerError;
pub use reader::{ConnectionReader, ReadResult, MAX_BATCH};
pub use usage::{Issuance, UsageLog};

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::config::BrokerConfig;
use crate::lifecycle::Handover;
use crate::provider::Providers;
use crate::store::{ScopeSet, Store, TenantScope};
use crate::telemetry::Metrics;
use crate::vault::Vault;
use chrono::{DateTime, Utc};
use flight::Flights;
use rotation::PendingRotations;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// A token handed to an agent.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// When the agent must come back (the token's expiry, capped by the
    /// maximum lease).
    pub expires_at: DateTime<Utc>,
    /// The token does not expire at the provider: `expires_at` is only the
    /// lease cap.
    pub never_expires: bool,
    /// Scopes the token carries.
    pub scopes: Vec<String>,
}

/// One `GetAccessToken` request, validated.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The connection.
    pub connection_id: Uuid,
    /// Requested scopes (empty: everything granted), with the scopes of
    /// the resolved capabilities.
    pub scopes: ScopeSet,
    /// Requested capabilities, once resolved: each with the scopes serving it
    /// (empty until [`Broker::get_access_token`] resolves them).
    pub capabilities: Vec<(String, ScopeSet)>,
    /// The token must stay valid this long.
    pub min_ttl: chrono::Duration,
    /// Refuse a token that expires sooner than `min_ttl` instead of serving the freshest there is.
    pub require_min_ttl: bool,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

/// Who asks.
#[derive(Debug, Clone)]
pub struct Requester<'a> {
    /// Caller name.
    pub actor: &'a Arc<str>,
    /// Tenants the caller may act for.
    pub tenants: &'a TenantScope,
    /// Request id.
    pub request_id: Option<&'a str>,
}

/// The broker.
pub struct Broker {
    store: Arc<dyn Store>,
    reader: ConnectionReader,
    vault: Vault,
    providers: Arc<Providers>,
    audit: AuditLog,
    clock: SharedClock,
    metrics: Metrics,
    cache: Arc<TokenCache>,
    usage: UsageLog,
    flights: Flights,
    pending_rotations: PendingRotations,
    refresh_slots: Arc<Semaphore>,
    replica: Arc<str>,
    refresh_budget: Duration,
    skew: chrono::Duration,
    max_lease: chrono::Duration,
    attempts: u32,
    default_deadline: Duration,
    handover: Handover,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The canonical key of a scope set (empty for none).
fn scope_key(scopes: &ScopeSet) -> String {
    crate::store::scopes_to_text(scopes)
}

/// A configured number of seconds as a duration.
fn seconds(value: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(value).unwrap_or(i64::MAX / 1000))
}

impl Broker {
    /// Builds the broker; `refresh_slots` bounds concurrent upstream
    /// refreshes; `handover` takes the credentials of a refresh that lost.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &BrokerConfig,
        store: Arc<dyn Store>,
        vault: Vault,
        providers: Arc<Providers>,
        audit: AuditLog,
        clock: SharedClock,
        metrics: Metrics,
        refresh_slots: usize,
        handover: Handover,
    ) -> Self {
        Self {
            reader: ConnectionReader::start(store.clone(), config.store_readers),
            store,
            vault,
            providers,
            audit,
            clock,
            metrics,
            cache: Arc::new(TokenCache::new(
                config.cache_capacity,
                Duration::from_secs(config.cache_max_age_seconds.max(1)),
            )),
            usage: UsageLog::default(),
            flights: Flights::default(),
            pending_rotations: PendingRotations::default(),
            refresh_slots: Arc::new(Semaphore::new(refresh_slots.max(1))),
            replica: replica_name(),
            refresh_budget: Duration::from_secs(config.refresh_deadline_seconds.max(1)),
            skew: seconds(config.refresh_skew_seconds),
            max_lease: seconds(config.max_lease_seconds),
            attempts: config.refresh_attempts.max(1),
            default_deadline: Duration::from_secs(config.refresh_deadline_seconds.max(1)),
            handover,
        }
    }

    /// The default deadline for callers that sent none.
    pub fn default_deadline(&self) -> Duration {
        self.default_deadline
    }

    /// The in-memory cache (invalidation entry points).
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The cache, shared with the other paths that change a connection's
    /// tokens (consent), which invalidate it directly.
    pub fn shared_cache(&self) -> Arc<TokenCache> {
        self.cache.clone()
    }

    /// Writes the tallied issuances (audit, `last_used_at`).
    pub async fn flush_usage(&self) {
        self.usage.flush(&self.audit, &*self.store).await;
    }

    /// `GetAccessToken`: a token for `request`'s scopes and the scopes
    /// serving `capabilities` (names from the connection's catalog entry).
    pub async fn get_access_token(
        self: &Arc<Self>,
        who: &Requester<'_>,
        request: &TokenRequest,
        capabilities: &[String],
    ) -> Result<IssuedToken, BrokerError> {
        if capabilities.is_empty() {
            return self.serve(who, request).await;
        }
        let resolved = match self.resolve_capabilities(who, request, capabilities).await {
            Ok(resolved) => resolved,
            Err(error) => {
                self.metrics.issuance(error.kind());
                return Err(error);
            }
        };
        self.serve(who, &resolved).await
    }

    /// A token for `request`, its capabilities resolved: the cache, else the store, else a refresh.
    async fn serve(self: &Arc<Self>, who: &Requester<'_>, request: &TokenRequest) -> Result<IssuedToken, BrokerError> {
        let key: CacheKey = (request.connection_id, scope_key(&request.scopes));
        if let Some(result) = self.cached(who, request, &key, self.clock.now()) {
            return result;
        }
        let result = self.miss(who, request, &key).await;
        if let Err(error) = &result {
            self.metrics.issuance(error.kind());
        }
        result
    }
}

/// This process's name in the refresh journal: the host (the pod, in
/// Kubernetes), the process id and a random suffix, unique per start.
fn replica_name() -> Arc<str> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tokenvault".to_owned());
    let suffix = Uuid::new_v4().simple().to_string();
    Arc::from(format!(
        "{host}/{}/{}",
        std::process::id(),
        suffix.get(..8).unwrap_or("0")
    ))
}
