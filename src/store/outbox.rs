//! The provider revocation outbox: [`OutboxStore`] lets workers claim due
//! entries under a lease, reschedule or finish them, and purges finished
//! ones. Entries are written by revocation (see the connections store).

use super::sql::query::{placeholders, purge_where, Fetch};
use super::sql::rows::OUTBOX_COLUMNS;
use super::sql::SqlStore;
use super::{OutboxEntry, StoreError};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Any, Transaction};
use uuid::Uuid;

/// The `revocation_outbox` table.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims due entries: each is hidden from other workers until `lease_until`.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Claims one entry (the first attempt right after a revocation).
    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError>;
    /// Schedules another attempt.
    async fn retry_outbox(
        &self,
        id: Uuid,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Ends an entry (`done` or `gave_up`) and drops its token copy.
    async fn finish_outbox(
        &self,
        id: Uuid,
        status: &str,
        attempts: i64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Entries of a connection (for tests and export).
    async fn outbox_for_connection(&self, connection_id: Uuid) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Deletes finished entries older than `before`, in bounded batches.
    async fn purge_outbox(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
}

#[async_trait]
impl OutboxStore for SqlStore {
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1 \
             WHERE status = 'pending' AND next_attempt_at <= $2 AND id IN \
             (SELECT id FROM revocation_outbox WHERE status = 'pending' AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3) \
             RETURNING {OUTBOX_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(to_millis(now))
            .bind(i64::from(limit))
            .records(&self.pool)
            .await
    }

    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1 \
             WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3 RETURNING {OUTBOX_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(id.to_string())
            .bind(to_millis(now))
            .record(&self.pool)
            .await
    }

    async fn retry_outbox(
        &self,
        id: Uuid,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE revocation_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4 AND status = 'pending'")
            .bind(attempts)
            .bind(to_millis(next_attempt_at))
            .bind(error.to_owned())
            .bind(id.to_string())
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_outbox(
        &self,
        id: Uuid,
        status: &str,
        attempts: i64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE revocation_outbox SET status = $1, attempts = $2, last_error = $3, finished_at = $4, token = NULL WHERE id = $5",
        )
        .bind(status.to_owned())
        .bind(attempts)
        .bind(error.map(str::to_owned))
        .bind(to_millis(now))
        .bind(id.to_string())
        .run(&self.pool)
        .await?;
        Ok(())
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

/// Enqueues `entry` in `tx` (the revoking transaction).
pub(super) async fn insert_outbox_entry(
    tx: &mut Transaction<'static, Any>,
    entry: &OutboxEntry,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO revocation_outbox ({OUTBOX_COLUMNS}) VALUES ({})",
        placeholders(1, 15)
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
    .run(&mut **tx)
    .await?;
    Ok(())
}
