//! A fake OAuth 2.0 provider that speaks real HTTP on `127.0.0.1:0`.
//!
//! It implements the parts of the protocol tokenvault relies on:
//!
//! - RFC 6749: authorization code grant (`GET /authorize`, `POST /token`),
//!   refresh grant, client authentication (§2.3.1) and error responses (§5.2);
//! - RFC 7636: PKCE, `S256` only (`plain` is rejected);
//! - RFC 7009: token revocation (`POST /revoke`);
//! - RFC 8414: a small metadata document at
//!   `/.well-known/oauth-authorization-server`.
//!
//! Tests drive it through [`FakeProvider`]: [`FakeProvider::approve`] plays the
//! user's browser, [`Faults`] injects failures per endpoint, [`FakeProvider::stats`]
//! counts what reached the provider and [`FakeProvider::introspect`] proves that
//! a token handed out by tokenvault is a live one.
//!
//! Tokens are opaque random strings with recognizable prefixes (`fake_at_`,
//! `fake_rt_`, `fake_code_`) so that tests can search database dumps and logs
//! for them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, PRAGMA, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use rand::RngCore as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Prefix of every access token the fake issues.
pub const ACCESS_TOKEN_PREFIX: &str = "fake_at_";
/// Prefix of every refresh token the fake issues.
pub const REFRESH_TOKEN_PREFIX: &str = "fake_rt_";
/// Prefix of every authorization code the fake issues.
pub const CODE_PREFIX: &str = "fake_code_";

/// Lifetime of an authorization code.
const CODE_TTL: TimeDelta = TimeDelta::minutes(10);
/// How long [`FakeProvider::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the fake expects clients to authenticate at `/token` and `/revoke`
/// (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    Post,
    /// Either of the two (but never both in one request).
    Either,
}

/// Configuration of a [`FakeProvider`].
#[derive(Debug, Clone)]
pub struct FakeProviderConfig {
    /// The only client the provider knows; default `"test-client"`.
    pub client_id: String,
    /// That client's secret; default `"test-secret"`.
    pub client_secret: String,
    /// Accepted client authentication; default [`ClientAuthMethod::Either`].
    pub client_auth: ClientAuthMethod,
    /// Lifetime of access tokens, returned as `expires_in`; default 3600 s.
    pub access_token_ttl: Duration,
    /// Default `true`: each refresh returns a new refresh token and
    /// invalidates the old one. When `false`, refresh responses carry no
    /// `refresh_token` and the old one stays valid.
    pub rotate_refresh_tokens: bool,
    /// When `true` (default `false`), presenting a refresh token that was
    /// already rotated away revokes the whole grant (reuse detection, as in
    /// the OAuth 2.0 Security BCP).
    pub revoke_grant_on_refresh_token_reuse: bool,
    /// Separator of scopes in requests and responses; default `" "`
    /// (GitHub/Slack style providers use `","`).
    pub scope_separator: String,
    /// Incremental authorization switch, e.g.
    /// `Some(("include_granted_scopes".into(), "true".into()))`: when that
    /// parameter with that value is on an authorization request, the new
    /// grant's scopes are the user's previously granted scopes (over its live
    /// grants) ∪ the requested ones. Default `None`.
    pub incremental_param: Option<(String, String)>,
    /// Default `true`; `false` makes `/authorize` redirect with
    /// `error=access_denied`.
    pub auto_approve: bool,
}

impl Default for FakeProviderConfig {
    fn default() -> Self {
        Self {
            client_id: "test-client".to_owned(),
            client_secret: "test-secret".to_owned(),
            client_auth: ClientAuthMethod::Either,
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            revoke_grant_on_refresh_token_reuse: false,
            scope_separator: " ".to_owned(),
            incremental_param: None,
            auto_approve: true,
        }
    }
}

/// An endpoint of the fake, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /token`.
    Token,
    /// `POST /revoke`.
    Revoke,
    /// `GET /authorize`.
    Authorize,
}

/// A fault the fake injects into a request, before normal processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a small `text/plain` body (an invalid
    /// status code is answered as 500).
    Status(u16),
    /// Sleep this long, then answer normally.
    Delay(Duration),
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
    fn take(&self, endpoint: Endpoint) -> Vec<Fault> {
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

/// One request that reached `POST /revoke` past fault injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// The `token` parameter as sent.
    pub token: String,
    /// The `token_type_hint` parameter as sent, if any.
    pub token_type_hint: Option<String>,
    /// Whether client authentication succeeded (when not, nothing was revoked
    /// and the request was answered 401).
    pub client_authenticated: bool,
    /// Whether the token was a live access or refresh token when the request arrived.
    pub was_active: bool,
}

/// A snapshot of what reached the fake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests to `GET /authorize`, including those answered by a fault.
    pub authorize_requests: u64,
    /// Token requests with `grant_type=authorization_code`, successful or not
    /// (including those answered by a fault).
    pub code_exchanges: u64,
    /// Token requests with `grant_type=refresh_token`, successful or not
    /// (including those answered by a fault).
    pub refreshes: u64,
    /// Refresh requests answered with new tokens.
    pub successful_refreshes: u64,
    /// Revocation requests processed (past fault injection), in arrival order.
    pub revocations: Vec<RevocationRecord>,
    /// Every request to `POST /token`, including those answered by a fault.
    pub token_endpoint_requests: u64,
    /// Every request to `POST /revoke`, including those answered by a fault.
    pub revoke_endpoint_requests: u64,
}

/// Tokens minted directly by [`FakeProvider::mint_grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedGrant {
    /// A live access token for the grant.
    pub access_token: String,
    /// The grant's refresh token.
    pub refresh_token: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
}

/// What a live access token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The user the grant belongs to.
    pub subject: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The scopes of this access token (may be narrower than the grant's).
    pub scopes: Vec<String>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

/// Errors of [`FakeProvider::approve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FakeError {
    /// The authorization URL does not parse.
    #[error("authorization URL is not a valid URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// The authorization URL points somewhere other than this fake.
    #[error("authorization URL does not point at this fake provider (expected origin {expected})")]
    ForeignUrl {
        /// This fake's base URL.
        expected: String,
    },
    /// The HTTP request failed.
    #[error("request to the fake provider failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The fake answered without redirecting (e.g. 400 for an unknown client).
    #[error("the fake provider answered {status} instead of redirecting: {body}")]
    NoRedirect {
        /// HTTP status of the answer.
        status: u16,
        /// Body of the answer.
        body: String,
    },
    /// The redirect's `Location` is missing or not a URL.
    #[error("the fake provider redirected to an invalid location: {0}")]
    BadLocation(String),
}

/// How the fake is described in the catalog.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The provider's name in the catalog.
    pub name: &'static str,
    /// Whether the catalog names an incremental-authorization parameter.
    pub incremental: bool,
    /// Whether refresh may ask for a narrower scope (RFC 6749 §6).
    pub narrowing: bool,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        Self {
            name: "fake",
            incremental: true,
            narrowing: true,
        }
    }
}

/// Scopes the fake catalog allows, and its capabilities (one scope each).
pub const CATALOG_SCOPES: [&str; 5] = [
    "calendar.read",
    "calendar.write",
    "mail.read",
    "mail.send",
    "files.read",
];

/// A running fake OAuth provider. Clones share one server; it shuts down when
/// the last clone is dropped or on [`FakeProvider::shutdown`].
#[derive(Clone)]
pub struct FakeProvider {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
    base_url: Url,
    browser: reqwest::Client,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

struct ServerHandle {
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and serves the fake provider on a background task.
    pub async fn start(config: FakeProviderConfig) -> std::io::Result<FakeProvider> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{addr}/")).map_err(std::io::Error::other)?;
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;

        let shared = Arc::new(Shared {
            config,
            base_url: base_url.clone(),
            state: Mutex::new(Inner::new()),
            faults: Faults::default(),
            stats: Mutex::new(Stats::default()),
        });
        let router = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .with_state(shared.clone());

        let cancel = CancellationToken::new();
        let signal = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await
        });
        tracing::debug!(%base_url, "fake OAuth provider listening");
        Ok(FakeProvider {
            shared,
            server: Arc::new(ServerHandle {
                cancel,
                task: Mutex::new(Some(task)),
            }),
            base_url,
            browser,
        })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// `{base}/authorize`.
    pub fn authorization_url(&self) -> Url {
        self.endpoint("authorize")
    }

    /// `{base}/token`.
    pub fn token_url(&self) -> Url {
        self.endpoint("token")
    }

    /// `{base}/revoke`.
    pub fn revocation_url(&self) -> Url {
        self.endpoint("revoke")
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        url.set_path(path);
        url
    }

    /// The operator-catalog entry (TOML) that points tokenvault at this fake,
    /// allowing [`CATALOG_SCOPES`] with one capability per scope.
    pub fn catalog_toml(&self, options: &CatalogOptions) -> String {
        let base = self.base_url();
        let mut text = format!(
            "[providers.{name}]\ndisplay_name = \"Fake\"\nauthorization_url = \"{a}\"\ntoken_url = \"{t}\"\nrevocation_url = \"{r}\"\n\
             client_auth = \"client_secret_basic\"\nscope_separator = \" \"\nauthorization_params = {{ access_type = \"offline\" }}\n\
             refresh_scope_narrowing = {narrowing}\nissues_refresh_tokens = true\nallowed_scopes = [{allowed}]\n",
            name = options.name,
            a = base.join("authorize").expect("a valid URL"),
            t = base.join("token").expect("a valid URL"),
            r = base.join("revoke").expect("a valid URL"),
            narrowing = options.narrowing,
            allowed = CATALOG_SCOPES.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "),
        );
        if options.incremental {
            text.push_str("incremental_authorization = { param = \"include_granted_scopes\", value = \"true\" }\n");
        }
        text.push_str(&format!("[providers.{}.capabilities]\n", options.name));
        for scope in CATALOG_SCOPES {
            text.push_str(&format!("\"{scope}\" = [\"{scope}\"]\n"));
        }
        text
    }

    /// The configuration the fake runs with.
    pub fn config(&self) -> &FakeProviderConfig {
        &self.shared.config
    }

    /// Fault injection for this provider.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// A snapshot of the request counters and revocation records.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Acts as the user's browser: GETs the authorization URL tokenvault
    /// produced (no redirect following) and returns the `Location` it
    /// redirects to (`redirect_uri?code=..&state=..` or
    /// `?error=access_denied&state=..`). The URL must point at this fake.
    pub async fn approve(&self, authorization_url: &str) -> Result<Url, FakeError> {
        let url = Url::parse(authorization_url)?;
        if url.origin() != self.base_url.origin() {
            return Err(FakeError::ForeignUrl {
                expected: self.base_url.to_string(),
            });
        }
        let response = self.browser.get(url.clone()).send().await?;
        let status = response.status();
        if !status.is_redirection() {
            let body = response.text().await.unwrap_or_default();
            return Err(FakeError::NoRedirect {
                status: status.as_u16(),
                body,
            });
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| FakeError::BadLocation("no Location header".to_owned()))?;
        url.join(location)
            .map_err(|e| FakeError::BadLocation(format!("{location}: {e}")))
    }

    /// Sets the user ("subject") of the next authorizations (default `"user-1"`).
    pub fn set_subject(&self, subject: &str) {
        self.shared.lock_state().subject = subject.to_owned();
    }

    /// Overrides granted scopes for subsequent authorizations: of the
    /// requested scopes, grant only those in `scopes` (simulates a user
    /// unticking boxes). `None` grants everything requested again.
    pub fn grant_only(&self, scopes: Option<Vec<String>>) {
        self.shared.lock_state().grant_only = scopes;
    }

    /// Mints a grant directly (no browser), for seeding benchmarks.
    pub fn mint_grant(&self, subject: &str, scopes: &[&str]) -> MintedGrant {
        let config = &self.shared.config;
        let scopes = dedup(scopes.iter().map(|s| (*s).to_owned()));
        let mut state = self.shared.lock_state();
        let grant_id = state.new_grant(&config.client_id, subject, scopes.clone());
        let access_token = state.issue_access_token(grant_id, scopes, config.access_token_ttl);
        let refresh_token = state.issue_refresh_token(grant_id);
        MintedGrant {
            access_token,
            refresh_token,
            expires_in: config.access_token_ttl.as_secs(),
        }
    }

    /// What an access token carries, if it is live (issued here, not revoked,
    /// grant still active, not expired).
    pub fn introspect(&self, access_token: &str) -> Option<TokenInfo> {
        let state = self.shared.lock_state();
        let record = state.access_tokens.get(access_token)?;
        let grant = state.grants.get(&record.grant_id)?;
        if record.revoked || !grant.active || record.expires_at <= Utc::now() {
            return None;
        }
        Some(TokenInfo {
            subject: grant.subject.clone(),
            client_id: grant.client_id.clone(),
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
        })
    }

    /// Whether `refresh_token` would be accepted by the refresh grant now.
    pub fn is_refresh_token_active(&self, refresh_token: &str) -> bool {
        self.shared.lock_state().refresh_grant(refresh_token).is_some()
    }

    /// The scopes of the user's live grants, in first-granted order.
    pub fn granted_scopes(&self, subject: &str) -> Vec<String> {
        self.shared
            .lock_state()
            .live_scopes(&self.shared.config.client_id, subject)
    }

    /// Invalidates every grant (as if the user revoked access at the
    /// provider): all refresh and access tokens stop working.
    pub fn revoke_all_grants(&self) {
        let mut state = self.shared.lock_state();
        for grant in state.grants.values_mut() {
            grant.active = false;
        }
    }

    /// Makes every access token issued so far expired (refresh tokens stay
    /// valid), so the next use needs a refresh.
    pub fn expire_access_tokens(&self) {
        let past = Utc::now() - TimeDelta::seconds(1);
        let mut state = self.shared.lock_state();
        for record in state.access_tokens.values_mut() {
            record.expires_at = past;
        }
    }

    /// Makes every authorization code issued so far expired.
    pub fn expire_authorization_codes(&self) {
        let past = Utc::now() - TimeDelta::seconds(1);
        let mut state = self.shared.lock_state();
        for code in state.codes.values_mut() {
            code.expires_at = past;
        }
    }

    /// Stops the server (even if clones exist) and waits for it to finish.
    pub async fn shutdown(self) {
        self.server.cancel.cancel();
        let task = lock(&self.server.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// State

struct Shared {
    config: FakeProviderConfig,
    base_url: Url,
    state: Mutex<Inner>,
    faults: Faults,
    stats: Mutex<Stats>,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state)
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }
}

struct Inner {
    subject: String,
    grant_only: Option<Vec<String>>,
    codes: HashMap<String, CodeRecord>,
    grants: HashMap<u64, Grant>,
    access_tokens: HashMap<String, AccessRecord>,
    refresh_tokens: HashMap<String, RefreshRecord>,
    next_grant: u64,
}

struct CodeRecord {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    subject: String,
    scopes: Vec<String>,
    expires_at: DateTime<Utc>,
    used: bool,
    /// The grant created by exchanging this code, revoked if the code is replayed.
    grant_id: Option<u64>,
}

struct Grant {
    client_id: String,
    subject: String,
    scopes: Vec<String>,
    active: bool,
}

struct AccessRecord {
    grant_id: u64,
    scopes: Vec<String>,
    expires_at: DateTime<Utc>,
    revoked: bool,
}

struct RefreshRecord {
    grant_id: u64,
    active: bool,
}

impl Inner {
    fn new() -> Self {
        Self {
            subject: "user-1".to_owned(),
            grant_only: None,
            codes: HashMap::new(),
            grants: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            next_grant: 1,
        }
    }

    fn new_grant(&mut self, client_id: &str, subject: &str, scopes: Vec<String>) -> u64 {
        let id = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(
            id,
            Grant {
                client_id: client_id.to_owned(),
                subject: subject.to_owned(),
                scopes,
                active: true,
            },
        );
        id
    }

    fn issue_access_token(&mut self, grant_id: u64, scopes: Vec<String>, ttl: Duration) -> String {
        let token = random_token(ACCESS_TOKEN_PREFIX);
        let expires_at = TimeDelta::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.access_tokens.insert(
            token.clone(),
            AccessRecord {
                grant_id,
                scopes,
                expires_at,
                revoked: false,
            },
        );
        token
    }

    fn issue_refresh_token(&mut self, grant_id: u64) -> String {
        let token = random_token(REFRESH_TOKEN_PREFIX);
        self.refresh_tokens
            .insert(token.clone(), RefreshRecord { grant_id, active: true });
        token
    }

    /// The grant id of a refresh token that is active and whose grant is live.
    fn refresh_grant(&self, refresh_token: &str) -> Option<u64> {
        let record = self.refresh_tokens.get(refresh_token)?;
        let grant = self.grants.get(&record.grant_id)?;
        (record.active && grant.active).then_some(record.grant_id)
    }

    fn access_token_live(&self, access_token: &str) -> bool {
        self.access_tokens.get(access_token).is_some_and(|record| {
            !record.revoked
                && record.expires_at > Utc::now()
                && self.grants.get(&record.grant_id).is_some_and(|g| g.active)
        })
    }

    fn deactivate_grant(&mut self, grant_id: u64) {
        if let Some(grant) = self.grants.get_mut(&grant_id) {
            grant.active = false;
        }
    }

    /// Union of the scopes of the subject's live grants for this client.
    fn live_scopes(&self, client_id: &str, subject: &str) -> Vec<String> {
        let mut ids: Vec<_> = self
            .grants
            .iter()
            .filter(|(_, g)| g.active && g.client_id == client_id && g.subject == subject)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        dedup(
            ids.iter()
                .filter_map(|id| self.grants.get(id))
                .flat_map(|g| g.scopes.iter().cloned()),
        )
    }
}

// ---------------------------------------------------------------------------
// Handlers

/// Parsed form or query parameters. Empty values count as absent (RFC 6749 §3.1).
struct Params {
    values: HashMap<String, String>,
    repeated: Vec<String>,
}

impl Params {
    fn parse(input: &[u8]) -> Self {
        let mut values = HashMap::new();
        let mut repeated = Vec::new();
        for (key, value) in url::form_urlencoded::parse(input) {
            if values.contains_key(key.as_ref()) {
                if !repeated.contains(&key.to_string()) {
                    repeated.push(key.to_string());
                }
            } else {
                values.insert(key.into_owned(), value.into_owned());
            }
        }
        Self { values, repeated }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// An `invalid_request` description when a parameter is repeated (RFC 6749 §3.1).
    fn repeated_error(&self) -> Option<String> {
        self.repeated.first().map(|key| format!("parameter {key} is repeated"))
    }
}

async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    let base = shared.base_url.as_str().trim_end_matches('/');
    let method = match shared.config.client_auth {
        ClientAuthMethod::Basic => vec!["client_secret_basic"],
        ClientAuthMethod::Post => vec!["client_secret_post"],
        ClientAuthMethod::Either => vec!["client_secret_basic", "client_secret_post"],
    };
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": method,
        "revocation_endpoint_auth_methods_supported": method,
    }))
    .into_response()
}

async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
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
    let deny = |error: &str, description: &str| {
        redirect_with(
            &redirect,
            &[("error", error), ("error_description", description)],
            state,
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
        let subject = inner.subject.clone();
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
    redirect_with(&redirect, &[("code", &code)], state)
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = Params::parse(&body);
    shared.count(|s| {
        s.token_endpoint_requests += 1;
        match params.get("grant_type") {
            Some("authorization_code") => s.code_exchanges += 1,
            Some("refresh_token") => s.refreshes += 1,
            _ => {}
        }
    });
    let mut reduce_scopes = None;
    for fault in shared.faults.take(Endpoint::Token) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::ReduceScopes(scopes) => reduce_scopes = Some(dedup(scopes)),
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
    match params.get("grant_type") {
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing"),
        Some("authorization_code") => exchange_code(&shared, &client_id, &params, reduce_scopes),
        Some("refresh_token") => refresh(&shared, &client_id, &params, reduce_scopes),
        Some(_) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code and refresh_token are supported",
        ),
    }
}

fn exchange_code(shared: &Shared, client_id: &str, params: &Params, reduce_scopes: Option<Vec<String>>) -> Response {
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
    let access_token = state.issue_access_token(grant_id, scopes.clone(), config.access_token_ttl);
    let refresh_token = state.issue_refresh_token(grant_id);
    drop(state);

    token_response(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: config.access_token_ttl.as_secs(),
        refresh_token: Some(refresh_token),
        scope: scopes.join(&config.scope_separator),
    })
}

fn refresh(shared: &Shared, client_id: &str, params: &Params, reduce_scopes: Option<Vec<String>>) -> Response {
    let config = &shared.config;
    let Some(refresh_token) = params.get("refresh_token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required");
    };
    let invalid_grant = |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);

    let mut state = shared.lock_state();
    let Some(grant_id) = state.refresh_grant(refresh_token) else {
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

    let new_refresh_token = if config.rotate_refresh_tokens {
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
        expires_in: config.access_token_ttl.as_secs(),
        refresh_token: new_refresh_token,
        scope: scopes.join(&config.scope_separator),
    })
}

async fn revoke(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.count(|s| s.revoke_endpoint_requests += 1);
    for fault in shared.faults.take(Endpoint::Revoke) {
        match fault {
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::ReduceScopes(_) => {}
            other => return fault_response(&other),
        }
    }

    if let Err(error) = check_form(&headers) {
        return error.into_response();
    }
    let params = Params::parse(&body);
    if let Some(description) = params.repeated_error() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &description);
    }
    let Some(token) = params.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required");
    };
    let auth = authenticate_client(&shared.config, &headers, &params);

    let mut state = shared.lock_state();
    let is_live_refresh = state.refresh_grant(token).is_some();
    let was_active = is_live_refresh || state.access_token_live(token);
    if auth.is_ok() {
        // RFC 7009 §2.1: revoking a refresh token ends the grant and its access tokens.
        if let Some(record) = state.refresh_tokens.get(token) {
            let grant_id = record.grant_id;
            state.deactivate_grant(grant_id);
        } else if let Some(record) = state.access_tokens.get_mut(token) {
            record.revoked = true;
        }
    }
    drop(state);
    shared.count(|s| {
        s.revocations.push(RevocationRecord {
            token: token.to_owned(),
            token_type_hint: params.get("token_type_hint").map(str::to_owned),
            client_authenticated: auth.is_ok(),
            was_active,
        })
    });

    match auth {
        // Unknown and already invalid tokens get 200 as well (RFC 7009 §2.2).
        Ok(_) => (StatusCode::OK, [(CACHE_CONTROL, "no-store")]).into_response(),
        Err(error) => error.into_response(),
    }
}

// ---------------------------------------------------------------------------
// Protocol helpers

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    scope: String,
}

fn token_response(body: TokenResponse) -> Response {
    no_store(Json(body).into_response())
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = no_store(
        (
            status,
            Json(serde_json::json!({ "error": error, "error_description": description })),
        )
            .into_response(),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fake-provider\""),
        );
    }
    response
}

/// An RFC 6749 §5.2 error, turned into a response at the handler's edge.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        oauth_error(self.status, self.error, self.description)
    }
}

fn invalid_client(description: &'static str) -> OAuthError {
    OAuthError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description,
    }
}

/// Token and revocation requests must be `application/x-www-form-urlencoded`.
fn check_form(headers: &HeaderMap) -> Result<(), OAuthError> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if is_form {
        Ok(())
    } else {
        Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "body must be application/x-www-form-urlencoded",
        })
    }
}

/// Client authentication per RFC 6749 §2.3.1; returns the client id.
fn authenticate_client(
    config: &FakeProviderConfig,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
        })
        .map(parse_basic);
    let body_secret = params.get("client_secret");
    let body_id = params.get("client_id");

    if basic.is_some() && body_secret.is_some() {
        return Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "more than one client authentication method",
        });
    }
    let allows_basic = matches!(config.client_auth, ClientAuthMethod::Basic | ClientAuthMethod::Either);
    let allows_post = matches!(config.client_auth, ClientAuthMethod::Post | ClientAuthMethod::Either);
    match (basic, body_secret) {
        (Some(_), _) if !allows_basic => Err(invalid_client("client_secret_basic is not allowed for this client")),
        (Some(None), _) => Err(invalid_client("malformed Basic credentials")),
        (Some(Some((id, secret))), _) => {
            if id != config.client_id || secret != config.client_secret {
                Err(invalid_client("client authentication failed"))
            } else if body_id.is_some_and(|body_id| body_id != id) {
                Err(invalid_client("client_id does not match the credentials"))
            } else {
                Ok(id)
            }
        }
        (None, Some(_)) if !allows_post => Err(invalid_client("client_secret_post is not allowed for this client")),
        (None, Some(secret)) => match body_id {
            Some(id) if id == config.client_id && secret == config.client_secret => Ok(id.to_owned()),
            _ => Err(invalid_client("client authentication failed")),
        },
        (None, None) => Err(invalid_client("client authentication required")),
    }
}

/// Decodes `base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(credentials: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(credentials).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
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

fn is_base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn redirect_with(redirect: &Url, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut location = redirect.clone();
    {
        let mut query = location.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    match HeaderValue::from_str(location.as_str()) {
        Ok(value) => (StatusCode::FOUND, [(LOCATION, value)]).into_response(),
        Err(_) => error_page("redirect_uri cannot be used in a Location header"),
    }
}

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

/// The answer of a terminating fault.
fn fault_response(fault: &Fault) -> Response {
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
        Fault::Delay(_) | Fault::ReduceScopes(_) => StatusCode::OK.into_response(),
    }
}

/// A 200 response of exactly `size` bytes, streamed in chunks.
fn huge_body(size: usize) -> Response {
    const CHUNK: usize = 64 * 1024;
    static FILLER: [u8; CHUNK] = [b'x'; CHUNK];
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK);
        Ok::<_, std::convert::Infallible>(Bytes::from_static(&FILLER[..len]))
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

fn split_scopes(scope: &str, separator: &str) -> Vec<String> {
    let parts: Vec<&str> = if separator.is_empty() {
        vec![scope]
    } else {
        scope.split(separator).collect()
    };
    dedup(
        parts
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    )
}

/// Removes duplicates, keeping the first occurrence's position.
fn dedup(scopes: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    scopes.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback?tenant=t1";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn challenge(verifier: &str) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in pairs {
            serializer.append_pair(key, value);
        }
        serializer.finish()
    }

    fn auth_url(p: &FakeProvider, scope: &str, extra: &[(&str, &str)]) -> String {
        let mut url = p.authorization_url();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", "test-client")
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("scope", scope)
            .append_pair("state", "st-123")
            .append_pair("code_challenge", &challenge(VERIFIER))
            .append_pair("code_challenge_method", "S256")
            .append_pair("access_type", "offline");
        for (key, value) in extra {
            url.query_pairs_mut().append_pair(key, value);
        }
        url.to_string()
    }

    fn query(url: &Url, key: &str) -> Option<String> {
        url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
        }
        fn error(&self) -> String {
            self.json()["error"].as_str().unwrap_or_default().to_owned()
        }
        fn str(&self, key: &str) -> String {
            self.json()[key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key} in {}", self.json()))
                .to_owned()
        }
        fn header(&self, name: http::HeaderName) -> &str {
            self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
        }
    }

    async fn post(url: Url, pairs: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(pairs));
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap(),
        }
    }

    const BASIC: Option<(&str, &str)> = Some(("test-client", "test-secret"));

    async fn get_code(p: &FakeProvider, scope: &str) -> String {
        let location = p.approve(&auth_url(p, scope, &[])).await.unwrap();
        query(&location, "code").unwrap()
    }

    async fn exchange(p: &FakeProvider, code: &str, verifier: &str) -> Answer {
        let pairs = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ];
        post(p.token_url(), &pairs, BASIC).await
    }

    async fn refresh_with(p: &FakeProvider, refresh_token: &str, scope: Option<&str>) -> Answer {
        let mut pairs = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        post(p.token_url(), &pairs, BASIC).await
    }

    /// Code flow; returns (access_token, refresh_token).
    async fn tokens(p: &FakeProvider, scope: &str) -> (String, String) {
        let code = get_code(p, scope).await;
        let answer = exchange(p, &code, VERIFIER).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        (answer.str("access_token"), answer.str("refresh_token"))
    }

    async fn start() -> FakeProvider {
        FakeProvider::start(FakeProviderConfig::default()).await.unwrap()
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn full_code_flow_with_pkce() {
        let p = start().await;
        assert_eq!(p.base_url().host_str(), Some("127.0.0.1"));
        assert_eq!(p.token_url().path(), "/token");
        assert_eq!(p.revocation_url().path(), "/revoke");

        let location = p.approve(&auth_url(&p, "calendar.read mail.send", &[])).await.unwrap();
        assert_eq!(location.path(), "/oauth/callback");
        assert_eq!(query(&location, "tenant").as_deref(), Some("t1"));
        assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
        let code = query(&location, "code").unwrap();
        assert!(code.starts_with(CODE_PREFIX));
        assert!(code.len() >= CODE_PREFIX.len() + 43);

        let answer = exchange(&p, &code, VERIFIER).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header(CACHE_CONTROL), "no-store");
        assert_eq!(answer.header(CONTENT_TYPE), "application/json");
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "calendar.read mail.send");
        let access_token = answer.str("access_token");
        let refresh_token = answer.str("refresh_token");
        assert!(access_token.starts_with(ACCESS_TOKEN_PREFIX));
        assert!(access_token.len() >= ACCESS_TOKEN_PREFIX.len() + 43);
        assert!(refresh_token.starts_with(REFRESH_TOKEN_PREFIX));

        let info = p.introspect(&access_token).unwrap();
        assert_eq!(info.subject, "user-1");
        assert_eq!(info.client_id, "test-client");
        assert_eq!(info.scopes, scopes(&["calendar.read", "mail.send"]));
        let ttl = info.expires_at - Utc::now();
        assert!(ttl > TimeDelta::seconds(3590) && ttl <= TimeDelta::seconds(3600));
        assert!(p.is_refresh_token_active(&refresh_token));
        assert_eq!(p.introspect("fake_at_nope"), None);

        let stats = p.stats();
        assert_eq!(stats.authorize_requests, 1);
        assert_eq!(stats.code_exchanges, 1);
        assert_eq!(stats.token_endpoint_requests, 1);
        assert_eq!(stats.refreshes, 0);
    }

    #[tokio::test]
    async fn client_secret_post_and_subject() {
        let p = start().await;
        p.set_subject("alice");
        let code = get_code(&p, "a").await;
        let pairs = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", "test-client"),
            ("client_secret", "test-secret"),
        ];
        let answer = post(p.token_url(), &pairs, None).await;
        assert_eq!(answer.status, 200);
        let info = p.introspect(&answer.str("access_token")).unwrap();
        assert_eq!(info.subject, "alice");
    }

    #[tokio::test]
    async fn wrong_verifier_is_invalid_grant() {
        let p = start().await;
        let code = get_code(&p, "a").await;
        let wrong = "x".repeat(43);
        let answer = exchange(&p, &code, &wrong).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.header(CONTENT_TYPE), "application/json");
        assert_eq!(answer.error(), "invalid_grant");
        assert!(answer.json()["error_description"].is_string());

        // Too short a verifier fails too, even if its hash matched.
        let short = "abc";
        let p = start().await;
        let mut url = Url::parse(&auth_url(&p, "a", &[])).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "code_challenge" {
                    challenge(short)
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        let code = query(&p.approve(url.as_str()).await.unwrap(), "code").unwrap();
        assert_eq!(exchange(&p, &code, short).await.error(), "invalid_grant");

        // Wrong redirect_uri.
        let code = get_code(&p, "a").await;
        let pairs = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", VERIFIER),
        ];
        let answer = post(p.token_url(), &pairs, BASIC).await;
        assert_eq!(answer.error(), "invalid_grant");
    }

    #[tokio::test]
    async fn reused_code_is_invalid_grant_and_revokes_its_tokens() {
        let p = start().await;
        let code = get_code(&p, "a").await;
        let first = exchange(&p, &code, VERIFIER).await;
        assert_eq!(first.status, 200);
        let (access_token, refresh_token) = (first.str("access_token"), first.str("refresh_token"));
        assert!(p.introspect(&access_token).is_some());

        let second = exchange(&p, &code, VERIFIER).await;
        assert_eq!(second.status, 400);
        assert_eq!(second.error(), "invalid_grant");
        assert_eq!(p.introspect(&access_token), None);
        assert!(!p.is_refresh_token_active(&refresh_token));
        assert_eq!(p.stats().code_exchanges, 2);
    }

    #[tokio::test]
    async fn expired_code_is_invalid_grant() {
        let p = start().await;
        let code = get_code(&p, "a").await;
        p.expire_authorization_codes();
        assert_eq!(exchange(&p, &code, VERIFIER).await.error(), "invalid_grant");
    }

    #[tokio::test]
    async fn refresh_rotates_refresh_tokens() {
        let p = start().await;
        let (access_token, rt1) = tokens(&p, "a b").await;

        let answer = refresh_with(&p, &rt1, None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header(CACHE_CONTROL), "no-store");
        let rt2 = answer.str("refresh_token");
        let at2 = answer.str("access_token");
        assert_ne!(rt1, rt2);
        assert_ne!(access_token, at2);
        assert_eq!(answer.str("scope"), "a b");
        assert!(!p.is_refresh_token_active(&rt1));
        assert!(p.is_refresh_token_active(&rt2));
        // Older access tokens live on until they expire.
        assert!(p.introspect(&access_token).is_some());
        assert_eq!(p.introspect(&at2).unwrap().scopes, scopes(&["a", "b"]));

        let old = refresh_with(&p, &rt1, None).await;
        assert_eq!(old.status, 400);
        assert_eq!(old.error(), "invalid_grant");

        let again = refresh_with(&p, &rt2, None).await;
        assert_eq!(again.status, 200);
        let stats = p.stats();
        assert_eq!(stats.refreshes, 3);
        assert_eq!(stats.successful_refreshes, 2);
    }

    #[tokio::test]
    async fn refresh_without_rotation_keeps_the_refresh_token() {
        let p = FakeProvider::start(FakeProviderConfig {
            rotate_refresh_tokens: false,
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let (_, rt) = tokens(&p, "a").await;
        for _ in 0..2 {
            let answer = refresh_with(&p, &rt, None).await;
            assert_eq!(answer.status, 200);
            assert!(answer.json().get("refresh_token").is_none());
        }
        assert!(p.is_refresh_token_active(&rt));
    }

    #[tokio::test]
    async fn refresh_token_reuse_detection_revokes_the_grant() {
        let p = FakeProvider::start(FakeProviderConfig {
            revoke_grant_on_refresh_token_reuse: true,
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let (_, rt1) = tokens(&p, "a").await;
        let rt2 = refresh_with(&p, &rt1, None).await.str("refresh_token");
        assert_eq!(refresh_with(&p, &rt1, None).await.error(), "invalid_grant");
        assert!(!p.is_refresh_token_active(&rt2));
    }

    #[tokio::test]
    async fn refresh_with_narrower_scope() {
        let p = start().await;
        let (_, rt) = tokens(&p, "a b c").await;

        let narrowed = refresh_with(&p, &rt, Some("b")).await;
        assert_eq!(narrowed.status, 200);
        assert_eq!(narrowed.str("scope"), "b");
        let info = p.introspect(&narrowed.str("access_token")).unwrap();
        assert_eq!(info.scopes, scopes(&["b"]));

        // The grant keeps its scopes: the new refresh token can get them all.
        let rt = narrowed.str("refresh_token");
        let full = refresh_with(&p, &rt, None).await;
        assert_eq!(full.str("scope"), "a b c");

        let rt = full.str("refresh_token");
        let wider = refresh_with(&p, &rt, Some("a d")).await;
        assert_eq!(wider.status, 400);
        assert_eq!(wider.error(), "invalid_scope");
        // A rejected request does not rotate the token.
        assert!(p.is_refresh_token_active(&rt));
    }

    #[tokio::test]
    async fn revocation_ends_the_grant() {
        let p = start().await;
        let (access_token, refresh_token) = tokens(&p, "a").await;

        let answer = post(
            p.revocation_url(),
            &[("token", refresh_token.as_str()), ("token_type_hint", "refresh_token")],
            BASIC,
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(p.introspect(&access_token), None);
        assert!(!p.is_refresh_token_active(&refresh_token));
        assert_eq!(refresh_with(&p, &refresh_token, None).await.error(), "invalid_grant");

        // Unknown (or already revoked) tokens get 200 as well.
        let unknown = post(p.revocation_url(), &[("token", "fake_rt_unknown")], BASIC).await;
        assert_eq!(unknown.status, 200);

        let stats = p.stats();
        assert_eq!(
            stats.revocations,
            vec![
                RevocationRecord {
                    token: refresh_token.clone(),
                    token_type_hint: Some("refresh_token".to_owned()),
                    client_authenticated: true,
                    was_active: true,
                },
                RevocationRecord {
                    token: "fake_rt_unknown".to_owned(),
                    token_type_hint: None,
                    client_authenticated: true,
                    was_active: false,
                },
            ]
        );
    }

    #[tokio::test]
    async fn revoking_an_access_token_keeps_the_grant() {
        let p = start().await;
        let (access_token, refresh_token) = tokens(&p, "a").await;
        let answer = post(
            p.revocation_url(),
            &[("token", access_token.as_str())],
            Some(("test-client", "wrong")),
        )
        .await;
        assert_eq!(answer.status, 401);
        assert!(p.introspect(&access_token).is_some());

        let answer = post(p.revocation_url(), &[("token", access_token.as_str())], BASIC).await;
        assert_eq!(answer.status, 200);
        assert_eq!(p.introspect(&access_token), None);
        assert!(p.is_refresh_token_active(&refresh_token));
        let records = p.stats().revocations;
        assert_eq!(records.len(), 2);
        assert!(!records[0].client_authenticated);
        assert!(records[0].was_active);
        assert!(records[1].client_authenticated);
    }

    #[tokio::test]
    async fn bad_client_authentication_is_401() {
        let p = start().await;
        let (_, rt) = tokens(&p, "a").await;
        let pairs = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];

        let wrong = post(p.token_url(), &pairs, Some(("test-client", "nope"))).await;
        assert_eq!(wrong.status, 401);
        assert_eq!(wrong.error(), "invalid_client");
        assert!(wrong.header(WWW_AUTHENTICATE).starts_with("Basic"));

        let none = post(p.token_url(), &pairs, None).await;
        assert_eq!(none.status, 401);
        assert_eq!(none.error(), "invalid_client");

        let unknown = post(p.token_url(), &pairs, Some(("other", "test-secret"))).await;
        assert_eq!(unknown.status, 401);

        let mut both = pairs.to_vec();
        both.push(("client_secret", "test-secret"));
        let both = post(p.token_url(), &both, BASIC).await;
        assert_eq!(both.status, 400);
        assert_eq!(both.error(), "invalid_request");

        // The token survived all that.
        assert!(p.is_refresh_token_active(&rt));

        // A provider that only takes client_secret_post refuses Basic.
        let post_only = FakeProvider::start(FakeProviderConfig {
            client_auth: ClientAuthMethod::Post,
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let minted = post_only.mint_grant("u", &["a"]);
        let pairs = [
            ("grant_type", "refresh_token"),
            ("refresh_token", minted.refresh_token.as_str()),
        ];
        let answer = post(post_only.token_url(), &pairs, BASIC).await;
        assert_eq!(answer.status, 401);
        let mut with_body = pairs.to_vec();
        with_body.extend([("client_id", "test-client"), ("client_secret", "test-secret")]);
        assert_eq!(post(post_only.token_url(), &with_body, None).await.status, 200);

        // And one that only takes Basic refuses the body.
        let basic_only = FakeProvider::start(FakeProviderConfig {
            client_auth: ClientAuthMethod::Basic,
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let minted = basic_only.mint_grant("u", &["a"]);
        let mut with_body = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", minted.refresh_token.as_str()),
        ];
        with_body.extend([("client_id", "test-client"), ("client_secret", "test-secret")]);
        assert_eq!(post(basic_only.token_url(), &with_body, None).await.status, 401);
    }

    #[tokio::test]
    async fn basic_credentials_are_form_urlencoded() {
        let p = FakeProvider::start(FakeProviderConfig {
            client_id: "my client".to_owned(),
            client_secret: "s3cr:t+%".to_owned(),
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let minted = p.mint_grant("u", &["a"]);
        let pairs = [
            ("grant_type", "refresh_token"),
            ("refresh_token", minted.refresh_token.as_str()),
        ];
        let encoded = Some(("my+client", "s3cr%3At%2B%25"));
        assert_eq!(post(p.token_url(), &pairs, encoded).await.status, 200);
    }

    #[tokio::test]
    async fn malformed_token_requests() {
        let p = start().await;
        let unsupported = post(p.token_url(), &[("grant_type", "password")], BASIC).await;
        assert_eq!(unsupported.status, 400);
        assert_eq!(unsupported.error(), "unsupported_grant_type");

        let missing = post(p.token_url(), &[("grant_type", "authorization_code")], BASIC).await;
        assert_eq!(missing.error(), "invalid_request");
        let missing = post(p.token_url(), &[("grant_type", "refresh_token")], BASIC).await;
        assert_eq!(missing.error(), "invalid_request");
        let missing = post(p.token_url(), &[], BASIC).await;
        assert_eq!(missing.error(), "invalid_request");

        let repeated = post(
            p.token_url(),
            &[("grant_type", "refresh_token"), ("grant_type", "refresh_token")],
            BASIC,
        )
        .await;
        assert_eq!(repeated.error(), "invalid_request");

        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let json = client
            .post(p.token_url())
            .basic_auth("test-client", Some("test-secret"))
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"grant_type":"refresh_token"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(json.status(), 400);
    }

    #[tokio::test]
    async fn denied_authorization_redirects_with_access_denied() {
        let p = FakeProvider::start(FakeProviderConfig {
            auto_approve: false,
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let location = p.approve(&auth_url(&p, "a", &[])).await.unwrap();
        assert_eq!(query(&location, "error").as_deref(), Some("access_denied"));
        assert!(query(&location, "error_description").is_some());
        assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
        assert_eq!(query(&location, "tenant").as_deref(), Some("t1"));
        assert_eq!(query(&location, "code"), None);
    }

    #[tokio::test]
    async fn authorize_validation() {
        let p = start().await;
        let with = |key: &str, value: Option<&str>| {
            let mut url = Url::parse(&auth_url(&p, "a", &[])).unwrap();
            let mut pairs: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != key)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if let Some(value) = value {
                pairs.push((key.to_owned(), value.to_owned()));
            }
            url.query_pairs_mut().clear().extend_pairs(pairs);
            url.to_string()
        };

        for url in [
            with("code_challenge_method", Some("plain")),
            with("code_challenge_method", None),
            with("code_challenge", None),
            with("code_challenge", Some("too-short")),
            with("response_type", None),
        ] {
            let location = p.approve(&url).await.unwrap();
            assert_eq!(query(&location, "error").as_deref(), Some("invalid_request"), "{url}");
            assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
            assert_eq!(query(&location, "code"), None);
        }
        let location = p.approve(&with("response_type", Some("token"))).await.unwrap();
        assert_eq!(query(&location, "error").as_deref(), Some("unsupported_response_type"));

        for url in [
            with("client_id", Some("someone-else")),
            with("client_id", None),
            with("redirect_uri", None),
            with("redirect_uri", Some("not a url")),
        ] {
            match p.approve(&url).await {
                Err(FakeError::NoRedirect { status: 400, body }) => {
                    assert!(body.contains("Authorization error"), "{body}")
                }
                other => panic!("expected a 400 page for {url}, got {other:?}"),
            }
        }
        assert!(matches!(
            p.approve("http://example.com/authorize").await,
            Err(FakeError::ForeignUrl { .. })
        ));
        assert_eq!(p.stats().authorize_requests, 10);
    }

    #[tokio::test]
    async fn grant_only_and_incremental_authorization() {
        let p = FakeProvider::start(FakeProviderConfig {
            incremental_param: Some(("include_granted_scopes".into(), "true".into())),
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        p.grant_only(Some(scopes(&["a", "z"])));
        let code = get_code(&p, "a b").await;
        assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "a");
        p.grant_only(None);

        // Without the parameter: only what was asked.
        let code = get_code(&p, "c").await;
        assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "c");

        // With it: everything granted before plus the new scope.
        let url = auth_url(&p, "d", &[("include_granted_scopes", "true")]);
        let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
        let answer = exchange(&p, &code, VERIFIER).await;
        assert_eq!(answer.str("scope"), "a c d");
        assert_eq!(
            p.introspect(&answer.str("access_token")).unwrap().scopes,
            scopes(&["a", "c", "d"])
        );

        // Another user has nothing granted before.
        p.set_subject("user-2");
        let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
        assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "d");
        assert_eq!(p.granted_scopes("user-1"), scopes(&["a", "c", "d"]));

        // Once revoked, nothing is "previously granted".
        p.revoke_all_grants();
        p.set_subject("user-1");
        let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
        assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "d");
    }

    #[tokio::test]
    async fn comma_separated_scopes() {
        let p = FakeProvider::start(FakeProviderConfig {
            scope_separator: ",".to_owned(),
            ..FakeProviderConfig::default()
        })
        .await
        .unwrap();
        let code = get_code(&p, "repo,read:user").await;
        let answer = exchange(&p, &code, VERIFIER).await;
        assert_eq!(answer.str("scope"), "repo,read:user");
        let rt = answer.str("refresh_token");
        assert_eq!(refresh_with(&p, &rt, Some("repo")).await.str("scope"), "repo");
    }

    #[tokio::test]
    async fn mint_grant_and_revoke_all() {
        let p = start().await;
        let minted = p.mint_grant("bench-user", &["a", "b"]);
        assert_eq!(minted.expires_in, 3600);
        let info = p.introspect(&minted.access_token).unwrap();
        assert_eq!(info.subject, "bench-user");
        assert_eq!(info.scopes, scopes(&["a", "b"]));
        let answer = refresh_with(&p, &minted.refresh_token, None).await;
        assert_eq!(answer.str("scope"), "a b");
        let rt = answer.str("refresh_token");

        p.expire_access_tokens();
        assert_eq!(p.introspect(&minted.access_token), None);

        p.revoke_all_grants();
        assert!(!p.is_refresh_token_active(&rt));
        assert_eq!(refresh_with(&p, &rt, None).await.error(), "invalid_grant");
    }

    #[tokio::test]
    async fn fault_status_is_one_shot() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        p.faults().push(Endpoint::Token, Fault::Status(503));
        assert_eq!(p.faults().pending(Endpoint::Token), 1);
        let answer = refresh_with(&p, &minted.refresh_token, None).await;
        assert_eq!(answer.status, 503);
        assert!(serde_json::from_slice::<serde_json::Value>(&answer.body).is_err());
        assert!(answer.header(CONTENT_TYPE).starts_with("text/plain"));
        assert_eq!(p.faults().pending(Endpoint::Token), 0);
        // Nothing was processed: the refresh token is still the live one.
        assert!(p.is_refresh_token_active(&minted.refresh_token));

        let answer = refresh_with(&p, &minted.refresh_token, None).await;
        assert_eq!(answer.status, 200);
        let stats = p.stats();
        assert_eq!(stats.refreshes, 2);
        assert_eq!(stats.successful_refreshes, 1);
        assert_eq!(stats.token_endpoint_requests, 2);
    }

    #[tokio::test]
    async fn faults_are_fifo_and_persistent_until_cleared() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        p.faults().push(Endpoint::Token, Fault::Status(500));
        p.faults().push(Endpoint::Token, Fault::Status(502));
        assert_eq!(refresh_with(&p, "x", None).await.status, 500);
        assert_eq!(refresh_with(&p, "x", None).await.status, 502);
        assert_eq!(refresh_with(&p, "x", None).await.status, 400);

        p.faults().set_persistent(Endpoint::Token, Some(Fault::Status(429)));
        for _ in 0..3 {
            assert_eq!(refresh_with(&p, &minted.refresh_token, None).await.status, 429);
        }
        p.faults().set_persistent(Endpoint::Token, None);
        p.faults().set_persistent(Endpoint::Token, Some(Fault::InvalidGrant));
        p.faults().clear();
        assert_eq!(refresh_with(&p, &minted.refresh_token, None).await.status, 200);
    }

    #[tokio::test]
    async fn fault_delay_then_normal_answer() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        p.faults()
            .push(Endpoint::Token, Fault::Delay(Duration::from_millis(300)));
        let started = Instant::now();
        let answer = refresh_with(&p, &minted.refresh_token, None).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(answer.status, 200);
        assert!(answer.str("access_token").starts_with(ACCESS_TOKEN_PREFIX));
    }

    #[tokio::test]
    async fn fault_invalid_grant_garbage_and_huge_body() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        let rt = minted.refresh_token.as_str();

        p.faults().push(Endpoint::Token, Fault::InvalidGrant);
        let answer = refresh_with(&p, rt, None).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.json(), serde_json::json!({ "error": "invalid_grant" }));

        p.faults().push(Endpoint::Token, Fault::GarbageJson);
        let answer = refresh_with(&p, rt, None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"{not json");

        let size = 3 * 64 * 1024 + 17;
        p.faults().push(Endpoint::Token, Fault::HugeBody(size));
        let answer = refresh_with(&p, rt, None).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), size);
        assert_eq!(answer.header(CONTENT_LENGTH), size.to_string());

        // None of those touched the grant.
        assert!(p.is_refresh_token_active(rt));
        assert_eq!(p.stats().successful_refreshes, 0);
    }

    #[tokio::test]
    async fn fault_reduce_scopes() {
        let p = start().await;
        p.faults().push(Endpoint::Token, Fault::ReduceScopes(scopes(&["a"])));
        let code = get_code(&p, "a b").await;
        let answer = exchange(&p, &code, VERIFIER).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.str("scope"), "a");
        assert_eq!(
            p.introspect(&answer.str("access_token")).unwrap().scopes,
            scopes(&["a"])
        );
        // The grant itself was reduced.
        let rt = answer.str("refresh_token");
        assert_eq!(refresh_with(&p, &rt, Some("b")).await.error(), "invalid_scope");

        // On refresh too.
        let minted = p.mint_grant("u", &["x", "y"]);
        p.faults().push(Endpoint::Token, Fault::ReduceScopes(scopes(&["y"])));
        let answer = refresh_with(&p, &minted.refresh_token, None).await;
        assert_eq!(answer.str("scope"), "y");
        let rt = answer.str("refresh_token");
        assert_eq!(refresh_with(&p, &rt, None).await.str("scope"), "y");

        // And on authorize.
        p.faults()
            .push(Endpoint::Authorize, Fault::ReduceScopes(scopes(&["b"])));
        let code = get_code(&p, "a b").await;
        assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "b");
    }

    #[tokio::test]
    async fn faults_on_revoke_and_authorize() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        let pairs = [("token", minted.refresh_token.as_str())];

        p.faults().push(Endpoint::Revoke, Fault::Status(503));
        let answer = post(p.revocation_url(), &pairs, BASIC).await;
        assert_eq!(answer.status, 503);
        assert!(p.is_refresh_token_active(&minted.refresh_token));
        assert!(p.stats().revocations.is_empty());

        p.faults()
            .push(Endpoint::Revoke, Fault::Delay(Duration::from_millis(100)));
        let answer = post(p.revocation_url(), &pairs, BASIC).await;
        assert_eq!(answer.status, 200);
        assert!(!p.is_refresh_token_active(&minted.refresh_token));
        let stats = p.stats();
        assert_eq!(stats.revocations.len(), 1);
        assert_eq!(stats.revoke_endpoint_requests, 2);

        p.faults().push(Endpoint::Authorize, Fault::Status(500));
        match p.approve(&auth_url(&p, "a", &[])).await {
            Err(FakeError::NoRedirect { status: 500, .. }) => {}
            other => panic!("expected a 500, got {other:?}"),
        }
        assert!(p.approve(&auth_url(&p, "a", &[])).await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_refreshes_are_counted() {
        let p = start().await;
        let minted = p.mint_grant("u", &["a"]);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let p = p.clone();
            let rt = minted.refresh_token.clone();
            tasks.push(tokio::spawn(async move { refresh_with(&p, &rt, None).await.status }));
        }
        let mut ok = 0;
        for task in tasks {
            if task.await.unwrap() == 200 {
                ok += 1;
            }
        }
        // Rotation: exactly one of the racing refreshes wins.
        assert_eq!(ok, 1);
        assert_eq!(p.stats().refreshes, 20);
        assert_eq!(p.stats().successful_refreshes, 1);
    }

    #[tokio::test]
    async fn metadata_and_shutdown() {
        let p = start().await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = p.base_url().join(".well-known/oauth-authorization-server").unwrap();
        let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(meta["token_endpoint"], p.token_url().as_str());
        assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));

        let token_url = p.token_url();
        p.shutdown().await;
        assert!(client.post(token_url).send().await.is_err());
    }
}
