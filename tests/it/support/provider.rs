//! The fake OAuth provider wired into a test server's catalog.

use super::{base_config, Backend, TestDb, TestServer};
use tokenvault::config::{Config, ProviderClientConfig};
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
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), fake.catalog_toml(options)).unwrap();
    let path = file.into_temp_path();
    config.providers.catalog_file = Some(path.to_path_buf());
    config.providers.clients.insert(
        options.name.to_owned(),
        ProviderClientConfig {
            client_id: fake.config().client_id.clone(),
            client_secret: Some(fake.config().client_secret.clone().into()),
            client_secret_file: None,
        },
    );
    path
}

/// A test server with the fake provider configured.
pub struct WithProvider {
    pub server: TestServer,
    pub fake: FakeProvider,
    _catalog: tempfile::TempPath,
}

impl WithProvider {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(
            backend,
            FakeProviderConfig::default(),
            CatalogOptions::default(),
            |_| {},
        )
        .await
    }

    pub async fn start_with(
        backend: Backend,
        fake_config: FakeProviderConfig,
        options: CatalogOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let fake = start_fake(fake_config, &options).await;
        let db = TestDb::new(backend).await;
        let mut config = base_config(&db);
        let catalog = install(&mut config, &fake, &options);
        tweak(&mut config);
        let server = TestServer::start_on(db, config).await;
        Self {
            server,
            fake,
            _catalog: catalog,
        }
    }

    pub async fn stop(self) {
        self.server.stop().await;
        self.fake.shutdown().await;
    }
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

/// Starts consent for `user` with `capabilities`, approves it at the fake and
/// follows the callback; returns the connection id.
pub async fn connect(with: &WithProvider, user: &str, capabilities: &[&str]) -> String {
    connect_on(&with.server, &with.fake, user, capabilities).await
}

/// As [`connect`], with the server and fake given separately.
pub async fn connect_on(server: &TestServer, fake: &FakeProvider, user: &str, capabilities: &[&str]) -> String {
    use tokenvault::proto::StartConsentRequest;
    let started = server
        .consent(super::keys::PLATFORM)
        .start_consent(StartConsentRequest {
            tenant_id: super::keys::TENANT.into(),
            user_id: user.into(),
            provider: "fake".into(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            scopes: vec![],
            return_url: "https://app.example.com/connected".into(),
        })
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

/// A server and a fake owned elsewhere (for tests that restart the server).
pub struct WithProviderRef<'a> {
    pub server: &'a TestServer,
    pub fake: &'a FakeProvider,
}

impl WithProviderRef<'_> {
    /// As [`connect`].
    pub async fn connect(&self, user: &str, capabilities: &[&str]) -> String {
        connect_on(self.server, self.fake, user, capabilities).await
    }
}
