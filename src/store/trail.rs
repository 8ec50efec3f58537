//! What a state change records, written in the same transaction as the
//! change: [`Trail`] carries the records, and every store method that
//! changes state takes one and appends it with [`append_trail`] on its own
//! transaction, so the change and its records commit together or not at all.
//!
//! Today a trail holds audit events; the connection events of the event log
//! (issue 15) are meant to join it as a second list, appended by the same
//! function, so no call site changes shape when they arrive.

use super::sql::query::{placeholders, Fetch};
use super::sql::rows::AUDIT_COLUMNS;
use super::{AuditEvent, StoreError};
use crate::clock::to_millis;
use sqlx::{Any, Transaction};

/// The records of one state change, appended inside its transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trail {
    audit: Vec<AuditEvent>,
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

    /// The audit events, in order.
    pub fn audit_events(&self) -> &[AuditEvent] {
        &self.audit
    }

    /// Whether there is nothing to record.
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty()
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
    insert_audit_events(tx, trail.audit_events()).await
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
