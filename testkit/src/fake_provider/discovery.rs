//! `GET /.well-known/oauth-authorization-server`: a small RFC 8414 metadata
//! document naming the fake's endpoints and what they support.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::config::ClientAuthMethod;
use super::state::Shared;

/// The metadata document.
pub(super) async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    let base = shared.base_url.as_str().trim_end_matches('/');
    let method = match shared.config.client_auth {
        ClientAuthMethod::Basic => vec!["client_secret_basic"],
        ClientAuthMethod::Post => vec!["client_secret_post"],
        ClientAuthMethod::Either => vec!["client_secret_basic", "client_secret_post"],
    };
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": method,
        "revocation_endpoint_auth_methods_supported": method,
        "authorization_response_iss_parameter_supported": shared.config.send_iss,
    }))
    .into_response()
}
