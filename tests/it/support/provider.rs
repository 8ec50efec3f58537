//! The fake OAuth provider wired into a test server's catalog, and the user's
//! side of a consent: the browser at the fake and at tokenvault's callback.

use super::fixture::WithProvider;
use super::{keys, TestServer};
use tokenvault::config::{Config, ProviderClientConfig};
use tokenvault::proto::{ConfirmConsentRequest, StartConsentRequest};
use tokenvault_testkit::fake_provider::{FakeProvider, FakeProviderConfig};

pub use tokenvault_testkit::fake_provider::CatalogOptions;

/// A fake whose incremental parameter matches the catalog's.
pub async fn start_fake(mut config: FakeProviderConfig, options: &CatalogOptions) -> FakeProvider {
    config.incremental_param = options
        .incremental
        .then(|| ("include_granted_scopes".to_owned(), "true".to_owned()));
    FakeProvider::start(config).await.expect("fake provider starts")
}

/// Points `config` at `fake` through an operator catalog file.
pub fn install(config: &mut Config, fake: &FakeProvider, options: &CatalogOptions) -> tempfile::TempPath {
    install_catalog(config, fake, options.name, &fake.catalog_toml(options))
}

/// Points `config` at `fake` through an operator catalog file holding
/// `catalog` (TOML), under the provider name `name`.
pub fn install_catalog(config: &mut Config, fake: &FakeProvider, name: &str, catalog: &str) -> tempfile::TempPath {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), catalog).unwrap();
    let path = file.into_temp_path();
    config.providers.catalog_file = Some(path.to_path_buf());
    config.providers.clients.insert(
        name.to_owned(),
        ProviderClientConfig {
            client_id: fake.config().client_id.clone(),
            client_secret: Some(fake.config().client_secret.clone().into()),
            client_secret_file: None,
        },
    );
    path
}

/// A browser that does not follow redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The query parameters of a URL.
pub fn query(url: &url::Url) -> std::collections::HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A consent request of the test tenant for `user` at the fake, returning to
/// the allowed origin.
pub fn start_request(user: &str, capabilities: &[&str]) -> StartConsentRequest {
    StartConsentRequest {
        tenant_id: keys::TENANT.into(),
        user_id: user.into(),
        provider: "fake".into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        scopes: vec![],
        return_url: "https://app.example.com/connected".into(),
        ..Default::default()
    }
}

/// The user's browser: it visits tokenvault's start handle (keeping the
/// binding cookie it sets), and follows the provider's redirect back to
/// tokenvault's callback with that cookie, as a browser would.
#[derive(Default)]
pub struct UserBrowser {
    cookies: std::sync::Mutex<Vec<String>>,
}

impl UserBrowser {
    /// A browser with no cookies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Visits `authorization_url` (tokenvault's `/oauth/start/{handle}`):
    /// keeps the cookie and returns where it redirects (the provider).
    pub async fn start(&self, authorization_url: &str) -> url::Url {
        let response = browser().get(authorization_url).send().await.expect("/oauth/start");
        assert_eq!(response.status(), 303, "/oauth/start answers 303");
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookies.lock().unwrap().push(pair);
        }
        url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
    }

    /// The values of the cookies this browser holds (the binding cookies).
    pub fn cookie_values(&self) -> Vec<String> {
        self.cookies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|pair| pair.split_once('=').map(|(_, value)| value.to_owned()))
            .collect()
    }

    /// Follows `authorization_url` through tokenvault's start handle and
    /// approves at the fake: the callback URL the fake redirects to.
    pub async fn approve(&self, fake: &FakeProvider, authorization_url: &str) -> url::Url {
        let provider_url = self.start(authorization_url).await;
        fake.approve(provider_url.as_str()).await.expect("approve")
    }

    /// Requests `url` (tokenvault's callback) with the cookies this browser holds.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        let cookies = self.cookies.lock().unwrap().join("; ");
        let mut request = browser().get(url);
        if !cookies.is_empty() {
            request = request.header("cookie", cookies);
        }
        request.send().await.expect("callback")
    }

    /// Follows `callback` and returns the query of the `303` to the return URL.
    pub async fn follow_callback(&self, callback: &url::Url) -> std::collections::HashMap<String, String> {
        let response = self.get(callback.as_str()).await;
        assert_eq!(response.status(), 303, "callback answers 303");
        let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        query(&location)
    }
}

/// Starts consent for `user` with `capabilities`, approves it at the fake and
/// follows the callback; returns the connection id.
pub async fn connect(with: &WithProvider, user: &str, capabilities: &[&str]) -> String {
    connect_on(&with.server, &with.fake, user, capabilities).await
}

/// As [`connect`], with the server and fake given separately: the browser
/// approves, and the platform confirms with the completion code for `user`.
pub async fn connect_on(server: &TestServer, fake: &FakeProvider, user: &str, capabilities: &[&str]) -> String {
    let started = server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, capabilities))
        .await
        .expect("StartConsent")
        .into_inner();
    let params = approve_on(fake, &started.authorization_url).await;
    confirm_on(server, user, &params).await
}

/// A new browser approves `authorization_url` at the fake and follows the
/// callback: the return URL's query (`consent_id`, `status`, `completion_code`).
pub async fn approve_on(fake: &FakeProvider, authorization_url: &str) -> std::collections::HashMap<String, String> {
    let user_browser = UserBrowser::new();
    let callback = user_browser.approve(fake, authorization_url).await;
    user_browser.follow_callback(&callback).await
}

/// The platform confirms an approved consent (the return URL's query
/// `params`) for `user`; returns the connection id.
pub async fn confirm_on(server: &TestServer, user: &str, params: &std::collections::HashMap<String, String>) -> String {
    assert_eq!(params.get("status").map(String::as_str), Some("approved"), "{params:?}");
    let confirmed = confirm(server, user, params).await.expect("ConfirmConsent");
    assert!(!confirmed.connection_id.is_empty());
    confirmed.connection_id
}

/// `ConfirmConsent` from `user`'s session with the return URL's query `params`.
pub async fn confirm(
    server: &TestServer,
    user: &str,
    params: &std::collections::HashMap<String, String>,
) -> Result<tokenvault::proto::ConfirmConsentResponse, tonic::Status> {
    server
        .consent(keys::PLATFORM)
        .confirm_consent(ConfirmConsentRequest {
            consent_id: params["consent_id"].clone(),
            completion_code: params["completion_code"].clone(),
            user_id: user.into(),
        })
        .await
        .map(|r| r.into_inner())
}
