//! Refreshing a connection's tokens: [`RefreshStore`] locks a connection for
//! a refresh ([`RefreshTxn`]) and stores the result if the connection's token
//! version has not moved; [`RefreshStore::store_refresh_result`] stores it
//! without the lock (after the locked commit was lost).

use super::connections::{select_connection_for_update, upsert_access_token};
use super::notify::commit_notifying;
use super::sql::error::map_err;
use super::sql::query::Fetch;
use super::sql::rows::ACCESS_TOKEN_COLUMNS;
use super::sql::{Backend, SqlStore};
use super::{scopes_to_text, AccessTokenRecord, Connection, Invalidation, ScopeSet, Sealed, StoreError};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Any, AnyPool, Transaction};
use uuid::Uuid;

/// What a refresh stores.
#[derive(Debug, Clone)]
pub struct RefreshWrite {
    /// A rotated refresh token, sealed; `None` when the provider kept the old one.
    pub new_refresh_token: Option<Sealed>,
    /// The new access token, sealed.
    pub access_token: AccessTokenRecord,
    /// Granted scopes, when a full refresh reported a change.
    pub granted_scopes: Option<ScopeSet>,
}

/// How a locked refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCommit {
    /// Stored.
    Stored,
    /// The connection was revoked, deleted or changed meanwhile; nothing stored.
    Superseded,
}

/// A connection locked for refreshing: other replicas wait on the lock
/// (PostgreSQL `SELECT … FOR UPDATE`); dropping it without committing rolls back.
#[async_trait]
pub trait RefreshTxn: Send {
    /// The connection as read under the lock.
    fn connection(&self) -> &Connection;
    /// The stored access token for `scope_key`, read under the lock.
    async fn access_token(&mut self, scope_key: &str) -> Result<Option<AccessTokenRecord>, StoreError>;
    /// Stores the refresh's result and releases the lock.
    async fn commit_refresh(
        self: Box<Self>,
        write: RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Marks the connection `NEEDS_REAUTH` (the stored refresh token failed) and releases the lock.
    async fn commit_needs_reauth(
        self: Box<Self>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
}

/// Writes of a refresh's result.
#[async_trait]
pub trait RefreshStore: Send + Sync {
    /// Stores a refresh's result without the row lock, if the token version is
    /// still `expected_version` (persisting a rotated refresh token after the
    /// locked commit failed because the database went away).
    async fn store_refresh_result(
        &self,
        id: Uuid,
        expected_version: i64,
        write: &RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Locks a connection for a refresh (see [`RefreshTxn`]).
    async fn begin_refresh(&self, id: Uuid) -> Result<Option<Box<dyn RefreshTxn>>, StoreError>;
}

#[async_trait]
impl RefreshStore for SqlStore {
    async fn store_refresh_result(
        &self,
        id: Uuid,
        expected_version: i64,
        write: &RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let tx = self.begin().await?;
        write_refresh(tx, id, expected_version, write, now).await
    }

    async fn begin_refresh(&self, id: Uuid) -> Result<Option<Box<dyn RefreshTxn>>, StoreError> {
        let sql = select_connection_for_update(self.backend);
        let query = sqlx::query(&sql).bind(id.to_string());
        let (lock, connection) = if self.is_postgres() {
            let mut tx = self.begin().await?;
            let connection = query.record::<Connection, _>(&mut *tx).await?;
            (Some(tx), connection)
        } else {
            (None, query.record::<Connection, _>(&self.pool).await?)
        };
        let Some(connection) = connection else {
            return Ok(None);
        };
        Ok(Some(Box::new(SqlRefresh {
            lock,
            pool: self.pool.clone(),
            backend: self.backend,
            connection,
        })))
    }
}

/// A refresh in progress. On PostgreSQL a transaction holds the row lock
/// (`SELECT … FOR UPDATE`) until commit, so other replicas wait and then
/// re-read. On SQLite (one process, whose broker already single-flights) the
/// read is plain and the commit re-checks the version in a short transaction.
struct SqlRefresh {
    lock: Option<Transaction<'static, Any>>,
    pool: AnyPool,
    backend: Backend,
    connection: Connection,
}

impl SqlRefresh {
    /// The transaction to write in: the locking one, or a new one.
    async fn writer(&mut self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.lock.take() {
            Some(tx) => Ok(tx),
            None => self.pool.begin().await.map_err(map_err),
        }
    }
}

#[async_trait]
impl RefreshTxn for SqlRefresh {
    fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn access_token(&mut self, scope_key: &str) -> Result<Option<AccessTokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {ACCESS_TOKEN_COLUMNS} FROM access_tokens t WHERE t.connection_id = $1 AND t.scope_key = $2"
        );
        let query = sqlx::query(&sql)
            .bind(self.connection.id.to_string())
            .bind(scope_key.to_owned());
        let row: Option<Option<AccessTokenRecord>> = match self.lock.as_mut() {
            Some(tx) => query.record(&mut **tx).await,
            None => query.record(&self.pool).await,
        }?;
        Ok(row.flatten())
    }

    async fn commit_refresh(
        mut self: Box<Self>,
        write: RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let tx = self.writer().await?;
        write_refresh(tx, self.connection.id, self.connection.token_version, &write, now).await
    }

    async fn commit_needs_reauth(
        mut self: Box<Self>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let mut tx = self.writer().await?;
        let updated = sqlx::query(
            "UPDATE connections SET status = 'needs_reauth', status_reason = $1, updated_at = $2 \
             WHERE id = $3 AND token_version = $4 AND status = 'active'",
        )
        .bind(reason.to_owned())
        .bind(to_millis(now))
        .bind(self.connection.id.to_string())
        .bind(self.connection.token_version)
        .run(&mut *tx)
        .await?;
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshCommit::Superseded);
        }
        let invalidation = Invalidation::Connection { id: self.connection.id };
        commit_notifying(tx, self.backend, &invalidation).await?;
        Ok(RefreshCommit::Stored)
    }
}

/// Writes a refresh's result in `tx` if the connection is still active at
/// `version`, and commits; rolls back and reports `Superseded` otherwise.
async fn write_refresh(
    mut tx: Transaction<'static, Any>,
    id: Uuid,
    version: i64,
    write: &RefreshWrite,
    now: DateTime<Utc>,
) -> Result<RefreshCommit, StoreError> {
    let scopes = write.granted_scopes.as_ref().map(scopes_to_text);
    let updated = match &write.new_refresh_token {
        Some(token) => sqlx::query(
            "UPDATE connections SET refresh_token = $1, token_version = token_version + 1, \
             granted_scopes = COALESCE($2, granted_scopes), updated_at = $3 \
             WHERE id = $4 AND token_version = $5 AND status = 'active'",
        )
        .bind(token.0.clone())
        .bind(scopes)
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version),
        None => sqlx::query(
            "UPDATE connections SET granted_scopes = COALESCE($1, granted_scopes), updated_at = $2 \
             WHERE id = $3 AND token_version = $4 AND status = 'active'",
        )
        .bind(scopes)
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version),
    }
    .run(&mut *tx)
    .await?;
    if updated != 1 {
        tx.rollback().await.map_err(map_err)?;
        return Ok(RefreshCommit::Superseded);
    }
    let mut record = write.access_token.clone();
    record.token_version = version + i64::from(write.new_refresh_token.is_some());
    upsert_access_token(&record, now).run(&mut *tx).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(RefreshCommit::Stored)
}
