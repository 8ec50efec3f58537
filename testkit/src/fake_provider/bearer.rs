//! What the bearer-authenticated revocation endpoints (Dropbox-style and
//! Slack-style) read from a request: the faults queued for them, the bearer
//! token, and whether any client credentials came along.

use super::faults::{fault_response, Endpoint, Fault};
use super::params::Params;
use super::state::Shared;
use axum::body::Bytes;
use axum::response::Response;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Uri};

/// Applies the faults queued for `endpoint`: a delay waits, an answer fault
/// is returned for the handler to send instead of its own.
pub(super) async fn injected_fault(shared: &Shared, endpoint: Endpoint) -> Option<Response> {
    for fault in shared.faults.take(endpoint) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::DelayAnswer(_) | Fault::ReduceScopes(_) => {}
            other => return Some(fault_response(&other)),
        }
    }
    None
}

/// The credentials a bearer request presented.
pub(super) struct BearerRequest {
    /// The `Authorization: Bearer` token, when there is a non-empty one.
    pub token: Option<String>,
    /// Whether client credentials were sent anyway (Basic, query, form or JSON body).
    pub client_credentials_sent: bool,
}

impl BearerRequest {
    /// Reads the request.
    pub(super) fn read(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            Some((scheme.to_owned(), rest.trim().to_owned()))
        });
        let token = authorization
            .as_ref()
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.clone())
            .filter(|token| !token.is_empty());
        let client_credentials_sent = authorization
            .as_ref()
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            || names_client(uri.query().unwrap_or_default().as_bytes())
            || names_client(body);
        Self {
            token,
            client_credentials_sent,
        }
    }
}

/// Whether a query string or body (form or JSON) carries `client_id` or `client_secret`.
fn names_client(input: &[u8]) -> bool {
    const KEYS: [&str; 2] = ["client_id", "client_secret"];
    let form = Params::parse(input);
    let json = serde_json::from_slice::<serde_json::Value>(input).ok();
    KEYS.iter()
        .any(|key| form.get(key).is_some() || json.as_ref().is_some_and(|v| v.get(key).is_some()))
}
