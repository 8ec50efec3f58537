//! Who the fake's users are, as a provider tells it: an OpenID Connect ID
//! token in the code exchange's answer (when `openid` was granted), a
//! `user` member in that answer (the token-response style of Slack or
//! Notion), and a userinfo endpoint answering for an access token (the
//! endpoint style of GitHub's `/user` or Microsoft Graph's `/me`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};

use super::state::Shared;

/// How long the fake's ID tokens are valid.
const ID_TOKEN_SECONDS: i64 = 600;

/// The name the fake shows for `subject`: an email address.
pub fn display_of(subject: &str) -> String {
    format!("{subject}@accounts.fake.test")
}

/// The `user` member of a code exchange's answer.
pub(super) fn user_member(subject: &str) -> serde_json::Value {
    serde_json::json!({ "id": subject, "email": display_of(subject) })
}

/// An ID token for `subject`, issued by the fake to its client, signed with
/// the client secret (HS256, as OpenID Connect allows for confidential
/// clients); `None` if signing failed.
pub(super) fn id_token(shared: &Shared, subject: &str) -> Option<String> {
    let now = Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": shared.base_url.as_str().trim_end_matches('/'),
        "sub": subject,
        "aud": shared.config.client_id,
        "iat": now,
        "exp": now + ID_TOKEN_SECONDS,
        "email": display_of(subject),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(shared.config.client_secret.as_bytes()),
    )
    .ok()
}

/// `GET /userinfo` with `Authorization: Bearer <access token>`: the token's
/// user (`sub`, `email`, `login`), or `401` for a token that is not live.
pub(super) async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.count(|s| s.userinfo_requests += 1);
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let subject = token.and_then(|token| shared.lock_state().subject_of_access_token(token));
    match subject {
        Some(subject) => Json(serde_json::json!({
            "sub": subject,
            "email": display_of(&subject),
            "login": subject,
        }))
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}
