//! What a state change records, written in the same transaction as the
//! change: [`Trail`] carries the records, and every store method that
//! changes state takes one and appends it with [`append_trail`] on its own
//! transaction, so the change and its records commit together or not at all.
//!
//! A trail holds audit events (for operators) and events of the event log
//! (for platforms: `WatchEvents` and webhooks). Event cursors follow commit
//! order: on PostgreSQL a transaction takes a transaction-scoped advisory
//! lock before it draws its cursors and keeps it until it commits (SQLite
//! has one writer at a time anyway), so a watcher that has read cursor `n`
//! never later finds a committed event below `n`. The same statement fans
//! each event out to the tenant's webhook endpoints that want it, and a
//! `NOTIFY` wakes watchers and delivery workers on every replica at commit.

use super::sql::query::{placeholders, Fetch};
use super::sql::rows::AUDIT_COLUMNS;
use super::{AuditEvent, StoreError};
use crate::clock::to_millis;
use crate::events::Event;
use sqlx::{Any, Transaction};

/// NOTIFY channel that tells watchers and webhook workers of new events.
pub(super) const EVENTS_CHANNEL: &str = "tokenvault_events";

/// The advisory lock that orders event cursors by commit (an arbitrary
/// constant, distinct from the sweeper's).
const EVENT_ORDER_LOCK: i64 = 0x746b_7665_7665_6e74;

/// The records of one state change, appended inside its transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trail {
    audit: Vec<AuditEvent>,
    events: Vec<Event>,
}

impl Trail {
    /// A trail that records nothing (a change with no event of its own).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds an audit event.
    pub fn and(mut self, event: AuditEvent) -> Self {
        self.audit.push(event);
        self
    }

    /// Adds an event of the event log.
    pub fn with_event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }

    /// The audit events, in order.
    pub fn audit_events(&self) -> &[AuditEvent] {
        &self.audit
    }

    /// The events of the event log, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty() && self.events.is_empty()
    }
}

impl From<AuditEvent> for Trail {
    fn from(event: AuditEvent) -> Self {
        Self::none().and(event)
    }
}

/// A trail whose content depends on what the transaction found: the store
/// calls it with that (for example the revocation it just made) before commit.
pub type TrailOf<'a, T> = &'a (dyn Fn(&T) -> Trail + Send + Sync);

/// Appends `trail` on `tx`: it commits with the change or not at all.
pub(super) async fn append_trail(tx: &mut Transaction<'static, Any>, trail: &Trail) -> Result<(), StoreError> {
    insert_audit_events(tx, trail.audit_events()).await?;
    insert_events(tx, trail.events()).await
}

/// Inserts events of the event log on `tx` (their cursors drawn in commit
/// order), queues a delivery for every webhook endpoint of the tenant that
/// wants each, and notifies at commit.
pub(super) async fn insert_events(tx: &mut Transaction<'static, Any>, events: &[Event]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let postgres = tx.backend_name() == "PostgreSQL";
    if postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_ORDER_LOCK)
            .run(&mut **tx)
            .await?;
    }
    for event in events {
        sqlx::query(
            "INSERT INTO events (id, event_type, tenant_id, user_id, connection_id, occurred_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.id.to_string())
        .bind(event.event_type.as_str())
        .bind(event.tenant_id.clone())
        .bind(event.user_id.clone())
        .bind(event.connection_id.map(|c| c.to_string()))
        .bind(to_millis(event.occurred_at))
        .bind(event.data_json())
        .run(&mut **tx)
        .await?;
        // Endpoints list the types they want as ",a,b," (empty: every type).
        let wanted = format!("%,{},%", event.event_type.as_str().replace('_', "\\_"));
        sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id, status, attempts, next_attempt_at, \
             created_at) SELECT id, $1, tenant_id, 'pending', 0, $2, $2 FROM webhook_endpoints \
             WHERE tenant_id = $3 AND (event_types = '' OR event_types LIKE $4 ESCAPE '\\')",
        )
        .bind(event.id.to_string())
        .bind(to_millis(event.occurred_at))
        .bind(event.tenant_id.clone())
        .bind(wanted)
        .run(&mut **tx)
        .await?;
    }
    if postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(EVENTS_CHANNEL)
            .run(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Inserts audit events on `tx`, a few dozen rows per statement.
pub(super) async fn insert_audit_events(
    tx: &mut Transaction<'static, Any>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    const COLUMNS: usize = 10;
    const CHUNK: usize = 50;
    for chunk in events.chunks(CHUNK) {
        let values = (0..chunk.len())
            .map(|i| format!("({})", placeholders(i * COLUMNS + 1, COLUMNS)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES {values}");
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query
                .bind(event.id.to_string())
                .bind(to_millis(event.occurred_at))
                .bind(event.tenant_id.clone())
                .bind(event.user_id.clone())
                .bind(event.connection_id.map(|c| c.to_string()))
                .bind(event.actor.clone())
                .bind(event.action.clone())
                .bind(event.outcome.clone())
                .bind(event.detail.to_string())
                .bind(event.request_id.clone());
        }
        query.run(&mut **tx).await?;
    }
    Ok(())
}
