//! The provider revocation outbox: [`OutboxStore`] lets workers claim due
//! entries one at a time under a lease and a claim token, record each
//! attempt's outcome only while they still hold the claim (so an entry moves
//! from `pending` to `done` or `gave_up` once), keep a refresh token rotated
//! while revoking, and purge finished entries. Entries are written by
//! revocation (see the connections store).

use super::sql::error::map_err;
use super::sql::query::{placeholders, purge_where, skip_locked, Fetch};
use super::sql::rows::OUTBOX_COLUMNS;
use super::sql::SqlStore;
use super::trail::append_trail;
use super::{OutboxEntry, ProviderRevocation, Sealed, StoreError, Trail};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Any, Transaction};
use uuid::Uuid;

/// How an attempt ended, as recorded.
#[derive(Debug, Clone)]
pub struct OutboxOutcome<'a> {
    /// The entry.
    pub id: Uuid,
    /// The claim the attempt ran under.
    pub claim: Uuid,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// `Some(status)` (`done` or `gave_up`) when the entry ends; `None` to try again at `next_attempt_at`.
    pub finished: Option<&'a str>,
    /// When to try again (ignored when finished).
    pub next_attempt_at: DateTime<Utc>,
    /// The failure, secret-free.
    pub error: Option<&'a str>,
    /// Its kind.
    pub error_kind: Option<&'a str>,
    /// What to report on the revoked connection (entries of purpose `revocation`).
    pub report: Option<&'a ProviderRevocation>,
    /// When it was recorded.
    pub now: DateTime<Utc>,
}

/// The `revocation_outbox` table.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims the next due entry under a new `claim`: hidden from other workers until `lease_until`.
    async fn claim_next_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<OutboxEntry>, StoreError>;
    /// Claims one entry if it is due (the first attempt right after a revocation).
    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<OutboxEntry>, StoreError>;
    /// Replaces the entry's token (a refresh while revoking rotated it), or
    /// only marks the rotation uncertain (`token` `None`); `false` when the claim is lost.
    async fn keep_outbox_token(
        &self,
        id: Uuid,
        claim: Uuid,
        token: Option<&Sealed>,
        rotation_uncertain: bool,
    ) -> Result<bool, StoreError>;
    /// Records an attempt (and, when it ends the entry, drops its token copy
    /// and reports on the connection), with its audit `trail`, in one
    /// transaction; `false` (nothing written) when the claim was lost or the entry already ended.
    async fn record_outbox_attempt(&self, outcome: &OutboxOutcome<'_>, trail: &Trail) -> Result<bool, StoreError>;
    /// Reports a still-pending revocation's last error on its connection.
    async fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>, StoreError>;
    /// Entries of a connection (for tests and export).
    async fn outbox_for_connection(&self, connection_id: Uuid) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Deletes finished entries older than `before`, in bounded batches.
    async fn purge_outbox(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
}

#[async_trait]
impl OutboxStore for SqlStore {
    async fn claim_next_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let skip_locked = skip_locked(self.backend);
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1, claim_token = $2 \
             WHERE status = 'pending' AND next_attempt_at <= $3 AND id = \
             (SELECT id FROM revocation_outbox WHERE status = 'pending' AND next_attempt_at <= $3 \
              ORDER BY next_attempt_at, id LIMIT 1{skip_locked}) \
             RETURNING {OUTBOX_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(claim.to_string())
            .bind(to_millis(now))
            .record(&self.pool)
            .await
    }

    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1, claim_token = $2 \
             WHERE id = $3 AND status = 'pending' AND next_attempt_at <= $4 RETURNING {OUTBOX_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(claim.to_string())
            .bind(id.to_string())
            .bind(to_millis(now))
            .record(&self.pool)
            .await
    }

    async fn keep_outbox_token(
        &self,
        id: Uuid,
        claim: Uuid,
        token: Option<&Sealed>,
        rotation_uncertain: bool,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE revocation_outbox SET token = COALESCE($1, token), rotation_uncertain = $2 \
             WHERE id = $3 AND claim_token = $4 AND status = 'pending'",
        )
        .bind(token.map(|t| t.0.clone()))
        .bind(i64::from(rotation_uncertain))
        .bind(id.to_string())
        .bind(claim.to_string())
        .run(&self.pool)
        .await?;
        Ok(updated == 1)
    }

    async fn record_outbox_attempt(&self, outcome: &OutboxOutcome<'_>, trail: &Trail) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = match outcome.finished {
            Some(status) => {
                sqlx::query(
                    "UPDATE revocation_outbox SET status = $1, attempts = $2, last_error = $3, error_kind = $4, \
                 finished_at = $5, token = NULL WHERE id = $6 AND claim_token = $7 AND status = 'pending'",
                )
                .bind(status.to_owned())
                .bind(outcome.attempts)
                .bind(outcome.error.map(str::to_owned))
                .bind(outcome.error_kind.map(str::to_owned))
                .bind(to_millis(outcome.now))
                .bind(outcome.id.to_string())
                .bind(outcome.claim.to_string())
                .run(&mut *tx)
                .await?
            }
            None => sqlx::query(
                "UPDATE revocation_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3, error_kind = $4 \
                 WHERE id = $5 AND claim_token = $6 AND status = 'pending'",
            )
            .bind(outcome.attempts)
            .bind(to_millis(outcome.next_attempt_at))
            .bind(outcome.error.map(str::to_owned))
            .bind(outcome.error_kind.map(str::to_owned))
            .bind(outcome.id.to_string())
            .bind(outcome.claim.to_string())
            .run(&mut *tx)
            .await?,
        };
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(false);
        }
        if let Some(report) = outcome.report {
            report_on_connection(&mut tx, outcome.id, report).await?;
        }
        append_trail(&mut tx, trail).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>, StoreError> {
        sqlx::query(&format!("SELECT {OUTBOX_COLUMNS} FROM revocation_outbox WHERE id = $1"))
            .bind(id.to_string())
            .record(&self.pool)
            .await
    }

    async fn outbox_for_connection(&self, connection_id: Uuid) -> Result<Vec<OutboxEntry>, StoreError> {
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM revocation_outbox WHERE connection_id = $1 ORDER BY id"
        ))
        .bind(connection_id.to_string())
        .records(&self.pool)
        .await
    }

    async fn purge_outbox(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(
            &self.pool,
            "revocation_outbox",
            "status <> 'pending' AND finished_at < $1",
            before,
            dry_run,
            self.purge_batch,
        )
        .await
    }
}

/// Writes `report` on the revoked connection of the entry `id` (if it is
/// still there: a purge may have deleted it).
async fn report_on_connection(
    tx: &mut Transaction<'static, Any>,
    id: Uuid,
    report: &ProviderRevocation,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE connections SET provider_revocation = $1, provider_revocation_at = $2, \
         provider_revocation_detail = $3, provider_revocation_page = $4, provider_revocation_error_kind = $5 \
         WHERE status = 'revoked' AND id = (SELECT connection_id FROM revocation_outbox WHERE id = $6)",
    )
    .bind(report.state.as_str())
    .bind(to_millis(report.at))
    .bind(report.detail.clone())
    .bind(report.user_page.clone())
    .bind(report.error_kind.clone())
    .bind(id.to_string())
    .run(&mut **tx)
    .await?;
    Ok(())
}

/// Enqueues `entry` in `tx` (the revoking transaction).
pub(super) async fn insert_outbox_entry(
    tx: &mut Transaction<'static, Any>,
    entry: &OutboxEntry,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO revocation_outbox ({OUTBOX_COLUMNS}) VALUES ({})",
        placeholders(1, 20)
    ))
    .bind(entry.id.to_string())
    .bind(entry.connection_id.to_string())
    .bind(entry.tenant_id.clone())
    .bind(entry.user_id.clone())
    .bind(entry.provider.clone())
    .bind(entry.dek_id.to_string())
    .bind(entry.token.as_ref().map(|t| t.0.clone()))
    .bind(entry.token_type_hint.clone())
    .bind(entry.binding_record.clone())
    .bind(entry.attempts)
    .bind(to_millis(entry.next_attempt_at))
    .bind(to_millis(entry.give_up_at))
    .bind(entry.status.clone())
    .bind(entry.last_error.clone())
    .bind(to_millis(entry.created_at))
    .bind(entry.claim_token.map(|c| c.to_string()))
    .bind(entry.purpose.clone())
    .bind(i64::from(entry.rotation_uncertain))
    .bind(entry.error_kind.clone())
    .bind(entry.binding_version)
    .run(&mut **tx)
    .await?;
    Ok(())
}
