//! Cache invalidations between replicas: [`NotifyStore`] sends them
//! (PostgreSQL `NOTIFY`, inside the writing transaction where there is one)
//! and forwards what other replicas send (`LISTEN`). SQLite has one process
//! and no notifications.

use super::sql::error::map_err;
use super::sql::{Backend, SqlStore};
use super::{Invalidation, StoreError};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::{Any, AnyConnection, Transaction};
use std::time::Duration;
use tokio::sync::mpsc;

/// NOTIFY channel for cache invalidations between replicas.
const CHANNEL: &str = "tokenvault_invalidation";

/// Notifications between replicas.
#[async_trait]
pub trait NotifyStore: Send + Sync {
    /// Tells other replicas what changed (PostgreSQL NOTIFY; a no-op on SQLite).
    async fn notify(&self, invalidation: &Invalidation) -> Result<(), StoreError>;
    /// Notifications from other replicas; `None` when the backend has none (SQLite).
    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Invalidation>>, StoreError>;
}

#[async_trait]
impl NotifyStore for SqlStore {
    async fn notify(&self, invalidation: &Invalidation) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let mut connection = self.pool.acquire().await.map_err(map_err)?;
        notify_on(&mut connection, self.backend, invalidation).await
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Invalidation>>, StoreError> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(self.url.expose_secret())
            .await
            .map_err(map_err)?;
        listener.listen(CHANNEL).await.map_err(map_err)?;
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(forward_notifications(listener, sender));
        Ok(Some(receiver))
    }
}

/// Sends `invalidation` on `conn` (PostgreSQL only): inside a transaction it
/// is delivered when, and only if, the transaction commits.
pub(super) async fn notify_on(
    conn: &mut AnyConnection,
    backend: Backend,
    invalidation: &Invalidation,
) -> Result<(), StoreError> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let payload = serde_json::to_string(invalidation).map_err(|e| StoreError::Database(e.to_string()))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Queues `invalidation` in `tx` and commits it.
pub(super) async fn commit_notifying(
    mut tx: Transaction<'static, Any>,
    backend: Backend,
    invalidation: &Invalidation,
) -> Result<(), StoreError> {
    notify_on(&mut tx, backend, invalidation).await?;
    tx.commit().await.map_err(map_err)
}

/// Forwards notifications; after a lost connection (notices may have been
/// missed) it sends [`Invalidation::All`] and keeps going.
async fn forward_notifications(mut listener: sqlx::postgres::PgListener, sender: mpsc::Sender<Invalidation>) {
    loop {
        let next = match listener.try_recv().await {
            Ok(Some(notification)) => match serde_json::from_str::<Invalidation>(notification.payload()) {
                Ok(invalidation) => invalidation,
                Err(error) => {
                    tracing::warn!(%error, "ignoring a malformed invalidation notice");
                    continue;
                }
            },
            Ok(None) => {
                tracing::warn!("lost the notification connection; dropping every cached token");
                Invalidation::All
            }
            Err(error) => {
                tracing::warn!(%error, "notification listener failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Invalidation::All
            }
        };
        if sender.send(next).await.is_err() {
            return;
        }
    }
}
