//! Issuance bookkeeping off the hot path: every issuance is counted in
//! memory and written as audit events (one per caller, connection, scope
//! set and outcome, with a count) and `last_used_at` updates, every
//! `broker.usage_flush_seconds` and at graceful shutdown (SIGTERM or Ctrl-C:
//! the server drains its requests, flushes the tallies, then the audit
//! queue, before it exits).
//!
//! An issuance changes no row, so its record is not transactional: a crash
//! (SIGKILL, OOM kill, power loss) loses the tallies counted since the last
//! flush — at most `broker.usage_flush_seconds` of issuances — plus those
//! handed to the audit writer and not yet written (at most
//! [`TICK`](crate::audit::TICK) more while the database answers; while it is
//! unreachable the writer holds them in memory and retries, see
//! [`crate::audit`]). `last_used_at` has the same window. The tokens
//! themselves are unaffected.

use super::ScopeText;
use crate::audit::{AuditLog, EventBuilder};
use crate::store::Store;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IssueKey {
    actor: Arc<str>,
    connection_id: Uuid,
    scope_key: String,
    outcome: &'static str,
}

#[derive(Debug, Clone)]
struct IssueTally {
    tenant_id: Box<str>,
    user_id: Box<str>,
    scopes: ScopeText,
    count: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    request_id: Option<String>,
}

/// What one issuance was.
pub struct Issuance<'a> {
    /// Caller name.
    pub actor: &'a Arc<str>,
    /// Connection.
    pub connection_id: Uuid,
    /// Tenant.
    pub tenant_id: &'a str,
    /// User.
    pub user_id: &'a str,
    /// Canonical scope key.
    pub scope_key: &'a str,
    /// Scopes handed out.
    pub scopes: &'a ScopeText,
    /// `cache_hit`, `store_hit`, `refreshed`.
    pub outcome: &'static str,
    /// The request id.
    pub request_id: Option<&'a str>,
}

/// Tallies issuances between flushes.
#[derive(Debug, Default)]
pub struct UsageLog {
    tallies: DashMap<IssueKey, IssueTally>,
}

impl UsageLog {
    /// Counts one issuance.
    pub fn record(&self, issuance: Issuance<'_>, at: DateTime<Utc>) {
        let key = IssueKey {
            actor: issuance.actor.clone(),
            connection_id: issuance.connection_id,
            scope_key: issuance.scope_key.to_owned(),
            outcome: issuance.outcome,
        };
        self.tallies
            .entry(key)
            .and_modify(|tally| {
                tally.count += 1;
                tally.last_at = at;
            })
            .or_insert_with(|| IssueTally {
                tenant_id: issuance.tenant_id.into(),
                user_id: issuance.user_id.into(),
                scopes: issuance.scopes.clone(),
                count: 1,
                first_at: at,
                last_at: at,
                request_id: issuance.request_id.map(str::to_owned),
            });
    }

    /// Writes what was tallied: audit events (queued) and `last_used_at`.
    pub async fn flush(&self, audit: &AuditLog, store: &dyn Store) {
        let keys: Vec<IssueKey> = self.tallies.iter().map(|entry| entry.key().clone()).collect();
        if keys.is_empty() {
            return;
        }
        let mut last_used: std::collections::HashMap<Uuid, DateTime<Utc>> = std::collections::HashMap::new();
        for key in keys {
            let Some((key, tally)) = self.tallies.remove(&key) else {
                continue;
            };
            let used = last_used.entry(key.connection_id).or_insert(tally.last_at);
            if *used < tally.last_at {
                *used = tally.last_at;
            }
            let event = EventBuilder::new("token.issued", "success", &key.actor, tally.first_at)
                .user(&tally.tenant_id, &tally.user_id)
                .connection(key.connection_id)
                .request_id(tally.request_id.as_deref())
                .detail("source", key.outcome)
                .detail("scopes", tally.scopes.to_vec())
                .detail("count", tally.count)
                .detail("last_at", tally.last_at.to_rfc3339())
                .build();
            audit.enqueue(event).await;
        }
        // The map does not give back the room its busiest interval needed unless asked.
        self.tallies.shrink_to_fit();
        let used: Vec<(Uuid, DateTime<Utc>)> = last_used.into_iter().collect();
        if let Err(error) = store.touch_connections(&used).await {
            tracing::warn!(%error, connections = used.len(), "could not record last_used_at for this batch");
        }
    }
}
