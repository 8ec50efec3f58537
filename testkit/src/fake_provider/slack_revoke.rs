//! `POST /slack-revoke`: revocation of exactly the token that authenticates
//! the call, as Slack's `auth.revoke` does it for an app with token rotation:
//! the token in `Authorization: Bearer`, no arguments, no client
//! authentication.
//!
//! Slack documents that with token rotation `auth.revoke` revokes "a refresh
//! token, a bot access token that expires, or a user access token that
//! expires", only the one given, "without changing the underlying
//! installation" (<https://docs.slack.dev/authentication/using-token-rotation>,
//! <https://docs.slack.dev/reference/methods/auth.revoke>). So the fake
//! accepts a refresh or an access token and ends that token alone: not its
//! grant, not the grant's other tokens.
//!
//! Answers, always HTTP 200 as Slack's Web API does: `{"ok": true, "revoked":
//! true}` when revoked; `{"ok": false, "error": …}` with `not_authed` (no
//! bearer token), `token_revoked` (a token the fake issued that no longer
//! works: revoked, rotated away or of an ended grant), `token_expired` (an
//! expired access token), `invalid_auth` (a token it never issued) or
//! `invalid_arguments` (a body: the call takes none). Every request past
//! fault injection is recorded for the test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use http::{HeaderMap, Uri};

use super::bearer::{injected_fault, BearerRequest};
use super::faults::Endpoint;
use super::state::{Inner, Shared};
use super::stats::{SlackRevocationRecord, SlackTokenKind};

/// The Slack-style revocation endpoint.
pub(super) async fn slack_revoke(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.count(|s| s.slack_revoke_endpoint_requests += 1);
    if let Some(fault) = injected_fault(&shared, Endpoint::SlackRevoke).await {
        return fault;
    }

    let BearerRequest {
        token: bearer_token,
        client_credentials_sent,
    } = BearerRequest::read(&uri, &headers, &body);
    let body_empty = body.trim_ascii().is_empty();

    let mut state = shared.lock_state();
    let kind = bearer_token
        .as_deref()
        .map_or(SlackTokenKind::None, |t| kind_of(&state, t));
    let was_active = matches!(kind, SlackTokenKind::Refresh | SlackTokenKind::Access);
    let error = match (&bearer_token, kind) {
        (None, _) => Some("not_authed"),
        _ if !body_empty => Some("invalid_arguments"),
        (Some(token), SlackTokenKind::Refresh) => {
            if let Some(record) = state.refresh_tokens.get_mut(token) {
                record.active = false;
            }
            None
        }
        (Some(token), SlackTokenKind::Access) => {
            if let Some(record) = state.access_tokens.get_mut(token) {
                record.revoked = true;
            }
            None
        }
        (Some(_), SlackTokenKind::Expired) => Some("token_expired"),
        (Some(_), SlackTokenKind::Dead) => Some("token_revoked"),
        (Some(_), SlackTokenKind::Unknown | SlackTokenKind::None) => Some("invalid_auth"),
    };
    drop(state);
    shared.count(|s| {
        s.slack_revocations.push(SlackRevocationRecord {
            bearer_token: bearer_token.clone(),
            kind,
            client_credentials_sent,
            body_empty,
            was_active,
            revoked: error.is_none(),
        })
    });

    match error {
        None => Json(serde_json::json!({ "ok": true, "revoked": true })).into_response(),
        Some(error) => Json(serde_json::json!({ "ok": false, "error": error })).into_response(),
    }
}

/// What the fake knows of a presented token.
fn kind_of(state: &Inner, token: &str) -> SlackTokenKind {
    if state.refresh_grant(token).is_some() {
        SlackTokenKind::Refresh
    } else if state.access_token_live(token) {
        SlackTokenKind::Access
    } else if state.refresh_tokens.contains_key(token) {
        SlackTokenKind::Dead
    } else if let Some(record) = state.access_tokens.get(token) {
        let grant_live = state.grants.get(&record.grant_id).is_some_and(|g| g.active);
        if !record.revoked && grant_live && record.expires_at <= Utc::now() {
            SlackTokenKind::Expired
        } else {
            SlackTokenKind::Dead
        }
    } else {
        SlackTokenKind::Unknown
    }
}
