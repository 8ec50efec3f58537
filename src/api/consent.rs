//! `ConsentService`: decode, validate, call the consent flow, map errors.

use super::context::CallContext;
use super::validate;
use crate::app::App;
use crate::clock::to_proto;
use crate::consent::{CallbackParams, Completer, Completion, Outcome, StartRequest};
use crate::proto::consent_service_server::ConsentService;
use crate::proto::*;
use crate::store::ConsentState;
use secrecy::SecretString;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `ConsentService` over the app.
#[derive(Debug, Clone)]
pub struct ConsentApi {
    app: Arc<App>,
}

impl ConsentApi {
    /// The service.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

fn provider_name(value: &str) -> Result<&str, Status> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(value)
    } else {
        Err(Status::invalid_argument(
            "provider must be a catalog name (a-z 0-9 _ -)",
        ))
    }
}

/// An optional `account_hint`: at most 256 characters, none of them control characters.
fn account_hint(value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "account_hint must be at most 256 characters without control characters",
        ));
    }
    Ok(Some(value.to_owned()))
}

/// The proto status of a completion's outcome.
fn outcome_status(outcome: Outcome) -> ConsentStatus {
    match outcome {
        Outcome::Connected => ConsentStatus::ConsentCompleted,
        Outcome::Approved => ConsentStatus::ConsentApproved,
        Outcome::Denied | Outcome::Failed => ConsentStatus::ConsentFailed,
    }
}

/// The proto form of a completion.
pub fn completion_response(completion: &Completion) -> CompleteConsentResponse {
    CompleteConsentResponse {
        consent_id: completion.consent_id.to_string(),
        connection_id: completion.connection_id.map(|c| c.to_string()).unwrap_or_default(),
        status: outcome_status(completion.outcome) as i32,
        granted_scopes: completion.granted_scopes.iter().cloned().collect(),
        redirect_url: completion
            .redirect_url
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        error: completion.error.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn start_consent(
        &self,
        request: Request<StartConsentRequest>,
    ) -> Result<Response<StartConsentResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        validate::tenant(&body.tenant_id)?;
        validate::user(&body.user_id)?;
        provider_name(&body.provider)?;
        let capabilities = validate::capability_names(&body.capabilities)?;
        let scopes = validate::scopes("scopes", &body.scopes)?;
        let connection_id = if body.connection_id.is_empty() {
            None
        } else {
            Some(validate::id("connection_id", &body.connection_id)?)
        };
        let account_hint = account_hint(&body.account_hint)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        // Counted only once the caller may act for the tenant: no one spends another tenant's allowance.
        self.app.consent_starts.check(&body.tenant_id)?;
        let started = self
            .app
            .consent
            .start(
                &context.caller.name,
                &context.caller.tenants,
                StartRequest {
                    tenant_id: body.tenant_id,
                    user_id: body.user_id,
                    provider: body.provider,
                    capabilities,
                    scopes: scopes.into_iter().collect(),
                    return_url: body.return_url,
                    connection_id,
                    account_hint,
                },
                context.request_id(),
            )
            .await?;
        Ok(Response::new(StartConsentResponse {
            consent_id: started.consent_id.to_string(),
            authorization_url: started.authorization_url.to_string(),
            scopes: started.scopes.into_iter().collect(),
            expires_at: Some(to_proto(started.expires_at)),
        }))
    }

    async fn complete_consent(
        &self,
        request: Request<CompleteConsentRequest>,
    ) -> Result<Response<CompleteConsentResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        if body.code.len() > 4096
            || body.error.len() > 256
            || body.error_description.len() > 2048
            || body.iss.len() > 2048
        {
            return Err(Status::invalid_argument(
                "code, error, error_description or iss is too long",
            ));
        }
        validate::user(&body.user_id)?;
        let params = CallbackParams {
            state: body.state,
            iss: (!body.iss.is_empty()).then_some(body.iss),
            code: (!body.code.is_empty()).then(|| SecretString::from(body.code)),
            error: (!body.error.is_empty()).then_some(body.error),
            error_description: (!body.error_description.is_empty()).then_some(body.error_description),
        };
        let completion = self
            .app
            .consent
            .complete_for(
                &context.caller.name,
                &context.caller.tenants,
                params,
                Completer::Platform { user_id: &body.user_id },
                context.request_id(),
            )
            .await?;
        Ok(Response::new(completion_response(&completion)))
    }

    async fn confirm_consent(
        &self,
        request: Request<ConfirmConsentRequest>,
    ) -> Result<Response<ConfirmConsentResponse>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        let consent_id = validate::id("consent_id", &body.consent_id)?;
        if !crate::consent::binding::well_formed(&body.completion_code) {
            return Err(Status::invalid_argument(
                "completion_code is required: the `completion_code` query parameter of the return_url",
            ));
        }
        validate::user(&body.user_id)?;
        let completion = self
            .app
            .consent
            .confirm(
                &context.caller.name,
                &context.caller.tenants,
                consent_id,
                &SecretString::from(body.completion_code),
                &body.user_id,
                context.request_id(),
            )
            .await?;
        Ok(Response::new(ConfirmConsentResponse {
            consent_id: completion.consent_id.to_string(),
            connection_id: completion.connection_id.map(|c| c.to_string()).unwrap_or_default(),
            status: outcome_status(completion.outcome) as i32,
            granted_scopes: completion.granted_scopes.iter().cloned().collect(),
        }))
    }

    async fn get_consent(&self, request: Request<GetConsentRequest>) -> Result<Response<GetConsentResponse>, Status> {
        let context = CallContext::of(&request)?;
        let id = validate::id("consent_id", &request.get_ref().consent_id)?;
        let (record, expired) = self.app.consent.get(&context.caller.tenants, id).await?;
        let status = match record.state {
            _ if expired => ConsentStatus::ConsentExpired,
            ConsentState::Pending | ConsentState::Exchanging => ConsentStatus::ConsentPending,
            ConsentState::Approved | ConsentState::Confirming => ConsentStatus::ConsentApproved,
            ConsentState::Completed => ConsentStatus::ConsentCompleted,
            ConsentState::Failed => ConsentStatus::ConsentFailed,
        };
        Ok(Response::new(GetConsentResponse {
            consent_id: record.id.to_string(),
            tenant_id: record.tenant_id,
            user_id: record.user_id,
            provider: record.provider,
            status: status as i32,
            requested_scopes: record.requested_scopes.into_iter().collect(),
            connection_id: record.connection_id.map(|c| c.to_string()).unwrap_or_default(),
            expires_at: Some(to_proto(record.expires_at)),
            error: record.error.unwrap_or_default(),
        }))
    }
}
