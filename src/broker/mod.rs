//! The access-token broker behind `GetAccessToken`: a bounded in-memory
//! cache (no database round trip on a hit), the sealed token in the store
//! for other replicas, single-flight refresh (one per connection in this
//! process, and across replicas through the row lock), refresh-token
//! rotation stored before any caller sees the new access token, scope
//! narrowing, and the outage policy.

mod cache;
mod reader;
mod usage;

pub use cache::{CacheKey, CachedToken, TokenCache};
pub use reader::{ConnectionReader, ReadResult, MAX_BATCH};
pub use usage::{Issuance, UsageLog};

use crate::audit::{AuditLog, EventBuilder};
use crate::clock::SharedClock;
use crate::config::BrokerConfig;
use crate::provider::{ProviderError, Providers, TokenSet};
use crate::store::{
    access_token_record, AccessTokenRecord, Connection, ConnectionStatus, RefreshCommit, RefreshTxn, RefreshWrite,
    ScopeSet, Sealed, Store, StoreError, TenantScope,
};
use crate::telemetry::Metrics;
use crate::vault::{Binding, Field, Vault, VaultError};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use uuid::Uuid;

/// Why no token was handed out. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No such connection for this caller.
    #[error("no connection {0}")]
    NotFound(Uuid),
    /// The connection belongs to a tenant the caller may not act for.
    #[error("caller may not act for this connection's tenant")]
    WrongTenant,
    /// A requested scope is not granted.
    #[error("scope `{0}` is not granted to this connection")]
    ScopeNotGranted(String),
    /// Revoked.
    #[error("connection is revoked")]
    Revoked,
    /// The user must consent again.
    #[error("connection needs re-consent: {0}")]
    NeedsReauth(String),
    /// The user is deleted.
    #[error("the connection's user is deleted (pending purge)")]
    UserDeleted,
    /// The provider is down or slow and nothing valid is cached.
    #[error("provider unavailable and no valid token cached: {0}")]
    ProviderUnavailable(String),
    /// The provider refused tokenvault itself (configuration).
    #[error("{0}")]
    ProviderMisconfigured(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// A token handed to an agent.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// When the agent must come back (capped by the maximum lease).
    pub expires_at: DateTime<Utc>,
    /// Scopes the token carries.
    pub scopes: Vec<String>,
}

/// One `GetAccessToken` request, validated.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The connection.
    pub connection_id: Uuid,
    /// Requested scopes (empty: everything granted).
    pub scopes: ScopeSet,
    /// The token must stay valid this long.
    pub min_ttl: chrono::Duration,
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
    cache: TokenCache,
    usage: UsageLog,
    flights: DashMap<Uuid, Arc<Mutex<()>>>,
    pending_rotations: Arc<DashMap<Uuid, (i64, RefreshWrite)>>,
    refresh_slots: Semaphore,
    skew: chrono::Duration,
    max_lease: chrono::Duration,
    attempts: u32,
    default_deadline: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn scope_key(scopes: &ScopeSet) -> String {
    crate::store::scopes_to_text(scopes)
}

fn seconds(value: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(value).unwrap_or(i64::MAX / 1000))
}

impl Broker {
    /// Builds the broker; `refresh_slots` bounds concurrent upstream refreshes.
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
    ) -> Self {
        Self {
            reader: ConnectionReader::start(store.clone(), config.store_readers),
            store,
            vault,
            providers,
            audit,
            clock,
            metrics,
            cache: TokenCache::new(
                config.cache_capacity,
                Duration::from_secs(config.cache_max_age_seconds.max(1)),
            ),
            usage: UsageLog::default(),
            flights: DashMap::new(),
            pending_rotations: Arc::new(DashMap::new()),
            refresh_slots: Semaphore::new(refresh_slots.max(1)),
            skew: seconds(config.refresh_skew_seconds),
            max_lease: seconds(config.max_lease_seconds),
            attempts: config.refresh_attempts.max(1),
            default_deadline: Duration::from_secs(config.refresh_deadline_seconds.max(1)),
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

    /// Writes the tallied issuances (audit, `last_used_at`).
    pub async fn flush_usage(&self) {
        self.usage.flush(&self.audit, &*self.store).await;
    }

    fn fresh_enough(&self, expires_at: DateTime<Utc>, min_ttl: chrono::Duration, now: DateTime<Utc>) -> bool {
        expires_at - now >= min_ttl + self.skew
    }

    fn issue(&self, token: &CachedToken, now: DateTime<Utc>) -> IssuedToken {
        IssuedToken {
            access_token: token.access_token.clone(),
            token_type: token.token_type.clone(),
            expires_at: token.expires_at.min(now + self.max_lease),
            scopes: token.scopes.clone(),
        }
    }

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
        self.usage.record(
            Issuance {
                actor: who.actor,
                connection_id: id,
                tenant_id: &token.tenant_id,
                user_id: &token.user_id,
                scope_key: key,
                scopes: &token.scopes,
                outcome,
                request_id: who.request_id,
            },
            now,
        );
    }

    /// The cached path: no database, no await.
    fn cached(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        key: &CacheKey,
        now: DateTime<Utc>,
    ) -> Option<Result<IssuedToken, BrokerError>> {
        let token = self.cache.get(key)?;
        if !who.tenants.allows(&token.tenant_id) {
            return Some(Err(BrokerError::WrongTenant));
        }
        if let Some(missing) = request.scopes.iter().find(|s| !token.granted.contains(*s)) {
            return Some(Err(BrokerError::ScopeNotGranted(missing.clone())));
        }
        if !self.fresh_enough(token.expires_at, request.min_ttl, now) {
            return None;
        }
        self.record(who, request.connection_id, &key.1, &token, "cache_hit", now);
        Some(Ok(self.issue(&token, now)))
    }

    /// `GetAccessToken`.
    pub async fn get_access_token(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
    ) -> Result<IssuedToken, BrokerError> {
        let key: CacheKey = (request.connection_id, scope_key(&request.scopes));
        if let Some(result) = self.cached(who, request, &key, self.clock.now()) {
            return result;
        }
        // Single flight: one caller per connection goes further; the others wait and then hit the cache.
        let flight = self
            .flights
            .entry(request.connection_id)
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let result = {
            let _guard = flight.lock().await;
            match self.cached(who, request, &key, self.clock.now()) {
                Some(result) => result,
                None => self.slow_path(who, request, &key).await,
            }
        };
        drop(flight);
        self.flights
            .remove_if(&request.connection_id, |_, f| Arc::strong_count(f) == 1);
        if let Err(error) = &result {
            self.metrics.issuance(error_kind(error));
        }
        result
    }

    fn check_usable(&self, connection: &Connection, request: &TokenRequest) -> Result<(), BrokerError> {
        match connection.status() {
            ConnectionStatus::Active => {}
            ConnectionStatus::Revoked => return Err(BrokerError::Revoked),
            ConnectionStatus::PendingDeletion => return Err(BrokerError::UserDeleted),
            ConnectionStatus::NeedsReauth => {
                return Err(BrokerError::NeedsReauth(
                    connection
                        .status_reason
                        .clone()
                        .unwrap_or_else(|| "the provider rejected the refresh token".to_owned()),
                ))
            }
        }
        if let Some(missing) = request.scopes.iter().find(|s| !connection.granted_scopes.contains(*s)) {
            return Err(BrokerError::ScopeNotGranted(missing.clone()));
        }
        Ok(())
    }

    /// The key a token for `request` is stored under: the full grant unless
    /// a strict subset was asked of a provider that can narrow.
    fn effective_key(&self, connection: &Connection, request: &TokenRequest) -> String {
        let narrowable = self
            .providers
            .spec(&connection.provider)
            .is_some_and(|spec| spec.refresh_scope_narrowing);
        if request.scopes.is_empty() || request.scopes == connection.granted_scopes || !narrowable {
            String::new()
        } else {
            scope_key(&request.scopes)
        }
    }

    async fn unseal_access(
        &self,
        connection: &Connection,
        record: &AccessTokenRecord,
    ) -> Result<CachedToken, BrokerError> {
        let dek_id = connection.dek_id.ok_or(BrokerError::Revoked)?;
        let key = self.vault.data_key(dek_id).await?;
        let binding_record = access_token_record(connection.id, &record.scope_key);
        let opened = key.open_string(
            &Binding {
                tenant_id: &connection.tenant_id,
                user_id: &connection.user_id,
                record: &binding_record,
                field: Field::AccessToken,
            },
            record.token.as_bytes(),
        );
        let token = match opened {
            Ok(token) => token,
            Err(error) => {
                self.integrity_failure(connection, "access_token", &error).await;
                return Err(error.into());
            }
        };
        Ok(CachedToken {
            tenant_id: connection.tenant_id.clone(),
            user_id: connection.user_id.clone(),
            access_token: token,
            token_type: record.token_type.clone(),
            scopes: record.scopes.iter().cloned().collect(),
            granted: connection.granted_scopes.clone(),
            expires_at: record.expires_at,
        })
    }

    fn cache_and_issue(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: Vec<CacheKey>,
        epoch: u64,
        token: CachedToken,
        outcome: &'static str,
    ) -> IssuedToken {
        let now = self.clock.now();
        let token = Arc::new(token);
        self.cache.insert_if_current(epoch, &keys, token.clone());
        self.record(who, request.connection_id, &keys[0].1, &token, outcome, now);
        self.issue(&token, now)
    }

    async fn slow_path(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        key: &CacheKey,
    ) -> Result<IssuedToken, BrokerError> {
        // Read the epoch before the database: an invalidation after this point voids our insert.
        let epoch = self.cache.epoch();
        let (connection, stored) = self
            .reader
            .read(request.connection_id, &key.1)
            .await?
            .ok_or(BrokerError::NotFound(request.connection_id))?;
        if !who.tenants.allows(&connection.tenant_id) {
            return Err(BrokerError::WrongTenant);
        }
        self.check_usable(&connection, request)?;
        let effective = self.effective_key(&connection, request);
        let stored = if effective == key.1 {
            stored
        } else {
            self.reader
                .read(request.connection_id, &effective)
                .await?
                .and_then(|(_, token)| token)
        };
        let mut keys = vec![(request.connection_id, effective.clone())];
        if key.1 != effective {
            keys.push(key.clone());
        }
        let now = self.clock.now();
        if let Some(record) = stored.filter(|r| self.fresh_enough(r.expires_at, request.min_ttl, now)) {
            let token = self.unseal_access(&connection, &record).await?;
            return Ok(self.cache_and_issue(who, request, keys, epoch, token, "store_hit"));
        }
        self.refresh(who, request, keys, epoch).await
    }

    async fn refresh(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: Vec<CacheKey>,
        epoch: u64,
    ) -> Result<IssuedToken, BrokerError> {
        let _slot = self
            .refresh_slots
            .acquire()
            .await
            .map_err(|_| BrokerError::ProviderUnavailable("shutting down".to_owned()))?;
        let effective = keys[0].1.clone();
        if self.pending_rotations.contains_key(&request.connection_id)
            && !store_pending_rotation(
                &*self.store,
                &self.pending_rotations,
                request.connection_id,
                self.clock.now(),
            )
            .await?
        {
            return Err(BrokerError::Store(StoreError::Unavailable(
                "a rotated refresh token is waiting for the database".to_owned(),
            )));
        }
        for _ in 0..3 {
            // Locks the row on PostgreSQL: another replica refreshing this connection makes us wait here.
            let remaining = request.deadline.saturating_duration_since(Instant::now());
            let mut txn = tokio::time::timeout(remaining, self.store.begin_refresh(request.connection_id))
                .await
                .map_err(|_| BrokerError::ProviderUnavailable("timed out waiting for another refresh".to_owned()))??
                .ok_or(BrokerError::NotFound(request.connection_id))?;
            let connection = txn.connection().clone();
            if !who.tenants.allows(&connection.tenant_id) {
                return Err(BrokerError::WrongTenant);
            }
            self.check_usable(&connection, request)?;
            let now = self.clock.now();
            if let Some(record) = txn.access_token(&effective).await? {
                if self.fresh_enough(record.expires_at, request.min_ttl, now) {
                    // Someone (another replica) refreshed while we waited for the lock.
                    drop(txn);
                    let token = self.unseal_access(&connection, &record).await?;
                    return Ok(self.cache_and_issue(who, request, keys, epoch, token, "store_hit"));
                }
            }
            match self.refresh_locked(who, request, txn, &connection, &effective).await? {
                Refreshed::Token(token) => {
                    return Ok(self.cache_and_issue(who, request, keys, epoch, token, "refreshed"))
                }
                Refreshed::Fallback(token) => {
                    let now = self.clock.now();
                    self.record(who, request.connection_id, &keys[0].1, &token, "stale_fallback", now);
                    return Ok(self.issue(&token, now));
                }
                Refreshed::Retry => continue,
            }
        }
        Err(BrokerError::ProviderUnavailable(
            "the connection kept changing while refreshing".to_owned(),
        ))
    }

    async fn refresh_locked(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        txn: Box<dyn RefreshTxn>,
        connection: &Connection,
        effective: &str,
    ) -> Result<Refreshed, BrokerError> {
        let client = self.providers.client(&connection.provider).map_err(|e| match e {
            ProviderError::Unavailable(reason) => BrokerError::ProviderUnavailable(reason),
            other => BrokerError::ProviderMisconfigured(other.to_string()),
        })?;
        let dek_id = connection.dek_id.ok_or(BrokerError::Revoked)?;
        let key = self.vault.data_key(dek_id).await?;
        let connection_record = connection.id.to_string();
        let refresh_binding = Binding {
            tenant_id: &connection.tenant_id,
            user_id: &connection.user_id,
            record: &connection_record,
            field: Field::RefreshToken,
        };
        let Some(sealed_refresh) = &connection.refresh_token else {
            return Err(BrokerError::NeedsReauth(
                "the access token expired and this provider issues no refresh token".to_owned(),
            ));
        };
        let refresh_token = match key.open_string(&refresh_binding, sealed_refresh.as_bytes()) {
            Ok(token) => token,
            Err(error) => {
                self.integrity_failure(connection, "refresh_token", &error).await;
                return Err(error.into());
            }
        };
        let narrow = (!effective.is_empty()).then_some(&request.scopes);
        let started = Instant::now();
        let outcome = self
            .call_with_retries(
                &connection.provider,
                || client.refresh(&refresh_token, narrow, self.clock.now()),
                request.deadline,
            )
            .await;
        self.metrics.refresh_latency(started.elapsed().as_secs_f64());
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(ProviderError::InvalidGrant(description)) => {
                let reason = if description.is_empty() {
                    "the provider rejected the refresh token (invalid_grant)".to_owned()
                } else {
                    format!("the provider rejected the refresh token (invalid_grant: {description})")
                };
                return match txn.commit_needs_reauth(&reason, self.clock.now()).await? {
                    RefreshCommit::Stored => {
                        self.cache.invalidate_connection(connection.id);
                        let event =
                            EventBuilder::new("connection.needs_reauth", "failure", who.actor, self.clock.now())
                                .user(&connection.tenant_id, &connection.user_id)
                                .connection(connection.id)
                                .request_id(who.request_id)
                                .detail("provider", connection.provider.clone())
                                .detail("reason", reason.clone())
                                .build();
                        self.audit.write(&[event]).await?;
                        Err(BrokerError::NeedsReauth(reason))
                    }
                    // The refresh token changed meanwhile (another worker rotated it): try again with the new one.
                    RefreshCommit::Superseded => Ok(Refreshed::Retry),
                };
            }
            Err(ProviderError::InvalidScope(_)) if narrow.is_some() => {
                return Err(BrokerError::ScopeNotGranted(scope_key(&request.scopes)));
            }
            Err(error) if error.is_transient() || matches!(error, ProviderError::Malformed(_)) => {
                drop(txn);
                return self.outage_fallback(connection, effective, error).await;
            }
            Err(error) => return Err(BrokerError::ProviderMisconfigured(error.to_string())),
        };
        let access_record_id = access_token_record(connection.id, effective);
        let new_refresh = match &tokens.refresh_token {
            Some(rotated) => Some(Sealed(key.seal_str(&refresh_binding, rotated)?)),
            None => None,
        };
        let scopes = tokens.scopes.clone().unwrap_or_else(|| {
            if effective.is_empty() {
                connection.granted_scopes.clone()
            } else {
                request.scopes.clone()
            }
        });
        let record = AccessTokenRecord {
            connection_id: connection.id,
            scope_key: effective.to_owned(),
            token: Sealed(key.seal_str(
                &Binding {
                    tenant_id: &connection.tenant_id,
                    user_id: &connection.user_id,
                    record: &access_record_id,
                    field: Field::AccessToken,
                },
                &tokens.access_token,
            )?),
            token_type: tokens.token_type.clone(),
            scopes: scopes.clone(),
            expires_at: tokens.expires_at,
            token_version: connection.token_version,
        };
        let write = RefreshWrite {
            new_refresh_token: new_refresh,
            access_token: record,
            granted_scopes: None,
        };
        // The rotated refresh token is durable before anyone sees the new access token.
        let committed = match txn.commit_refresh(write.clone(), self.clock.now()).await {
            Ok(committed) => committed,
            Err(StoreError::Unavailable(reason)) if write.new_refresh_token.is_some() => {
                // The provider already rotated: the new refresh token exists only here. Keep
                // trying to store it (sealed) until the database is back, and tell the caller.
                self.persist_rotation_later(connection.id, connection.token_version, write);
                return Err(BrokerError::Store(StoreError::Unavailable(reason)));
            }
            Err(error) => return Err(error.into()),
        };
        match committed {
            RefreshCommit::Stored => Ok(Refreshed::Token(CachedToken {
                tenant_id: connection.tenant_id.clone(),
                user_id: connection.user_id.clone(),
                access_token: tokens.access_token,
                token_type: tokens.token_type,
                scopes: scopes.into_iter().collect(),
                granted: connection.granted_scopes.clone(),
                expires_at: tokens.expires_at,
            })),
            RefreshCommit::Superseded => {
                self.discard_orphan(connection, tokens).await;
                Ok(Refreshed::Retry)
            }
        }
    }

    /// Stores a rotated refresh token whose locked commit failed, retrying every
    /// second for up to ten minutes (the sealed token waits in memory meanwhile).
    fn persist_rotation_later(&self, id: Uuid, version: i64, write: RefreshWrite) {
        // Until it is stored, no refresh of this connection may use the old (rotated-away) token.
        self.pending_rotations.insert(id, (version, write));
        let store = self.store.clone();
        let clock = self.clock.clone();
        let pending = self.pending_rotations.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(600);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match store_pending_rotation(&*store, &pending, id, clock.now()).await {
                    Ok(true) => return,
                    Ok(false) if Instant::now() < give_up => continue,
                    Ok(false) => {
                        pending.remove(&id);
                        tracing::error!(connection_id = %id, "a rotated refresh token could not be stored for ten minutes; the connection will need re-consent");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(connection_id = %id, %error, "a rotated refresh token could not be stored; the connection will need re-consent");
                        return;
                    }
                }
            }
        });
    }

    /// Records a stored ciphertext that failed its integrity check.
    async fn integrity_failure(&self, connection: &Connection, field: &str, error: &VaultError) {
        tracing::error!(connection_id = %connection.id, field, %error, "stored secret failed its integrity check");
        let event = EventBuilder::new("vault.integrity_failure", "failure", "system", self.clock.now())
            .user(&connection.tenant_id, &connection.user_id)
            .connection(connection.id)
            .detail("field", field)
            .detail("error", error.to_string())
            .build();
        if let Err(error) = self.audit.write(&[event]).await {
            tracing::warn!(%error, "could not audit an integrity failure");
        }
    }

    /// Provider down or slow: a token that is still valid (if shorter than asked) beats none.
    async fn outage_fallback(
        &self,
        connection: &Connection,
        effective: &str,
        error: ProviderError,
    ) -> Result<Refreshed, BrokerError> {
        let now = self.clock.now();
        if let Some((current, Some(record))) = self
            .store
            .connection_with_token(&TenantScope::All, connection.id, effective)
            .await?
        {
            if record.expires_at > now && current.status() == ConnectionStatus::Active {
                tracing::warn!(connection_id = %connection.id, %error, "refresh failed; serving the still-valid token");
                return Ok(Refreshed::Fallback(self.unseal_access(&current, &record).await?));
            }
        }
        Err(BrokerError::ProviderUnavailable(error.to_string()))
    }

    /// A refresh whose result could not be stored (the connection was revoked
    /// meanwhile): the fresh credentials are revoked at the provider, best effort.
    async fn discard_orphan(&self, connection: &Connection, tokens: TokenSet) {
        let Ok(client) = self.providers.client(&connection.provider) else {
            return;
        };
        let (token, is_refresh) = match &tokens.refresh_token {
            Some(rt) => (rt, true),
            None => (&tokens.access_token, false),
        };
        let outcome = client.revoke(token, is_refresh).await;
        tracing::info!(connection_id = %connection.id, ok = outcome.is_ok(), "revoked credentials of a refresh that lost to a revocation");
    }

    async fn call_with_retries<F, Fut>(
        &self,
        provider: &str,
        call: F,
        deadline: Instant,
    ) -> Result<TokenSet, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<TokenSet, ProviderError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProviderError::Unavailable("the caller's deadline passed".to_owned()));
            }
            let result = match tokio::time::timeout(remaining, call()).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Unavailable(
                    "no answer before the caller's deadline".to_owned(),
                )),
            };
            match result {
                Err(error) if error.is_transient() && attempt < self.attempts => {
                    self.metrics.upstream_error(provider, error.kind());
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining <= delay {
                        return Err(error);
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(error) => {
                    self.metrics.upstream_error(provider, error.kind());
                    return Err(error);
                }
                ok => return ok,
            }
        }
    }
}

/// Stores a pending rotated refresh token: `Ok(true)` when it is settled
/// (stored, or superseded), `Ok(false)` while the database is unavailable.
async fn store_pending_rotation(
    store: &dyn Store,
    pending: &DashMap<Uuid, (i64, RefreshWrite)>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some((version, write)) = pending.get(&id).map(|entry| entry.value().clone()) else {
        return Ok(true);
    };
    match store.store_refresh_result(id, version, &write, now).await {
        Ok(outcome) => {
            pending.remove_if(&id, |_, (v, _)| *v == version);
            if outcome == RefreshCommit::Stored {
                tracing::info!(connection_id = %id, "rotated refresh token stored after the database came back");
            } else {
                tracing::warn!(connection_id = %id, "a pending rotated refresh token was superseded");
            }
            Ok(true)
        }
        Err(StoreError::Unavailable(_)) => Ok(false),
        Err(error) => {
            pending.remove_if(&id, |_, (v, _)| *v == version);
            Err(error)
        }
    }
}

enum Refreshed {
    /// Freshly refreshed and stored.
    Token(CachedToken),
    /// The provider failed; a stored token that is still valid, though shorter-lived than asked.
    Fallback(CachedToken),
    /// The connection changed under us: start over.
    Retry,
}

fn error_kind(error: &BrokerError) -> &'static str {
    match error {
        BrokerError::NotFound(_) => "not_found",
        BrokerError::WrongTenant | BrokerError::ScopeNotGranted(_) => "denied",
        BrokerError::Revoked => "revoked",
        BrokerError::NeedsReauth(_) => "needs_reauth",
        BrokerError::UserDeleted => "user_deleted",
        BrokerError::ProviderUnavailable(_) | BrokerError::ProviderMisconfigured(_) => "provider_error",
        BrokerError::Store(_) | BrokerError::Vault(_) => "internal",
    }
}
