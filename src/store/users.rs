//! Users: [`UserStore`], recording a tenant's users, their deletion (with a
//! `purge_at`), restore, and the final purge of everything they own; each of
//! the last three appends its [`Trail`] in its own transaction.

use super::notify::commit_notifying;
use super::sql::error::map_err;
use super::sql::query::Fetch;
use super::sql::rows::{FromAnyRow, USER_COLUMNS};
use super::sql::SqlStore;
use super::trail::append_trail;
use super::{Invalidation, StoreError, Trail, User};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The outcome of `RestoreUser`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// No such user.
    NotFound,
    /// The user was not deleted.
    NotDeleted,
    /// Too late: `purge_at` has passed.
    PurgeDue(DateTime<Utc>),
    /// Restored.
    Restored,
}

/// The `users` table.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Records the user if new.
    async fn ensure_user(&self, tenant_id: &str, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Reads a user.
    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError>;
    /// Marks a user deleted, appending `trail` in the same transaction
    /// (idempotent: a second call keeps the first `purge_at`, changes nothing
    /// and records nothing).
    async fn delete_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        purge_at: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<Option<User>, StoreError>;
    /// Undoes a deletion before `purge_at`, appending `trail` in the same
    /// transaction (only when it restored).
    async fn restore_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<RestoreOutcome, StoreError>;
    /// Users whose `purge_at` has passed, ordered by (`purge_at`, tenant, user),
    /// after `after` in that order (keyset pagination: a user whose purge
    /// failed stays behind the cursor instead of filling every page).
    async fn users_due_for_purge(
        &self,
        now: DateTime<Utc>,
        after: Option<&User>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError>;
    /// Removes a user and everything that belongs to them (connections, tokens,
    /// consents) in bounded batches, each its own transaction; the user row
    /// goes last, so a purge cut short is finished by the next call.
    /// `trail` is appended with the user row's deletion.
    async fn purge_user_rows(&self, tenant_id: &str, user_id: &str, trail: &Trail) -> Result<(), StoreError>;
}

#[async_trait]
impl UserStore for SqlStore {
    async fn ensure_user(&self, tenant_id: &str, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (tenant_id, user_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(to_millis(now))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        sqlx::query(&select_user())
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .record(&self.pool)
            .await
    }

    async fn delete_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        purge_at: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query(
            "UPDATE users SET deleted_at = $1, purge_at = $2 WHERE tenant_id = $3 AND user_id = $4 AND deleted_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(to_millis(purge_at))
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .run(&mut *tx)
        .await?;
        let row = sqlx::query(&select_user())
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted == 1 {
            append_trail(&mut tx, trail).await?;
        }
        commit_notifying(tx, self, &user_changed(tenant_id, user_id)).await?;
        row.map(|r| User::from_row(&r)).transpose()
    }

    async fn restore_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<RestoreOutcome, StoreError> {
        let Some(user) = self.user(tenant_id, user_id).await? else {
            return Ok(RestoreOutcome::NotFound);
        };
        let Some(purge_at) = user.purge_at.filter(|_| user.deleted_at.is_some()) else {
            return Ok(RestoreOutcome::NotDeleted);
        };
        if purge_at <= now {
            return Ok(RestoreOutcome::PurgeDue(purge_at));
        }
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE users SET deleted_at = NULL, purge_at = NULL WHERE tenant_id = $1 AND user_id = $2 AND purge_at > $3",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(to_millis(now))
        .run(&mut *tx)
        .await?;
        if updated == 1 {
            append_trail(&mut tx, trail).await?;
        }
        commit_notifying(tx, self, &user_changed(tenant_id, user_id)).await?;
        Ok(if updated == 1 {
            RestoreOutcome::Restored
        } else {
            RestoreOutcome::NotDeleted
        })
    }

    async fn users_due_for_purge(
        &self,
        now: DateTime<Utc>,
        after: Option<&User>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let order = "ORDER BY purge_at, tenant_id, user_id LIMIT $2";
        let due = "purge_at IS NOT NULL AND purge_at <= $1";
        let Some(after) = after else {
            return sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE {due} {order}"))
                .bind(to_millis(now))
                .bind(i64::from(limit))
                .records(&self.pool)
                .await;
        };
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {due} AND (purge_at, tenant_id, user_id) > ($3, $4, $5) {order}"
        ))
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .bind(after.purge_at.map(to_millis).unwrap_or(i64::MIN))
        .bind(after.tenant_id.clone())
        .bind(after.user_id.clone())
        .records(&self.pool)
        .await
    }

    async fn purge_user_rows(&self, tenant_id: &str, user_id: &str, trail: &Trail) -> Result<(), StoreError> {
        // Explicit deletes (not only ON DELETE CASCADE) so the order is clear;
        // a batch of connections goes with its access tokens.
        let connections = "SELECT id FROM connections WHERE tenant_id = $1 AND user_id = $2 ORDER BY id LIMIT $3";
        let consents = "SELECT id FROM consent_requests WHERE tenant_id = $1 AND user_id = $2 ORDER BY id LIMIT $3";
        let batches = [
            vec![
                format!("DELETE FROM access_tokens WHERE connection_id IN ({connections})"),
                format!("DELETE FROM connections WHERE id IN ({connections})"),
            ],
            vec![format!("DELETE FROM consent_requests WHERE id IN ({consents})")],
        ];
        for statements in &batches {
            while self.delete_user_batch(statements, tenant_id, user_id).await? >= u64::from(self.purge_batch) {}
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .run(&mut *tx)
            .await?;
        append_trail(&mut tx, trail).await?;
        commit_notifying(tx, self, &user_changed(tenant_id, user_id)).await
    }
}

impl SqlStore {
    /// Runs `statements` (`$1` tenant, `$2` user, `$3` the batch size) in one
    /// short transaction; returns how many rows the last one deleted.
    async fn delete_user_batch(
        &self,
        statements: &[String],
        tenant_id: &str,
        user_id: &str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut deleted = 0;
        for sql in statements {
            deleted = sqlx::query(sql)
                .bind(tenant_id.to_owned())
                .bind(user_id.to_owned())
                .bind(i64::from(self.purge_batch))
                .run(&mut *tx)
                .await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(deleted)
    }
}

/// The statement reading one user (`$1` tenant, `$2` user).
fn select_user() -> String {
    format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND user_id = $2")
}

/// The notice that a user's deletion state changed.
fn user_changed(tenant_id: &str, user_id: &str) -> Invalidation {
    Invalidation::User {
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.to_owned(),
    }
}
