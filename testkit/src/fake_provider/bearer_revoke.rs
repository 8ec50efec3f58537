//! `POST /bearer-revoke`: revocation by the token that authenticates the
//! call, as Dropbox's `/2/auth/token/revoke` does it: the access token in
//! `Authorization: Bearer`, no arguments, no client authentication.
//!
//! Dropbox documents the route as: "Disables the access token used to
//! authenticate the call. If there is a corresponding refresh token for the
//! access token, this disables that refresh token, as well as any other
//! access tokens for that refresh token"
//! (`tokenRevoke`, <https://dropbox.github.io/dropbox-sdk-java/api-docs/v8.0.1/com/dropbox/core/v2/auth/DbxUserAuthRequests.html>).
//! So the fake ends the token's grant (its refresh-token family), not the
//! user's other grants. (Slack's `auth.revoke` takes the same request but
//! revokes only that token: `slack_revoke` plays it.)
//!
//! Answers: 200 with `null` (Dropbox's void result) when revoked; 401 with
//! Dropbox's `invalid_access_token` error when there is no bearer token or it
//! is not a live access token (a refresh token cannot authenticate a call);
//! 400 (text, as Dropbox answers a bad argument) for a body other than empty
//! or `null`. Every request past fault injection is recorded for the test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode, Uri};

use super::bearer::{injected_fault, BearerRequest};
use super::faults::Endpoint;
use super::state::Shared;
use super::stats::BearerRevocationRecord;

/// The bearer-revocation endpoint.
pub(super) async fn bearer_revoke(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.count(|s| s.bearer_revoke_endpoint_requests += 1);
    if let Some(fault) = injected_fault(&shared, Endpoint::BearerRevoke).await {
        return fault;
    }

    let BearerRequest {
        token: bearer_token,
        client_credentials_sent,
    } = BearerRequest::read(&uri, &headers, &body);
    let trimmed = body.trim_ascii();
    let body_empty = trimmed.is_empty() || trimmed == b"null";

    let mut state = shared.lock_state();
    let was_active = bearer_token
        .as_deref()
        .is_some_and(|token| state.access_token_live(token));
    let mut ended_grant = false;
    if was_active && body_empty {
        let grant_id = bearer_token
            .as_deref()
            .and_then(|token| state.access_tokens.get(token))
            .map(|record| record.grant_id);
        if let Some(grant_id) = grant_id {
            ended_grant = state.deactivate_grant(grant_id);
        }
    }
    drop(state);
    shared.count(|s| {
        s.bearer_revocations.push(BearerRevocationRecord {
            bearer_token: bearer_token.clone(),
            client_credentials_sent,
            body_empty,
            was_active,
            ended_grant,
        })
    });

    if !was_active {
        let error = serde_json::json!({
            "error_summary": "invalid_access_token/",
            "error": { ".tag": "invalid_access_token" },
        });
        (StatusCode::UNAUTHORIZED, Json(error)).into_response()
    } else if !body_empty {
        (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Error in call to API function \"auth/token/revoke\": request body: expected null, the route takes no arguments",
        )
            .into_response()
    } else {
        (StatusCode::OK, Json(serde_json::Value::Null)).into_response()
    }
}
