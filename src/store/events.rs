//! The event log: [`EventStore`] reads events after a cursor for one tenant
//! (they are written by [`Trail`](super::Trail) in the transaction of the
//! change they record), tells the range a watcher may resume from, purges
//! old events in batches (remembering the highest cursor purged), and
//! forwards the `NOTIFY` sent when events commit.

use super::sql::error::map_err;
use super::sql::query::{placeholders, Fetch};
use super::sql::rows::EVENT_COLUMNS;
use super::sql::SqlStore;
use super::trail::EVENTS_CHANNEL;
use super::StoreError;
use crate::clock::to_millis;
use crate::events::{Event, EventType};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the log stands: what a watcher may resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLogBounds {
    /// The highest cursor purged by retention (0: nothing purged yet): a
    /// resume below it has missed events.
    pub purged_through: i64,
    /// The highest cursor written (0: none yet).
    pub latest: i64,
}

/// The `events` table.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Events of `tenant_id` after `after_cursor`, of the given types (every
    /// type when empty), oldest first, at most `limit`.
    async fn events_after(
        &self,
        tenant_id: &str,
        after_cursor: i64,
        types: &[EventType],
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;
    /// One event by id.
    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError>;
    /// The purged and the latest cursor.
    async fn event_bounds(&self) -> Result<EventLogBounds, StoreError>;
    /// Deletes events that occurred before `before`, in bounded batches, and
    /// records the highest cursor deleted; returns how many (or would, on a dry run).
    async fn purge_events(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
    /// A signal each time events commit on any replica (PostgreSQL
    /// `LISTEN`, and once more after the listening connection comes back);
    /// `None` on SQLite, whose watchers poll.
    async fn listen_events(&self) -> Result<Option<mpsc::Receiver<()>>, StoreError>;
}

#[async_trait]
impl EventStore for SqlStore {
    async fn events_after(
        &self,
        tenant_id: &str,
        after_cursor: i64,
        types: &[EventType],
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND seq > $2");
        if !types.is_empty() {
            sql.push_str(&format!(" AND event_type IN ({})", placeholders(3, types.len())));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {}", limit.clamp(1, 10_000)));
        let mut query = sqlx::query(&sql).bind(tenant_id.to_owned()).bind(after_cursor);
        for t in types {
            query = query.bind(t.as_str());
        }
        query.records(&self.pool).await
    }

    async fn event(&self, id: uuid::Uuid) -> Result<Option<Event>, StoreError> {
        sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id.to_string())
            .record(&self.pool)
            .await
    }

    async fn event_bounds(&self) -> Result<EventLogBounds, StoreError> {
        let (purged_through, latest): (i64, i64) = sqlx::query_as(
            "SELECT purged_through, COALESCE((SELECT MAX(seq) FROM events), 0) FROM event_log_state WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(EventLogBounds {
            purged_through,
            latest: latest.max(purged_through),
        })
    }

    async fn purge_events(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        if dry_run {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE occurred_at < $1")
                .bind(to_millis(before))
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let batch = i64::from(self.purge_batch);
        let mut purged = 0;
        loop {
            // Each batch deletes the oldest events and moves the mark in one transaction.
            let mut tx = self.begin().await?;
            let highest: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE occurred_at < $1 ORDER BY seq LIMIT $2) AS oldest",
            )
            .bind(to_millis(before))
            .bind(batch)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            let Some(highest) = highest else {
                tx.rollback().await.map_err(map_err)?;
                return Ok(purged);
            };
            let deleted = sqlx::query("DELETE FROM events WHERE seq <= $1 AND occurred_at < $2")
                .bind(highest)
                .bind(to_millis(before))
                .run(&mut *tx)
                .await?;
            sqlx::query("UPDATE event_log_state SET purged_through = $1 WHERE id = 1 AND purged_through < $1")
                .bind(highest)
                .run(&mut *tx)
                .await?;
            tx.commit().await.map_err(map_err)?;
            purged += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(purged);
            }
        }
    }

    async fn listen_events(&self) -> Result<Option<mpsc::Receiver<()>>, StoreError> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(self.url.expose_secret())
            .await
            .map_err(map_err)?;
        listener.listen(EVENTS_CHANNEL).await.map_err(map_err)?;
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let wake = match listener.try_recv().await {
                    // A notice, or the connection came back (notices may have been missed): wake either way.
                    Ok(_) => true,
                    Err(error) => {
                        tracing::warn!(%error, "event listener failed; retrying every second (watchers poll meanwhile)");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        false
                    }
                };
                if wake {
                    match sender.try_send(()) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                        Err(mpsc::error::TrySendError::Closed(())) => return,
                    }
                }
            }
        });
        Ok(Some(receiver))
    }
}
