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
    /// Users whose `purge_at` has passed.
    async fn users_due_for_purge(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<User>, StoreError>;
    /// Removes a user and everything that belongs to them (connections,
    /// tokens, consents), appending `trail` in the same transaction.
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

    async fn users_due_for_purge(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE purge_at IS NOT NULL AND purge_at <= $1 ORDER BY purge_at LIMIT $2"
        ))
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .records(&self.pool)
        .await
    }

    async fn purge_user_rows(&self, tenant_id: &str, user_id: &str, trail: &Trail) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Explicit deletes (not only ON DELETE CASCADE) so the order is clear and SQLite needs no pragma.
        for sql in [
            "DELETE FROM access_tokens WHERE connection_id IN (SELECT id FROM connections WHERE tenant_id = $1 AND user_id = $2)",
            "DELETE FROM connections WHERE tenant_id = $1 AND user_id = $2",
            "DELETE FROM consent_requests WHERE tenant_id = $1 AND user_id = $2",
            "DELETE FROM users WHERE tenant_id = $1 AND user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(tenant_id.to_owned())
                .bind(user_id.to_owned())
                .run(&mut *tx)
                .await?;
        }
        append_trail(&mut tx, trail).await?;
        commit_notifying(tx, self, &user_changed(tenant_id, user_id)).await
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
