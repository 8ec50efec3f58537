//! Per-request telemetry for gRPC: a request id (taken from `x-request-id`
//! or generated), a tracing span that skips every argument, and RPC metrics.

use super::Metrics;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// Header carrying the request id both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of one request, for logs and audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Accepts a caller-supplied id only if it is short, printable ASCII.
fn sanitize(value: &http::HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic())).then(|| text.to_owned())
}

/// A static name for a gRPC path (metric labels stay a closed set).
pub fn method_name(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "Check" => "Check",
        "Watch" => "Watch",
        "ServerReflectionInfo" => "ServerReflectionInfo",
        "StartConsent" => "StartConsent",
        "CompleteConsent" => "CompleteConsent",
        "ConfirmConsent" => "ConfirmConsent",
        "GetConsent" => "GetConsent",
        "GetAccessToken" => "GetAccessToken",
        "ListConnections" => "ListConnections",
        "GetConnection" => "GetConnection",
        "Disconnect" => "Disconnect",
        "ExportUserData" => "ExportUserData",
        "RevokeConnection" => "RevokeConnection",
        "RevokeUser" => "RevokeUser",
        "DeleteUser" => "DeleteUser",
        "RestoreUser" => "RestoreUser",
        "ListAuditEvents" => "ListAuditEvents",
        "RotateKeys" => "RotateKeys",
        _ => "other",
    }
}

fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "other",
    }
}

/// Tower layer adding request ids, spans and metrics.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    metrics: Metrics,
}

impl TelemetryLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`TelemetryLayer`] produces.
#[derive(Debug, Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for TelemetryService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(sanitize)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let method = method_name(request.uri().path());
        let span = tracing::info_span!("grpc", method, request_id = %id);
        let header = http::HeaderValue::from_str(&id).ok();
        request.extensions_mut().insert(RequestId(id));
        TelemetryFuture {
            inner: self.inner.call(request).instrument(span),
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            header,
        }
    }
}

pin_project! {
    /// Future of [`TelemetryService`].
    pub struct TelemetryFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        metrics: Metrics,
        method: &'static str,
        started: Instant,
        header: Option<http::HeaderValue>,
    }
}

impl<F, ResBody, E> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = match this.inner.poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let code = match &result {
            // Unary errors come back trailers-only, with grpc-status in the headers.
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .map_or("OK", |v| code_name(v.as_bytes())),
            Err(_) => "transport_error",
        };
        this.metrics
            .rpc(this.method, code, this.started.elapsed().as_secs_f64());
        if let (Ok(response), Some(header)) = (&mut result, this.header.take()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, header);
        }
        Poll::Ready(result)
    }
}
