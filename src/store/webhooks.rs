//! Webhook endpoints and their delivery outbox: [`WebhookStore`] keeps the
//! endpoints of each tenant (secrets only sealed), hands each due delivery
//! to one worker at a time (claimed like the revocation outbox), records
//! every attempt, and purges finished deliveries. Deliveries themselves are
//! queued with their event, in the event's transaction (see
//! [`Trail`](super::Trail)).

use super::sql::error::map_err;
use super::sql::query::{placeholders, purge_keyed_where, purge_where, skip_locked, Fetch};
use super::sql::rows::{
    event_types_to_text, WEBHOOK_ATTEMPT_COLUMNS, WEBHOOK_DELIVERY_COLUMNS, WEBHOOK_ENDPOINT_COLUMNS,
};
use super::sql::SqlStore;
use super::{DeliveryStatus, Sealed, StoreError, TenantScope, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What a delivery attempt settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Delivered: nothing more to do.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Given up.
    Failed,
}

/// A new secret for an endpoint (the current one becomes the previous).
#[derive(Debug, Clone)]
pub struct SecretRotation {
    /// The endpoint.
    pub id: Uuid,
    /// The version the current secret must still have (a concurrent rotation wins).
    pub expected_version: i64,
    /// The new secret, sealed for `expected_version + 1`.
    pub secret: Sealed,
    /// Until when the current secret keeps signing beside the new one.
    pub previous_until: DateTime<Utc>,
    /// When.
    pub now: DateTime<Utc>,
}

/// Filters of a delivery listing.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this endpoint's.
    pub endpoint_id: Option<Uuid>,
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Newest first, after this (event id, endpoint id) of the previous page (keyset cursor).
    pub after: Option<(Uuid, Uuid)>,
    /// At most this many.
    pub limit: u32,
}

/// The `webhook_endpoints`, `webhook_deliveries` and `webhook_attempts` tables.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new endpoint.
    async fn insert_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError>;
    /// One endpoint inside `scope`.
    async fn webhook_endpoint(&self, scope: &TenantScope, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError>;
    /// The endpoints of `tenant_id`, ordered by id.
    async fn webhook_endpoints(&self, tenant_id: &str) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// Deletes an endpoint inside `scope` with its deliveries and attempts;
    /// returns its data key (to destroy), `None` when there was no such endpoint.
    async fn delete_webhook_endpoint(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Uuid>, StoreError>;
    /// Rotates an endpoint's secret; `false` when its version moved meanwhile.
    async fn rotate_webhook_secret(&self, rotation: &SecretRotation) -> Result<bool, StoreError>;
    /// Claims the next due delivery until `lease_until` (its `next_attempt_at`
    /// moves there, so a worker that dies leaves it due again then).
    async fn claim_next_delivery(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<WebhookDelivery>, StoreError>;
    /// Records an attempt and what it settled, under `claim`; `false` when
    /// the claim was lost (nothing recorded).
    async fn record_delivery_attempt(
        &self,
        attempt: &WebhookAttempt,
        next: DeliveryNext,
        claim: Uuid,
    ) -> Result<bool, StoreError>;
    /// Deliveries of `tenant_id`, newest first.
    async fn webhook_deliveries(
        &self,
        tenant_id: &str,
        filter: &DeliveryFilter,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// The attempts of one delivery, oldest first.
    async fn webhook_attempts(&self, endpoint_id: Uuid, event_id: Uuid) -> Result<Vec<WebhookAttempt>, StoreError>;
    /// Deletes finished deliveries (and attempts) older than `before`, in batches.
    async fn purge_webhook_deliveries(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn insert_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO webhook_endpoints ({WEBHOOK_ENDPOINT_COLUMNS}) VALUES ({})",
            placeholders(1, 14)
        );
        sqlx::query(&sql)
            .bind(e.id.to_string())
            .bind(e.tenant_id.clone())
            .bind(e.url.clone())
            .bind(e.description.clone())
            .bind(event_types_to_text(&e.event_types))
            .bind(e.dek_id.to_string())
            .bind(e.secret.0.clone())
            .bind(e.secret_version)
            .bind(e.previous_secret.as_ref().map(|s| s.0.clone()))
            .bind(e.previous_secret_version)
            .bind(e.previous_until.map(to_millis))
            .bind(e.created_by.clone())
            .bind(to_millis(e.created_at))
            .bind(to_millis(e.updated_at))
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn webhook_endpoint(&self, scope: &TenantScope, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError> {
        let endpoint: Option<WebhookEndpoint> = sqlx::query(&format!(
            "SELECT {WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        ))
        .bind(id.to_string())
        .record(&self.pool)
        .await?;
        Ok(endpoint.filter(|e| scope.allows(&e.tenant_id)))
    }

    async fn webhook_endpoints(&self, tenant_id: &str) -> Result<Vec<WebhookEndpoint>, StoreError> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY id"
        ))
        .bind(tenant_id.to_owned())
        .records(&self.pool)
        .await
    }

    async fn delete_webhook_endpoint(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let Some(endpoint) = self.webhook_endpoint(scope, id).await? else {
            return Ok(None);
        };
        let mut tx = self.begin().await?;
        for table in ["webhook_attempts", "webhook_deliveries"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE endpoint_id = $1"))
                .bind(id.to_string())
                .run(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id.to_string())
            .run(&mut *tx)
            .await?;
        tx.commit().await.map_err(map_err)?;
        Ok((deleted == 1).then_some(endpoint.dek_id))
    }

    async fn rotate_webhook_secret(&self, r: &SecretRotation) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_version = secret_version, \
             previous_until = $1, secret = $2, secret_version = secret_version + 1, updated_at = $3 \
             WHERE id = $4 AND secret_version = $5",
        )
        .bind(to_millis(r.previous_until))
        .bind(r.secret.0.clone())
        .bind(to_millis(r.now))
        .bind(r.id.to_string())
        .bind(r.expected_version)
        .run(&self.pool)
        .await?;
        Ok(updated == 1)
    }

    async fn claim_next_delivery(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        claim: Uuid,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let skip_locked = skip_locked(self.backend);
        let sql = format!(
            "UPDATE webhook_deliveries SET next_attempt_at = $1, claim_token = $2 \
             WHERE status = 'pending' AND next_attempt_at <= $3 AND (endpoint_id, event_id) = \
             (SELECT endpoint_id, event_id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
              ORDER BY next_attempt_at, event_id LIMIT 1{skip_locked}) \
             RETURNING {WEBHOOK_DELIVERY_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(claim.to_string())
            .bind(to_millis(now))
            .record(&self.pool)
            .await
    }

    async fn record_delivery_attempt(
        &self,
        attempt: &WebhookAttempt,
        next: DeliveryNext,
        claim: Uuid,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let (status, next_at, finished_at) = match next {
            DeliveryNext::Delivered => (
                DeliveryStatus::Delivered,
                attempt.attempted_at,
                Some(attempt.attempted_at),
            ),
            DeliveryNext::RetryAt(at) => (DeliveryStatus::Pending, at, None),
            DeliveryNext::Failed => (DeliveryStatus::Failed, attempt.attempted_at, Some(attempt.attempted_at)),
        };
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             finished_at = $3, last_status_code = $4, last_error = $5, claim_token = NULL \
             WHERE endpoint_id = $6 AND event_id = $7 AND status = 'pending' AND claim_token = $8",
        )
        .bind(status.as_str())
        .bind(to_millis(next_at))
        .bind(finished_at.map(to_millis))
        .bind(attempt.status_code)
        .bind(attempt.error.clone())
        .bind(attempt.endpoint_id.to_string())
        .bind(attempt.event_id.to_string())
        .bind(claim.to_string())
        .run(&mut *tx)
        .await?;
        if updated != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(false);
        }
        let sql = format!(
            "INSERT INTO webhook_attempts ({WEBHOOK_ATTEMPT_COLUMNS}) VALUES ({})",
            placeholders(1, 7)
        );
        sqlx::query(&sql)
            .bind(attempt.id.to_string())
            .bind(attempt.endpoint_id.to_string())
            .bind(attempt.event_id.to_string())
            .bind(to_millis(attempt.attempted_at))
            .bind(attempt.status_code)
            .bind(attempt.latency_ms)
            .bind(attempt.error.clone())
            .run(&mut *tx)
            .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn webhook_deliveries(
        &self,
        tenant_id: &str,
        filter: &DeliveryFilter,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut sql = format!("SELECT {WEBHOOK_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1");
        let mut binds = vec![tenant_id.to_owned()];
        if let Some(id) = filter.endpoint_id {
            binds.push(id.to_string());
            sql.push_str(&format!(" AND endpoint_id = ${}", binds.len()));
        }
        if let Some(status) = filter.status {
            binds.push(status.as_str().to_owned());
            sql.push_str(&format!(" AND status = ${}", binds.len()));
        }
        if let Some((event, endpoint)) = filter.after {
            binds.push(event.to_string());
            binds.push(endpoint.to_string());
            let (e, p) = (binds.len() - 1, binds.len());
            sql.push_str(&format!(
                " AND (event_id < ${e} OR (event_id = ${e} AND endpoint_id > ${p}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY event_id DESC, endpoint_id LIMIT {}",
            filter.limit.clamp(1, 1000)
        ));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        query.records(&self.pool).await
    }

    async fn webhook_attempts(&self, endpoint_id: Uuid, event_id: Uuid) -> Result<Vec<WebhookAttempt>, StoreError> {
        sqlx::query(&format!(
            "SELECT {WEBHOOK_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE endpoint_id = $1 AND event_id = $2 \
             ORDER BY attempted_at, id"
        ))
        .bind(endpoint_id.to_string())
        .bind(event_id.to_string())
        .records(&self.pool)
        .await
    }

    async fn purge_webhook_deliveries(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        let attempts = purge_where(
            &self.pool,
            "webhook_attempts",
            "attempted_at < $1",
            before,
            dry_run,
            self.purge_batch,
        )
        .await?;
        let deliveries = purge_keyed_where(
            &self.pool,
            "webhook_deliveries",
            "endpoint_id, event_id",
            "status <> 'pending' AND finished_at < $1",
            before,
            dry_run,
            self.purge_batch,
        )
        .await?;
        Ok(attempts + deliveries)
    }
}
