//! The scenario the integration tests share: a fresh database, the fake
//! provider (with its options) in the server's catalog, and the real server
//! with a clock the test moves; replicas of that server on the same database,
//! and restarts of it with another configuration.

use super::provider::{install, install_catalog, start_fake, CatalogOptions};
use super::{base_config, Backend, TestDb, TestServer};
use tokenvault::config::{Config, ProviderClientConfig};
use tokenvault_testkit::fake_provider::{FakeProvider, FakeProviderConfig};

type Tweak = Box<dyn FnOnce(&mut Config)>;
type CatalogText = Box<dyn FnOnce(&FakeProvider) -> String>;

/// How a [`WithProvider`] is built: [`WithProvider::build`], any of the
/// options, then [`Fixture::start`].
pub struct Fixture {
    backend: Backend,
    fake_config: FakeProviderConfig,
    options: CatalogOptions,
    shared_fake: Option<FakeProvider>,
    catalog: Option<CatalogText>,
    tweaks: Vec<Tweak>,
}

impl Fixture {
    /// The fake's configuration (default: [`FakeProviderConfig::default`]);
    /// its incremental parameter follows the catalog options.
    pub fn fake(mut self, config: FakeProviderConfig) -> Self {
        self.fake_config = config;
        self
    }

    /// How the catalog describes the fake (default: [`CatalogOptions::default`]).
    pub fn catalog(mut self, options: CatalogOptions) -> Self {
        self.options = options;
        self
    }

    /// The test's own catalog text instead of the fake's entry (the provider
    /// keeps the catalog options' name).
    pub fn catalog_toml(mut self, catalog: impl FnOnce(&FakeProvider) -> String + 'static) -> Self {
        self.catalog = Some(Box::new(catalog));
        self
    }

    /// A fake the test already runs, instead of a new one; it keeps running
    /// when the scenario stops.
    pub fn shared_fake(mut self, fake: &FakeProvider) -> Self {
        self.shared_fake = Some(fake.clone());
        self
    }

    /// Changes the server's configuration once the fake is in its catalog.
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'static) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Starts the fake (unless shared), a fresh database and the server.
    pub async fn start(self) -> WithProvider {
        let (fake, owns_fake) = match self.shared_fake {
            Some(fake) => (fake, false),
            None => (start_fake(self.fake_config, &self.options).await, true),
        };
        let db = TestDb::new(self.backend).await;
        let mut config = base_config(&db);
        let catalog = match self.catalog {
            Some(text) => install_catalog(&mut config, &fake, self.options.name, &text(&fake)),
            None => install(&mut config, &fake, &self.options),
        };
        for tweak in self.tweaks {
            tweak(&mut config);
        }
        let server = TestServer::start_on(db, config).await;
        WithProvider {
            server,
            fake,
            owns_fake,
            _catalog: catalog,
        }
    }
}

/// A test server with the fake provider configured.
pub struct WithProvider {
    pub server: TestServer,
    pub fake: FakeProvider,
    owns_fake: bool,
    _catalog: tempfile::TempPath,
}

impl WithProvider {
    /// The default scenario on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::build(backend).start().await
    }

    /// A scenario on `backend` with options.
    pub fn build(backend: Backend) -> Fixture {
        Fixture {
            backend,
            fake_config: FakeProviderConfig::default(),
            options: CatalogOptions::default(),
            shared_fake: None,
            catalog: None,
            tweaks: Vec::new(),
        }
    }

    /// A second replica: the same database, keys, catalog and provider
    /// client, its own cache and clock.
    pub async fn replica(&self) -> TestServer {
        let mut config = base_config(&self.server.db);
        same_keys_and_providers(&self.server.app().config, &mut config);
        TestServer::start_on(TestDb::attach(&self.server.db), config).await
    }

    /// Stops the server and starts a new one on the same database, with the
    /// same fake, keys and catalog, and `tweak` applied.
    pub async fn restart(self, tweak: impl FnOnce(&mut Config)) -> Self {
        let Self {
            server,
            fake,
            owns_fake,
            _catalog,
        } = self;
        let mut config = base_config(&server.db);
        same_keys_and_providers(&server.app().config, &mut config);
        tweak(&mut config);
        let db = server.into_db().await;
        let server = TestServer::start_on(db, config).await;
        Self {
            server,
            fake,
            owns_fake,
            _catalog,
        }
    }

    /// Stops the server (and the fake, unless shared) and hands back the
    /// database it ran on.
    pub async fn into_db(self) -> TestDb {
        let db = self.server.into_db().await;
        if self.owns_fake {
            self.fake.shutdown().await;
        }
        db
    }

    /// Stops the server and the fake (unless shared); drops the database.
    pub async fn stop(self) {
        drop(self.into_db().await);
    }
}

/// Copies the key-encryption keys, the catalog file and the provider clients.
fn same_keys_and_providers(from: &Config, to: &mut Config) {
    to.keys.inline = from.keys.inline.clone();
    to.keys.active = from.keys.active.clone();
    to.providers.catalog_file = from.providers.catalog_file.clone();
    for (name, client) in &from.providers.clients {
        to.providers.clients.insert(
            name.clone(),
            ProviderClientConfig {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone(),
                client_secret_file: None,
            },
        );
    }
}
