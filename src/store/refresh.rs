//! Refreshing a connection's tokens without a row lock across the provider
//! call: [`RefreshStore::claim_refresh`] takes a short lease on the connection
//! (one refresher across replicas) and journals the attempt (owner, start);
//! the result is stored only if the connection's token version has not moved
//! ([`RefreshStore::commit_refresh`], fenced), so a revocation, a deletion or a
//! re-consent that lands meanwhile wins; a lease left behind by a process that
//! died is reported to the next claimer as an interrupted attempt. The commit
//! and the failure append their [`Trail`] in the same transaction.

use super::connections::{next_token_version, upsert_access_token};
use super::notify::commit_notifying;
use super::sql::error::map_err;
use super::sql::query::Fetch;
use super::sql::SqlStore;
use super::trail::append_trail;
use super::{scopes_to_text, AccessTokenRecord, Invalidation, ScopeSet, Sealed, StoreError, Trail};
use crate::clock::{from_millis, to_millis};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

/// The `token_version` a connection at `version` has once a refresh is
/// committed: the next one when the refresh rotated the refresh token, else
/// the same. The refresh's sealed values bind it
/// ([`crate::vault::Binding::version`]); [`RefreshStore::commit_refresh`]
/// writes exactly this value.
pub fn version_after_refresh(version: i64, rotated: bool) -> i64 {
    if rotated {
        next_token_version(version)
    } else {
        version
    }
}

/// What a refresh stores, sealed for [`version_after_refresh`].
#[derive(Debug, Clone)]
pub struct RefreshWrite {
    /// A rotated refresh token, sealed; `None` when the provider kept the old one.
    pub new_refresh_token: Option<Sealed>,
    /// The new access token, sealed.
    pub access_token: AccessTokenRecord,
    /// Granted scopes, when a full refresh reported a change.
    pub granted_scopes: Option<ScopeSet>,
}

/// How a fenced refresh write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCommit {
    /// Stored.
    Stored,
    /// The connection was revoked, deleted or changed meanwhile; nothing stored.
    Superseded,
}

/// A refresh attempt that started and never finished: its process died (or
/// lost the database) between taking the lease and storing the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedRefresh {
    /// The replica that held the lease.
    pub owner: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// The answer to [`RefreshStore::claim_refresh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshClaim {
    /// The lease is ours until the time given to the claim.
    Claimed {
        /// The attempt before ours, if it was interrupted.
        interrupted: Option<InterruptedRefresh>,
    },
    /// Another refresher holds the lease until `until`.
    Busy {
        /// When its lease ends.
        until: DateTime<Utc>,
    },
    /// The connection is gone, not active, or its token version moved.
    Moved,
}

/// The refresh lease, the fenced commit and the journal, on `connections`.
#[async_trait]
pub trait RefreshStore: Send + Sync {
    /// Takes the refresh lease of connection `id` at `version` for `owner`
    /// until `lease_until`, if it is active at that version and nobody else
    /// holds an unexpired lease.
    async fn claim_refresh(
        &self,
        id: Uuid,
        version: i64,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<RefreshClaim, StoreError>;
    /// Extends `owner`'s lease to `until`; `false` when it is no longer `owner`'s.
    async fn renew_refresh(&self, id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Stores a refresh's result if the connection is still active at
    /// `version` (whoever holds the lease), setting its token version (and
    /// the access token's) to [`version_after_refresh`], and ends the lease
    /// and its journal, appending `trail` in the same transaction (only when stored).
    async fn commit_refresh(
        &self,
        id: Uuid,
        version: i64,
        write: &RefreshWrite,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Marks the connection `NEEDS_REAUTH` with `reason` if it is still active
    /// at `version`, and ends the lease and its journal, appending `trail` in
    /// the same transaction (only when stored).
    async fn fail_refresh(
        &self,
        id: Uuid,
        version: i64,
        reason: &str,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Active connections of `provider` (their users not deleted) whose
    /// refresh token was last refreshed or granted before `before`, after
    /// `after` in id order: candidates for a keep-alive refresh.
    async fn idle_connections(
        &self,
        provider: &str,
        before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// Gives the lease back. `settled`: the provider surely did not act on the
    /// attempt (it refused it, or never received it), so the journal entry is
    /// cleared; otherwise (a timeout, a 5xx) the provider may have rotated the
    /// refresh token without our hearing of it, so the entry stays, the lease
    /// ends at once, and the next claimer is told the attempt was interrupted.
    async fn release_refresh(&self, id: Uuid, owner: &str, settled: bool, now: DateTime<Utc>)
        -> Result<(), StoreError>;
}

#[async_trait]
impl RefreshStore for SqlStore {
    async fn claim_refresh(
        &self,
        id: Uuid,
        version: i64,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<RefreshClaim, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT token_version, status, refresh_owner, refresh_started_at, refresh_lease_until \
             FROM connections WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshClaim::Moved);
        };
        let column = |name: &str| StoreError::Corrupt(format!("connections.{name} does not decode"));
        let current: i64 = row.try_get("token_version").map_err(|_| column("token_version"))?;
        let status: String = row.try_get("status").map_err(|_| column("status"))?;
        let previous_owner: Option<String> = row.try_get("refresh_owner").map_err(|_| column("refresh_owner"))?;
        let started: Option<i64> = row
            .try_get("refresh_started_at")
            .map_err(|_| column("refresh_started_at"))?;
        let until: Option<i64> = row
            .try_get("refresh_lease_until")
            .map_err(|_| column("refresh_lease_until"))?;
        if current != version || status != "active" {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshClaim::Moved);
        }
        if let Some(until) = until.filter(|until| *until > to_millis(now)) {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshClaim::Busy {
                until: from_millis(until),
            });
        }
        let claimed = sqlx::query(
            "UPDATE connections SET refresh_owner = $1, refresh_started_at = $2, refresh_lease_until = $3 \
             WHERE id = $4 AND token_version = $5 AND status = 'active' \
             AND (refresh_lease_until IS NULL OR refresh_lease_until <= $2)",
        )
        .bind(owner.to_owned())
        .bind(to_millis(now))
        .bind(to_millis(lease_until))
        .bind(id.to_string())
        .bind(version)
        .run(&mut *tx)
        .await?;
        if claimed != 1 {
            // Someone else claimed it between the read and the update.
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshClaim::Busy { until: lease_until });
        }
        tx.commit().await.map_err(map_err)?;
        let interrupted = previous_owner.map(|owner| InterruptedRefresh {
            owner,
            started_at: started.map_or(now, from_millis),
        });
        Ok(RefreshClaim::Claimed { interrupted })
    }

    async fn renew_refresh(&self, id: Uuid, owner: &str, until: DateTime<Utc>) -> Result<bool, StoreError> {
        let renewed =
            sqlx::query("UPDATE connections SET refresh_lease_until = $1 WHERE id = $2 AND refresh_owner = $3")
                .bind(to_millis(until))
                .bind(id.to_string())
                .bind(owner.to_owned())
                .run(&self.pool)
                .await?;
        Ok(renewed == 1)
    }

    async fn commit_refresh(
        &self,
        id: Uuid,
        version: i64,
        write: &RefreshWrite,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let mut tx = self.begin().await?;
        let scopes = write.granted_scopes.as_ref().map(scopes_to_text);
        // The version the write's tokens are sealed for.
        let written = version_after_refresh(version, write.new_refresh_token.is_some());
        let updated = sqlx::query(
            "UPDATE connections SET refresh_token = COALESCE($1, refresh_token), \
             token_version = $2, granted_scopes = COALESCE($3, granted_scopes), updated_at = $4, \
             refreshed_at = $4, refresh_owner = NULL, refresh_started_at = NULL, refresh_lease_until = NULL \
             WHERE id = $5 AND token_version = $6 AND status = 'active'",
        )
        .bind(write.new_refresh_token.as_ref().map(|t| t.0.clone()))
        .bind(written)
        .bind(scopes)
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version)
        .run(&mut *tx)
        .await?;
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshCommit::Superseded);
        }
        let mut record = write.access_token.clone();
        record.token_version = written;
        upsert_access_token(&record, now).run(&mut *tx).await?;
        append_trail(&mut tx, trail).await?;
        // Other replicas drop their cached token of the old version.
        commit_notifying(tx, self, &Invalidation::Connection { id }).await?;
        Ok(RefreshCommit::Stored)
    }

    async fn fail_refresh(
        &self,
        id: Uuid,
        version: i64,
        reason: &str,
        trail: &Trail,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE connections SET status = 'needs_reauth', status_reason = $1, updated_at = $2, \
             refresh_owner = NULL, refresh_started_at = NULL, refresh_lease_until = NULL \
             WHERE id = $3 AND token_version = $4 AND status = 'active'",
        )
        .bind(reason.to_owned())
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version)
        .run(&mut *tx)
        .await?;
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshCommit::Superseded);
        }
        append_trail(&mut tx, trail).await?;
        commit_notifying(tx, self, &Invalidation::Connection { id }).await?;
        Ok(RefreshCommit::Stored)
    }

    async fn idle_connections(
        &self,
        provider: &str,
        before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT c.id FROM connections c JOIN users u ON u.tenant_id = c.tenant_id AND u.user_id = c.user_id \
             WHERE c.provider = $1 AND c.status = 'active' AND c.refresh_token IS NOT NULL AND u.deleted_at IS NULL \
             AND COALESCE(c.refreshed_at, c.updated_at) < $2 AND c.id > $3 ORDER BY c.id LIMIT $4",
        )
        .bind(provider.to_owned())
        .bind(to_millis(before))
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        ids.iter()
            .map(|id| {
                Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("connection id `{id}` is not a UUID")))
            })
            .collect()
    }

    async fn release_refresh(
        &self,
        id: Uuid,
        owner: &str,
        settled: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query = if settled {
            sqlx::query(
                "UPDATE connections SET refresh_owner = NULL, refresh_started_at = NULL, refresh_lease_until = NULL \
                 WHERE id = $1 AND refresh_owner = $2",
            )
            .bind(id.to_string())
            .bind(owner.to_owned())
        } else {
            sqlx::query("UPDATE connections SET refresh_lease_until = $1 WHERE id = $2 AND refresh_owner = $3")
                .bind(to_millis(now))
                .bind(id.to_string())
                .bind(owner.to_owned())
        };
        query.run(&self.pool).await?;
        Ok(())
    }
}
