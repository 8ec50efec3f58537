//! `TokenService`: the hot path. Decode, validate, call the broker, map errors.

use super::context::CallContext;
use super::validate;
use crate::app::App;
use crate::broker::{Requester, TokenRequest};
use crate::clock::to_proto;
use crate::proto::token_service_server::TokenService;
use crate::proto::*;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// `TokenService` over the app.
#[derive(Debug, Clone)]
pub struct TokenApi {
    app: Arc<App>,
}

impl TokenApi {
    /// The service.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

/// Longest `min_ttl_seconds` accepted (a day).
const MAX_MIN_TTL: u32 = 86_400;

/// The caller's deadline from the `grpc-timeout` header (e.g. `500m`, `3S`).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        let context = CallContext::of(&request)?;
        let budget = grpc_timeout(request.metadata())
            .unwrap_or_else(|| self.app.broker.default_deadline())
            .min(self.app.broker.default_deadline());
        let body = request.get_ref();
        let connection_id = validate::id("connection_id", &body.connection_id)?;
        let scopes = validate::scopes("scopes", &body.scopes)?;
        let capabilities = validate::capability_names(&body.capabilities)?;
        if body.min_ttl_seconds > MAX_MIN_TTL {
            return Err(Status::invalid_argument(format!(
                "min_ttl_seconds must be at most {MAX_MIN_TTL}"
            )));
        }
        let token_request = TokenRequest {
            connection_id,
            scopes,
            capabilities: Vec::new(),
            min_ttl: chrono::Duration::seconds(i64::from(body.min_ttl_seconds)),
            require_min_ttl: body.require_min_ttl,
            // Leave a little room to answer before the caller gives up.
            deadline: Instant::now() + budget.saturating_sub(Duration::from_millis(50)),
        };
        let requester = Requester {
            actor: &context.caller.name,
            tenants: &context.caller.tenants,
            request_id: context.request_id(),
        };
        let issued = self
            .app
            .broker
            .get_access_token(&requester, &token_request, &capabilities)
            .await?;
        Ok(Response::new(GetAccessTokenResponse {
            access_token: issued.access_token.expose_secret().to_owned(),
            token_type: issued.token_type,
            expires_at: Some(to_proto(issued.expires_at)),
            scopes: issued.scopes,
            connection_id: body.connection_id.clone(),
            never_expires: issued.never_expires,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(250)));
        metadata.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), Some(Duration::from_secs(3)));
        metadata.insert("grpc-timeout", "3X".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }
}
