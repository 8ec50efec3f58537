//! The RFC 7009 revocation endpoints. Both take the same request (`token`,
//! `token_type_hint`, client authentication) and end a refresh token's grant;
//! they differ in what revoking an access token ends:
//!
//! - `POST /revoke`: only that access token (RFC 7009 §2.1 lets a server
//!   stop there);
//! - `POST /revoke-grant`: the grant it belongs to, its refresh token and
//!   every other access token of it (RFC 7009 §2.1: the server "MAY revoke
//!   the respective refresh token as well"). This is what a catalog entry
//!   with `revocation_method = "rfc7009_access_token"` relies on (Notion
//!   revokes with the access token, <https://developers.notion.com/reference/revoke-token>;
//!   its reference does not say whether the refresh token goes with it).
//!
//! Every request past fault injection is recorded for the test.

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

/// What revoking a live access token ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AccessTokenRevocation {
    /// Only that token.
    Token,
    /// The grant it belongs to.
    Grant,
}

/// `POST /revoke`: revoking an access token ends only that token.
pub(super) async fn revoke(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    rfc7009(&shared, &headers, &body, "/revoke", AccessTokenRevocation::Token).await
}

/// `POST /revoke-grant`: revoking an access token ends its grant.
pub(super) async fn revoke_grant(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    rfc7009(&shared, &headers, &body, "/revoke-grant", AccessTokenRevocation::Grant).await
}

async fn rfc7009(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    path: &'static str,
    access: AccessTokenRevocation,
) -> Response {
    shared.count(|s| s.revoke_endpoint_requests += 1);
    for fault in shared.faults.take(Endpoint::Revoke) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::ReduceScopes(_) => {}
            other => return fault_response(&other),
        }
    }

    if let Err(error) = check_form(headers) {
        return error.into_response();
    }
    let params = Params::parse(body);
    if let Some(description) = params.repeated_error() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
    }
    let Some(token) = params.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let auth = authenticate_client(&shared.config, headers, &params);

    let mut state = shared.lock_state();
    let is_live_refresh = state.refresh_grant(token).is_some();
    let is_live_access = state.access_token_live(token);
    let was_active = is_live_refresh || is_live_access;
    let mut ended_grant = false;
    if auth.is_ok() {
        if let Some(record) = state.refresh_tokens.get(token) {
            // RFC 7009 §2.1: revoking a refresh token ends the grant and its access tokens.
            let grant_id = record.grant_id;
            ended_grant = state.deactivate_grant(grant_id);
        } else if let Some(record) = state.access_tokens.get_mut(token) {
            let grant_id = record.grant_id;
            record.revoked = true;
            if access == AccessTokenRevocation::Grant && is_live_access {
                ended_grant = state.deactivate_grant(grant_id);
            }
        }
    }
    drop(state);
    shared.count(|s| {
        s.revocations.push(RevocationRecord {
            path,
            token: token.to_owned(),
            token_type_hint: params.get("token_type_hint").map(str::to_owned),
            client_authenticated: auth.is_ok(),
            was_active,
            ended_grant,
        })
    });

    match auth {
        // Unknown and already invalid tokens get 200 as well (RFC 7009 §2.2).
        Ok(_) => (StatusCode::OK, [(CACHE_CONTROL, "no-store")]).into_response(),
        Err(error) => error.into_response(),
    }
}
