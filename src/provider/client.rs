//! One provider's OAuth client: authorization URLs, code exchange, refresh
//! and revocation, built on the `oauth2` crate over [`ProviderHttp`].

use super::http::{normalize, HttpError, ProviderHttp};
use super::{ProviderError, TokenSet};
use crate::consent::catalog::{
    ClientAuth, ProviderSpec, RevocationMethod, ScopePlan, TokenRequestBody, CLIENT_ID_PLACEHOLDER_ENCODED,
};
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
    /// The issuer's metadata says every authorization response carries
    /// `iss` (`authorization_response_iss_parameter_supported`, RFC 9207).
    pub iss_parameter_supported: bool,
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

/// What a revocation at the provider came to (errors are [`ProviderError`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The provider accepted the revocation.
    Done,
    /// The provider offers no way to revoke; nothing was sent. The user must
    /// remove the app at `user_page`.
    Unsupported {
        /// Why, from the catalog.
        reason: String,
        /// The provider's page where the user revokes the app.
        user_page: Url,
    },
}

/// The GitHub REST API version the grant deletion is written against.
const GITHUB_API_VERSION: &str = "2022-11-28";

/// The HTTP client as one provider needs it: its extra headers, its body
/// encoding, and its response quirks.
#[derive(Clone)]
struct Transport {
    http: ProviderHttp,
    spec: Arc<ProviderSpec>,
}

impl Transport {
    fn add_headers(&self, request: &mut oauth2::HttpRequest) {
        for (name, value) in &self.spec.request_headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                request.headers_mut().insert(name, value);
            }
        }
    }

    /// Sends a request whose body is already in its final encoding (not an
    /// OAuth form), with the provider's extra headers; the answer as it came.
    async fn send_as_is(&self, mut request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        self.add_headers(&mut request);
        self.http.send(request).await
    }

    async fn send(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let response = self.send_raw(request).await?;
        Ok(normalize(response, self.spec.answer_shape()))
    }

    /// Sends a token request (a JSON body where the provider wants one) and
    /// returns the answer as it came, before [`normalize`].
    async fn send_raw(&self, mut request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        self.add_headers(&mut request);
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
        self.http.send(request).await
    }
}

/// The transport of one code exchange: it keeps the answer's body as the
/// provider sent it (where the account identity may be read) and passes the
/// normalised answer on.
struct Keeping<'t> {
    transport: &'t Transport,
    body: std::sync::Mutex<Option<RawAnswer>>,
}

impl<'c> oauth2::AsyncHttpClient<'c> for Keeping<'_> {
    type Error = HttpError;
    type Future = BoxFuture<'c, Result<oauth2::HttpResponse, HttpError>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.transport.send_raw(request).await?;
            if response.status().is_success() {
                let raw = RawAnswer(zeroize::Zeroizing::new(response.body().clone()));
                *self.body.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(raw);
            }
            Ok(normalize(response, self.transport.spec.answer_shape()))
        })
    }
}

/// A token endpoint's answer as the provider sent it. It holds the tokens
/// too: it is zeroised when dropped and `Debug` shows nothing of it.
#[derive(Clone)]
pub struct RawAnswer(zeroize::Zeroizing<Vec<u8>>);

impl RawAnswer {
    /// The answer as JSON (`None` when it is not a JSON document).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.0).ok()
    }
}

impl std::fmt::Debug for RawAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawAnswer([REDACTED])")
    }
}

/// A code exchange's result: the tokens, and the answer they came in.
#[derive(Debug)]
pub struct Exchanged {
    /// The tokens.
    pub tokens: TokenSet,
    /// The token endpoint's answer as sent (the ID token, Slack's `authed_user`).
    pub answer: Option<RawAnswer>,
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

    /// tokenvault's client id at the provider.
    pub fn client_id(&self) -> &str {
        &self.client_id
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
    ) -> Result<Exchanged, ProviderError> {
        let keeping = Keeping {
            transport: &self.transport,
            body: std::sync::Mutex::new(None),
        };
        let response = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(redirect_uri.clone())))
            .request_async(&keeping)
            .await
            .map_err(|e| token_error(&self.spec.name, e))?;
        let tokens = self.token_set(response, now)?;
        let answer = keeping
            .body
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Exchanged { tokens, answer })
    }

    /// The account document of an `endpoint` account source: `url` called
    /// with the new access token as `Authorization: Bearer` (`GET`, or `POST`
    /// with a JSON `body`), its JSON answer.
    pub async fn account_document(
        &self,
        url: &Url,
        method: crate::consent::catalog::AccountMethod,
        body: Option<&str>,
        access_token: &SecretString,
    ) -> Result<serde_json::Value, ProviderError> {
        use crate::consent::catalog::AccountMethod;
        let name = &self.spec.name;
        let (method, body) = match method {
            AccountMethod::Get => (http::Method::GET, Vec::new()),
            AccountMethod::Post => (http::Method::POST, body.unwrap_or("{}").as_bytes().to_vec()),
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .header(http::header::ACCEPT, "application/json");
        if method == http::Method::POST {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let mut request = request
            .body(body)
            .map_err(|_| ProviderError::Malformed(format!("{name}: cannot build the account request")))?;
        let bearer =
            http::HeaderValue::from_str(&format!("Bearer {}", access_token.expose_secret())).map_err(|_| {
                ProviderError::Malformed(format!("{name} issued an access token that is not a header value"))
            })?;
        request.headers_mut().insert(http::header::AUTHORIZATION, bearer);
        let response = self
            .transport
            .send_as_is(request)
            .await
            .map_err(|e| http_error(name, e))?;
        match response.status().as_u16() {
            200..=299 => serde_json::from_slice(response.body())
                .map_err(|_| ProviderError::Malformed(format!("{name}: the account endpoint did not answer JSON"))),
            status => Err(ProviderError::Rejected(format!(
                "{name}: the account endpoint answered HTTP {status}"
            ))),
        }
    }

    /// Refreshes, asking for `narrow_to` when the provider accepts a narrower scope.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        narrow_to: Option<&ScopeSet>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<TokenSet, ProviderError> {
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        // A provider with its own refresh endpoint (Figma) gets the request there.
        let at_refresh_url = self
            .spec
            .refresh_url
            .as_ref()
            .map(|url| self.oauth.clone().set_token_uri(TokenUrl::from_url(url.clone())));
        let oauth = at_refresh_url.as_ref().unwrap_or(&self.oauth);
        let mut request = oauth.exchange_refresh_token(&token);
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
    ///
    /// [`Revoked::Unsupported`] (with no request sent) when the catalog says
    /// the provider cannot revoke. Providers that revoke only with an access
    /// token get a fresh one first when handed a refresh token (their
    /// revocation ends the whole grant or refresh-token family). An entry
    /// whose endpoint was to come from discovery but did not is an error
    /// ([`ProviderError::Unsupported`]), never a success.
    pub async fn revoke(&self, token: &SecretString, is_refresh_token: bool) -> Result<Revoked, ProviderError> {
        if let Some(unsupported) = self.spec.revocation_unsupported() {
            return Ok(Revoked::Unsupported {
                reason: unsupported.reason.clone(),
                user_page: unsupported.user_page.clone(),
            });
        }
        let Some(url) = self.endpoints.revocation.clone() else {
            return Err(ProviderError::Unsupported(format!(
                "{}: no revocation endpoint (the catalog entry names none and the issuer's metadata has no \
                 `revocation_endpoint`); set `revocation_url`, or `revocation_method = \"unsupported\"` with the \
                 reason and the user's page",
                self.spec.name
            )));
        };
        if self.spec.revokes_with_access_token() && is_refresh_token {
            let fresh = self.refresh(token, None, chrono::Utc::now()).await?;
            return Box::pin(self.revoke(&fresh.access_token, false)).await;
        }
        match self.spec.revocation_method {
            RevocationMethod::BearerAccessToken => self.revoke_with_bearer(&url, token).await,
            RevocationMethod::BearerToken => self.revoke_bearer_token(&url, token).await,
            RevocationMethod::Rfc7009 | RevocationMethod::Rfc7009AccessToken => {
                self.revoke_rfc7009(&url, token, is_refresh_token).await
            }
            RevocationMethod::GithubGrant => self.revoke_github_grant(&url, token).await,
            // Validation pairs `unsupported` with its reason, handled above.
            RevocationMethod::Unsupported => Err(ProviderError::Unsupported(format!(
                "{}: revocation is unsupported",
                self.spec.name
            ))),
        }
    }

    /// GitHub's "Delete an app authorization": `DELETE` with HTTP Basic
    /// (client id and secret) and `{"access_token": …}`; 204 ends every token
    /// of the app for that user.
    ///
    /// GitHub documents only 204 and 422 ("Validation failed, or the endpoint
    /// has been spammed") for it. Neither 404 nor 422 is taken as "already
    /// gone": GitHub answers 404 both for a token that is no longer valid and
    /// for a request that is not properly authenticated (REST API
    /// troubleshooting), so a wrong client secret would look like success; a
    /// 422 may be a rate limit and is retried.
    async fn revoke_github_grant(&self, url: &Url, token: &SecretString) -> Result<Revoked, ProviderError> {
        let secret = self
            .client_secret
            .as_ref()
            .ok_or_else(|| ProviderError::NotConfigured(self.spec.name.clone()))?;
        let url = fill_client_id(url, &self.client_id);
        let credentials = zeroize::Zeroizing::new(format!("{}:{}", self.client_id, secret.expose_secret()));
        let authorization = zeroize::Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
        ));
        let quoted = zeroize::Zeroizing::new(
            serde_json::to_string(token.expose_secret())
                .map_err(|_| ProviderError::Malformed("cannot build the revocation request".to_owned()))?,
        );
        let body = zeroize::Zeroizing::new(format!("{{\"access_token\":{}}}", quoted.as_str()));
        let request = http::Request::builder()
            .method(http::Method::DELETE)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, authorization.as_str())
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("X-GitHub-Api-Version", GITHUB_API_VERSION)
            .body(body.as_bytes().to_vec())
            .map_err(|_| ProviderError::Malformed("cannot build the revocation request".to_owned()))?;
        let response = self
            .transport
            .send_as_is(request)
            .await
            .map_err(|e| http_error(&self.spec.name, e))?;
        let name = &self.spec.name;
        match response.status().as_u16() {
            200..=299 => Ok(Revoked::Done),
            404 => Err(ProviderError::Rejected(format!(
                "{name} answered 404 to the grant deletion: the token is no longer valid, or the client id or secret \
                 is wrong (GitHub answers both with 404); the authorization may still exist"
            ))),
            422 => Err(ProviderError::Throttled {
                message: format!("{name} answered 422 to the grant deletion (validation failed, or rate-limited)"),
                retry_after: Duration::ZERO,
            }),
            403 if rate_limited(response.headers()) => Err(ProviderError::Throttled {
                message: format!("{name} answered 403: rate limit exceeded"),
                retry_after: github_retry_after(response.headers()),
            }),
            401 | 403 => Err(ProviderError::ClientRejected(format!(
                "{name} rejected tokenvault's client credentials at revocation"
            ))),
            status => Err(ProviderError::Rejected(format!(
                "{name}: grant deletion answered HTTP {status}"
            ))),
        }
    }

    /// RFC 7009 §2.1: POST `token` and `token_type_hint`, with the client's authentication.
    async fn revoke_rfc7009(
        &self,
        url: &Url,
        token: &SecretString,
        is_refresh_token: bool,
    ) -> Result<Revoked, ProviderError> {
        let request = self.rfc7009_request(url, token, is_refresh_token)?;
        let response = self
            .transport
            .send(request)
            .await
            .map_err(|e| http_error(&self.spec.name, e))?;
        if response.status().is_success() {
            return Ok(Revoked::Done);
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

    /// POST with the access token as bearer, no body (Dropbox).
    async fn revoke_with_bearer(&self, url: &Url, token: &SecretString) -> Result<Revoked, ProviderError> {
        let response = self.post_bearer(url, token).await?;
        if response.status().is_success() {
            Ok(Revoked::Done)
        } else {
            Err(ProviderError::Rejected(format!(
                "revocation answered HTTP {}",
                response.status().as_u16()
            )))
        }
    }

    /// POST with the stored credential itself (refresh or access token) as
    /// bearer, no body (Slack `auth.revoke` with token rotation, which
    /// revokes exactly that token).
    ///
    /// Slack answers with HTTP 200 either way: only `{"ok": true}` is a
    /// revocation. `token_revoked` (the token is already revoked, or the app
    /// was removed) reads as an invalid grant, which the outbox counts as
    /// revoked unless its own refresh may have rotated the token unheard;
    /// `internal_error` and `fatal_error` ("likely due to a transient issue")
    /// are retried; any other error is a refusal.
    async fn revoke_bearer_token(&self, url: &Url, token: &SecretString) -> Result<Revoked, ProviderError> {
        let response = self.post_bearer(url, token).await?;
        let name = &self.spec.name;
        if !response.status().is_success() {
            return Err(ProviderError::Rejected(format!(
                "{name}: revocation answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let answer = serde_json::from_slice::<serde_json::Value>(response.body()).ok();
        let ok = answer
            .as_ref()
            .and_then(|v| v.get("ok"))
            .and_then(serde_json::Value::as_bool);
        let error = answer
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(serde_json::Value::as_str)
            .map(error_code);
        match (ok, error.as_deref()) {
            (Some(true), _) => Ok(Revoked::Done),
            (Some(false), Some("token_revoked")) => Err(ProviderError::InvalidGrant(format!(
                "{name}: the token is already revoked (token_revoked)"
            ))),
            (Some(false), Some(transient @ ("internal_error" | "fatal_error"))) => Err(ProviderError::Unavailable(
                format!("{name}: revocation failed: {transient}"),
            )),
            (Some(false), error) => Err(ProviderError::Rejected(format!(
                "{name}: revocation refused: {}",
                error.unwrap_or("no error code")
            ))),
            (None, _) => Err(ProviderError::Malformed(format!(
                "{name}: the revocation answer has no `ok` field"
            ))),
        }
    }

    /// POST to `url` with `token` as `Authorization: Bearer`, no body and no
    /// client authentication.
    async fn post_bearer(&self, url: &Url, token: &SecretString) -> Result<oauth2::HttpResponse, ProviderError> {
        let authorization = zeroize::Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header(http::header::AUTHORIZATION, authorization.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| ProviderError::Malformed("cannot build the revocation request".to_owned()))?;
        self.transport
            .send(request)
            .await
            .map_err(|e| http_error(&self.spec.name, e))
    }

    /// Checks a token response and reads it: the token type must be one the
    /// catalog names for this provider (bearer), and an absent or zero
    /// `expires_in` means [`DEFAULT_TOKEN_LIFETIME`], or
    /// [`NON_EXPIRING_LIFETIME`] for providers whose access tokens do not
    /// expire (`access_token_expires = false`).
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
            _ if self.spec.access_token_expires => DEFAULT_TOKEN_LIFETIME,
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
/// `expires_in` from a provider with `access_token_expires = false`, e.g.
/// GitHub OAuth apps), and the cap on any `expires_in`: ten years.
pub const NON_EXPIRING_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Whether a token issued at `issued_at` and expiring at `expires_at` is one
/// that does not expire: its lifetime is [`NON_EXPIRING_LIFETIME`] (the
/// recorded value for such tokens, and the cap of any `expires_in`), give or
/// take a day of storage rounding.
pub fn never_expires(issued_at: chrono::DateTime<chrono::Utc>, expires_at: chrono::DateTime<chrono::Utc>) -> bool {
    let lifetime = chrono::Duration::from_std(NON_EXPIRING_LIFETIME).unwrap_or(chrono::Duration::MAX);
    expires_at - issued_at >= lifetime - chrono::Duration::days(1)
}

/// The revocation URL with the client id in place of `{client_id}` (as a
/// path segment: percent-encoded).
/// A provider's error code as it may be shown: its first 64 characters of
/// `[A-Za-z0-9_.-]`, so an odd answer cannot fill a log or an error.
fn error_code(raw: &str) -> String {
    raw.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(64)
        .collect()
}

fn fill_client_id(url: &Url, client_id: &str) -> Url {
    let encoded: String = url::form_urlencoded::byte_serialize(client_id.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    let filled = url.as_str().replace(CLIENT_ID_PLACEHOLDER_ENCODED, &encoded);
    Url::parse(&filled).unwrap_or_else(|_| url.clone())
}

/// A GitHub 403 that is a rate limit rather than a refusal
/// (`x-ratelimit-remaining: 0` or `retry-after`), per GitHub's REST API
/// troubleshooting guide.
fn rate_limited(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::RETRY_AFTER)
        || headers
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
}

/// How long a rate-limited GitHub answer asks to wait: `retry-after`
/// seconds, else until `x-ratelimit-reset` (epoch seconds), at most an hour.
fn github_retry_after(headers: &http::HeaderMap) -> Duration {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let wait = header("retry-after").unwrap_or_else(|| {
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        header("x-ratelimit-reset").map_or(0, |reset| reset.saturating_sub(now))
    });
    Duration::from_secs(wait.min(3600))
}

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
                // GitHub's name for an invalid, expired or already rotated
                // refresh token (answered with HTTP 200; see http::normalize).
                BasicErrorResponseType::Extension(code) if code == "bad_refresh_token" => {
                    ProviderError::InvalidGrant(description)
                }
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
        let mut catalog = Catalog::builtin().unwrap();
        let example = crate::consent::catalog::BUILTIN_CATALOG
            .split("# --- github oauth app example (begin) ---")
            .nth(1)
            .and_then(|rest| rest.split("# --- github oauth app example (end) ---").next())
            .unwrap()
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        catalog.merge(Catalog::from_toml_str(&example).unwrap());
        let spec = Arc::new(catalog.require(provider).unwrap().clone());
        let url = Url::parse("https://provider.example/").unwrap();
        let endpoints = Endpoints {
            authorization: url.clone(),
            token: url,
            revocation: None,
            iss_parameter_supported: false,
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
        // GitHub OAuth apps (access_token_expires = false) send no expiry: the token lives until revoked.
        let github = read("github_oauth_app", r#"{"access_token":"a","token_type":"bearer"}"#).unwrap();
        assert_eq!(lifetime(&github), NON_EXPIRING_LIFETIME.as_secs() as i64);
        assert!(never_expires(github.issued_at, github.expires_at));
        // A GitHub App's user token says when it expires (as a string).
        let app = read(
            "github",
            r#"{"access_token":"a","token_type":"bearer","expires_in":28800,"refresh_token":"r","scope":""}"#,
        )
        .unwrap();
        assert_eq!(lifetime(&app), 28800);
        assert!(!never_expires(app.issued_at, app.expires_at));
        let huge = read(
            "google",
            r#"{"access_token":"a","token_type":"Bearer","expires_in":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(lifetime(&huge), NON_EXPIRING_LIFETIME.as_secs() as i64);
    }

    #[test]
    fn the_client_id_fills_the_github_grant_url() {
        let template = Url::parse("https://api.github.com/applications/{client_id}/grant").unwrap();
        assert_eq!(
            fill_client_id(&template, "Iv1.8a61f9b3a7aba766").as_str(),
            "https://api.github.com/applications/Iv1.8a61f9b3a7aba766/grant"
        );
        assert_eq!(
            fill_client_id(&template, "a b/c").as_str(),
            "https://api.github.com/applications/a%20b%2Fc/grant"
        );
    }

    #[test]
    fn github_rate_limits_are_told_from_refusals() {
        let mut headers = http::HeaderMap::new();
        assert!(!rate_limited(&headers));
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(rate_limited(&headers));
        headers.insert("retry-after", "30".parse().unwrap());
        assert_eq!(github_retry_after(&headers), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn unsupported_revocation_sends_nothing() {
        // No endpoint at all: were a request attempted, it would fail to connect.
        let revoked = client("microsoft")
            .revoke(&SecretString::from("rt".to_owned()), true)
            .await
            .unwrap();
        let Revoked::Unsupported { reason, user_page } = revoked else {
            panic!("{revoked:?}");
        };
        assert!(reason.contains("revokeSignInSessions"), "{reason}");
        assert_eq!(user_page.as_str(), "https://myapplications.microsoft.com/");
    }

    #[test]
    fn github_bad_refresh_token_is_invalid_grant() {
        let body = serde_json::json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."});
        let response = http::Response::builder()
            .status(200)
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        let response = normalize(response, Default::default());
        let parsed: oauth2::StandardErrorResponse<BasicErrorResponseType> =
            serde_json::from_slice(response.body()).unwrap();
        let error = token_error("github", RequestTokenError::ServerResponse(parsed));
        assert!(
            matches!(error, ProviderError::InvalidGrant(ref d) if d.contains("incorrect or expired")),
            "{error:?}"
        );
    }
}
