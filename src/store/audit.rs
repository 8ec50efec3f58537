//! The audit trail: [`AuditStore`] appends events on their own (the batched
//! `token.issued` tallies and records of attempts that change nothing else;
//! a state change appends its events in its own transaction, see
//! [`Trail`](super::Trail)), lists them under filters with a keyset cursor
//! either way, and purges old ones in batches.

use super::sql::error::map_err;
use super::sql::query::{purge_where, Fetch};
use super::sql::rows::AUDIT_COLUMNS;
use super::sql::SqlStore;
use super::trail::insert_audit_events;
use super::{AuditEvent, AuditFilter, StoreError};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The `audit_events` table (append-only but for the retention purge).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends audit events in a transaction of their own (not for the
    /// events of a state change: those ride in its [`Trail`](super::Trail)).
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Lists audit events, newest first (oldest first with `after_id` or `oldest_first`).
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    /// Deletes audit events older than `before`, in bounded batches.
    async fn purge_audit(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit_events(&mut tx, events).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        enum Bind {
            Text(String),
            Int(i64),
        }
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        let mut add = |condition: &str, bind: Bind| {
            binds.push(bind);
            conditions.push(condition.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = &filter.tenant_id {
            add("tenant_id = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &filter.user_id {
            add("user_id = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = filter.connection_id {
            add("connection_id = ?", Bind::Text(v.to_string()));
        }
        if let Some(v) = &filter.action {
            add("action = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = filter.since {
            add("occurred_at >= ?", Bind::Int(to_millis(v)));
        }
        if let Some(v) = filter.until {
            add("occurred_at < ?", Bind::Int(to_millis(v)));
        }
        if let Some(v) = filter.before_id {
            add("id < ?", Bind::Text(v.to_string()));
        }
        if let Some(v) = filter.after_id {
            add("id > ?", Bind::Text(v.to_string()));
        }
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        // Ids are unique, so either order is a stable keyset for the cursors above.
        let order = if filter.oldest_first || filter.after_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", filter.limit.max(1)));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        query.records(&self.pool).await
    }

    async fn purge_audit(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(
            &self.pool,
            "audit_events",
            "occurred_at < $1",
            before,
            dry_run,
            self.purge_batch,
        )
        .await
    }
}
