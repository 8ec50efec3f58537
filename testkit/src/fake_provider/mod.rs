//! A fake OAuth 2.0 provider that speaks real HTTP on `127.0.0.1:0`.
//!
//! It implements the parts of the protocol tokenvault relies on:
//!
//! - RFC 6749: authorization code grant (`GET /authorize`, `POST /token`),
//!   refresh grant, client authentication (§2.3.1) and error responses (§5.2);
//! - RFC 7636: PKCE, `S256` only (`plain` is rejected);
//! - RFC 7009: token revocation (`POST /revoke`, where revoking an access
//!   token ends only that token; `POST /revoke-grant`, where it ends the
//!   token's grant);
//! - revocation by the bearer token, as Dropbox's `/2/auth/token/revoke`
//!   (`POST /bearer-revoke`), which ends the token's grant;
//! - revocation of exactly the bearer token, refresh or access, as Slack's
//!   `auth.revoke` with token rotation (`POST /slack-revoke`);
//! - GitHub-style grant deletion (`DELETE /applications/{client_id}/grant`,
//!   HTTP Basic, JSON body), which ends every grant of the client for the
//!   token's user;
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
//!
//! One module per job: [`config`](FakeProviderConfig) and the shared `state`;
//! one module per endpoint (`authorize`, `token`, `revoke`, `bearer_revoke`,
//! `slack_revoke`, `grant_deletion`, `discovery`) with `client_auth`, `params` and
//! `responses` beside them; fault injection
//! ([`Faults`]), counters ([`Stats`]); and the test's controls: the browser
//! ([`FakeProvider::approve`]), grants ([`FakeProvider::mint_grant`] and the
//! like) and the catalog entry ([`FakeProvider::catalog_toml`]).

mod authorize;
mod bearer;
mod bearer_revoke;
mod browser;
mod catalog;
mod client_auth;
mod config;
mod discovery;
mod faults;
mod grant_deletion;
mod grants;
mod identity;
mod params;
mod responses;
mod revoke;
mod slack_revoke;
mod state;
mod stats;
mod token;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{delete, get, post};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use browser::FakeError;
pub use catalog::{CatalogAccount, CatalogOptions, CatalogRevocation, CATALOG_SCOPES, UNSUPPORTED_REASON};
pub use config::{ClientAuthMethod, FakeProviderConfig, ACCESS_TOKEN_PREFIX, CODE_PREFIX, REFRESH_TOKEN_PREFIX};
pub use faults::{Endpoint, Fault, Faults};
pub use grants::{MintedGrant, TokenInfo};
pub use identity::display_of;
pub use stats::{
    BearerRevocationRecord, GrantDeletionRecord, RevocationRecord, SlackRevocationRecord, SlackTokenKind, Stats,
};

use state::{lock, Inner, Shared};

/// How long [`FakeProvider::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// The HTTP server task, cancelled when the last clone of the provider goes.
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
            .route("/authorize", get(authorize::authorize))
            .route("/token", post(token::token))
            .route("/refresh", post(token::refresh_endpoint))
            .route("/revoke", post(revoke::revoke))
            .route("/revoke-grant", post(revoke::revoke_grant))
            .route("/bearer-revoke", post(bearer_revoke::bearer_revoke))
            .route("/slack-revoke", post(slack_revoke::slack_revoke))
            .route("/applications/{client_id}/grant", delete(grant_deletion::delete_grant))
            .route("/.well-known/oauth-authorization-server", get(discovery::metadata))
            .route("/userinfo", get(identity::userinfo))
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

    /// `{base}/refresh`: refreshes only, when the fake is configured with
    /// `separate_refresh_endpoint`.
    pub fn refresh_url(&self) -> Url {
        self.endpoint("refresh")
    }

    /// `{base}/userinfo`: the user of a live access token (`sub`, `email`, `login`).
    pub fn userinfo_url(&self) -> Url {
        self.endpoint("userinfo")
    }

    /// `{base}/revoke`: RFC 7009; revoking an access token ends only that token.
    pub fn revocation_url(&self) -> Url {
        self.endpoint("revoke")
    }

    /// `{base}/revoke-grant`: RFC 7009; revoking an access token ends its grant.
    pub fn grant_revocation_url(&self) -> Url {
        self.endpoint("revoke-grant")
    }

    /// `{base}/bearer-revoke`: revocation by the bearer token (Dropbox-style).
    pub fn bearer_revocation_url(&self) -> Url {
        self.endpoint("bearer-revoke")
    }

    /// `{base}/slack-revoke`: revocation of exactly the bearer token, refresh
    /// or access (Slack-style).
    pub fn slack_revocation_url(&self) -> Url {
        self.endpoint("slack-revoke")
    }

    /// `{base}/applications/{client_id}/grant` with the placeholder left in,
    /// as a `github_grant` catalog entry names it.
    pub fn grant_deletion_url_template(&self) -> String {
        format!("{}applications/{{client_id}}/grant", self.base_url)
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        url.set_path(path);
        url
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
