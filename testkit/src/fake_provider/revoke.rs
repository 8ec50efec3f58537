//! `POST /revoke`: token revocation (RFC 7009). Revoking a refresh token ends
//! its grant; every request past fault injection is recorded for the test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CACHE_CONTROL;
use http::{HeaderMap, StatusCode};

use super::client_auth::{authenticate_client, check_form};
use super::faults::{fault_response, Endpoint, Fault};
use super::params::Params;
use super::responses::oauth_error;
use super::state::Shared;
use super::stats::RevocationRecord;

/// The revocation endpoint.
pub(super) async fn revoke(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.count(|s| s.revoke_endpoint_requests += 1);
    for fault in shared.faults.take(Endpoint::Revoke) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::ReduceScopes(_) => {}
            other => return fault_response(&other),
        }
    }

    if let Err(error) = check_form(&headers) {
        return error.into_response();
    }
    let params = Params::parse(&body);
    if let Some(description) = params.repeated_error() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
    }
    let Some(token) = params.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let auth = authenticate_client(&shared.config, &headers, &params);

    let mut state = shared.lock_state();
    let is_live_refresh = state.refresh_grant(token).is_some();
    let was_active = is_live_refresh || state.access_token_live(token);
    if auth.is_ok() {
        // RFC 7009 §2.1: revoking a refresh token ends the grant and its access tokens.
        if let Some(record) = state.refresh_tokens.get(token) {
            let grant_id = record.grant_id;
            state.deactivate_grant(grant_id);
        } else if let Some(record) = state.access_tokens.get_mut(token) {
            record.revoked = true;
        }
    }
    drop(state);
    shared.count(|s| {
        s.revocations.push(RevocationRecord {
            token: token.to_owned(),
            token_type_hint: params.get("token_type_hint").map(str::to_owned),
            client_authenticated: auth.is_ok(),
            was_active,
        })
    });

    match auth {
        // Unknown and already invalid tokens get 200 as well (RFC 7009 §2.2).
        Ok(_) => (StatusCode::OK, [(CACHE_CONTROL, "no-store")]).into_response(),
        Err(error) => error.into_response(),
    }
}
