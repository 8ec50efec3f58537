//! The HTTP routes: the consent start handle, the OAuth callbacks (one per
//! provider), liveness and readiness, and metrics.
//! [`crate::transport`] serves them on the HTTP listener.

use crate::app::App;
use crate::consent::binding::BindingCookie;
use crate::consent::{CallbackParams, Completer, ConsentError, Outcome};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

/// The HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/oauth/start/{handle}", get(start))
        .route("/oauth/callback/{provider}", get(callback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

/// Prometheus text exposition.
async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.encode(),
    )
}

const MAX_QUERY: usize = 8192;

/// Parses the callback query leniently (invalid UTF-8 is replaced, not fatal)
/// and takes the first value of each parameter.
pub fn callback_params(query: Option<&str>) -> Result<CallbackParams, &'static str> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_QUERY {
        return Err("the callback query is too long");
    }
    let mut state = None;
    let mut iss = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "state" => &mut state,
            "iss" => &mut iss,
            "code" => &mut code,
            "error" => &mut error,
            "error_description" => &mut description,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value.into_owned());
        }
    }
    let state = state.filter(|s| !s.is_empty()).ok_or("the callback has no state")?;
    Ok(CallbackParams {
        state,
        iss: iss.filter(|i| !i.is_empty()),
        code: code.filter(|c| !c.is_empty()).map(SecretString::from),
        error: error.filter(|e| !e.is_empty()),
        error_description: description,
    })
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body><h1>{0}</h1><p>{1}</p></body></html>",
        escape(title),
        escape(message)
    );
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        ],
        Html(body),
    )
        .into_response()
}

/// `GET /oauth/start/{handle}`: binds the consent to this browser (a
/// short-lived cookie sent only to the callback) and `303`s to the provider.
async fn start(State(app): State<Arc<App>>, Path(handle): Path<String>) -> Response {
    match app.consent.begin(&handle).await {
        Ok(bound) => {
            let cookie = bound.cookie.header_value();
            let Ok(cookie) = HeaderValue::from_str(cookie.expose_secret()) else {
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Consent could not start",
                    "Please try again.",
                );
            };
            let mut response = redirect(bound.provider_url.as_str());
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(error) => error_page("Consent could not start", &error),
    }
}

/// A `303` to `location` that no cache keeps and that sends no referrer.
fn redirect(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location.to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response()
}

/// The page for a consent step that was refused.
fn error_page(title: &str, error: &ConsentError) -> Response {
    let status = match error {
        ConsentError::Invalid(_)
        | ConsentError::UnknownState
        | ConsentError::ProviderMismatch { .. }
        | ConsentError::IssuerMismatch { .. }
        | ConsentError::IssuerMissing(_) => StatusCode::BAD_REQUEST,
        ConsentError::NotBound => StatusCode::FORBIDDEN,
        ConsentError::Expired | ConsentError::AlreadyUsed | ConsentError::StartUnusable => StatusCode::GONE,
        ConsentError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(%error, "consent step failed");
    } else {
        tracing::info!(%error, "consent step refused");
    }
    let message = if status.is_server_error() {
        "Something went wrong; please try again.".to_owned()
    } else {
        error.to_string()
    };
    page(status, title, &message)
}

/// `GET /oauth/callback/{provider}?code&state[&iss]` (or `error`): checks
/// that this browser started the consent, completes it, clears the binding
/// cookie, then `303`s to the platform's `return_url` (with a completion
/// code to confirm, unless the tenant does without), or shows a small page
/// when there is none.
async fn callback(
    State(app): State<Arc<App>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match callback_params(query.as_deref()) {
        Ok(params) => params,
        Err(reason) => return page(StatusCode::BAD_REQUEST, "Consent could not be completed", reason),
    };
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_owned)
        .collect();
    let completer = Completer::Browser {
        provider: &provider,
        cookies: &cookies,
    };
    let completion = match app.consent.complete("oauth-callback", params, completer, None).await {
        Ok(completion) => completion,
        Err(error) => return error_page("Consent could not be completed", &error),
    };
    let mut response = match &completion.redirect_url {
        Some(url) => redirect(url.as_str()),
        None => match completion.outcome {
            Outcome::Connected => page(StatusCode::OK, "Connected", "You can close this window."),
            Outcome::Approved => page(
                StatusCode::OK,
                "Approved",
                "Return to the application to finish connecting. You can close this window.",
            ),
            Outcome::Denied => page(
                StatusCode::OK,
                "Not connected",
                "Access was not granted. You can close this window.",
            ),
            Outcome::Failed => page(
                StatusCode::BAD_GATEWAY,
                "Connection failed",
                completion
                    .error
                    .as_deref()
                    .unwrap_or("The provider did not complete the connection."),
            ),
        },
    };
    if let Some(base) = app.oauth_base.get() {
        let removal = BindingCookie::removal(completion.consent_id, base);
        if let Ok(removal) = HeaderValue::from_str(&removal) {
            response.headers_mut().insert(header::SET_COOKIE, removal);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_query_is_parsed_leniently() {
        let params = callback_params(Some("state=abc&code=xyz&code=second&x=1")).unwrap();
        assert_eq!(params.state, "abc");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(params.code.as_ref().unwrap()),
            "xyz"
        );
        let params = callback_params(Some("state=s&error=access_denied&error_description=no%FF")).unwrap();
        assert_eq!(params.error.as_deref(), Some("access_denied"));
        assert!(params.error_description.unwrap().starts_with("no"));
        assert!(callback_params(Some("code=x")).is_err());
        assert!(callback_params(None).is_err());
        assert!(callback_params(Some(&"a".repeat(MAX_QUERY + 1))).is_err());
    }
}
