//! `AdminService`: operator actions.

use super::context::CallContext;
use super::events::event_types;
use super::{convert, validate};
use crate::app::App;
use crate::clock::{from_proto, to_proto};
use crate::lifecycle::Actor;
use crate::proto::admin_service_server::AdminService;
use crate::proto::*;
use crate::store::{AuditFilter, DeliveryFilter, DeliveryStatus, TenantScope};
use secrecy::ExposeSecret;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `AdminService` over the app.
#[derive(Debug, Clone)]
pub struct AdminApi {
    app: Arc<App>,
}

impl AdminApi {
    /// The service.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn actor(context: &CallContext) -> Actor<'_> {
    Actor {
        name: &context.caller.name,
        tenants: &context.caller.tenants,
        request_id: context.request_id(),
    }
}

/// A delivery listing's page token: `<event id>.<endpoint id>` of the last delivery shown.
fn delivery_page_token(token: &str) -> Result<Option<(uuid::Uuid, uuid::Uuid)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let (event, endpoint) = token
        .split_once('.')
        .ok_or_else(|| Status::invalid_argument("page_token is malformed"))?;
    Ok(Some((
        validate::id("page_token", event)?,
        validate::id("page_token", endpoint)?,
    )))
}

fn reason(text: &str, default: &str) -> Result<String, Status> {
    if text.len() > 500 || text.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "reason must be at most 500 characters without control characters",
        ));
    }
    Ok(if text.is_empty() {
        default.to_owned()
    } else {
        text.to_owned()
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn revoke_connection(
        &self,
        request: Request<RevokeConnectionRequest>,
    ) -> Result<Response<RevokeConnectionResponse>, Status> {
        let context = CallContext::of(&request)?;
        let id = validate::id("connection_id", &request.get_ref().connection_id)?;
        let why = reason(&request.get_ref().reason, "revoked by an operator")?;
        let connection = self.app.lifecycle.revoke_connection(&actor(&context), id, &why).await?;
        Ok(Response::new(RevokeConnectionResponse {
            connection: Some(convert::connection(&connection)),
        }))
    }

    async fn revoke_user(&self, request: Request<RevokeUserRequest>) -> Result<Response<RevokeUserResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        validate::tenant(&body.tenant_id)?;
        validate::user(&body.user_id)?;
        let why = reason(&body.reason, "all of the user's connections revoked by an operator")?;
        let connections = self
            .app
            .lifecycle
            .revoke_user(&actor(&context), &body.tenant_id, &body.user_id, &why)
            .await?;
        Ok(Response::new(RevokeUserResponse {
            connections: connections.iter().map(convert::connection).collect(),
        }))
    }

    async fn delete_user(&self, request: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        validate::tenant(&body.tenant_id)?;
        validate::user(&body.user_id)?;
        let purge_at = self
            .app
            .lifecycle
            .delete_user(&actor(&context), &body.tenant_id, &body.user_id)
            .await?;
        Ok(Response::new(DeleteUserResponse {
            purge_at: Some(to_proto(purge_at)),
        }))
    }

    async fn restore_user(
        &self,
        request: Request<RestoreUserRequest>,
    ) -> Result<Response<RestoreUserResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        validate::tenant(&body.tenant_id)?;
        validate::user(&body.user_id)?;
        let connections = self
            .app
            .lifecycle
            .restore_user(&actor(&context), &body.tenant_id, &body.user_id)
            .await?;
        Ok(Response::new(RestoreUserResponse {
            connections: connections.iter().map(convert::connection).collect(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        let tenant_id = if body.tenant_id.is_empty() {
            if context.caller.tenants != TenantScope::All {
                return Err(Status::invalid_argument(
                    "tenant_id is required for a caller limited to some tenants",
                ));
            }
            None
        } else {
            validate::tenant(&body.tenant_id)?;
            validate::may_act_for(&context.caller, &body.tenant_id)?;
            Some(body.tenant_id)
        };
        if !body.user_id.is_empty() {
            validate::user(&body.user_id)?;
        }
        let connection_id = if body.connection_id.is_empty() {
            None
        } else {
            Some(validate::id("connection_id", &body.connection_id)?)
        };
        if body.action.len() > 64 {
            return Err(Status::invalid_argument("action is at most 64 characters"));
        }
        let time = |field: &str, ts: Option<prost_types::Timestamp>| -> Result<_, Status> {
            ts.map(|t| from_proto(&t).ok_or_else(|| Status::invalid_argument(format!("{field} is out of range"))))
                .transpose()
        };
        let limit = validate::page_size(body.page_size);
        let events = self
            .app
            .store
            .list_audit(&AuditFilter {
                tenant_id,
                user_id: (!body.user_id.is_empty()).then_some(body.user_id),
                connection_id,
                action: (!body.action.is_empty()).then_some(body.action),
                since: time("since", body.since)?,
                until: time("until", body.until)?,
                before_id: validate::page_token(&body.page_token)?,
                limit,
                ..AuditFilter::default()
            })
            .await?;
        let next_page_token = if events.len() == limit as usize {
            events.last().map(|e| e.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListAuditEventsResponse {
            events: events.iter().map(convert::audit_event).collect(),
            next_page_token,
        }))
    }

    async fn rotate_keys(&self, request: Request<RotateKeysRequest>) -> Result<Response<RotateKeysResponse>, Status> {
        let context = CallContext::of(&request)?;
        if context.caller.tenants != TenantScope::All {
            return Err(Status::permission_denied(
                "key rotation needs an admin key for all tenants (\"*\")",
            ));
        }
        let report = self.app.lifecycle.rotate_keys(&actor(&context)).await?;
        Ok(Response::new(RotateKeysResponse {
            active_kek_id: report.active_kek,
            rewrapped: report.rewrapped,
            unchanged: report.unchanged,
        }))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<CreateWebhookEndpointRequest>,
    ) -> Result<Response<CreateWebhookEndpointResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        validate::tenant(&body.tenant_id)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let types = event_types(&body.types)?;
        let created = self
            .app
            .webhooks
            .create(
                &context.caller.name,
                &body.tenant_id,
                &body.url,
                &body.description,
                types,
            )
            .await?;
        Ok(Response::new(CreateWebhookEndpointResponse {
            endpoint: Some(convert::webhook_endpoint(&created.endpoint)),
            secret: created.secret.expose_secret().to_owned(),
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<ListWebhookEndpointsRequest>,
    ) -> Result<Response<ListWebhookEndpointsResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        validate::tenant(&body.tenant_id)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let endpoints = self.app.webhooks.list(&body.tenant_id).await?;
        Ok(Response::new(ListWebhookEndpointsResponse {
            endpoints: endpoints.iter().map(convert::webhook_endpoint).collect(),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<DeleteWebhookEndpointRequest>,
    ) -> Result<Response<DeleteWebhookEndpointResponse>, Status> {
        let context = CallContext::of(&request)?;
        let id = validate::id("endpoint_id", &request.get_ref().endpoint_id)?;
        self.app
            .webhooks
            .delete(&context.caller.name, &context.caller.tenants, id)
            .await?;
        Ok(Response::new(DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookSecretRequest>,
    ) -> Result<Response<RotateWebhookSecretResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        let id = validate::id("endpoint_id", &body.endpoint_id)?;
        if body.previous_secret_hours > 168 {
            return Err(Status::invalid_argument(
                "previous_secret_hours is at most 168 (a week)",
            ));
        }
        let previous_for = if body.expire_previous_now {
            Some(chrono::Duration::zero())
        } else if body.previous_secret_hours > 0 {
            Some(chrono::Duration::hours(i64::from(body.previous_secret_hours)))
        } else {
            None
        };
        let rotated = self
            .app
            .webhooks
            .rotate(&context.caller.name, &context.caller.tenants, id, previous_for)
            .await?;
        Ok(Response::new(RotateWebhookSecretResponse {
            endpoint: Some(convert::webhook_endpoint(&rotated.endpoint)),
            secret: rotated.secret.expose_secret().to_owned(),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesRequest>,
    ) -> Result<Response<ListWebhookDeliveriesResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.get_ref();
        validate::tenant(&body.tenant_id)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let endpoint_id = if body.endpoint_id.is_empty() {
            None
        } else {
            Some(validate::id("endpoint_id", &body.endpoint_id)?)
        };
        let status = match body.status.as_str() {
            "" => None,
            text => Some(
                DeliveryStatus::parse(text)
                    .ok_or_else(|| Status::invalid_argument("status must be one of pending, delivered, failed"))?,
            ),
        };
        let limit = match body.page_size {
            0 => 50,
            n => n.min(500),
        };
        let reports = self
            .app
            .webhooks
            .deliveries(
                &body.tenant_id,
                &DeliveryFilter {
                    endpoint_id,
                    status,
                    after: delivery_page_token(&body.page_token)?,
                    limit,
                },
            )
            .await?;
        let next_page_token = if reports.len() == limit as usize {
            reports
                .last()
                .map(|r| format!("{}.{}", r.delivery.event_id, r.delivery.endpoint_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries: reports.iter().map(convert::webhook_delivery).collect(),
            next_page_token,
        }))
    }
}
