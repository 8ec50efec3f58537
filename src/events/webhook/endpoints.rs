//! [`Webhooks`]: the endpoints of each tenant. Creating an endpoint checks
//! its URL against the [`AddressPolicy`], makes a signing secret and seals
//! it under a data key of the endpoint's own (bound to the tenant, the
//! endpoint and the secret's version); the secret is returned once and
//! never again. Rotating keeps the previous secret signing beside the new
//! one for a while, so receivers can switch without losing deliveries.
//! Deleting an endpoint drops its queue and destroys its key.

use super::address::{AddressPolicy, EndpointUrlError};
use super::signature::SigningSecret;
use crate::audit::EventBuilder;
use crate::clock::SharedClock;
use crate::events::EventType;
use crate::store::{
    DeliveryFilter, Sealed, SecretRotation, Store, StoreError, TenantScope, WebhookAttempt, WebhookDelivery,
    WebhookEndpoint,
};
use crate::vault::{Binding, DataKey, Field, Vault, VaultError};
use chrono::Duration as ChronoDuration;
use secrecy::SecretString;
use std::sync::Arc;
use uuid::Uuid;

/// Longest endpoint description.
const MAX_DESCRIPTION: usize = 200;

/// Why a webhook operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is refused.
    #[error(transparent)]
    Url(#[from] EndpointUrlError),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint (for this caller).
    #[error("no webhook endpoint {0}")]
    NotFound(Uuid),
    /// The tenant has as many endpoints as allowed.
    #[error("tenant `{tenant}` already has {max} webhook endpoints (events.webhooks.max_endpoints_per_tenant)")]
    TooMany {
        /// The tenant.
        tenant: String,
        /// The limit.
        max: usize,
    },
    /// A concurrent change won.
    #[error("the endpoint changed meanwhile; retry")]
    Conflict,
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new endpoint and its secret (shown once).
#[derive(Debug)]
pub struct CreatedEndpoint {
    /// The endpoint as stored.
    pub endpoint: WebhookEndpoint,
    /// Its signing secret, `whsec_…`.
    pub secret: SecretString,
}

/// A delivery with its attempts.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    /// The delivery.
    pub delivery: WebhookDelivery,
    /// Its attempts, oldest first.
    pub attempts: Vec<WebhookAttempt>,
}

/// Endpoint management.
pub struct Webhooks {
    store: Arc<dyn Store>,
    vault: Vault,
    policy: Arc<AddressPolicy>,
    clock: SharedClock,
    previous_secret_for: ChronoDuration,
    max_per_tenant: usize,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What an endpoint's secret of `version` is sealed for.
pub(super) fn secret_binding<'a>(endpoint: &'a WebhookEndpoint, record: &'a str, version: i64) -> Binding<'a> {
    Binding {
        tenant_id: &endpoint.tenant_id,
        user_id: "",
        record,
        field: Field::WebhookSecret,
        version,
    }
}

/// Opens the secrets that sign now: the current one, and the previous one
/// while its overlap lasts.
pub(super) fn signing_secrets(
    key: &DataKey,
    endpoint: &WebhookEndpoint,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<SigningSecret>, VaultError> {
    let record = endpoint.id.to_string();
    let open = |sealed: &Sealed, version| {
        key.open(&secret_binding(endpoint, &record, version), sealed.as_bytes())
            .map(SigningSecret::from_bytes)
    };
    let mut secrets = vec![open(&endpoint.secret, endpoint.secret_version)?];
    if let (Some(previous), Some(version), Some(until)) = (
        &endpoint.previous_secret,
        endpoint.previous_secret_version,
        endpoint.previous_until,
    ) {
        if until > now {
            secrets.push(open(previous, version)?);
        }
    }
    Ok(secrets)
}

impl Webhooks {
    /// Endpoint management over the store and the vault.
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        policy: Arc<AddressPolicy>,
        clock: SharedClock,
        previous_secret_hours: u32,
        max_per_tenant: usize,
    ) -> Self {
        Self {
            store,
            vault,
            policy,
            clock,
            previous_secret_for: ChronoDuration::hours(i64::from(previous_secret_hours)),
            max_per_tenant,
        }
    }

    /// Creates an endpoint of `tenant_id` for `types` (every type when empty).
    pub async fn create(
        &self,
        actor: &str,
        tenant_id: &str,
        url: &str,
        description: &str,
        types: Vec<EventType>,
    ) -> Result<CreatedEndpoint, WebhookError> {
        if description.chars().count() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
            return Err(WebhookError::Invalid(format!(
                "description must be at most {MAX_DESCRIPTION} characters without control characters"
            )));
        }
        let url = self.policy.check(url).await?;
        if self.store.webhook_endpoints(tenant_id).await?.len() >= self.max_per_tenant {
            return Err(WebhookError::TooMany {
                tenant: tenant_id.to_owned(),
                max: self.max_per_tenant,
            });
        }
        let now = self.clock.now();
        let key = self.vault.create_data_key().await?;
        let secret = SigningSecret::generate();
        let mut endpoint = WebhookEndpoint {
            id: Uuid::now_v7(),
            tenant_id: tenant_id.to_owned(),
            url: url.to_string(),
            description: description.to_owned(),
            event_types: dedup(types),
            dek_id: key.id(),
            secret: Sealed(Vec::new()),
            secret_version: 1,
            previous_secret: None,
            previous_secret_version: None,
            previous_until: None,
            created_by: actor.to_owned(),
            created_at: now,
            updated_at: now,
        };
        let record = endpoint.id.to_string();
        endpoint.secret = Sealed(key.seal(&secret_binding(&endpoint, &record, 1), secret.expose_bytes())?);
        if let Err(error) = self.store.insert_webhook_endpoint(&endpoint).await {
            let _ = self.vault.destroy_data_keys(&[key.id()]).await;
            return Err(error.into());
        }
        self.audit(
            EventBuilder::new("webhook.endpoint_created", "success", actor, now)
                .tenant(tenant_id)
                .detail("endpoint_id", endpoint.id.to_string())
                .detail("url", endpoint.url.clone())
                .detail(
                    "types",
                    endpoint.event_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                ),
        )
        .await;
        tracing::info!(endpoint_id = %endpoint.id, tenant_id, types = endpoint.event_types.len(), "webhook endpoint created");
        Ok(CreatedEndpoint {
            endpoint,
            secret: secret.to_whsec(),
        })
    }

    /// The endpoints of `tenant_id`.
    pub async fn list(&self, tenant_id: &str) -> Result<Vec<WebhookEndpoint>, WebhookError> {
        Ok(self.store.webhook_endpoints(tenant_id).await?)
    }

    /// Deletes an endpoint inside `scope`: its queued deliveries go, and its key is destroyed.
    pub async fn delete(&self, actor: &str, scope: &TenantScope, id: Uuid) -> Result<(), WebhookError> {
        let endpoint = self.endpoint(scope, id).await?;
        let dek = self
            .store
            .delete_webhook_endpoint(scope, id)
            .await?
            .ok_or(WebhookError::NotFound(id))?;
        self.vault.destroy_and_announce(&[dek], &*self.store).await?;
        self.audit(
            EventBuilder::new("webhook.endpoint_deleted", "success", actor, self.clock.now())
                .tenant(&endpoint.tenant_id)
                .detail("endpoint_id", id.to_string()),
        )
        .await;
        tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
        Ok(())
    }

    /// Gives an endpoint inside `scope` a new secret; the current one keeps
    /// signing beside it for `previous_for` (the configured overlap when `None`).
    pub async fn rotate(
        &self,
        actor: &str,
        scope: &TenantScope,
        id: Uuid,
        previous_for: Option<ChronoDuration>,
    ) -> Result<CreatedEndpoint, WebhookError> {
        let endpoint = self
            .store
            .webhook_endpoint(scope, id)
            .await?
            .ok_or(WebhookError::NotFound(id))?;
        let key = self.vault.data_key(endpoint.dek_id).await?;
        let secret = SigningSecret::generate();
        let record = endpoint.id.to_string();
        let version = endpoint.secret_version + 1;
        let sealed = Sealed(key.seal(&secret_binding(&endpoint, &record, version), secret.expose_bytes())?);
        let now = self.clock.now();
        let rotation = SecretRotation {
            id,
            expected_version: endpoint.secret_version,
            secret: sealed,
            previous_until: now + previous_for.unwrap_or(self.previous_secret_for),
            now,
        };
        if !self.store.rotate_webhook_secret(&rotation).await? {
            return Err(WebhookError::Conflict);
        }
        let endpoint = self
            .store
            .webhook_endpoint(scope, id)
            .await?
            .ok_or(WebhookError::NotFound(id))?;
        self.audit(
            EventBuilder::new("webhook.secret_rotated", "success", actor, now)
                .tenant(&endpoint.tenant_id)
                .detail("endpoint_id", id.to_string())
                .detail("secret_version", endpoint.secret_version)
                .detail("previous_until", rotation.previous_until.to_rfc3339()),
        )
        .await;
        tracing::info!(endpoint_id = %id, secret_version = endpoint.secret_version, "webhook secret rotated");
        Ok(CreatedEndpoint {
            endpoint,
            secret: secret.to_whsec(),
        })
    }

    /// Deliveries of `tenant_id` (newest first), each with its attempts.
    pub async fn deliveries(
        &self,
        tenant_id: &str,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryReport>, WebhookError> {
        let deliveries = self.store.webhook_deliveries(tenant_id, filter).await?;
        let mut reports = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let attempts = self
                .store
                .webhook_attempts(delivery.endpoint_id, delivery.event_id)
                .await?;
            reports.push(DeliveryReport { delivery, attempts });
        }
        Ok(reports)
    }

    /// One endpoint inside `scope`.
    pub async fn endpoint(&self, scope: &TenantScope, id: Uuid) -> Result<WebhookEndpoint, WebhookError> {
        self.store
            .webhook_endpoint(scope, id)
            .await?
            .ok_or(WebhookError::NotFound(id))
    }
}

impl Webhooks {
    /// Records an operator's action (it is done already: a failure to record is logged).
    async fn audit(&self, event: EventBuilder) {
        if let Err(error) = self.store.append_audit(&[event.build()]).await {
            tracing::warn!(%error, "could not write the audit event of a webhook endpoint change");
        }
    }
}

/// Each type once, in catalogue order.
fn dedup(mut types: Vec<EventType>) -> Vec<EventType> {
    types.sort();
    types.dedup();
    types
}
