//! `POST /token`: the authorization code exchange (RFC 6749 §4.1.3, with
//! the PKCE check of RFC 7636 §4.6) and the refresh grant (§6), with
//! rotation, reuse detection and scope narrowing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::time::Duration;

use super::client_auth::{authenticate_client, check_form};
use super::faults::{fault_response, Endpoint, Fault};
use super::identity;
use super::params::{dedup, split_scopes, Params};
use super::responses::{no_store, oauth_error};
use super::state::Shared;

/// The token endpoint (`POST /token`).
pub(super) async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(shared, headers, body, Path::Token).await
}

/// The refresh endpoint of a provider that refreshes elsewhere than at its
/// token endpoint (`POST /refresh`, Figma-style), when
/// `separate_refresh_endpoint` is on.
pub(super) async fn refresh_endpoint(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(shared, headers, body, Path::Refresh).await
}

/// Which of the two endpoints a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Token,
    Refresh,
}

async fn answer(shared: Arc<Shared>, headers: HeaderMap, body: Bytes, path: Path) -> Response {
    let params = Params::parse(&body);
    shared.count(|s| {
        match path {
            Path::Token => s.token_endpoint_requests += 1,
            Path::Refresh => s.refresh_endpoint_requests += 1,
        }
        match params.get("grant_type") {
            Some("authorization_code") => s.code_exchanges += 1,
            Some("refresh_token") => s.refreshes += 1,
            _ => {}
        }
    });
    let mut reduce_scopes = None;
    let mut answer_after = None;
    let mut refresh_token = true;
    for fault in shared.faults.take(Endpoint::Token) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::DelayAnswer(delay) => answer_after = Some(delay),
            Fault::ReduceScopes(scopes) => reduce_scopes = Some(dedup(scopes)),
            Fault::OmitRefreshToken => refresh_token = false,
            other => return fault_response(&other),
        }
    }

    if let Err(error) = check_form(&headers) {
        return error.into_response();
    }
    if let Some(description) = params.repeated_error() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
    }
    let client_id = match authenticate_client(&shared.config, &headers, &params) {
        Ok(client_id) => client_id,
        Err(error) => return error.into_response(),
    };
    // With a separate refresh endpoint, each endpoint takes its one grant.
    let separate = shared.config.separate_refresh_endpoint;
    let wrong_endpoint = match (path, params.get("grant_type")) {
        (Path::Refresh, _) if !separate => Some("this provider refreshes at its token endpoint"),
        (Path::Token, Some("refresh_token")) if separate => Some("refresh at the refresh endpoint"),
        (Path::Refresh, Some(grant)) if grant != "refresh_token" => Some("the refresh endpoint only refreshes"),
        _ => None,
    };
    if let Some(description) = wrong_endpoint {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", description);
    }
    let answer = match params.get("grant_type") {
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing"),
        Some("authorization_code") => exchange_code(&shared, &client_id, &params, reduce_scopes, refresh_token),
        Some("refresh_token") => refresh(&shared, &client_id, &params, reduce_scopes, refresh_token),
        Some(_) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported",
        ),
    };
    if let Some(delay) = answer_after {
        // The work is done (a rotation committed); only the answer waits.
        tokio::time::sleep(delay).await;
    }
    answer
}

/// The code exchange; `issue_refresh_token` false: the answer carries none.
fn exchange_code(
    shared: &Shared,
    client_id: &str,
    params: &Params,
    reduce_scopes: Option<Vec<String>>,
    issue_refresh_token: bool,
) -> Response {
    let config = &shared.config;
    let (Some(code), Some(redirect_uri), Some(verifier)) = (
        params.get("code"),
        params.get("redirect_uri"),
        params.get("code_verifier"),
    ) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code, redirect_uri and code_verifier are required",
        );
    };
    let invalid_grant = |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);

    let mut state = shared.lock_state();
    let Some(record) = state.codes.get_mut(code) else {
        return invalid_grant("unknown authorization code");
    };
    if record.client_id != client_id {
        return invalid_grant("authorization code was issued to another client");
    }
    if record.used {
        // RFC 6749 §4.1.2: revoke the tokens already issued from a replayed code.
        let replayed_grant = record.grant_id;
        if let Some(grant_id) = replayed_grant {
            state.deactivate_grant(grant_id);
        }
        return invalid_grant("authorization code was already used");
    }
    // Any attempt burns the code, so that a verifier cannot be guessed.
    record.used = true;
    if record.expires_at <= Utc::now() {
        return invalid_grant("authorization code expired");
    }
    if record.redirect_uri != redirect_uri {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    if !pkce_matches(verifier, &record.code_challenge) {
        return invalid_grant("code_verifier does not match code_challenge");
    }
    let subject = record.subject.clone();
    let scopes = reduce_scopes.unwrap_or_else(|| record.scopes.clone());

    let grant_id = state.new_grant(client_id, &subject, scopes.clone());
    if let Some(record) = state.codes.get_mut(code) {
        record.grant_id = Some(grant_id);
    }
    // A GitHub OAuth app's shape: one access token that lives until revoked, no refresh token.
    let (ttl, expires_in, refresh_token) = if config.non_expiring_access_tokens {
        (Duration::MAX, None, None)
    } else {
        let refresh_token = issue_refresh_token.then(|| state.issue_refresh_token(grant_id));
        (
            config.access_token_ttl,
            Some(config.access_token_ttl.as_secs()),
            refresh_token,
        )
    };
    let access_token = state.issue_access_token(grant_id, scopes.clone(), ttl);
    drop(state);

    token_response(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token,
        id_token: scopes
            .iter()
            .any(|s| s == "openid")
            .then(|| identity::id_token(shared, &subject))
            .flatten(),
        user: Some(identity::user_member(&subject)),
        scope: scopes.join(&config.scope_separator),
    })
}

/// The refresh grant; `may_rotate` false: the refresh token is not rotated.
fn refresh(
    shared: &Shared,
    client_id: &str,
    params: &Params,
    reduce_scopes: Option<Vec<String>>,
    may_rotate: bool,
) -> Response {
    let config = &shared.config;
    let Some(refresh_token) = params.get("refresh_token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required");
    };
    let invalid_grant = |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);

    let mut state = shared.lock_state();
    let Some(grant_id) = state.refresh_grant(refresh_token) else {
        if state.refresh_tokens.contains_key(refresh_token) {
            shared.count(|s| s.retired_refresh_tokens_presented += 1);
        }
        if config.revoke_grant_on_refresh_token_reuse {
            if let Some(grant_id) = state.refresh_tokens.get(refresh_token).map(|r| r.grant_id) {
                state.deactivate_grant(grant_id);
            }
        }
        return invalid_grant("refresh token is invalid, expired or revoked");
    };
    let Some(grant) = state.grants.get_mut(&grant_id) else {
        return invalid_grant("refresh token is invalid, expired or revoked");
    };
    if grant.client_id != client_id {
        return invalid_grant("refresh token was issued to another client");
    }
    let requested = params
        .get("scope")
        .map(|scope| split_scopes(scope, &config.scope_separator));
    let mut scopes = match requested {
        Some(requested) => {
            if let Some(extra) = requested.iter().find(|s| !grant.scopes.contains(s)) {
                let description = format!("scope {extra} exceeds the original grant");
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", &description);
            }
            requested
        }
        None => grant.scopes.clone(),
    };
    if let Some(reduced) = reduce_scopes {
        grant.scopes = reduced.clone();
        scopes = reduced;
    }

    let new_refresh_token = if config.rotate_refresh_tokens && may_rotate {
        if let Some(old) = state.refresh_tokens.get_mut(refresh_token) {
            old.active = false;
        }
        Some(state.issue_refresh_token(grant_id))
    } else {
        None
    };
    let access_token = state.issue_access_token(grant_id, scopes.clone(), config.access_token_ttl);
    drop(state);
    shared.count(|s| s.successful_refreshes += 1);

    token_response(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: Some(config.access_token_ttl.as_secs()),
        refresh_token: new_refresh_token,
        id_token: None,
        user: None,
        scope: scopes.join(&config.scope_separator),
    })
}

/// RFC 7636 §4.1 and §4.6: the verifier is 43–128 unreserved characters and
/// BASE64URL-NOPAD(SHA256(verifier)) equals the challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// OpenID Connect: for a code exchange that granted `openid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    /// The account, as Slack- or Notion-style token responses carry it (code exchanges only).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<serde_json::Value>,
    scope: String,
}

fn token_response(body: TokenResponse) -> Response {
    no_store(Json(body).into_response())
}
