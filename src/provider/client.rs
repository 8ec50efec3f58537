//! One provider's OAuth client: authorization URLs, code exchange, refresh
//! and revocation, built on the `oauth2` crate over [`ProviderHttp`].

use super::http::{normalize, HttpError, ProviderHttp};
use super::{ProviderError, TokenSet};
use crate::consent::catalog::{ClientAuth, ProviderSpec, RevocationMethod, ScopePlan, TokenRequestBody};
use crate::store::ScopeSet;
use base64::Engine;
use futures::future::BoxFuture;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl,
    Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

type OAuthClient = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointSet>;

/// The endpoints a provider client talks to (from the catalog or discovery).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Authorization endpoint.
    pub authorization: Url,
    /// Token endpoint.
    pub token: Url,
    /// Revocation endpoint, if the provider has one.
    pub revocation: Option<Url>,
}

/// A configured provider: catalog entry, endpoints, client credentials.
pub struct ProviderClient {
    spec: Arc<ProviderSpec>,
    client_id: String,
    client_secret: Option<SecretString>,
    oauth: OAuthClient,
    transport: Transport,
    endpoints: Endpoints,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("provider", &self.spec.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// The HTTP client as one provider needs it: its extra headers, its body
/// encoding, and its response quirks.
#[derive(Clone)]
struct Transport {
    http: ProviderHttp,
    spec: Arc<ProviderSpec>,
}

impl Transport {
    async fn send(&self, mut request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        for (name, value) in &self.spec.request_headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                request.headers_mut().insert(name, value);
            }
        }
        if self.spec.token_request_body == TokenRequestBody::Json {
            let form: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(request.body())
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect();
            *request.body_mut() = serde_json::to_vec(&form).map_err(|_| HttpError::Other)?;
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        let response = self.http.send(request).await?;
        Ok(normalize(response, self.spec.token_response_object.as_deref()))
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for Transport {
    type Error = HttpError;
    type Future = BoxFuture<'c, Result<oauth2::HttpResponse, HttpError>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// A fresh PKCE pair (S256).
pub fn new_pkce() -> (PkceCodeChallenge, SecretString) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(48);
    (challenge, SecretString::from(verifier.into_secret()))
}

impl ProviderClient {
    /// Builds the client for `spec` with these endpoints and credentials.
    pub fn new(
        spec: Arc<ProviderSpec>,
        endpoints: Endpoints,
        client_id: &str,
        client_secret: Option<&SecretString>,
        http: ProviderHttp,
    ) -> Self {
        let mut oauth = BasicClient::new(ClientId::new(client_id.to_owned()))
            .set_auth_uri(AuthUrl::from_url(endpoints.authorization.clone()))
            .set_token_uri(TokenUrl::from_url(endpoints.token.clone()))
            .set_revocation_url_option(endpoints.revocation.clone().map(RevocationUrl::from_url))
            .set_auth_type(match spec.client_auth {
                ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                ClientAuth::ClientSecretPost => AuthType::RequestBody,
            });
        if let Some(secret) = client_secret {
            oauth = oauth.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.cloned(),
            transport: Transport {
                http,
                spec: spec.clone(),
            },
            spec,
            oauth,
            endpoints,
        }
    }

    /// The catalog entry.
    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The authorization URL for `plan`, with `state`, the PKCE challenge and `redirect_uri`.
    pub fn authorization_url(
        &self,
        plan: &ScopePlan,
        state: &str,
        challenge: PkceCodeChallenge,
        redirect_uri: &Url,
    ) -> Url {
        let params = self.spec.authorization_params_for(plan);
        let mut request = self
            .oauth
            .authorize_url(|| CsrfToken::new(state.to_owned()))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())))
            .set_pkce_challenge(challenge);
        for (name, value) in &params {
            request = request.add_extra_param(name.as_str(), value.as_str());
        }
        request.url().0
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        verifier: &SecretString,
        redirect_uri: &Url,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<TokenSet, ProviderError> {
        let response = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())))
            .request_async(&self.transport)
            .await
            .map_err(|e| token_error(&self.spec.name, e))?;
        self.token_set(response, now)
    }

    /// Refreshes, asking for `narrow_to` when the provider accepts a narrower scope.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        narrow_to: Option<&ScopeSet>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<TokenSet, ProviderError> {
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let mut request = self.oauth.exchange_refresh_token(&token);
        if let Some(scopes) = narrow_to.filter(|_| self.spec.refresh_scope_narrowing) {
            request = request.add_scopes(scopes.iter().map(|s| Scope::new(s.clone())));
        }
        let response = request
            .request_async(&self.transport)
            .await
            .map_err(|e| token_error(&self.spec.name, e))?;
        self.token_set(response, now)
    }

    /// Revokes a credential at the provider the way its catalog entry says.
    /// `Ok(false)` when the provider has no way to revoke. Providers that
    /// revoke only with an access token get a fresh one first when handed a
    /// refresh token (their revocation ends the whole grant).
    pub async fn revoke(&self, token: &SecretString, is_refresh_token: bool) -> Result<bool, ProviderError> {
        let Some(url) = self.endpoints.revocation.clone() else {
            return Ok(false);
        };
        let wants_access_token = matches!(
            self.spec.revocation_method,
            RevocationMethod::BearerAccessToken | RevocationMethod::Rfc7009AccessToken
        );
        if wants_access_token && is_refresh_token {
            let fresh = self.refresh(token, None, chrono::Utc::now()).await?;
            return Box::pin(self.revoke(&fresh.access_token, false)).await;
        }
        match self.spec.revocation_method {
            RevocationMethod::BearerAccessToken => self.revoke_with_bearer(&url, token).await,
            RevocationMethod::Rfc7009 | RevocationMethod::Rfc7009AccessToken => {
                self.revoke_rfc7009(&url, token, is_refresh_token).await
            }
        }
    }

    /// RFC 7009 §2.1: POST `token` and `token_type_hint`, with the client's authentication.
    async fn revoke_rfc7009(
        &self,
        url: &Url,
        token: &SecretString,
        is_refresh_token: bool,
    ) -> Result<bool, ProviderError> {
        let request = self.rfc7009_request(url, token, is_refresh_token)?;
        let response = self
            .transport
            .send(request)
            .await
            .map_err(|e| http_error(&self.spec.name, e))?;
        if response.status().is_success() {
            return Ok(true);
        }
        let error = serde_json::from_slice::<serde_json::Value>(response.body())
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", response.status().as_u16()));
        match error.as_str() {
            "unsupported_token_type" => Err(ProviderError::Unsupported(
                "provider cannot revoke this token type".to_owned(),
            )),
            "invalid_client" | "unauthorized_client" => Err(ProviderError::ClientRejected(format!(
                "{} rejected tokenvault's client credentials at revocation",
                self.spec.name
            ))),
            other => Err(ProviderError::Rejected(format!("revocation refused: {other}"))),
        }
    }

    fn rfc7009_request(
        &self,
        url: &Url,
        token: &SecretString,
        is_refresh_token: bool,
    ) -> Result<oauth2::HttpRequest, ProviderError> {
        let hint = if is_refresh_token {
            "refresh_token"
        } else {
            "access_token"
        };
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token.expose_secret());
        form.append_pair("token_type_hint", hint);
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json");
        match self.spec.client_auth {
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
                let encode = |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
                let secret = self
                    .client_secret
                    .as_ref()
                    .map(|s| encode(s.expose_secret()))
                    .unwrap_or_default();
                let credentials = zeroize::Zeroizing::new(format!("{}:{secret}", encode(&self.client_id)));
                request = request.header(
                    http::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
                    ),
                );
            }
            ClientAuth::ClientSecretPost => {
                form.append_pair("client_id", &self.client_id);
                if let Some(secret) = &self.client_secret {
                    form.append_pair("client_secret", secret.expose_secret());
                }
            }
        }
        let body = zeroize::Zeroizing::new(form.finish());
        request
            .body(body.as_bytes().to_vec())
            .map_err(|_| ProviderError::Malformed("cannot build the revocation request".to_owned()))
    }

    /// POST with the access token as bearer, no body (Dropbox, Slack).
    async fn revoke_with_bearer(&self, url: &Url, token: &SecretString) -> Result<bool, ProviderError> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", token.expose_secret()))
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| ProviderError::Malformed("cannot build the revocation request".to_owned()))?;
        let response = self
            .transport
            .send(request)
            .await
            .map_err(|e| http_error(&self.spec.name, e))?;
        if response.status().is_success() {
            Ok(true)
        } else {
            Err(ProviderError::Rejected(format!(
                "revocation answered HTTP {}",
                response.status().as_u16()
            )))
        }
    }

    /// Checks a token response and reads it: the token type must be one the
    /// catalog names for this provider (bearer), and an absent or zero
    /// `expires_in` means [`DEFAULT_TOKEN_LIFETIME`] for refreshable tokens and
    /// [`NON_EXPIRING_LIFETIME`] for providers that issue no refresh token.
    fn token_set(
        &self,
        response: BasicTokenResponse,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<TokenSet, ProviderError> {
        let token_type = match response.token_type() {
            oauth2::basic::BasicTokenType::Bearer => "bearer".to_owned(),
            oauth2::basic::BasicTokenType::Mac => "mac".to_owned(),
            oauth2::basic::BasicTokenType::Extension(other) => other.to_ascii_lowercase(),
        };
        if !self.spec.token_types.contains(&token_type) {
            return Err(ProviderError::Malformed(format!(
                "{} sent a token of type `{}`; only bearer tokens are supported",
                self.spec.name,
                token_type.chars().take(32).collect::<String>()
            )));
        }
        let scopes = response.scopes().map(|list| {
            let joined = list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
            self.spec.split_scopes(&joined)
        });
        let lifetime = match response.expires_in() {
            Some(lifetime) if !lifetime.is_zero() => lifetime.min(NON_EXPIRING_LIFETIME),
            _ if self.spec.issues_refresh_tokens => DEFAULT_TOKEN_LIFETIME,
            _ => NON_EXPIRING_LIFETIME,
        };
        Ok(TokenSet {
            access_token: SecretString::from(response.access_token().secret().to_owned()),
            refresh_token: response
                .refresh_token()
                .map(|t| SecretString::from(t.secret().to_owned())),
            token_type: "Bearer".to_owned(),
            expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1)),
            issued_at: now,
            scopes,
        })
    }
}

/// The lifetime assumed for a refreshable access token whose response gave no
/// (or a zero) `expires_in` (RFC 6749 §5.1 makes it optional): an hour, the
/// common provider default; tokenvault refreshes it then.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The lifetime recorded for an access token that does not expire (no
/// `expires_in` from a provider that issues no refresh token, e.g. GitHub
/// OAuth apps), and the cap on any `expires_in`: ten years.
pub const NON_EXPIRING_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn http_error(provider: &str, error: HttpError) -> ProviderError {
    match error {
        HttpError::TooLarge(limit) => ProviderError::Malformed(format!("{provider} sent more than {limit} bytes")),
        HttpError::Busy { retry_after, .. } => ProviderError::Throttled {
            message: format!("{provider}: {error}"),
            retry_after,
        },
        HttpError::Connect => ProviderError::Unreachable(format!("{provider}: {error}")),
        // 429 and 503 say the request was not served (RFC 6585 §4, RFC 9110 §15.6.4).
        HttpError::Status(429 | 503) => ProviderError::Throttled {
            message: format!("{provider}: {error}"),
            retry_after: std::time::Duration::ZERO,
        },
        other => ProviderError::Unavailable(format!("{provider}: {other}")),
    }
}

fn token_error(
    provider: &str,
    error: RequestTokenError<HttpError, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) -> ProviderError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            // error_description is provider text, never a secret of ours, but keep it short.
            let description = response
                .error_description()
                .map(|d| d.chars().take(200).collect::<String>())
                .unwrap_or_default();
            match response.error() {
                BasicErrorResponseType::InvalidGrant => ProviderError::InvalidGrant(description),
                BasicErrorResponseType::InvalidScope => ProviderError::InvalidScope(description),
                BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => {
                    ProviderError::ClientRejected(format!("{provider} rejected tokenvault's client credentials"))
                }
                other => ProviderError::Rejected(format!("{provider} answered `{other}`")),
            }
        }
        RequestTokenError::Request(error) => http_error(provider, error),
        // The body of an unparsable answer may hold a token: it is dropped here, never shown.
        RequestTokenError::Parse(..) => {
            ProviderError::Malformed(format!("{provider} sent an unreadable token response"))
        }
        RequestTokenError::Other(_) => {
            ProviderError::Malformed(format!("{provider} sent an unexpected token response"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::catalog::Catalog;
    use chrono::{TimeZone, Utc};

    fn client(provider: &str) -> ProviderClient {
        let catalog = Catalog::builtin().unwrap();
        let spec = Arc::new(catalog.require(provider).unwrap().clone());
        let url = Url::parse("https://provider.example/").unwrap();
        let endpoints = Endpoints {
            authorization: url.clone(),
            token: url,
            revocation: None,
        };
        let http = ProviderHttp::new(Duration::from_secs(1), 1024).unwrap();
        ProviderClient::new(spec, endpoints, "client", None, http)
    }

    fn read(provider: &str, body: &str) -> Result<TokenSet, ProviderError> {
        let response: BasicTokenResponse = serde_json::from_str(body).unwrap();
        client(provider).token_set(response, Utc.timestamp_opt(1_700_000_000, 0).unwrap())
    }

    fn lifetime(set: &TokenSet) -> i64 {
        (set.expires_at - Utc.timestamp_opt(1_700_000_000, 0).unwrap()).num_seconds()
    }

    #[test]
    fn only_bearer_tokens_are_accepted() {
        let set = read(
            "google",
            r#"{"access_token":"a","token_type":"bearer","expires_in":60}"#,
        )
        .unwrap();
        assert_eq!((set.token_type.as_str(), lifetime(&set)), ("Bearer", 60));
        for other in ["mac", "DPoP", "user"] {
            let body = format!(r#"{{"access_token":"a","token_type":"{other}","expires_in":60}}"#);
            let error = read("google", &body).unwrap_err();
            assert!(
                matches!(error, ProviderError::Malformed(ref m) if m.contains("only bearer")),
                "{error:?}"
            );
        }
        // Slack names its user tokens `user`; they are bearer tokens all the same.
        let set = read("slack", r#"{"access_token":"a","token_type":"user","expires_in":60}"#).unwrap();
        assert_eq!(set.token_type, "Bearer");
    }

    #[test]
    fn absent_or_zero_expires_in_has_a_documented_default() {
        let absent = read("google", r#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert_eq!(lifetime(&absent), 3600);
        let zero = read("google", r#"{"access_token":"a","token_type":"Bearer","expires_in":0}"#).unwrap();
        assert_eq!(lifetime(&zero), 3600);
        // GitHub OAuth apps issue no refresh token and no expiry: the token lives until revoked.
        let github = read("github", r#"{"access_token":"a","token_type":"bearer"}"#).unwrap();
        assert_eq!(lifetime(&github), NON_EXPIRING_LIFETIME.as_secs() as i64);
        let huge = read(
            "google",
            r#"{"access_token":"a","token_type":"Bearer","expires_in":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(lifetime(&huge), NON_EXPIRING_LIFETIME.as_secs() as i64);
    }
}
