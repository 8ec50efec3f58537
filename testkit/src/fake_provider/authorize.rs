//! `GET /authorize`: the authorization code grant's first leg (RFC 6749
//! §4.1.1, PKCE `S256` only per RFC 7636), answered at once as the user would:
//! a redirect with a code, or with an error.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderValue, StatusCode};
use url::Url;

use super::config::CODE_PREFIX;
use super::faults::{fault_response, Endpoint, Fault};
use super::params::{dedup, split_scopes, Params};
use super::state::{random_token, CodeRecord, Shared};

/// Lifetime of an authorization code.
const CODE_TTL: TimeDelta = TimeDelta::minutes(10);

/// The authorization endpoint.
pub(super) async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    shared.count(|s| s.authorize_requests += 1);
    let mut granted_override = None;
    for fault in shared.faults.take(Endpoint::Authorize) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::ReduceScopes(scopes) => granted_override = Some(scopes),
            other => return fault_response(&other),
        }
    }

    let params = Params::parse(query.unwrap_or_default().as_bytes());
    let config = &shared.config;

    // Without a trustworthy client and redirect URI, never redirect (RFC 6749 §4.1.2.1).
    if params.repeated.iter().any(|k| k == "client_id" || k == "redirect_uri") {
        return error_page("client_id or redirect_uri is repeated");
    }
    match params.get("client_id") {
        None => return error_page("client_id is missing"),
        Some(id) if id != config.client_id => return error_page("unknown client_id"),
        Some(_) => {}
    }
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return error_page("redirect_uri is missing");
    };
    let Ok(redirect) = Url::parse(redirect_uri) else {
        return error_page("redirect_uri is not an absolute URL");
    };
    if !matches!(redirect.scheme(), "http" | "https") || redirect.fragment().is_some() {
        return error_page("redirect_uri must be an http(s) URL without a fragment");
    }
    let state = params.get("state");
    // RFC 9207: the issuer identifies itself in every authorization response.
    let issuer = shared.base_url.as_str().trim_end_matches('/').to_owned();
    let iss = config.send_iss.then_some(issuer.as_str());
    let deny = |error: &str, description: &str| {
        redirect_with(
            &redirect,
            &[("error", error), ("error_description", description)],
            state,
            iss,
        )
    };

    if let Some(description) = params.repeated_error() {
        return deny("invalid_request", &description);
    }
    match params.get("response_type") {
        None => return deny("invalid_request", "response_type is missing"),
        Some("code") => {}
        Some(_) => return deny("unsupported_response_type", "only response_type=code is supported"),
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return deny("invalid_request", "code_challenge is required (PKCE)");
    };
    if params.get("code_challenge_method") != Some("S256") {
        return deny(
            "invalid_request",
            "code_challenge_method must be S256 (plain is not supported)",
        );
    }
    if code_challenge.len() != 43 || !code_challenge.bytes().all(is_base64url_byte) {
        return deny(
            "invalid_request",
            "code_challenge must be BASE64URL(SHA256(verifier)) without padding",
        );
    }
    if !config.auto_approve {
        return deny("access_denied", "the user denied the request");
    }

    let requested = split_scopes(params.get("scope").unwrap_or(""), &config.scope_separator);
    let incremental = config
        .incremental_param
        .as_ref()
        .is_some_and(|(name, value)| params.get(name) == Some(value.as_str()));

    let code = random_token(CODE_PREFIX);
    {
        let mut inner = shared.lock_state();
        // `login_hint` signs in as that user (as a provider's account chooser would), else the set subject.
        let subject = params
            .get("login_hint")
            .map(str::to_owned)
            .unwrap_or_else(|| inner.subject.clone());
        let mut scopes: Vec<String> = match &inner.grant_only {
            Some(allowed) => requested.into_iter().filter(|s| allowed.contains(s)).collect(),
            None => requested,
        };
        if incremental {
            let mut all = inner.live_scopes(&config.client_id, &subject);
            all.extend(scopes);
            scopes = dedup(all);
        }
        if let Some(reduced) = granted_override {
            scopes = dedup(reduced);
        }
        inner.codes.insert(
            code.clone(),
            CodeRecord {
                client_id: config.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                code_challenge: code_challenge.to_owned(),
                subject,
                scopes,
                expires_at: Utc::now() + CODE_TTL,
                used: false,
                grant_id: None,
            },
        );
    }
    redirect_with(&redirect, &[("code", &code)], state, iss)
}

fn is_base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A 302 to `redirect` with `params` (and `state` and `iss`, if any) appended to its query.
fn redirect_with(redirect: &Url, params: &[(&str, &str)], state: Option<&str>, iss: Option<&str>) -> Response {
    let mut location = redirect.clone();
    {
        let mut query = location.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        if let Some(iss) = iss {
            query.append_pair("iss", iss);
        }
    }
    match HeaderValue::from_str(location.as_str()) {
        Ok(value) => (StatusCode::FOUND, [(LOCATION, value)]).into_response(),
        Err(_) => error_page("redirect_uri cannot be used in a Location header"),
    }
}

/// The page shown instead of a redirect when the redirect URI cannot be trusted.
fn error_page(message: &'static str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><title>Authorization error</title>\
             <h1>Authorization error</h1><p>{message}</p>"
        ),
    )
        .into_response()
}
