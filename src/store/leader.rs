//! Leadership of the background jobs that one replica at a time runs: the
//! retention sweeper ([`LeaderStore::try_lead`]) and the KEK epochs
//! ([`super::KeyStore::try_lead_key_epochs`], on the key database). Each takes a
//! PostgreSQL advisory lock on a dedicated connection. On SQLite (one
//! process) the caller always leads.

use super::sql::error::map_err;
use super::sql::SqlStore;
use super::StoreError;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::{AnyConnection, Connection as _};

/// Advisory lock key of the retention sweeper ("tokenvlt").
const SWEEPER_LOCK: i64 = 0x746f_6b65_6e76_6c74;
/// Advisory lock key of the KEK epoch job ("tvepochs").
pub(super) const KEY_EPOCH_LOCK: i64 = 0x7476_6570_6f63_6873;

/// Held while this process is the one running the retention sweeper.
#[async_trait]
pub trait LeaderGuard: Send {
    /// Gives the leadership up at once. Dropping the guard gives it up too,
    /// but only once the database notices the closed connection.
    async fn release(self: Box<Self>) {}
}

/// Leader election among replicas.
#[async_trait]
pub trait LeaderStore: Send + Sync {
    /// Becomes the sweeper leader if no other process is (PostgreSQL advisory lock).
    async fn try_lead(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError>;
}

#[async_trait]
impl LeaderStore for SqlStore {
    async fn try_lead(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError> {
        self.try_advisory_lock(SWEEPER_LOCK).await
    }
}

impl SqlStore {
    /// Takes the advisory lock `key` on a dedicated connection, if no other process holds it.
    pub(super) async fn try_advisory_lock(&self, key: i64) -> Result<Option<Box<dyn LeaderGuard>>, StoreError> {
        if !self.is_postgres() {
            return Ok(Some(Box::new(SqliteLeader)));
        }
        let mut connection = AnyConnection::connect(self.url.expose_secret())
            .await
            .map_err(map_err)?;
        let locked: i32 = sqlx::query_scalar("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END")
            .bind(key)
            .fetch_one(&mut connection)
            .await
            .map_err(map_err)?;
        if locked == 1 {
            Ok(Some(Box::new(PgLeader { connection, key })))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }
}

/// Holds a dedicated connection that owns an advisory lock; closing it releases the lock.
struct PgLeader {
    connection: AnyConnection,
    key: i64,
}

#[async_trait]
impl LeaderGuard for PgLeader {
    async fn release(self: Box<Self>) {
        let PgLeader { mut connection, key } = *self;
        if let Err(error) = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut connection)
            .await
        {
            tracing::debug!(%error, "could not release an advisory lock; closing its connection releases it");
        }
        let _ = connection.close().await;
    }
}

/// SQLite's leadership: nothing to hold.
struct SqliteLeader;

impl LeaderGuard for SqliteLeader {}
