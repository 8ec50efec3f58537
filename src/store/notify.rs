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
        notify_on(&mut connection, self, invalidation).await
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
        tokio::spawn(forward_notifications(
            listener,
            self.pool.clone(),
            self.origin.clone(),
            sender,
        ));
        Ok(Some(receiver))
    }
}

/// A notice on the channel: an invalidation and the store that sent it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Notice {
    /// The sending store ([`SqlStore`]'s `origin`); absent from older senders.
    #[serde(default)]
    origin: Option<String>,
    /// What changed.
    #[serde(flatten)]
    invalidation: Invalidation,
}

/// Sends `invalidation` on `conn` (PostgreSQL only): inside a transaction it
/// is delivered when, and only if, the transaction commits.
pub(super) async fn notify_on(
    conn: &mut AnyConnection,
    store: &SqlStore,
    invalidation: &Invalidation,
) -> Result<(), StoreError> {
    if store.backend != Backend::Postgres {
        return Ok(());
    }
    let notice = Notice {
        origin: Some(store.origin.to_string()),
        invalidation: invalidation.clone(),
    };
    let payload = serde_json::to_string(&notice).map_err(|e| StoreError::Database(e.to_string()))?;
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
    store: &SqlStore,
    invalidation: &Invalidation,
) -> Result<(), StoreError> {
    notify_on(&mut tx, store, invalidation).await?;
    tx.commit().await.map_err(map_err)
}

/// How long a reconnecting listener must go without an error before the
/// database is probed to confirm that it is back.
const SETTLE: Duration = Duration::from_secs(1);

/// Forwards notifications. After a lost connection (notices may have been
/// missed meanwhile) it sends [`Invalidation::All`] once, when the database
/// is back, and not while it is still down: cached tokens keep being served
/// through an outage, each until its own expiry or the cache's maximum age.
async fn forward_notifications(
    mut listener: sqlx::postgres::PgListener,
    pool: sqlx::AnyPool,
    origin: std::sync::Arc<str>,
    sender: mpsc::Sender<Invalidation>,
) {
    let mut lost = false;
    loop {
        let received = if lost {
            // `try_recv` reconnects and listens again; it is cancel-safe, so a
            // quiet moment can be checked against the database itself.
            match tokio::time::timeout(SETTLE, listener.try_recv()).await {
                Ok(received) => received,
                Err(_) => {
                    if database_answers(&pool).await {
                        lost = false;
                        tracing::info!("notification connection is back; dropping every cached token once");
                        if sender.send(Invalidation::All).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
            }
        } else {
            listener.try_recv().await
        };
        let notification = match received {
            Ok(Some(notification)) => notification,
            Ok(None) => {
                tracing::warn!("lost the notification connection; cached tokens are kept until it is back");
                lost = true;
                continue;
            }
            Err(error) => {
                if !lost {
                    tracing::warn!(%error, "notification listener failed; retrying every second");
                }
                lost = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if std::mem::take(&mut lost) && sender.send(Invalidation::All).await.is_err() {
            return;
        }
        let next = match serde_json::from_str::<Notice>(notification.payload()) {
            Ok(notice) if notice.origin.as_deref() == Some(&*origin) => continue,
            Ok(notice) => notice.invalidation,
            Err(error) => {
                tracing::warn!(%error, "ignoring a malformed invalidation notice");
                continue;
            }
        };
        if sender.send(next).await.is_err() {
            return;
        }
    }
}

/// Whether the database answers `SELECT 1` within a second.
async fn database_answers(pool: &sqlx::AnyPool) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
