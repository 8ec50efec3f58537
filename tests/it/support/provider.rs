//! The fake OAuth provider wired into a test server's catalog, and the user's
//! side of a consent: the browser at the fake and at tokenvault's callback.

use super::fixture::WithProvider;
use super::{keys, TestServer};
use tokenvault::config::{Config, ProviderClientConfig};
use tokenvault::proto::StartConsentRequest;
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
    }
}

/// Starts consent for `user` with `capabilities`, approves it at the fake and
/// follows the callback; returns the connection id.
pub async fn connect(with: &WithProvider, user: &str, capabilities: &[&str]) -> String {
    connect_on(&with.server, &with.fake, user, capabilities).await
}

/// As [`connect`], with the server and fake given separately.
pub async fn connect_on(server: &TestServer, fake: &FakeProvider, user: &str, capabilities: &[&str]) -> String {
    let started = server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, capabilities))
        .await
        .expect("StartConsent")
        .into_inner();
    let callback = fake.approve(&started.authorization_url).await.expect("approve");
    let response = browser().get(callback.as_str()).send().await.expect("callback");
    assert_eq!(response.status(), 303, "callback answers 303");
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let params = query(&location);
    assert_eq!(
        params.get("status").map(String::as_str),
        Some("connected"),
        "{location}"
    );
    params["connection_id"].clone()
}
