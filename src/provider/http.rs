//! The HTTP client for provider endpoints: bounded time, bounded body,
//! no redirects, and a few normalisations so that providers which bend
//! RFC 6749 (errors with status 200, Slack's nested user token) read like
//! ones that do not.

use std::time::Duration;

/// Why an upstream HTTP exchange failed before a usable answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer in time.
    #[error("provider did not answer within the timeout")]
    Timeout,
    /// The connection failed.
    #[error("cannot reach the provider")]
    Connect,
    /// 5xx or 429: the provider is struggling; worth retrying.
    #[error("provider answered HTTP {0}")]
    Status(u16),
    /// 429 or 503 with `Retry-After` (RFC 9110 §10.2.3): not before then.
    #[error("provider answered HTTP {status} and asked to wait {} s", .retry_after.as_secs())]
    Busy {
        /// The status code.
        status: u16,
        /// How long the provider asked us to wait (capped at [`MAX_RETRY_AFTER`]).
        retry_after: Duration,
    },
    /// The body was larger than allowed.
    #[error("provider response exceeded {0} bytes")]
    TooLarge(usize),
    /// Anything else on the wire.
    #[error("HTTP exchange with the provider failed")]
    Other,
}

impl HttpError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Timeout | HttpError::Connect | HttpError::Status(_) | HttpError::Busy { .. } | HttpError::Other
        )
    }
}

/// The longest `Retry-After` honoured; a longer one is treated as this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Reads `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let at = std::time::SystemTime::from(at);
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// A reqwest client with the service's limits.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    max_body: usize,
}

impl ProviderHttp {
    /// A client with a per-request `timeout` and a response body limit.
    pub fn new(timeout: Duration, max_body: usize) -> Result<Self, String> {
        Self::with_root_ca(timeout, max_body, None)
    }

    /// Like [`new`](Self::new), also trusting the PEM certificates in
    /// `extra_roots` (a private issuer's CA, such as a cluster's).
    pub fn with_root_ca(timeout: Duration, max_body: usize, extra_roots: Option<&[u8]>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = extra_roots {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("cannot read the CA certificates: {e}"))?;
            if certificates.is_empty() {
                return Err("the CA file holds no PEM certificate".to_owned());
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenvault/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the provider HTTP client: {e}"))?;
        Ok(Self { client, max_body })
    }

    /// Sends one request and reads at most `max_body` bytes of the answer.
    pub async fn send(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            let code = status.as_u16();
            return Err(match retry_after(response.headers(), std::time::SystemTime::now()) {
                Some(retry_after) if code == 429 || code == 503 => HttpError::Busy {
                    status: code,
                    retry_after,
                },
                _ => HttpError::Status(code),
            });
        }
        let headers = response.headers().clone();
        let body = read_limited(response, self.max_body).await?;
        let mut builder = http::Response::builder().status(status);
        if let Some(headers_mut) = builder.headers_mut() {
            *headers_mut = headers;
        }
        builder.body(body).map_err(|_| HttpError::Other)
    }

    /// A plain GET returning the body (discovery documents).
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, HttpError> {
        self.get_json_authorized(url, None).await
    }

    /// A GET with an optional `authorization: Bearer` token, returning the JSON body.
    pub async fn get_json_authorized(&self, url: &str, bearer: Option<&str>) -> Result<serde_json::Value, HttpError> {
        let mut request = self.client.get(url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError::Status(status.as_u16()));
        }
        let body = read_limited(response, self.max_body).await?;
        serde_json::from_slice(&body).map_err(|_| HttpError::Other)
    }
}

fn classify(error: reqwest::Error) -> HttpError {
    if error.is_timeout() {
        HttpError::Timeout
    } else if error.is_connect() {
        HttpError::Connect
    } else {
        HttpError::Other
    }
}

async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, HttpError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(HttpError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > max {
            return Err(HttpError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where a provider's token answer departs from RFC 6749's shape (catalog
/// `token_response_object`, `granted_scopes_member`, `scope_separator`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerShape<'a> {
    /// The object of a code-exchange answer that holds the token fields
    /// (Slack's `authed_user`).
    pub response_object: Option<&'a str>,
    /// The member naming the granted scopes instead of `scope` (HubSpot's
    /// `scopes` array).
    pub scopes_member: Option<&'a str>,
    /// What joins the scopes of a `scopes_member` array.
    pub separator: &'a str,
}

/// Makes provider quirks look like RFC 6749:
/// - an error object sent with status 200 (GitHub, Slack `ok: false`) becomes a 400;
/// - the token fields under `response_object` (Slack's `authed_user`) are lifted to the top level;
/// - granted scopes under `scopes_member` (a string, or an array of strings
///   joined with the separator) become `scope` when the answer has none;
/// - a missing `token_type` is `Bearer`, a numeric-string `expires_in` a number;
/// - a JSON body is labelled `application/json`.
pub fn normalize(response: oauth2::HttpResponse, shape: AnswerShape<'_>) -> oauth2::HttpResponse {
    let response_object = shape.response_object;
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(response.body()) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let mut changed = false;
    if parts.status == http::StatusCode::OK {
        let slack_failed = object.get("ok") == Some(&serde_json::Value::Bool(false));
        let has_token = object.contains_key("access_token");
        if (slack_failed || object.contains_key("error")) && !has_token {
            parts.status = http::StatusCode::BAD_REQUEST;
            if !object.contains_key("error") {
                object.insert("error".into(), "invalid_request".into());
            }
            changed = true;
        } else {
            if let (false, Some(name)) = (has_token, response_object) {
                if let Some(serde_json::Value::Object(inner)) = object.remove(name) {
                    for (key, value) in inner {
                        if key != "id" {
                            object.insert(key, value);
                        }
                    }
                    changed = true;
                }
            }
            if let (false, Some(member)) = (object.contains_key("scope"), shape.scopes_member) {
                if let Some(scope) = object
                    .get(member)
                    .and_then(|value| joined_scopes(value, shape.separator))
                {
                    object.insert("scope".into(), scope.into());
                    changed = true;
                }
            }
            if object.contains_key("access_token") && !object.contains_key("token_type") {
                object.insert("token_type".into(), "Bearer".into());
                changed = true;
            }
            if let Some(serde_json::Value::String(text)) = object.get("expires_in") {
                if let Ok(seconds) = text.parse::<u64>() {
                    object.insert("expires_in".into(), seconds.into());
                    changed = true;
                }
            }
        }
    }
    let body = if changed {
        serde_json::to_vec(&object).unwrap_or(body)
    } else {
        body
    };
    http::Response::from_parts(parts, body)
}

/// A granted-scopes member as one `scope` string: a string as it is, an
/// array of strings joined with `separator`; anything else is ignored.
fn joined_scopes(value: &serde_json::Value, separator: &str) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str())
            .collect::<Option<Vec<_>>>()
            .map(|scopes| scopes.join(separator)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Tue, 14 Nov 2023 22:13:50 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Tue, 14 Nov 2023 22:00:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    fn response(status: u16, body: &str) -> oauth2::HttpResponse {
        http::Response::builder()
            .status(status)
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    #[test]
    fn errors_sent_with_200_become_400() {
        let out = normalize(
            response(200, r#"{"error":"bad_verification_code"}"#),
            AnswerShape::default(),
        );
        assert_eq!(out.status(), 400);
        let out = normalize(
            response(200, r#"{"ok":false,"error":"invalid_code"}"#),
            AnswerShape::default(),
        );
        assert_eq!(out.status(), 400);
        assert_eq!(out.headers()[http::header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn slack_user_tokens_are_lifted() {
        let out = normalize(
            response(
                200,
                r#"{"ok":true,"authed_user":{"id":"U1","access_token":"xoxp-1","token_type":"user","scope":"chat:write"}}"#,
            ),
            AnswerShape {
                response_object: Some("authed_user"),
                ..AnswerShape::default()
            },
        );
        let value: serde_json::Value = serde_json::from_slice(out.body()).unwrap();
        assert_eq!(value["access_token"], "xoxp-1");
        assert_eq!(value["scope"], "chat:write");
    }

    #[test]
    fn a_granted_scopes_member_becomes_scope_unless_the_answer_has_one() {
        let shape = AnswerShape {
            scopes_member: Some("scopes"),
            separator: ",",
            ..AnswerShape::default()
        };
        let scope_of = |body: &str| {
            let out = normalize(response(200, body), shape);
            let value: serde_json::Value = serde_json::from_slice(out.body()).unwrap();
            value.get("scope").cloned()
        };
        assert_eq!(
            scope_of(r#"{"access_token":"a","scopes":["oauth","crm.objects.contacts.read"]}"#),
            Some("oauth,crm.objects.contacts.read".into())
        );
        assert_eq!(scope_of(r#"{"access_token":"a","scopes":"a b"}"#), Some("a b".into()));
        assert_eq!(
            scope_of(r#"{"access_token":"a","scope":"kept","scopes":["x"]}"#),
            Some("kept".into())
        );
        assert_eq!(scope_of(r#"{"access_token":"a","scopes":[1, "x"]}"#), None);
        assert_eq!(scope_of(r#"{"access_token":"a"}"#), None);
    }

    #[test]
    fn ordinary_answers_pass_through() {
        let body = r#"{"access_token":"a","token_type":"Bearer"}"#;
        let out = normalize(response(200, body), AnswerShape::default());
        assert_eq!(out.status(), 200);
        assert_eq!(out.body(), body.as_bytes());
        let out = normalize(
            response(200, r#"{"access_token":"a","expires_in":"60"}"#),
            AnswerShape::default(),
        );
        let value: serde_json::Value = serde_json::from_slice(out.body()).unwrap();
        assert_eq!(
            (value["token_type"].as_str(), value["expires_in"].as_u64()),
            (Some("Bearer"), Some(60))
        );
        let out = normalize(response(200, "not json"), AnswerShape::default());
        assert_eq!(out.body(), b"not json");
    }
}
