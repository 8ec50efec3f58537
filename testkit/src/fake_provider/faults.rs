//! Fault injection: what the test asks an endpoint to do instead of (or
//! before) answering normally, and the answers of the terminating faults.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

use super::state::lock;

/// An endpoint of the fake, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /token`.
    Token,
    /// The RFC 7009 endpoints: `POST /revoke` and `POST /revoke-grant`.
    Revoke,
    /// `GET /authorize`.
    Authorize,
    /// `DELETE /applications/{client_id}/grant` (GitHub-style grant deletion).
    GrantDeletion,
    /// `POST /bearer-revoke` (Dropbox-style revocation by the bearer token).
    BearerRevoke,
    /// `POST /slack-revoke` (Slack-style revocation of exactly the bearer token).
    SlackRevoke,
}

/// A fault the fake injects into a request, before normal processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a small `text/plain` body (an invalid
    /// status code is answered as 500).
    Status(u16),
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Process the request normally (a refresh's rotation is committed), then
    /// sleep this long before answering: the window in which the provider has
    /// acted and its answer is still in flight. Token endpoint only.
    DelayAnswer(Duration),
    /// Answer 400 `{"error":"invalid_grant"}`.
    InvalidGrant,
    /// Answer 200 with the body `{not json`.
    GarbageJson,
    /// Answer 200 with a body of exactly this many bytes (with a
    /// `Content-Length`, streamed).
    HugeBody(usize),
    /// The token response (and the grant behind it) carries exactly these
    /// scopes. On `Authorize`, the issued code grants exactly these scopes.
    /// Ignored on `Revoke`.
    ReduceScopes(Vec<String>),
    /// The token response carries no refresh token: a code exchange issues
    /// none (what a provider does on an incremental grant that keeps the
    /// refresh token issued before), a refresh does not rotate. Token endpoint only.
    OmitRefreshToken,
}

#[derive(Debug, Default)]
struct FaultsInner {
    queued: HashMap<Endpoint, VecDeque<Fault>>,
    persistent: HashMap<Endpoint, Fault>,
}

/// Fault injection per endpoint; thread-safe, shared by every request.
#[derive(Debug, Default)]
pub struct Faults {
    inner: Mutex<FaultsInner>,
}

impl Faults {
    /// Queues a one-shot fault: FIFO, consumed by the next request to `endpoint`.
    pub fn push(&self, endpoint: Endpoint, fault: Fault) {
        lock(&self.inner).queued.entry(endpoint).or_default().push_back(fault);
    }

    /// Sets (or with `None` clears) a fault applied to every request to
    /// `endpoint`, after any one-shot fault of that request.
    pub fn set_persistent(&self, endpoint: Endpoint, fault: Option<Fault>) {
        let mut inner = lock(&self.inner);
        match fault {
            Some(fault) => inner.persistent.insert(endpoint, fault),
            None => inner.persistent.remove(&endpoint),
        };
    }

    /// Removes every queued and persistent fault.
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.queued.clear();
        inner.persistent.clear();
    }

    /// Number of one-shot faults still queued for `endpoint`.
    pub fn pending(&self, endpoint: Endpoint) -> usize {
        lock(&self.inner).queued.get(&endpoint).map_or(0, VecDeque::len)
    }

    /// The faults for one request: the next one-shot fault, then the persistent one.
    pub(super) fn take(&self, endpoint: Endpoint) -> Vec<Fault> {
        let mut inner = lock(&self.inner);
        let mut faults = Vec::new();
        if let Some(fault) = inner.queued.get_mut(&endpoint).and_then(VecDeque::pop_front) {
            faults.push(fault);
        }
        if let Some(fault) = inner.persistent.get(&endpoint) {
            faults.push(fault.clone());
        }
        faults
    }
}

/// The answer of a terminating fault.
pub(super) fn fault_response(fault: &Fault) -> Response {
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("injected fault");
            (
                status,
                [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("upstream trouble: {} {reason}", status.as_u16()),
            )
                .into_response()
        }
        Fault::InvalidGrant => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "invalid_grant" })),
        )
            .into_response(),
        Fault::GarbageJson => (StatusCode::OK, [(CONTENT_TYPE, "application/json")], "{not json").into_response(),
        Fault::HugeBody(size) => huge_body(*size),
        // Not terminating; callers handle them, but answer sanely anyway.
        Fault::Delay(_) | Fault::DelayAnswer(_) | Fault::ReduceScopes(_) | Fault::OmitRefreshToken => {
            StatusCode::OK.into_response()
        }
    }
}

/// A 200 response of exactly `size` bytes, streamed in chunks.
fn huge_body(size: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK);
        Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; len]))
    });
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CONTENT_LENGTH, HeaderValue::from(size)),
        ],
        Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}
