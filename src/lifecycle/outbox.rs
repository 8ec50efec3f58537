//! The provider-revocation outbox: each revoked credential is revoked at
//! the provider (RFC 7009, or the provider's own method), retried with
//! exponential backoff until it succeeds or the give-up time passes. Every
//! attempt is audited; when an entry ends, its token copy and key are destroyed.

use crate::audit::{AuditLog, EventBuilder};
use crate::clock::SharedClock;
use crate::provider::{ProviderError, Providers, Revoked};
use crate::store::{OutboxEntry, Store, StoreError};
use crate::telemetry::Metrics;
use crate::vault::{Binding, Field, Vault};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a claimed entry is hidden from other workers.
const LEASE: chrono::Duration = chrono::Duration::seconds(120);
/// Entries claimed per round.
const BATCH: u32 = 50;
/// Longest wait between two attempts.
const MAX_BACKOFF: chrono::Duration = chrono::Duration::hours(1);

/// Works through the outbox.
pub struct OutboxWorker {
    store: Arc<dyn Store>,
    vault: Vault,
    providers: Arc<Providers>,
    audit: AuditLog,
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
    /// Failed for the last time.
    GaveUp,
}

impl OutboxWorker {
    /// A worker; the first retry comes `retry_base_seconds` after a failure, doubling each time.
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        providers: Arc<Providers>,
        audit: AuditLog,
        clock: SharedClock,
        metrics: Metrics,
        retry_base_seconds: u64,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            audit,
            clock,
            metrics,
            retry_base: chrono::Duration::seconds(i64::try_from(retry_base_seconds.max(1)).unwrap_or(30)),
            soon: Mutex::new(Vec::new()),
            wake: Notify::new(),
        }
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
                match self.store.claim_outbox_entry(id, now, now + LEASE).await {
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

    /// Claims and attempts every entry due now; returns how many were attempted.
    pub async fn process_due(&self) -> Result<usize, StoreError> {
        let mut attempted = 0;
        loop {
            let now = self.clock.now();
            let batch = self.store.claim_outbox(now, now + LEASE, BATCH).await?;
            if batch.is_empty() {
                return Ok(attempted);
            }
            for entry in batch {
                self.attempt(entry).await;
                attempted += 1;
            }
        }
    }

    /// One attempt at one entry.
    pub async fn attempt(&self, entry: OutboxEntry) -> AttemptOutcome {
        let attempt = entry.attempts + 1;
        let result = self.revoke_at_provider(&entry).await;
        let now = self.clock.now();
        let mut unsupported_reason = None;
        let (outcome, error) = match result {
            Ok(Revoked::Done) => (AttemptOutcome::Revoked, None),
            Ok(Revoked::Unsupported { reason, .. }) => {
                unsupported_reason = Some(reason);
                (AttemptOutcome::Unsupported, None)
            }
            // The provider no longer honours the credential: it is as good as revoked.
            Err(ProviderError::InvalidGrant(_)) => (
                AttemptOutcome::Revoked,
                Some("already invalid at the provider".to_owned()),
            ),
            Err(error) if error.is_transient() && now < entry.give_up_at => {
                (AttemptOutcome::Retrying, Some(error.to_string()))
            }
            Err(error) if error.is_transient() => (AttemptOutcome::GaveUp, Some(error.to_string())),
            // A permanent refusal (invalid token, unsupported type) will not change: stop here.
            Err(error) => (AttemptOutcome::GaveUp, Some(error.to_string())),
        };
        let label = match outcome {
            AttemptOutcome::Revoked => "revoked",
            AttemptOutcome::Unsupported => "unsupported",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::GaveUp => "gave_up",
        };
        self.metrics.revocation(label);
        let write = match outcome {
            AttemptOutcome::Retrying => {
                let exponent = u32::try_from(entry.attempts.clamp(0, 16)).unwrap_or(16);
                let backoff = (self.retry_base * 2i32.pow(exponent)).min(MAX_BACKOFF);
                self.store
                    .retry_outbox(
                        entry.id,
                        attempt,
                        (now + backoff).min(entry.give_up_at),
                        error.as_deref().unwrap_or_default(),
                    )
                    .await
            }
            _ => {
                let status = if matches!(outcome, AttemptOutcome::GaveUp) {
                    "gave_up"
                } else {
                    "done"
                };
                self.store
                    .finish_outbox(entry.id, status, attempt, error.as_deref(), now)
                    .await
            }
        };
        if let Err(error) = write {
            tracing::warn!(%error, entry = %entry.id, "outbox: cannot record an attempt; the lease will expire and it is tried again");
            return outcome;
        }
        if outcome != AttemptOutcome::Retrying {
            // The last copy of the credential is gone from the row; now its key goes too.
            if let Err(error) = self.vault.destroy_and_announce(&[entry.dek_id], &*self.store).await {
                tracing::warn!(%error, "outbox: cannot destroy a data key; retention will");
            }
        }
        let mut event = EventBuilder::new(
            "provider.revocation",
            match outcome {
                AttemptOutcome::Revoked => "success",
                AttemptOutcome::Unsupported => "unsupported",
                AttemptOutcome::Retrying => "retrying",
                AttemptOutcome::GaveUp => "gave_up",
            },
            "system",
            now,
        )
        .user(&entry.tenant_id, &entry.user_id)
        .connection(entry.connection_id)
        .detail("provider", entry.provider.clone())
        .detail("attempt", attempt)
        .detail("token_type_hint", entry.token_type_hint.clone());
        if let Some(error) = &error {
            event = event.detail("error", error.clone());
        }
        if let Some(reason) = unsupported_reason {
            event = event.detail("reason", reason);
        }
        if let Err(error) = self.audit.write(&[event.build()]).await {
            tracing::warn!(%error, "outbox: audit write failed");
        }
        outcome
    }

    async fn revoke_at_provider(&self, entry: &OutboxEntry) -> Result<Revoked, ProviderError> {
        let client = self.providers.client(&entry.provider)?;
        let sealed = entry
            .token
            .as_ref()
            .ok_or_else(|| ProviderError::Unsupported("the token copy is already gone".to_owned()))?;
        let is_refresh = entry.token_type_hint == "refresh_token";
        let key = self.vault.data_key(entry.dek_id).await.map_err(|e| match e {
            crate::vault::VaultError::Store(StoreError::Unavailable(reason)) => ProviderError::Unavailable(reason),
            other => ProviderError::Unsupported(format!("the token cannot be read: {other}")),
        })?;
        let token = key
            .open_string(
                &Binding {
                    tenant_id: &entry.tenant_id,
                    user_id: &entry.user_id,
                    record: &entry.binding_record,
                    // A handed-over credential (re-consent, lost refresh) is sealed under the entry's own key.
                    field: if super::is_handed_over(entry) {
                        Field::OutboxToken
                    } else if is_refresh {
                        Field::RefreshToken
                    } else {
                        Field::AccessToken
                    },
                },
                sealed.as_bytes(),
            )
            .map_err(|e| ProviderError::Unsupported(format!("the token cannot be read: {e}")))?;
        client.revoke(&token, is_refresh).await
    }
}
