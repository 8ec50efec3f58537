//! Revocation, account deletion, the provider-revocation outbox, retention
//! and key rotation: what a user disconnects or deletes is gone when we say
//! it is, at the provider too, and the audit log proves it.
//!
//! Each change here hands the store the [`Trail`] that records it, and the
//! store appends it in the change's own transaction: a revocation, deletion,
//! restore or purge whose audit event cannot be written does not happen (the
//! caller gets the error and may retry). Key rotation is the exception: it
//! re-wraps keys one by one in the key database (possibly another database),
//! changing no key's material, so `keys.rotated` is written after it; a
//! failed write fails the RPC and a retry re-wraps whatever is left and
//! writes its own event.

mod handover;
mod outbox;
mod retention;

pub use handover::{is_handed_over, CredentialKind, Handover, Purpose};
pub use outbox::OutboxWorker;
pub use retention::{RetentionCategory, RetentionFailure, RetentionReport, Sweeper};

use crate::audit::{AuditLog, EventBuilder};
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::events::{Event, EventType};
use crate::store::{
    Connection, ConnectionFilter, RestoreOutcome, RevocationPlan, RevocationState, RevokeResult, Store, StoreError,
    TenantScope, Trail, User,
};
use crate::telemetry::Metrics;
use crate::vault::{RotationReport, Vault, VaultError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

/// Why a lifecycle operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such connection or user.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not act for the tenant.
    #[error("caller may not act for tenant `{0}`")]
    WrongTenant(String),
    /// The operation cannot be done in the current state.
    #[error("{0}")]
    Precondition(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Who acts, for audit events.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// Caller name.
    pub name: &'a str,
    /// Tenants the caller may act for.
    pub tenants: &'a TenantScope,
    /// Request id.
    pub request_id: Option<&'a str>,
}

impl Actor<'_> {
    /// Refuses a tenant the actor may not act for.
    pub fn require_tenant(&self, tenant_id: &str) -> Result<(), LifecycleError> {
        if self.tenants.allows(tenant_id) {
            Ok(())
        } else {
            Err(LifecycleError::WrongTenant(tenant_id.to_owned()))
        }
    }
}

fn no_such_user(tenant_id: &str, user_id: &str) -> LifecycleError {
    LifecycleError::NotFound(format!("no user `{user_id}` in tenant `{tenant_id}`"))
}

impl Actor<'static> {
    /// The system itself (retention).
    pub fn system() -> Self {
        static ALL: TenantScope = TenantScope::All;
        Actor {
            name: "system",
            tenants: &ALL,
            request_id: None,
        }
    }
}

/// Lifecycle operations.
pub struct Lifecycle {
    store: Arc<dyn Store>,
    vault: Vault,
    broker: Arc<Broker>,
    audit: AuditLog,
    clock: SharedClock,
    metrics: Metrics,
    outbox: Arc<OutboxWorker>,
    purge_after: chrono::Duration,
    give_up_after: chrono::Duration,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("purge_after", &self.purge_after)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// The broker (the sweeper's keep-alive refreshes go through it).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Assembles the lifecycle operations.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &LifecycleConfig,
        store: Arc<dyn Store>,
        vault: Vault,
        broker: Arc<Broker>,
        audit: AuditLog,
        clock: SharedClock,
        metrics: Metrics,
        outbox: Arc<OutboxWorker>,
    ) -> Self {
        Self {
            store,
            vault,
            broker,
            audit,
            clock,
            metrics,
            outbox,
            purge_after: chrono::Duration::days(i64::from(config.purge_after_days)),
            give_up_after: chrono::Duration::hours(i64::from(config.revocation_give_up_after_hours)),
        }
    }

    /// The outbox worker.
    pub fn outbox(&self) -> &Arc<OutboxWorker> {
        &self.outbox
    }

    /// Reads a connection the actor may see (`PERMISSION_DENIED` for another tenant's).
    pub async fn connection(&self, actor: &Actor<'_>, id: Uuid) -> Result<Connection, LifecycleError> {
        let connection = self
            .store
            .connection(&TenantScope::All, id)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("no connection {id}")))?;
        if !actor.tenants.allows(&connection.tenant_id) {
            return Err(LifecycleError::WrongTenant(connection.tenant_id));
        }
        Ok(connection)
    }

    /// Revokes a connection: `REVOKED` at once (every replica is told), its
    /// access tokens destroyed, its credential queued for revocation at the
    /// provider by the provider's own method (reported `PENDING` until the
    /// outbox ends it); its key is destroyed when that ends. A provider that
    /// cannot revoke is reported `UNSUPPORTED` at once, with the reason and
    /// the page where the user removes the app, and its key destroyed now.
    pub async fn revoke_connection(
        &self,
        actor: &Actor<'_>,
        id: Uuid,
        reason: &str,
    ) -> Result<Connection, LifecycleError> {
        let current = self.connection(actor, id).await?;
        let plan = self.revocation_plan(&current.provider);
        let now = self.clock.now();
        let trail = |result: &RevokeResult| -> Trail {
            let connection = &result.connection;
            let event = EventBuilder::new("connection.revoked", "success", actor.name, now)
                .user(&connection.tenant_id, &connection.user_id)
                .connection(id)
                .request_id(actor.request_id)
                .detail("provider", connection.provider.clone())
                .detail("reason", reason.to_owned())
                .detail(
                    "provider_revocation",
                    match (&result.outbox, &connection.provider_revocation) {
                        (Some(_), _) => "queued",
                        (None, Some(p)) if p.state == RevocationState::Unsupported => "unsupported",
                        (None, _) => "nothing_to_revoke",
                    },
                )
                .build();
            let revocation = connection.provider_revocation.as_ref();
            let revoked = Event::of_connection(EventType::ConnectionRevoked, connection, now)
                .actor(actor.name)
                .reason(reason)
                .with(|d| d.provider_revocation = revocation.map(|p| p.state.as_str().to_owned()));
            let trail = Trail::from(event).with_event(revoked);
            match revocation {
                // Settled at once (unsupported, or nothing held): its outcome is known now.
                Some(p) if p.state != RevocationState::Pending => trail.with_event(Event::provider_revocation(
                    &connection.tenant_id,
                    &connection.user_id,
                    id,
                    &connection.provider,
                    p,
                    now,
                )),
                _ => trail,
            }
        };
        let result = self
            .store
            .revoke_connection(id, reason, now, now + self.give_up_after, &plan, &trail)
            .await?
            .ok_or_else(|| LifecycleError::NotFound(format!("no connection {id}")))?;
        // This replica stops serving now; the others through the notification sent at commit.
        self.broker.cache().invalidate_connection(id);
        if !result.changed {
            return Ok(result.connection);
        }
        if let Some(dek) = result.dek_to_destroy {
            self.vault.destroy_and_announce(&[dek], &*self.store).await?;
        }
        self.metrics.revocation("connection_revoked");
        if let Some(entry) = result.outbox {
            self.outbox.attempt_soon(entry.id);
        }
        Ok(result.connection)
    }

    /// What revoking a connection of `provider` does at the provider, from
    /// the catalog: queued, unless its entry says it cannot revoke. A
    /// provider missing from the catalog is queued (the outbox waits for its
    /// configuration rather than giving up).
    fn revocation_plan(&self, provider: &str) -> RevocationPlan {
        match self
            .outbox
            .providers()
            .spec(provider)
            .and_then(|spec| spec.revocation_unsupported())
        {
            Some(unsupported) => RevocationPlan::Unsupported {
                reason: unsupported.reason.clone(),
                user_page: Some(unsupported.user_page.to_string()),
            },
            None => RevocationPlan::Queue,
        }
    }

    /// Revokes every connection of a user.
    pub async fn revoke_user(
        &self,
        actor: &Actor<'_>,
        tenant_id: &str,
        user_id: &str,
        reason: &str,
    ) -> Result<Vec<Connection>, LifecycleError> {
        actor.require_tenant(tenant_id)?;
        let connections = self.user_connections(tenant_id, user_id).await?;
        let mut revoked = Vec::with_capacity(connections.len());
        for connection in connections {
            revoked.push(self.revoke_connection(actor, connection.id, reason).await?);
        }
        Ok(revoked)
    }

    async fn user_connections(&self, tenant_id: &str, user_id: &str) -> Result<Vec<Connection>, LifecycleError> {
        let mut all = Vec::new();
        let mut filter = ConnectionFilter {
            tenant_id: tenant_id.to_owned(),
            user_id: Some(user_id.to_owned()),
            limit: 500,
            ..Default::default()
        };
        loop {
            let page = self.store.list_connections(&filter).await?;
            let done = page.len() < filter.limit as usize;
            filter.after_id = page.last().map(|c| c.id);
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Deletes a user: nothing of theirs is served from now on; everything is purged at `purge_at`.
    pub async fn delete_user(
        &self,
        actor: &Actor<'_>,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<DateTime<Utc>, LifecycleError> {
        actor.require_tenant(tenant_id)?;
        let now = self.clock.now();
        let purge_at = now + self.purge_after;
        // Recorded only by the call that deletes; a repeat changes nothing.
        let trail = EventBuilder::new("user.deleted", "success", actor.name, now)
            .user(tenant_id, user_id)
            .request_id(actor.request_id)
            .detail("purge_at", purge_at.to_rfc3339())
            .build();
        let deleted = Event::new(EventType::UserDeleted, tenant_id, user_id, now)
            .actor(actor.name)
            .with(|d| d.purge_at = Some(purge_at));
        let trail = Trail::from(trail).with_event(deleted);
        let user = self
            .store
            .delete_user(tenant_id, user_id, now, purge_at, &trail)
            .await?
            .ok_or_else(|| no_such_user(tenant_id, user_id))?;
        self.broker.cache().invalidate_user(tenant_id, user_id);
        Ok(user.purge_at.unwrap_or(purge_at))
    }

    /// Restores a deleted user before `purge_at`.
    pub async fn restore_user(
        &self,
        actor: &Actor<'_>,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Vec<Connection>, LifecycleError> {
        actor.require_tenant(tenant_id)?;
        let now = self.clock.now();
        let trail = Trail::from(
            EventBuilder::new("user.restored", "success", actor.name, now)
                .user(tenant_id, user_id)
                .request_id(actor.request_id)
                .build(),
        )
        .with_event(Event::new(EventType::UserRestored, tenant_id, user_id, now).actor(actor.name));
        match self.store.restore_user(tenant_id, user_id, now, &trail).await? {
            RestoreOutcome::Restored => {}
            RestoreOutcome::NotFound => return Err(no_such_user(tenant_id, user_id)),
            RestoreOutcome::NotDeleted => {
                return Err(LifecycleError::Precondition(format!("user `{user_id}` is not deleted")))
            }
            RestoreOutcome::PurgeDue(at) => {
                return Err(LifecycleError::Precondition(format!(
                    "user `{user_id}` can no longer be restored: purge was due at {}",
                    at.to_rfc3339()
                )))
            }
        }
        self.broker.cache().invalidate_user(tenant_id, user_id);
        self.user_connections(tenant_id, user_id).await
    }

    /// The user's record, if any.
    pub async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, LifecycleError> {
        Ok(self.store.user(tenant_id, user_id).await?)
    }

    /// Re-wraps every data key under the active KEK, then audits it (after:
    /// see the module docs).
    pub async fn rotate_keys(&self, actor: &Actor<'_>) -> Result<RotationReport, LifecycleError> {
        let report = self.vault.rotate(self.clock.now()).await?;
        let event = EventBuilder::new("keys.rotated", "success", actor.name, self.clock.now())
            .request_id(actor.request_id)
            .detail("active_kek", report.active_kek.clone())
            .detail("rewrapped", report.rewrapped)
            .detail("unchanged", report.unchanged)
            .build();
        self.audit.write(&[event]).await?;
        Ok(report)
    }

    /// Purges one user whose `purge_at` has passed: revokes (queueing provider
    /// revocation), then deletes their rows.
    pub(crate) async fn purge_user(&self, user: &User) -> Result<usize, LifecycleError> {
        let actor = Actor::system();
        let connections = self.user_connections(&user.tenant_id, &user.user_id).await?;
        for connection in &connections {
            self.revoke_connection(&actor, connection.id, "user deleted: purge_at reached")
                .await?;
        }
        let now = self.clock.now();
        let trail = Trail::from(
            EventBuilder::new("user.purged", "success", actor.name, now)
                .user(&user.tenant_id, &user.user_id)
                .detail("connections", connections.len())
                .build(),
        )
        .with_event(Event::new(EventType::UserPurged, &user.tenant_id, &user.user_id, now).actor(actor.name));
        self.store
            .purge_user_rows(&user.tenant_id, &user.user_id, &trail)
            .await?;
        self.broker.cache().invalidate_user(&user.tenant_id, &user.user_id);
        Ok(connections.len())
    }
}
