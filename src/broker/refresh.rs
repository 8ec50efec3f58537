//! The upstream refresh of a connection whose stored token is not fresh
//! enough: a refresh slot, the connection locked in the store (single flight
//! across replicas), the provider called with retries until the caller's
//! deadline, and its answer committed: the rotated refresh token and the new
//! access token stored before any caller sees them, `NEEDS_REAUTH` on
//! `invalid_grant`, a still-valid stored token served while the provider is
//! down, and the credentials of a refresh that lost to a revocation revoked.

use super::lookup::TokenKeys;
use super::secrets::{seal_access, seal_refresh};
use super::{scope_key, Broker, BrokerError, CachedToken, IssuedToken, Requester, TokenRequest};
use crate::audit::EventBuilder;
use crate::provider::{ProviderClient, ProviderError, TokenSet};
use crate::store::{
    AccessTokenRecord, Connection, ConnectionStatus, RefreshCommit, RefreshTxn, RefreshWrite, ScopeSet, StoreError,
    TenantScope,
};
use crate::vault::DataKey;
use secrecy::SecretString;
use std::time::{Duration, Instant};

/// How many times a refresh starts over when the connection changed under it.
const ROUNDS: usize = 3;

/// How one locked refresh ended.
enum Refreshed {
    /// Freshly refreshed and stored.
    Token(CachedToken),
    /// The provider failed; a stored token that is still valid, though shorter-lived than asked.
    Fallback(CachedToken),
    /// The connection changed under us: start over.
    Retry,
}

/// What one locked refresh works on.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    /// Who asks.
    who: &'a Requester<'a>,
    /// What was asked.
    request: &'a TokenRequest,
    /// The connection as read under the lock.
    connection: &'a Connection,
    /// The scope key the token is stored under.
    effective: &'a str,
}

impl Broker {
    /// Refreshes the token for `request` and issues it (cached under `keys`
    /// unless an invalidation came after `epoch`).
    pub(super) async fn refresh(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: TokenKeys,
        epoch: u64,
    ) -> Result<IssuedToken, BrokerError> {
        let _slot = self
            .refresh_slots
            .acquire()
            .await
            .map_err(|_| BrokerError::ProviderUnavailable("shutting down".to_owned()))?;
        self.pending_rotations
            .settle(&*self.store, request.connection_id, self.clock.now())
            .await?;
        for _ in 0..ROUNDS {
            let mut txn = self.lock_connection(request).await?;
            let connection = txn.connection().clone();
            self.check_usable(who, &connection, request)?;
            if let Some(record) = self.stored_meanwhile(&mut txn, request, keys.effective()).await? {
                // Someone (another replica) refreshed while we waited for the lock.
                drop(txn);
                let token = self.unseal_access(&connection, &record).await?;
                return Ok(self.cache_and_issue(who, request, &keys, epoch, token, "store_hit"));
            }
            let attempt = Attempt {
                who,
                request,
                connection: &connection,
                effective: keys.effective(),
            };
            match self.refresh_locked(&attempt, txn).await? {
                Refreshed::Token(token) => {
                    return Ok(self.cache_and_issue(who, request, &keys, epoch, token, "refreshed"))
                }
                Refreshed::Fallback(token) => {
                    return Ok(self.issue_uncached(who, request, &keys, &token, "stale_fallback"))
                }
                Refreshed::Retry => continue,
            }
        }
        Err(BrokerError::ProviderUnavailable(
            "the connection kept changing while refreshing".to_owned(),
        ))
    }

    /// Locks the connection for a refresh, waiting no longer than the caller's deadline.
    async fn lock_connection(&self, request: &TokenRequest) -> Result<Box<dyn RefreshTxn>, BrokerError> {
        // Locks the row on PostgreSQL: another replica refreshing this connection makes us wait here.
        let remaining = request.deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(remaining, self.store.begin_refresh(request.connection_id))
            .await
            .map_err(|_| BrokerError::ProviderUnavailable("timed out waiting for another refresh".to_owned()))??
            .ok_or(BrokerError::NotFound(request.connection_id))
    }

    /// The stored token under `effective`, read under the lock, if it is now fresh enough.
    async fn stored_meanwhile(
        &self,
        txn: &mut Box<dyn RefreshTxn>,
        request: &TokenRequest,
        effective: &str,
    ) -> Result<Option<AccessTokenRecord>, BrokerError> {
        let now = self.clock.now();
        let record = txn.access_token(effective).await?;
        Ok(record.filter(|record| self.fresh_enough(record.expires_at, request.min_ttl, now)))
    }

    /// One refresh under the connection's lock: the stored refresh token
    /// presented to the provider, and its answer committed.
    async fn refresh_locked(&self, attempt: &Attempt<'_>, txn: Box<dyn RefreshTxn>) -> Result<Refreshed, BrokerError> {
        let Attempt {
            request,
            connection,
            effective,
            ..
        } = *attempt;
        let client = self.provider_client(&connection.provider)?;
        let key = self.data_key(connection).await?;
        let refresh_token = self.open_refresh_token(&key, connection).await?;
        let narrow = (!effective.is_empty()).then_some(&request.scopes);
        let outcome = self
            .call_provider(&client, &connection.provider, &refresh_token, narrow, request.deadline)
            .await;
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(error) => return self.refresh_failed(attempt, txn, error).await,
        };
        let scopes = refreshed_scopes(&tokens, connection, request, effective);
        let write = sealed_write(&key, connection, effective, &tokens, &scopes)?;
        self.commit(txn, connection, write, tokens, scopes).await
    }

    /// The provider's client; a provider tokenvault cannot use is a configuration error.
    fn provider_client(&self, provider: &str) -> Result<std::sync::Arc<ProviderClient>, BrokerError> {
        self.providers.client(provider).map_err(|e| match e {
            ProviderError::Unavailable(reason) => BrokerError::ProviderUnavailable(reason),
            other => BrokerError::ProviderMisconfigured(other.to_string()),
        })
    }

    /// Presents `refresh_token` to the provider (narrowed to `narrow` if
    /// given), with retries, and times it.
    async fn call_provider(
        &self,
        client: &ProviderClient,
        provider: &str,
        refresh_token: &SecretString,
        narrow: Option<&ScopeSet>,
        deadline: Instant,
    ) -> Result<TokenSet, ProviderError> {
        let started = Instant::now();
        let outcome = self
            .call_with_retries(
                provider,
                || client.refresh(refresh_token, narrow, self.clock.now()),
                deadline,
            )
            .await;
        self.metrics.refresh_latency(started.elapsed().as_secs_f64());
        outcome
    }

    /// Calls `call` until it succeeds, fails for good, runs out of attempts
    /// or reaches `deadline`, backing off between transient failures.
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

    /// What a failed provider call means: re-consent (`invalid_grant`), a
    /// scope the provider would not narrow to, an outage, or a configuration error.
    async fn refresh_failed(
        &self,
        attempt: &Attempt<'_>,
        txn: Box<dyn RefreshTxn>,
        error: ProviderError,
    ) -> Result<Refreshed, BrokerError> {
        let narrowed = !attempt.effective.is_empty();
        match error {
            ProviderError::InvalidGrant(description) => {
                self.needs_reauth(attempt.who, txn, attempt.connection, &description)
                    .await
            }
            ProviderError::InvalidScope(_) if narrowed => {
                Err(BrokerError::ScopeNotGranted(scope_key(&attempt.request.scopes)))
            }
            error if error.is_transient() || matches!(error, ProviderError::Malformed(_)) => {
                drop(txn);
                self.outage_fallback(attempt.connection, attempt.effective, error).await
            }
            error => Err(BrokerError::ProviderMisconfigured(error.to_string())),
        }
    }

    /// The provider rejected the refresh token: the connection becomes
    /// `NEEDS_REAUTH` (audited), unless it changed meanwhile.
    async fn needs_reauth(
        &self,
        who: &Requester<'_>,
        txn: Box<dyn RefreshTxn>,
        connection: &Connection,
        description: &str,
    ) -> Result<Refreshed, BrokerError> {
        let reason = invalid_grant_reason(description);
        match txn.commit_needs_reauth(&reason, self.clock.now()).await? {
            RefreshCommit::Stored => {
                self.cache.invalidate_connection(connection.id);
                let event = EventBuilder::new("connection.needs_reauth", "failure", who.actor, self.clock.now())
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

    /// Stores the refresh's result. The rotated refresh token is durable
    /// before anyone sees the new access token; if the database is down it
    /// waits in memory for it.
    async fn commit(
        &self,
        txn: Box<dyn RefreshTxn>,
        connection: &Connection,
        write: RefreshWrite,
        tokens: TokenSet,
        scopes: ScopeSet,
    ) -> Result<Refreshed, BrokerError> {
        let committed = match txn.commit_refresh(write.clone(), self.clock.now()).await {
            Ok(committed) => committed,
            Err(StoreError::Unavailable(reason)) if write.new_refresh_token.is_some() => {
                // The provider already rotated: the new refresh token exists only here. Keep
                // trying to store it (sealed) until the database is back, and tell the caller.
                self.pending_rotations.keep(
                    self.store.clone(),
                    self.clock.clone(),
                    connection.id,
                    connection.token_version,
                    write,
                );
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
}

/// The `NEEDS_REAUTH` reason for an `invalid_grant` with `description`.
fn invalid_grant_reason(description: &str) -> String {
    if description.is_empty() {
        "the provider rejected the refresh token (invalid_grant)".to_owned()
    } else {
        format!("the provider rejected the refresh token (invalid_grant: {description})")
    }
}

/// The scopes the refreshed token carries: as the provider reported, else as
/// asked (the full grant, or the narrowed request).
fn refreshed_scopes(tokens: &TokenSet, connection: &Connection, request: &TokenRequest, effective: &str) -> ScopeSet {
    tokens.scopes.clone().unwrap_or_else(|| {
        if effective.is_empty() {
            connection.granted_scopes.clone()
        } else {
            request.scopes.clone()
        }
    })
}

/// The refresh's result sealed for the store: the rotated refresh token (if
/// any) and the new access token under `effective`.
fn sealed_write(
    key: &DataKey,
    connection: &Connection,
    effective: &str,
    tokens: &TokenSet,
    scopes: &ScopeSet,
) -> Result<RefreshWrite, BrokerError> {
    let new_refresh_token = match &tokens.refresh_token {
        Some(rotated) => Some(seal_refresh(key, connection, rotated)?),
        None => None,
    };
    let access_token = AccessTokenRecord {
        connection_id: connection.id,
        scope_key: effective.to_owned(),
        token: seal_access(key, connection, effective, &tokens.access_token)?,
        token_type: tokens.token_type.clone(),
        scopes: scopes.clone(),
        expires_at: tokens.expires_at,
        token_version: connection.token_version,
    };
    Ok(RefreshWrite {
        new_refresh_token,
        access_token,
        granted_scopes: None,
    })
}
