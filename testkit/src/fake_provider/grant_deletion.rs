//! `DELETE /applications/{client_id}/grant`: GitHub-style deletion of an
//! app's authorization for a user ("Delete an app authorization",
//! <https://docs.github.com/en/rest/apps/oauth-applications#delete-an-app-authorization>).
//!
//! The client authenticates with HTTP Basic (its id and secret) and names the
//! user with one of their access tokens in a JSON body `{"access_token": …}`.
//! Deleting ends every grant of that client for that user, so all of their
//! access and refresh tokens stop working. Answers: 204 when deleted; 422 for a
//! body without `access_token` (GitHub's "Validation failed"); 404 for an
//! unknown or dead token and for failed client authentication (GitHub answers
//! requests that are not properly authenticated with 404). Every request past
//! fault injection is recorded for the test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};

use super::client_auth::parse_basic;
use super::faults::{fault_response, Endpoint, Fault};
use super::state::Shared;
use super::stats::GrantDeletionRecord;

/// The grant-deletion endpoint.
pub(super) async fn delete_grant(
    State(shared): State<Arc<Shared>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.count(|s| s.grant_endpoint_requests += 1);
    for fault in shared.faults.take(Endpoint::GrantDeletion) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::DelayAnswer(_) | Fault::ReduceScopes(_) => {}
            other => return fault_response(&other),
        }
    }

    let config = &shared.config;
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
        })
        .and_then(parse_basic);
    let client_authenticated = client_id == config.client_id
        && basic.is_some_and(|(id, secret)| id == config.client_id && secret == config.client_secret);
    let json_body = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let access_token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("access_token").and_then(|t| t.as_str()).map(str::to_owned));

    let mut state = shared.lock_state();
    let was_active = access_token
        .as_deref()
        .is_some_and(|token| state.access_token_live(token));
    let mut grants_deleted = 0;
    if client_authenticated && json_body && was_active {
        let owner = access_token
            .as_deref()
            .and_then(|token| state.access_tokens.get(token))
            .and_then(|record| state.grants.get(&record.grant_id))
            .map(|grant| (grant.client_id.clone(), grant.subject.clone()));
        if let Some((client, subject)) = owner {
            for grant in state.grants.values_mut() {
                if grant.active && grant.client_id == client && grant.subject == subject {
                    grant.active = false;
                    grants_deleted += 1;
                }
            }
        }
    }
    drop(state);
    shared.count(|s| {
        s.grant_deletions.push(GrantDeletionRecord {
            client_id: client_id.clone(),
            access_token: access_token.clone(),
            client_authenticated,
            json_body,
            accept: headers.get(ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_owned),
            was_active,
            grants_deleted,
        })
    });

    let message =
        |status: StatusCode, text: &str| (status, Json(serde_json::json!({ "message": text }))).into_response();
    if access_token.is_none() || !json_body {
        message(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed")
    } else if !client_authenticated || !was_active {
        message(StatusCode::NOT_FOUND, "Not Found")
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}
