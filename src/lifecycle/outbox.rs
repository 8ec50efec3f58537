//! The provider-revocation outbox: each revoked credential is revoked at
//! the provider by its own method, retried with exponential backoff until it
//! succeeds, is refused for good, or the give-up time passes.
//!
//! - Each attempt runs under its own claim (one entry at a time, a lease
//!   longer than an attempt's two provider calls); only the claim's holder
//!   records the outcome, so an entry ends once.
//! - Configuration errors (the provider not configured, its client
//!   credentials refused) are not the provider's answer about the grant: the
//!   entry waits for the configuration to be fixed, past its give-up time,
//!   counted in `tokenvault_provider_revocations_total{outcome="waiting_for_configuration"}`.
//! - A refresh made to obtain an access token for revocation keeps the
//!   rotated refresh token in the entry before the revocation is sent; a
//!   refresh whose answer was lost marks the rotation uncertain, and a later
//!   `invalid_grant` then ends the entry as failed, not as revoked.
//! - The outcome of a connection's own revocation is reported on the
//!   connection, audited in the same transaction; the entry's data key is
//!   destroyed when the entry ends.

use crate::audit::EventBuilder;
use crate::clock::SharedClock;
use crate::events::Event;
use crate::provider::{ProviderClient, ProviderError, Providers, Revoked};
use crate::store::{OutboxEntry, OutboxOutcome, ProviderRevocation, RevocationState, Sealed, Store, StoreError, Trail};
use crate::telemetry::Metrics;
use crate::vault::{Binding, DataKey, Field, Vault};
use secrecy::SecretString;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a claimed entry is hidden from other workers: longer than one
/// attempt (at most a refresh and a revocation, each bounded by the
/// provider client's timeout).
const LEASE: chrono::Duration = chrono::Duration::minutes(5);
/// Longest wait between two attempts.
const MAX_BACKOFF: chrono::Duration = chrono::Duration::hours(1);
/// Entries attempted per pass before the worker looks at requests to try an entry at once.
const PASS: usize = 100;

/// Works through the outbox.
pub struct OutboxWorker {
    store: Arc<dyn Store>,
    vault: Vault,
    providers: Arc<Providers>,
    clock: SharedClock,
    metrics: Metrics,
    retry_base: chrono::Duration,
    soon: Mutex<Vec<Uuid>>,
    wake: Notify,
}

impl std::fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("retry_base", &self.retry_base)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Revoked at the provider.
    Revoked,
    /// The provider has no way to revoke; nothing more to do.
    Unsupported,
    /// Failed; will be tried again.
    Retrying,
    /// Waiting for tokenvault's configuration to be fixed (tried again, never given up for it).
    WaitingForConfiguration,
    /// Failed for the last time.
    GaveUp,
    /// Another worker holds the entry now (this one's lease ran out); nothing recorded.
    LostClaim,
}

impl AttemptOutcome {
    /// The metric and audit label.
    fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Revoked => "revoked",
            AttemptOutcome::Unsupported => "unsupported",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::WaitingForConfiguration => "waiting_for_configuration",
            AttemptOutcome::GaveUp => "gave_up",
            AttemptOutcome::LostClaim => "lost_claim",
        }
    }

    /// The state reported on the connection.
    fn state(self) -> RevocationState {
        match self {
            AttemptOutcome::Revoked => RevocationState::Done,
            AttemptOutcome::Unsupported => RevocationState::Unsupported,
            AttemptOutcome::GaveUp => RevocationState::Failed,
            AttemptOutcome::Retrying | AttemptOutcome::WaitingForConfiguration | AttemptOutcome::LostClaim => {
                RevocationState::Pending
            }
        }
    }
}

/// What one attempt found, before it is recorded.
struct Verdict {
    outcome: AttemptOutcome,
    /// Secret-free: what went wrong, why unsupported, or what "done" rests on.
    detail: Option<String>,
    /// The error kind (`unavailable`, `not_configured`, ...).
    kind: Option<&'static str>,
    /// The provider's page for the user (unsupported).
    user_page: Option<String>,
    /// When the provider asked us to come back.
    retry_after: Option<Duration>,
}

impl Verdict {
    fn of(outcome: AttemptOutcome) -> Self {
        Self {
            outcome,
            detail: None,
            kind: None,
            user_page: None,
            retry_after: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn kind(mut self, kind: &'static str) -> Self {
        self.kind = Some(kind);
        self
    }
}

impl OutboxWorker {
    /// A worker; the first retry comes `retry_base_seconds` after a failure, doubling each time.
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        providers: Arc<Providers>,
        clock: SharedClock,
        metrics: Metrics,
        retry_base_seconds: u64,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            clock,
            metrics,
            retry_base: chrono::Duration::seconds(i64::try_from(retry_base_seconds.max(1)).unwrap_or(30)),
            soon: Mutex::new(Vec::new()),
            wake: Notify::new(),
        }
    }

    /// The provider registry (revocation plans are decided from its catalog).
    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    /// Asks for a first attempt right away (after a revocation).
    pub fn attempt_soon(&self, id: Uuid) {
        self.soon.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        self.wake.notify_one();
    }

    /// Runs until `stop`: immediate attempts when asked, due entries every `poll`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, poll: Duration) {
        loop {
            let soon: Vec<Uuid> = std::mem::take(&mut *self.soon.lock().unwrap_or_else(|e| e.into_inner()));
            for id in soon {
                let now = self.clock.now();
                match self
                    .store
                    .claim_outbox_entry(id, now, now + LEASE, Uuid::new_v4())
                    .await
                {
                    Ok(Some(entry)) => {
                        self.attempt(entry).await;
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "outbox: cannot claim an entry; the poll will retry"),
                }
            }
            if let Err(error) = self.process_due().await {
                tracing::warn!(%error, "outbox: cannot read due entries");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Claims and attempts entries due now, one at a time, until none is due
    /// (or a pass's worth, when asked to try one at once); returns how many were attempted.
    pub async fn process_due(&self) -> Result<usize, StoreError> {
        let mut attempted = 0;
        loop {
            let now = self.clock.now();
            let Some(entry) = self.store.claim_next_outbox(now, now + LEASE, Uuid::new_v4()).await? else {
                return Ok(attempted);
            };
            self.attempt(entry).await;
            attempted += 1;
            if attempted % PASS == 0 && !self.soon.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return Ok(attempted);
            }
        }
    }

    /// One attempt at one claimed entry.
    pub async fn attempt(&self, entry: OutboxEntry) -> AttemptOutcome {
        let Some(claim) = entry.claim_token else {
            tracing::warn!(entry = %entry.id, "outbox: an entry was handed over without a claim; skipped");
            return AttemptOutcome::LostClaim;
        };
        let verdict = self.revoke_at_provider(&entry, claim).await;
        let now = self.clock.now();
        let attempts = entry.attempts + 1;
        // Past the give-up time a transient failure becomes final; a configuration error never does.
        let outcome = match verdict.outcome {
            AttemptOutcome::Retrying if now >= entry.give_up_at => AttemptOutcome::GaveUp,
            other => other,
        };
        let backoff = {
            let exponent = u32::try_from(entry.attempts.clamp(0, 16)).unwrap_or(16);
            let doubled = (self.retry_base * 2i32.pow(exponent)).min(MAX_BACKOFF);
            let asked = verdict
                .retry_after
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .unwrap_or_default();
            doubled.max(asked).min(MAX_BACKOFF)
        };
        let next_attempt_at = match outcome {
            AttemptOutcome::Retrying => (now + backoff).min(entry.give_up_at.max(now)),
            _ => now + backoff,
        };
        let finished = match outcome {
            AttemptOutcome::Revoked | AttemptOutcome::Unsupported => Some("done"),
            AttemptOutcome::GaveUp => Some("gave_up"),
            _ => None,
        };
        let report = (entry.purpose == "revocation").then(|| ProviderRevocation {
            state: outcome.state(),
            at: now,
            detail: verdict
                .detail
                .clone()
                .or_else(|| (outcome == AttemptOutcome::Revoked).then(|| "revoked at the provider".to_owned())),
            user_page: verdict.user_page.clone(),
            error_kind: verdict.kind.map(str::to_owned),
        });
        let mut event = EventBuilder::new(
            "provider.revocation",
            match outcome {
                AttemptOutcome::Revoked => "success",
                other => other.label(),
            },
            "system",
            now,
        )
        .user(&entry.tenant_id, &entry.user_id)
        .connection(entry.connection_id)
        .detail("provider", entry.provider.clone())
        .detail("purpose", entry.purpose.clone())
        .detail("attempt", attempts)
        .detail("token_type_hint", entry.token_type_hint.clone());
        if let Some(detail) = &verdict.detail {
            event = event.detail(
                if outcome == AttemptOutcome::Unsupported {
                    "reason"
                } else {
                    "error"
                },
                detail.clone(),
            );
        }
        if let Some(kind) = verdict.kind {
            event = event.detail("error_kind", kind);
        }
        let mut trail = Trail::from(event.build());
        // The connection's revocation reached its outcome: the platform hears of it.
        if let (Some(report), Some(_)) = (&report, finished) {
            trail = trail.with_event(Event::provider_revocation(
                &entry.tenant_id,
                &entry.user_id,
                entry.connection_id,
                &entry.provider,
                report,
                now,
            ));
        }
        let recorded = self
            .store
            .record_outbox_attempt(
                &OutboxOutcome {
                    id: entry.id,
                    claim,
                    attempts,
                    finished,
                    next_attempt_at,
                    error: verdict.detail.as_deref().filter(|_| finished != Some("done")),
                    error_kind: verdict.kind,
                    report: report.as_ref(),
                    now,
                },
                &trail,
            )
            .await;
        match recorded {
            Ok(true) => {
                tracing::debug!(entry = %entry.id, connection_id = %entry.connection_id, attempts, finished = ?finished,
                    kind = ?verdict.kind, "outbox: attempt recorded");
            }
            Ok(false) => {
                tracing::info!(entry = %entry.id, "outbox: the claim ran out before the attempt was recorded; another worker has the entry");
                self.metrics.revocation(AttemptOutcome::LostClaim.label());
                return AttemptOutcome::LostClaim;
            }
            Err(error) => {
                tracing::warn!(%error, entry = %entry.id, "outbox: cannot record an attempt; the lease will expire and it is tried again");
                return outcome;
            }
        }
        self.metrics.revocation(outcome.label());
        if finished.is_some() {
            // The last copy of the credential is gone from the row; now its key goes too.
            if let Err(error) = self.vault.destroy_and_announce(&[entry.dek_id], &*self.store).await {
                tracing::warn!(%error, "outbox: cannot destroy a data key; retention will");
            }
        }
        outcome
    }

    /// Tries to revoke the entry's credential and says how it went.
    async fn revoke_at_provider(&self, entry: &OutboxEntry, claim: Uuid) -> Verdict {
        let client = match self.providers.client(&entry.provider) {
            Ok(client) => client,
            Err(error) => return classify(error, entry),
        };
        let opened = match self.open(entry).await {
            Ok(opened) => opened,
            Err(verdict) => return verdict,
        };
        let (key, token) = opened;
        let is_refresh = entry.token_type_hint == "refresh_token";
        let result = if is_refresh && client.spec().revokes_with_access_token() {
            match self
                .exchange_for_access_token(&client, entry, claim, &key, &token)
                .await
            {
                Ok(access_token) => client.revoke(&access_token, false).await,
                Err(verdict) => return verdict,
            }
        } else {
            client.revoke(&token, is_refresh).await
        };
        match result {
            Ok(Revoked::Done) => Verdict::of(AttemptOutcome::Revoked),
            Ok(Revoked::Unsupported { reason, user_page }) => Verdict {
                user_page: Some(user_page.to_string()),
                ..Verdict::of(AttemptOutcome::Unsupported).detail(reason)
            },
            Err(error) => classify(error, entry),
        }
    }

    /// A refresh that yields an access token to revoke with; a rotated
    /// refresh token is kept in the entry before anything else is sent.
    async fn exchange_for_access_token(
        &self,
        client: &ProviderClient,
        entry: &OutboxEntry,
        claim: Uuid,
        key: &DataKey,
        token: &SecretString,
    ) -> Result<SecretString, Verdict> {
        match client.refresh(token, None, self.clock.now()).await {
            Ok(fresh) => {
                if let Some(rotated) = &fresh.refresh_token {
                    let sealed = key
                        .seal_str(&binding(entry), rotated)
                        .map(Sealed)
                        .map_err(|e| Verdict::of(AttemptOutcome::Retrying).detail(format!("cannot seal: {e}")))?;
                    match self
                        .store
                        .keep_outbox_token(entry.id, claim, Some(&sealed), false)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => return Err(Verdict::of(AttemptOutcome::LostClaim)),
                        // Revoke anyway: done, the rotated token no longer matters; failed, it is retried with the old one.
                        Err(error) => {
                            tracing::warn!(%error, entry = %entry.id, "outbox: cannot keep a rotated refresh token")
                        }
                    }
                }
                Ok(fresh.access_token)
            }
            Err(error) => {
                if error.may_have_acted() {
                    // The provider may have rotated the token without our hearing it.
                    if let Err(store_error) = self.store.keep_outbox_token(entry.id, claim, None, true).await {
                        tracing::warn!(error = %store_error, "outbox: cannot mark a rotation uncertain");
                    }
                    let mut verdict = classify(error, entry);
                    verdict.detail = verdict
                        .detail
                        .map(|d| format!("{d} (refresh before revocation; it may have rotated the token)"));
                    return Err(verdict);
                }
                Err(classify(error, entry))
            }
        }
    }

    /// The entry's data key and its credential in clear.
    async fn open(&self, entry: &OutboxEntry) -> Result<(Arc<DataKey>, SecretString), Verdict> {
        let sealed = entry.token.as_ref().ok_or_else(|| {
            Verdict::of(AttemptOutcome::GaveUp)
                .detail("the credential copy is already gone")
                .kind("unreadable")
        })?;
        let key = self.vault.data_key(entry.dek_id).await.map_err(|e| match e {
            crate::vault::VaultError::Store(StoreError::Unavailable(reason)) => Verdict::of(AttemptOutcome::Retrying)
                .detail(format!("database unavailable: {reason}"))
                .kind("database_unavailable"),
            other => Verdict::of(AttemptOutcome::GaveUp)
                .detail(format!("the credential cannot be read: {other}"))
                .kind("unreadable"),
        })?;
        let token = key.open_string(&binding(entry), sealed.as_bytes()).map_err(|e| {
            Verdict::of(AttemptOutcome::GaveUp)
                .detail(format!("the credential cannot be read: {e}"))
                .kind("unreadable")
        })?;
        Ok((key, token))
    }
}

/// What the entry's credential is sealed to: its connection's refresh or
/// access token at the version it was copied at, or (for an entry with its
/// own key) the entry itself, at version 0.
fn binding(entry: &OutboxEntry) -> Binding<'_> {
    let field = if super::is_handed_over(entry) {
        Field::OutboxToken
    } else if entry.token_type_hint == "refresh_token" {
        Field::RefreshToken
    } else {
        Field::AccessToken
    };
    Binding {
        tenant_id: &entry.tenant_id,
        user_id: &entry.user_id,
        record: &entry.binding_record,
        field,
        version: entry.binding_version,
    }
}

/// How a provider error bears on the entry.
fn classify(error: ProviderError, entry: &OutboxEntry) -> Verdict {
    let kind = error.kind();
    let retry_after = error.retry_after();
    let outcome = match &error {
        // Our configuration, not the provider's word on the grant: wait until it is fixed.
        ProviderError::NotConfigured(_) | ProviderError::ClientRejected(_) => AttemptOutcome::WaitingForConfiguration,
        // The credential no longer works. That the grant is gone follows only
        // if no refresh of ours may have rotated it unheard.
        ProviderError::InvalidGrant(_) if entry.rotation_uncertain => {
            return Verdict {
                kind: Some("rotation_uncertain"),
                ..Verdict::of(AttemptOutcome::GaveUp).detail(
                    "the refresh token was refused after a refresh whose answer was lost: the provider may have \
                     rotated it, so the grant may live until the provider expires it; the user should remove the \
                     app on the provider's side",
                )
            };
        }
        ProviderError::InvalidGrant(_) => {
            return Verdict::of(AttemptOutcome::Revoked).detail("already invalid at the provider (invalid_grant)");
        }
        error if error.is_transient() => AttemptOutcome::Retrying,
        _ => AttemptOutcome::GaveUp,
    };
    Verdict {
        kind: Some(kind),
        retry_after,
        ..Verdict::of(outcome).detail(error.to_string())
    }
}
