//! `ConnectionService`: the platform's view of its users' connections.

use super::context::CallContext;
use super::export::{self, ExportCursor};
use super::{convert, validate};
use crate::app::App;
use crate::clock::to_proto;
use crate::lifecycle::Actor;
use crate::proto::connection_service_server::ConnectionService;
use crate::proto::*;
use crate::store::ConnectionFilter;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `ConnectionService` over the app.
#[derive(Debug, Clone)]
pub struct ConnectionApi {
    app: Arc<App>,
}

impl ConnectionApi {
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

#[tonic::async_trait]
impl ConnectionService for ConnectionApi {
    async fn list_connections(
        &self,
        request: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        validate::tenant(&body.tenant_id)?;
        if !body.user_id.is_empty() {
            validate::user(&body.user_id)?;
        }
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let limit = validate::page_size(body.page_size);
        let connections = self
            .app
            .store
            .list_connections(&ConnectionFilter {
                tenant_id: body.tenant_id,
                user_id: (!body.user_id.is_empty()).then_some(body.user_id),
                provider: (!body.provider.is_empty()).then_some(body.provider),
                after_id: validate::page_token(&body.page_token)?,
                limit,
            })
            .await?;
        let next_page_token = if connections.len() == limit as usize {
            connections.last().map(|c| c.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListConnectionsResponse {
            connections: connections.iter().map(convert::connection).collect(),
            next_page_token,
        }))
    }

    async fn get_connection(
        &self,
        request: Request<GetConnectionRequest>,
    ) -> Result<Response<GetConnectionResponse>, Status> {
        let context = CallContext::of(&request)?;
        let id = validate::id("connection_id", &request.get_ref().connection_id)?;
        let connection = self.app.lifecycle.connection(&actor(&context), id).await?;
        Ok(Response::new(GetConnectionResponse {
            connection: Some(convert::connection(&connection)),
        }))
    }

    async fn disconnect(&self, request: Request<DisconnectRequest>) -> Result<Response<DisconnectResponse>, Status> {
        let context = CallContext::of(&request)?;
        let id = validate::id("connection_id", &request.get_ref().connection_id)?;
        let connection = self
            .app
            .lifecycle
            .revoke_connection(&actor(&context), id, "disconnected by the user")
            .await?;
        Ok(Response::new(DisconnectResponse {
            connection: Some(convert::connection(&connection)),
        }))
    }

    async fn export_user_data(
        &self,
        request: Request<ExportUserDataRequest>,
    ) -> Result<Response<ExportUserDataResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        validate::tenant(&body.tenant_id)?;
        validate::user(&body.user_id)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let cursor = ExportCursor::decode(&body.page_token, &body.tenant_id, &body.user_id)?;
        let store = &self.app.store;
        let user = store.user(&body.tenant_id, &body.user_id).await?;
        let Some(user) = user else {
            return Err(Status::not_found(format!(
                "no data is held about user `{}` in tenant `{}`",
                body.user_id, body.tenant_id
            )));
        };
        let page = export::read_page(
            &**store,
            &body.tenant_id,
            &body.user_id,
            validate::page_size(body.page_size),
            cursor,
        )
        .await?;
        let next_page_token = page
            .next
            .map(|next| next.encode(&body.tenant_id, &body.user_id))
            .unwrap_or_default();
        Ok(Response::new(ExportUserDataResponse {
            tenant_id: body.tenant_id,
            user_id: body.user_id,
            exported_at: Some(to_proto(self.app.clock.now())),
            deleted_at: user.deleted_at.map(to_proto),
            purge_at: user.purge_at.map(to_proto),
            connections: page.connections.iter().map(convert::connection).collect(),
            audit_events: page.audit_events.iter().map(convert::audit_event).collect(),
            consents: page
                .consents
                .iter()
                .map(|c| ExportedConsent {
                    consent_id: c.id.to_string(),
                    provider: c.provider.clone(),
                    requested_scopes: c.requested_scopes.iter().cloned().collect(),
                    status: c.state.as_str().to_owned(),
                    created_at: Some(to_proto(c.created_at)),
                })
                .collect(),
            next_page_token,
        }))
    }
}
