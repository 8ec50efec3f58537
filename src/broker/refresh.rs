//! The upstream refresh of a connection whose stored token is not fresh
//! enough. A refresh belongs to its flight, not to a caller: it runs as a
//! task of its own (see `flight`) that finishes, provider answer and commit,
//! even when every caller has gone, bounded by `broker.refresh_deadline_seconds`.
//!
//! One round: read the connection; serve a stored token that became fresh
//! meanwhile; take the store's refresh lease (one refresher across replicas,
//! journaled: owner and start); present the stored refresh token; store the
//! answer fenced by the token version, so a revocation, deletion or
//! re-consent that landed meanwhile wins and the late credentials go to the
//! provider-revocation outbox (see `discard_orphan`). No row lock is held
//! across the provider call.
//! `invalid_grant` makes the connection `NEEDS_REAUTH` (with "refresh
//! interrupted" when the journal shows that an earlier attempt died after the
//! provider may have rotated the token); a provider outage serves a stored
//! token that is still valid.

use super::flight::Landed;
use super::lookup::TokenKeys;
use super::miss::check_active;
use super::secrets::{seal_access, seal_refresh};
use super::{Broker, BrokerError, CachedToken, ConsentRequired, IssuedToken, Owner, Requester, TokenRequest};
use crate::audit::EventBuilder;
use crate::consent::catalog::RefreshRotation;
use crate::events::{Event, EventType};
use crate::lifecycle::{CredentialKind, Purpose};
use crate::provider::{ProviderClient, ProviderError, TokenSet};
use crate::store::{
    version_after_refresh, AccessTokenRecord, AuditEvent, Connection, ConnectionStatus, InterruptedRefresh,
    RefreshClaim, RefreshCommit, RefreshWrite, ScopeSet, StoreError, TenantScope, Trail,
};
use crate::vault::DataKey;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How many times a refresh starts over when the connection changed under it.
const ROUNDS: usize = 3;
/// How often a refresh waiting for another replica's lease looks at the store.
const LEASE_POLL: Duration = Duration::from_millis(200);
/// How long a refresh lease lasts unless renewed: a replica that dies
/// mid-refresh holds up the others at most this long.
const LEASE: chrono::Duration = chrono::Duration::seconds(6);
/// How often the flight renews its lease while the provider call runs.
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(2);

/// What a refresh flight works on: the connection and scope key, and who started it.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) connection_id: Uuid,
    /// The scope key the token is stored under (empty: the full grant).
    pub(super) effective: String,
    /// The scopes to narrow to, when `effective` is not the full grant.
    pub(super) narrow: Option<ScopeSet>,
    /// The starting caller's `min_ttl` (a stored token that meets it is served).
    pub(super) min_ttl: chrono::Duration,
    /// The starting caller, for the audit trail.
    pub(super) actor: Arc<str>,
    pub(super) request_id: Option<String>,
    /// Refresh even if the stored token is fresh (keep-alive), in the first round.
    pub(super) force: bool,
}

/// Forgets its flight when dropped (see [`Broker::launch`]).
struct LandsOnDrop {
    broker: Arc<Broker>,
    key: (Uuid, String),
    id: u64,
}

impl Drop for LandsOnDrop {
    fn drop(&mut self) {
        self.broker.flights.land(&self.key, self.id);
    }
}

/// How one round of a flight ended.
enum Round {
    /// A token to hand out.
    Landed(Landed),
    /// The connection changed under us: start over.
    Again,
    /// Another refresher holds the lease: look again shortly.
    Busy,
}

impl Broker {
    /// Refreshes the token for `request` in its flight and issues it (cached
    /// under `keys` unless an invalidation came after `epoch`). The caller
    /// waits until its deadline; the flight goes on without it.
    pub(super) async fn refresh(
        self: &Arc<Self>,
        who: &Requester<'_>,
        request: &TokenRequest,
        keys: TokenKeys,
        epoch: u64,
    ) -> Result<IssuedToken, BrokerError> {
        let job = Job {
            connection_id: request.connection_id,
            effective: keys.effective().to_owned(),
            narrow: (!keys.effective().is_empty()).then(|| request.scopes.clone()),
            min_ttl: request.min_ttl,
            actor: who.actor.clone(),
            request_id: who.request_id.map(str::to_owned),
            force: false,
        };
        let landing = self.launch(job);
        let deadline = tokio::time::Instant::from_std(request.deadline);
        let landed = tokio::time::timeout_at(deadline, landing)
            .await
            .map_err(|_| BrokerError::DeadlineExceeded)??;
        match landed.outcome {
            "stale_fallback" => self.issue_uncached(who, request, &keys, &landed.token, landed.outcome),
            outcome => self.cache_shared_and_issue(who, request, &keys, epoch, landed.token, outcome),
        }
    }

    /// Joins the flight of `job`'s connection and scope key, starting it if none is in the air.
    pub(super) fn launch(self: &Arc<Self>, job: Job) -> super::flight::Landing {
        let flight_key = (job.connection_id, job.effective.clone());
        let broker = self.clone();
        self.flights.join(flight_key.clone(), move |id| async move {
            // Landed however the task ends, even by a panic: a flight left in the
            // map would answer every later caller with its old result.
            let _landing = LandsOnDrop {
                broker: broker.clone(),
                key: flight_key,
                id,
            };
            broker.fly(&job).await
        })
    }

    /// The flight: up to [`ROUNDS`] rounds, each starting from a fresh read.
    async fn fly(self: &Arc<Self>, job: &Job) -> Result<Landed, BrokerError> {
        let _slot = self
            .refresh_slots
            .acquire()
            .await
            .map_err(|_| BrokerError::ProviderUnavailable("shutting down".to_owned()))?;
        self.pending_rotations
            .settle(&*self.store, job.connection_id, self.clock.now())
            .await?;
        // Waiting for another refresher is bounded by how long its refresh may run.
        let give_up = Instant::now() + self.refresh_budget + LEASE.to_std().unwrap_or(LEASE_RENEW_EVERY);
        let mut rounds = 0;
        loop {
            match self.round(job, job.force && rounds == 0).await? {
                Round::Landed(landed) => return Ok(landed),
                Round::Again => rounds += 1,
                Round::Busy if Instant::now() < give_up => {
                    // Another replica (or flight) holds the lease: look again shortly; its
                    // commit shows as a fresh stored token, its end as a free lease.
                    tokio::time::sleep(LEASE_POLL).await;
                }
                Round::Busy => {
                    return Err(BrokerError::ProviderUnavailable(
                        "another replica's refresh of this connection did not finish".to_owned(),
                    ))
                }
            }
            if rounds >= ROUNDS {
                return Err(BrokerError::ProviderUnavailable(
                    "the connection kept changing while refreshing".to_owned(),
                ));
            }
        }
    }

    /// One round: read, serve what became fresh, or claim the lease and refresh.
    async fn round(&self, job: &Job, force: bool) -> Result<Round, BrokerError> {
        let epoch = self.cache.epoch();
        let (connection, stored) = self
            .store
            .connection_with_token(&TenantScope::All, job.connection_id, &job.effective)
            .await?
            .ok_or(BrokerError::NotFound(job.connection_id))?;
        check_active(&connection)?;
        let now = self.clock.now();
        let fresh = stored.filter(|r| !force && self.fresh_enough(r.expires_at, r.issued_at, job.min_ttl, now));
        if let Some(record) = fresh {
            // Another replica refreshed meanwhile.
            let token = self.unseal_access(&connection, &record).await?;
            return Ok(Round::Landed(self.cache_landed(epoch, job, token, "store_hit")));
        }
        let lease_until = now + LEASE;
        let claim = self
            .store
            .claim_refresh(connection.id, connection.token_version, &self.replica, now, lease_until)
            .await?;
        match claim {
            RefreshClaim::Moved => Ok(Round::Again),
            RefreshClaim::Busy { until } => {
                tracing::debug!(connection_id = %connection.id, %until, "another refresh holds the lease; waiting for it");
                Ok(Round::Busy)
            }
            RefreshClaim::Claimed { interrupted } => {
                let mut settled = true;
                let outcome = self
                    .refresh_claimed(job, &connection, interrupted.as_ref(), epoch, &mut settled)
                    .await;
                if !matches!(outcome, Ok(Round::Landed(ref landed)) if landed.outcome == "refreshed") {
                    // Nothing was committed: give the lease back for the next attempt, keeping
                    // the journal entry when the provider may have acted on this one.
                    let now = self.clock.now();
                    if let Err(error) = self
                        .store
                        .release_refresh(connection.id, &self.replica, settled, now)
                        .await
                    {
                        tracing::warn!(connection_id = %connection.id, %error, "could not release the refresh lease; it expires by itself");
                    }
                }
                outcome
            }
        }
    }

    /// The lease is ours: present the refresh token and store the answer.
    async fn refresh_claimed(
        &self,
        job: &Job,
        connection: &Connection,
        interrupted: Option<&InterruptedRefresh>,
        epoch: u64,
        settled: &mut bool,
    ) -> Result<Round, BrokerError> {
        if let Some(earlier) = interrupted {
            tracing::warn!(connection_id = %connection.id, owner = %earlier.owner, started_at = %earlier.started_at,
                "an earlier refresh of this connection was interrupted; presenting the stored refresh token");
        }
        let client = self.provider_client(&connection.provider)?;
        let key = self.data_key(connection).await?;
        let refresh_token = self.open_refresh_token(&key, connection).await?;
        let rotation = client.spec().refresh_rotation;
        let call = self.call_provider(&client, &refresh_token, job.narrow.as_ref(), rotation);
        let outcome = self.renewing_lease(connection.id, call).await;
        let tokens = match outcome {
            Ok(tokens) => tokens,
            Err(error) => {
                // A timeout, a 5xx or an unreadable answer: the provider may have rotated the token.
                *settled = !error.may_have_acted();
                return self.refresh_failed(job, connection, interrupted, error).await;
            }
        };
        // Recorded with the commit, in its transaction.
        let trail = match interrupted {
            Some(earlier) => Trail::from(interrupted_event(
                job,
                connection,
                earlier,
                "recovered",
                None,
                self.clock.now(),
            )),
            None => Trail::none(),
        };
        let scopes = refreshed_scopes(&tokens, connection);
        let write = sealed_write(&key, connection, &job.effective, &tokens, &scopes)?;
        self.commit(job, connection, (write, trail), tokens, scopes, epoch)
            .await
    }

    /// Runs `work` while renewing this flight's lease on `id` every
    /// [`LEASE_RENEW_EVERY`], so that the lease outlives a slow provider but
    /// not a dead replica.
    async fn renewing_lease<T>(&self, id: Uuid, work: impl std::future::Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut renew = tokio::time::interval(LEASE_RENEW_EVERY);
        renew.tick().await;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = renew.tick() => {
                    let until = self.clock.now() + LEASE;
                    match self.store.renew_refresh(id, &self.replica, until).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(connection_id = %id, "the refresh lease was taken over while the provider was answering"),
                        Err(error) => tracing::warn!(connection_id = %id, %error, "could not renew the refresh lease"),
                    }
                }
            }
        }
    }

    /// The provider's client; a provider tokenvault cannot use is a configuration error.
    fn provider_client(&self, provider: &str) -> Result<Arc<ProviderClient>, BrokerError> {
        self.providers.client(provider).map_err(|e| match e {
            ProviderError::Unavailable(reason) => BrokerError::ProviderUnavailable(reason),
            other => BrokerError::ProviderMisconfigured(other.to_string()),
        })
    }

    /// Presents `refresh_token` to the provider (narrowed to `narrow` if
    /// given), retrying transient failures within the refresh budget, and times it.
    async fn call_provider(
        &self,
        client: &ProviderClient,
        refresh_token: &SecretString,
        narrow: Option<&ScopeSet>,
        rotation: RefreshRotation,
    ) -> Result<TokenSet, ProviderError> {
        let started = Instant::now();
        let deadline = started + self.refresh_budget;
        let provider = client.spec().name.as_str();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result =
                match tokio::time::timeout(remaining, client.refresh(refresh_token, narrow, self.clock.now())).await {
                    Ok(result) => result,
                    Err(_) => Err(ProviderError::Unavailable(format!(
                        "{provider} did not answer within the refresh budget"
                    ))),
                };
            let error = match result {
                Ok(tokens) => break Ok(tokens),
                Err(error) => error,
            };
            self.metrics.upstream_error(provider, error.kind());
            // A single-use refresh token is presented again only when the provider surely never saw it.
            let repeatable = rotation != RefreshRotation::Strict || error.surely_unprocessed();
            let wait = error.retry_after().unwrap_or(delay).max(delay);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !error.is_transient() || !repeatable || attempt >= self.attempts || wait >= remaining {
                break Err(error);
            }
            tokio::time::sleep(wait).await;
            delay *= 2;
            attempt += 1;
        };
        self.metrics.refresh_latency(started.elapsed().as_secs_f64());
        outcome
    }

    /// What a failed provider call means: re-consent (`invalid_grant`), a
    /// scope the provider would not narrow to, an outage, or a configuration error.
    async fn refresh_failed(
        &self,
        job: &Job,
        connection: &Connection,
        interrupted: Option<&InterruptedRefresh>,
        error: ProviderError,
    ) -> Result<Round, BrokerError> {
        match error {
            ProviderError::InvalidGrant(description) => {
                self.needs_reauth(job, connection, interrupted, &description).await
            }
            // The provider would not narrow to scopes it granted: the grant changed there.
            ProviderError::InvalidScope(_) if job.narrow.is_some() => {
                Err(BrokerError::ConsentRequired(Box::new(ConsentRequired {
                    connection_id: connection.id,
                    provider: connection.provider.clone(),
                    missing_scopes: job.narrow.iter().flatten().cloned().collect(),
                    missing_capabilities: Vec::new(),
                })))
            }
            error if error.is_transient() || matches!(error, ProviderError::Malformed(_)) => {
                self.outage_fallback(connection, &job.effective, error).await
            }
            error => Err(BrokerError::ProviderMisconfigured(error.to_string())),
        }
    }

    /// The provider rejected the refresh token: the connection becomes
    /// `NEEDS_REAUTH`, audited in the same transaction, unless it changed meanwhile.
    async fn needs_reauth(
        &self,
        job: &Job,
        connection: &Connection,
        interrupted: Option<&InterruptedRefresh>,
        description: &str,
    ) -> Result<Round, BrokerError> {
        let reason = match interrupted {
            Some(_) => format!(
                "refresh interrupted: an earlier refresh died after the provider may have rotated the refresh token, \
                 and the stored one was refused ({})",
                invalid_grant_text(description)
            ),
            None => format!(
                "the provider rejected the refresh token ({})",
                invalid_grant_text(description)
            ),
        };
        let now = self.clock.now();
        let mut trail = Trail::none();
        if let Some(earlier) = interrupted {
            trail = trail.and(interrupted_event(
                job,
                connection,
                earlier,
                "failure",
                Some(&reason),
                now,
            ));
        }
        let trail = trail.and(
            EventBuilder::new("connection.needs_reauth", "failure", &job.actor, now)
                .user(&connection.tenant_id, &connection.user_id)
                .connection(connection.id)
                .request_id(job.request_id.as_deref())
                .detail("provider", connection.provider.clone())
                .detail("reason", reason.clone())
                .build(),
        );
        let mut needs_reauth = connection.clone();
        needs_reauth.stored_status = ConnectionStatus::NeedsReauth;
        let trail = trail.with_event(
            Event::of_connection(EventType::ConnectionNeedsReauth, &needs_reauth, now)
                .scopes(&connection.granted_scopes)
                .reason(&reason),
        );
        match self
            .store
            .fail_refresh(connection.id, connection.token_version, &reason, &trail, now)
            .await?
        {
            RefreshCommit::Stored => {
                self.cache.invalidate_connection(connection.id);
                Err(BrokerError::NeedsReauth(reason))
            }
            // The refresh token changed meanwhile (a re-consent): try again with the new one.
            RefreshCommit::Superseded => Ok(Round::Again),
        }
    }

    /// Provider down or slow: a token that is still valid (if shorter than asked) beats none.
    async fn outage_fallback(
        &self,
        connection: &Connection,
        effective: &str,
        error: ProviderError,
    ) -> Result<Round, BrokerError> {
        let now = self.clock.now();
        if let Some((current, Some(record))) = self
            .store
            .connection_with_token(&TenantScope::All, connection.id, effective)
            .await?
        {
            if record.expires_at > now && check_active(&current).is_ok() {
                tracing::warn!(connection_id = %connection.id, %error, "refresh failed; serving the still-valid token");
                let token = Arc::new(self.unseal_access(&current, &record).await?);
                return Ok(Round::Landed(Landed {
                    token,
                    outcome: "stale_fallback",
                }));
            }
        }
        Err(BrokerError::ProviderUnavailable(error.to_string()))
    }

    /// Stores the refresh's result, fenced by the token version the round
    /// started from. The rotated refresh token is durable before anyone sees
    /// the new access token; if the database is down it waits in memory for it
    /// (with the trail that records it, written in the same transaction).
    async fn commit(
        &self,
        job: &Job,
        connection: &Connection,
        (write, trail): (RefreshWrite, Trail),
        tokens: TokenSet,
        scopes: ScopeSet,
        epoch: u64,
    ) -> Result<Round, BrokerError> {
        let now = self.clock.now();
        let committed = match self
            .store
            .commit_refresh(connection.id, connection.token_version, &write, &trail, now)
            .await
        {
            Ok(committed) => committed,
            Err(StoreError::Unavailable(reason)) if write.new_refresh_token.is_some() => {
                // The provider already rotated: the new refresh token exists only here. Keep
                // trying to store it (sealed) until the database is back.
                self.pending_rotations.keep(
                    self.store.clone(),
                    self.clock.clone(),
                    connection.id,
                    connection.token_version,
                    write,
                    trail,
                );
                return Err(BrokerError::Store(StoreError::Unavailable(reason)));
            }
            Err(error) => return Err(error.into()),
        };
        match committed {
            RefreshCommit::Stored => {
                let token = CachedToken::new(
                    Owner::of(connection),
                    tokens.access_token,
                    &scopes,
                    &connection.granted_scopes,
                    tokens.expires_at,
                    tokens.issued_at,
                );
                Ok(Round::Landed(self.cache_landed(epoch, job, token, "refreshed")))
            }
            RefreshCommit::Superseded => {
                self.discard_orphan(job, connection, tokens).await;
                Ok(Round::Again)
            }
        }
    }

    /// Caches a flight's token under its stored scope key (unless an
    /// invalidation came after `epoch`).
    fn cache_landed(&self, epoch: u64, job: &Job, token: CachedToken, outcome: &'static str) -> Landed {
        let token = Arc::new(token);
        self.cache
            .insert_if_current(epoch, &[(job.connection_id, job.effective.clone())], token.clone());
        Landed { token, outcome }
    }

    /// A refresh whose result could not be stored (the connection was
    /// revoked, deleted or re-consented meanwhile): its credentials are never
    /// served. The new credential (the rotated refresh token, else the new
    /// access token) goes to the provider-revocation outbox under a data key
    /// of its own, audited in the same transaction, and is retried there until
    /// final; when that cannot be stored (database down) it is revoked at once,
    /// best effort. Nothing is revoked when the provider cannot revoke, nor
    /// when the connection is still active at a provider whose revocation is
    /// grant-wide and shared with a re-consent's token (it would end the new grant).
    async fn discard_orphan(&self, job: &Job, connection: &Connection, tokens: TokenSet) {
        let (token, kind) = match &tokens.refresh_token {
            Some(rotated) => (rotated, CredentialKind::RefreshToken),
            None => (&tokens.access_token, CredentialKind::AccessToken),
        };
        let now = self.clock.now();
        let event = |outcome: &str, reason: &str| {
            EventBuilder::new("connection.refresh_discarded", outcome, &job.actor, now)
                .user(&connection.tenant_id, &connection.user_id)
                .connection(connection.id)
                .request_id(job.request_id.as_deref())
                .detail("provider", connection.provider.clone())
                .detail("token_type_hint", kind.hint())
                .detail("reason", reason.to_owned())
        };
        let Ok(client) = self.providers.client(&connection.provider) else {
            tracing::warn!(connection_id = %connection.id, "the provider of a refresh that lost is no longer configured; its credentials cannot be revoked");
            self.audit
                .enqueue(event("failure", "the provider is not configured").build())
                .await;
            return;
        };
        if client.spec().revocation_unsupported().is_some() {
            self.audit
                .enqueue(event("unsupported", "the provider offers no revocation").build())
                .await;
            return;
        }
        if !client.spec().revoke_replaced_on_reconsent() {
            let current = self.store.connection(&TenantScope::All, connection.id).await;
            if matches!(current, Ok(Some(ref c)) if c.stored_status == ConnectionStatus::Active) {
                self.audit
                    .enqueue(
                        event(
                            "not_revoked",
                            "the connection is still active and the provider's revocation is grant-wide",
                        )
                        .build(),
                    )
                    .await;
                return;
            }
        }
        let reason = "the refresh lost to a revocation, deletion or re-consent";
        let trail = |entry: &crate::store::OutboxEntry| {
            Trail::from(
                event("queued", reason)
                    .detail("revocation_outbox_id", entry.id.to_string())
                    .build(),
            )
        };
        let queued = self
            .handover
            .queue(&*self.store, (connection, token, kind), Purpose::Orphan, trail, now)
            .await;
        let Err(error) = queued else { return };
        tracing::warn!(connection_id = %connection.id, %error,
            "could not queue the credentials of a refresh that lost for revocation; revoking them at once, best effort");
        let outcome = match client.revoke(token, kind == CredentialKind::RefreshToken).await {
            Ok(crate::provider::Revoked::Done) => "revoked",
            Ok(crate::provider::Revoked::Unsupported { .. }) => "unsupported",
            Err(error) => error.kind(),
        };
        tracing::info!(connection_id = %connection.id, outcome, "revoked the credentials of a refresh that lost, once, without the outbox");
        self.audit
            .enqueue(
                event(if outcome == "revoked" { "success" } else { "failure" }, reason)
                    .detail("outbox", "unavailable")
                    .detail("revocation", outcome)
                    .build(),
            )
            .await;
    }
}

/// `invalid_grant`, with the provider's description when it gave one.
fn invalid_grant_text(description: &str) -> String {
    if description.is_empty() {
        "invalid_grant".to_owned()
    } else {
        format!("invalid_grant: {description}")
    }
}

/// The scopes the refreshed token carries: as the provider reported, else
/// the full grant. An answer without `scope` to a narrowed request means the
/// provider did not narrow (RFC 6749 §5.1: "as requested" is not promised for a
/// refresh of a narrower scope), so the token is taken to carry the full grant.
fn refreshed_scopes(tokens: &TokenSet, connection: &Connection) -> ScopeSet {
    tokens
        .scopes
        .clone()
        .unwrap_or_else(|| connection.granted_scopes.clone())
}

/// The refresh's result sealed for the store: the rotated refresh token (if
/// any) and the new access token under `effective`, both for the token
/// version the commit gives the connection ([`version_after_refresh`]).
fn sealed_write(
    key: &DataKey,
    connection: &Connection,
    effective: &str,
    tokens: &TokenSet,
    scopes: &ScopeSet,
) -> Result<RefreshWrite, BrokerError> {
    let version = version_after_refresh(connection.token_version, tokens.refresh_token.is_some());
    let new_refresh_token = match &tokens.refresh_token {
        Some(rotated) => Some(seal_refresh(key, connection, rotated, version)?),
        None => None,
    };
    let access_token = AccessTokenRecord {
        connection_id: connection.id,
        scope_key: effective.to_owned(),
        token: seal_access(key, connection, effective, &tokens.access_token, version)?,
        token_type: tokens.token_type.clone(),
        scopes: scopes.clone(),
        expires_at: tokens.expires_at,
        token_version: version,
        issued_at: tokens.issued_at,
    };
    Ok(RefreshWrite {
        new_refresh_token,
        access_token,
        granted_scopes: None,
    })
}

/// The audit event of what became of an interrupted refresh (`recovered` or `failure`).
fn interrupted_event(
    job: &Job,
    connection: &Connection,
    earlier: &InterruptedRefresh,
    outcome: &str,
    reason: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> AuditEvent {
    let mut event = EventBuilder::new("connection.refresh_interrupted", outcome, &job.actor, at)
        .user(&connection.tenant_id, &connection.user_id)
        .connection(connection.id)
        .request_id(job.request_id.as_deref())
        .detail("provider", connection.provider.clone())
        .detail("interrupted_owner", earlier.owner.clone())
        .detail("interrupted_started_at", earlier.started_at.to_rfc3339());
    if let Some(reason) = reason {
        event = event.detail("reason", reason.to_owned());
    }
    event.build()
}
