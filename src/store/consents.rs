//! Consent requests: [`ConsentStore`], from `StartConsent` (with the sealed
//! PKCE verifier) through the single-use claim of the callback to the
//! outcome, and the purge of expired requests. Starting and finishing append
//! their [`Trail`] in the same transaction as the change.

use super::sql::error::map_err;
use super::sql::query::{placeholders, Fetch};
use super::sql::rows::{Columns, CONSENT_COLUMNS};
use super::sql::SqlStore;
use super::trail::append_trail;
use super::{scopes_to_text, ConsentRecord, ConsentState, Sealed, StoreError, TenantScope, Trail, TrailOf, UserStore};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An exchanged grant put aside for the platform's confirmation.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Consent id.
    pub id: Uuid,
    /// Hex SHA-256 of the completion code.
    pub completion_hash: String,
    /// The grant, sealed under the request's data key.
    pub grant: Sealed,
    /// The upstream account, when learned.
    pub account_subject: Option<String>,
    /// The account's display name.
    pub account_display: Option<String>,
    /// Until when the platform may confirm.
    pub expires_at: DateTime<Utc>,
}

/// The `consent_requests` table.
#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// Stores a new consent request, appending `trail` in the same transaction.
    async fn insert_consent(&self, consent: &ConsentRecord, trail: &Trail) -> Result<(), StoreError>;
    /// Reads a consent request inside `scope`.
    async fn consent(&self, scope: &TenantScope, id: Uuid) -> Result<Option<ConsentRecord>, StoreError>;
    /// Finds a consent request by the hash of its state.
    async fn consent_by_state(&self, state_hash: &str) -> Result<Option<ConsentRecord>, StoreError>;
    /// Binds a pending, unexpired request found by its start handle's hash
    /// to a browser: a new state hash and binding-cookie hash replace those
    /// of any earlier visit. `None` when no such request is pending.
    async fn bind_consent(
        &self,
        start_hash: &str,
        state_hash: &str,
        binding_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsentRecord>, StoreError>;
    /// Moves an `exchanging` request to `approved`: the sealed grant, its
    /// account and the completion code's hash are kept until `expires_at`,
    /// and `trail` is appended in the same transaction.
    async fn approve_consent(&self, approval: &Approval, trail: &Trail) -> Result<(), StoreError>;
    /// Moves an approved, unexpired request whose completion code hashes to
    /// `completion_hash` to `confirming`; `false` when there is none (single use).
    async fn claim_confirmation(&self, id: Uuid, completion_hash: &str, now: DateTime<Utc>)
        -> Result<bool, StoreError>;
    /// Gives a claimed confirmation back (`confirming` to `approved`) after
    /// storing its grant failed, so that the platform may retry.
    async fn release_confirmation(&self, id: Uuid) -> Result<(), StoreError>;
    /// Moves a pending, unexpired request to `exchanging`; `false` if it was not pending (single use).
    async fn claim_consent(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records the outcome and drops the sealed verifier, appending `trail`
    /// in the same transaction; a request that already ended (completed or
    /// failed) is left as it is and `trail` is not appended. (A grant completes its request itself, in
    /// [`store_consent_grant`](super::ConnectionStore::store_consent_grant).)
    async fn finish_consent(
        &self,
        id: Uuid,
        state: ConsentState,
        connection_id: Option<Uuid>,
        error: Option<&str>,
        now: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<(), StoreError>;
    /// A page of a user's consent requests (for export), ordered by id, after `after`.
    async fn consents_of_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ConsentRecord>, StoreError>;
    /// Ends the requests still waiting (`pending`, or `approved` and never
    /// confirmed) whose window closed before `now`: each becomes `failed`
    /// ("expired"), its verifier and kept grant dropped, with `trail(request)`
    /// in its transaction; returns how many (or would, on a dry run).
    async fn expire_consents(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        trail: TrailOf<'_, ConsentRecord>,
    ) -> Result<u64, StoreError>;
    /// Deletes consent requests that expired before `before`, in bounded
    /// batches; returns the count and their data key ids (to destroy; none on a dry run).
    async fn purge_consents(&self, before: DateTime<Utc>, dry_run: bool) -> Result<(u64, Vec<Uuid>), StoreError>;
}

#[async_trait]
impl ConsentStore for SqlStore {
    async fn insert_consent(&self, consent: &ConsentRecord, trail: &Trail) -> Result<(), StoreError> {
        self.ensure_user(&consent.tenant_id, &consent.user_id, consent.created_at)
            .await?;
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO consent_requests ({CONSENT_COLUMNS}) VALUES ({})",
            placeholders(1, 28)
        ))
        .bind(consent.id.to_string())
        .bind(consent.state_hash.clone())
        .bind(consent.tenant_id.clone())
        .bind(consent.user_id.clone())
        .bind(consent.provider.clone())
        .bind(consent.capabilities.join(" "))
        .bind(scopes_to_text(&consent.requested_scopes))
        .bind(scopes_to_text(&consent.asked_scopes))
        .bind(i64::from(consent.incremental))
        .bind(consent.return_url.clone())
        .bind(consent.redirect_uri.clone())
        .bind(consent.dek_id.to_string())
        .bind(consent.pkce_verifier.as_ref().map(|v| v.0.clone()))
        .bind(consent.state.as_str())
        .bind(consent.connection_id.map(|c| c.to_string()))
        .bind(consent.error.clone())
        .bind(to_millis(consent.created_at))
        .bind(to_millis(consent.expires_at))
        .bind(consent.completed_at.map(to_millis))
        .bind(consent.actor.clone())
        .bind(consent.start_hash.clone())
        .bind(consent.binding_hash.clone())
        .bind(consent.completion_hash.clone())
        .bind(consent.pending_grant.as_ref().map(|g| g.0.clone()))
        .bind(consent.account_subject.clone())
        .bind(consent.account_display.clone())
        .bind(consent.target_connection_id.map(|c| c.to_string()))
        .bind(consent.account_hint.clone())
        .run(&mut *tx)
        .await?;
        append_trail(&mut tx, trail).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn consent(&self, scope: &TenantScope, id: Uuid) -> Result<Option<ConsentRecord>, StoreError> {
        let consent: Option<ConsentRecord> =
            sqlx::query(&format!("SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE id = $1"))
                .bind(id.to_string())
                .record(&self.pool)
                .await?;
        Ok(consent.filter(|c| scope.allows(&c.tenant_id)))
    }

    async fn consent_by_state(&self, state_hash: &str) -> Result<Option<ConsentRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE state_hash = $1"
        ))
        .bind(state_hash.to_owned())
        .record(&self.pool)
        .await
    }

    async fn bind_consent(
        &self,
        start_hash: &str,
        state_hash: &str,
        binding_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        let bound = sqlx::query(
            "UPDATE consent_requests SET state_hash = $1, binding_hash = $2 \
             WHERE start_hash = $3 AND state = 'pending' AND expires_at > $4",
        )
        .bind(state_hash.to_owned())
        .bind(binding_hash.to_owned())
        .bind(start_hash.to_owned())
        .bind(to_millis(now))
        .run(&self.pool)
        .await?;
        if bound != 1 {
            return Ok(None);
        }
        self.consent_by_state(state_hash).await
    }

    async fn approve_consent(&self, approval: &Approval, trail: &Trail) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE consent_requests SET state = 'approved', completion_hash = $1, pending_grant = $2, \
             account_subject = $3, account_display = $4, expires_at = $5, pkce_verifier = NULL \
             WHERE id = $6 AND state = 'exchanging'",
        )
        .bind(approval.completion_hash.clone())
        .bind(approval.grant.0.clone())
        .bind(approval.account_subject.clone())
        .bind(approval.account_display.clone())
        .bind(to_millis(approval.expires_at))
        .bind(approval.id.to_string())
        .run(&mut *tx)
        .await?;
        append_trail(&mut tx, trail).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn claim_confirmation(
        &self,
        id: Uuid,
        completion_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE consent_requests SET state = 'confirming' \
             WHERE id = $1 AND state = 'approved' AND completion_hash = $2 AND expires_at > $3",
        )
        .bind(id.to_string())
        .bind(completion_hash.to_owned())
        .bind(to_millis(now))
        .run(&self.pool)
        .await?;
        Ok(claimed == 1)
    }

    async fn release_confirmation(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE consent_requests SET state = 'approved' WHERE id = $1 AND state = 'confirming'")
            .bind(id.to_string())
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_consent(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE consent_requests SET state = 'exchanging' WHERE id = $1 AND state = 'pending' AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(to_millis(now))
        .run(&self.pool)
        .await?;
        Ok(claimed == 1)
    }

    async fn finish_consent(
        &self,
        id: Uuid,
        state: ConsentState,
        connection_id: Option<Uuid>,
        error: Option<&str>,
        now: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // A request that already ended keeps its end (and its one event).
        let updated = sqlx::query(
            "UPDATE consent_requests SET state = $1, connection_id = $2, error = $3, completed_at = $4, pkce_verifier = NULL, \
             pending_grant = NULL, completion_hash = NULL WHERE id = $5 AND state NOT IN ('completed', 'failed')",
        )
        .bind(state.as_str())
        .bind(connection_id.map(|c| c.to_string()))
        .bind(error.map(str::to_owned))
        .bind(to_millis(now))
        .bind(id.to_string())
        .run(&mut *tx)
        .await?;
        if updated == 1 {
            append_trail(&mut tx, trail).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn consents_of_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<ConsentRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE tenant_id = $1 AND user_id = $2 AND id > $3 \
             ORDER BY id LIMIT $4"
        ))
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(i64::from(limit.max(1)))
        .records(&self.pool)
        .await
    }

    async fn expire_consents(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
        trail: TrailOf<'_, ConsentRecord>,
    ) -> Result<u64, StoreError> {
        const WAITING: &str = "state IN ('pending', 'approved') AND expires_at < $1";
        if dry_run {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM consent_requests WHERE {WAITING}"))
                .bind(to_millis(now))
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let select = format!("SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE {WAITING} ORDER BY id LIMIT $2");
        let mut expired = 0;
        loop {
            let batch: Vec<ConsentRecord> = sqlx::query(&select)
                .bind(to_millis(now))
                .bind(i64::from(self.purge_batch))
                .records(&self.pool)
                .await?;
            for consent in &batch {
                // Each one on its own: a request claimed meanwhile (it was not yet expired for its caller) is left alone.
                let mut tx = self.begin().await?;
                let updated = sqlx::query(
                    "UPDATE consent_requests SET state = 'failed', error = 'expired', completed_at = $1, \
                     pkce_verifier = NULL, pending_grant = NULL, completion_hash = NULL WHERE id = $2 AND state = $3",
                )
                .bind(to_millis(now))
                .bind(consent.id.to_string())
                .bind(consent.state.as_str())
                .run(&mut *tx)
                .await?;
                if updated == 1 {
                    append_trail(&mut tx, &trail(consent)).await?;
                    expired += 1;
                }
                tx.commit().await.map_err(map_err)?;
            }
            if batch.len() < self.purge_batch as usize {
                return Ok(expired);
            }
        }
    }

    async fn purge_consents(&self, before: DateTime<Utc>, dry_run: bool) -> Result<(u64, Vec<Uuid>), StoreError> {
        if dry_run {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_requests WHERE expires_at < $1")
                .bind(to_millis(before))
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            return Ok((u64::try_from(n).unwrap_or(0), Vec::new()));
        }
        // Bounded batches, each one statement (its own short transaction).
        let sql = "DELETE FROM consent_requests WHERE id IN \
                   (SELECT id FROM consent_requests WHERE expires_at < $1 LIMIT $2) RETURNING dek_id";
        let mut deks = Vec::new();
        loop {
            let rows = sqlx::query(sql)
                .bind(to_millis(before))
                .bind(i64::from(self.purge_batch))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
            for row in &rows {
                deks.push(Columns(row).read("dek_id")?);
            }
            if rows.len() < self.purge_batch as usize {
                return Ok((deks.len() as u64, deks));
            }
        }
    }
}
