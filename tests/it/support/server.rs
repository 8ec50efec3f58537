//! The real server in this process, on port 0 over a test database, with a
//! clock the test moves, the test tenants' API keys, and typed clients.

use super::db::{Backend, TestDb};
use base64::Engine;
use secrecy::SecretString;
use std::sync::Arc;
use tokenvault::app::App;
use tokenvault::clock::ManualClock;
use tokenvault::config::{ApiKeyConfig, Config, Role};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// API keys the test server knows.
pub mod keys {
    pub const AGENT: &str = "test-agent-key-acme";
    pub const PLATFORM: &str = "test-platform-key-acme";
    pub const ADMIN: &str = "test-admin-key-all";
    pub const OTHER_AGENT: &str = "test-agent-key-globex";
    pub const OTHER_PLATFORM: &str = "test-platform-key-globex";
    pub const TENANT: &str = "acme";
    pub const OTHER_TENANT: &str = "globex";
}

/// A random inline KEK spec `id:base64`.
pub fn random_kek(id: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn api_key(name: &str, key: &str, role: Role, tenant: &str) -> ApiKeyConfig {
    ApiKeyConfig {
        name: name.to_owned(),
        sha256: tokenvault::auth::hash_api_key(key),
        roles: vec![role],
        tenants: vec![tenant.to_owned()],
    }
}

/// The configuration test servers start from.
pub fn base_config(db: &TestDb) -> Config {
    let mut config = Config {
        database_url: Some(db.url.clone()),
        ..Config::default()
    };
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.http_listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace_seconds = 5;
    config.database.max_connections = 8;
    config.keys.inline = Some(SecretString::from(random_kek("test-1")));
    // The tests keep the key table in their one database (a production-shaped start needs this flag).
    config.keys.allow_shared_database = true;
    // Inline keys cannot be rotated by tokenvault: no KEK epochs unless a test turns them on.
    config.keys.rotate_every_days = Some(0);
    config.lifecycle.sweep_interval_seconds = 0;
    config.auth.api_keys = vec![
        api_key("agent-acme", keys::AGENT, Role::Agent, keys::TENANT),
        api_key("platform-acme", keys::PLATFORM, Role::Platform, keys::TENANT),
        api_key("admin", keys::ADMIN, Role::Admin, "*"),
        api_key("agent-globex", keys::OTHER_AGENT, Role::Agent, keys::OTHER_TENANT),
        api_key(
            "platform-globex",
            keys::OTHER_PLATFORM,
            Role::Platform,
            keys::OTHER_TENANT,
        ),
    ];
    config.consent.allowed_return_origins = vec!["https://app.example.com".to_owned()];
    config
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// An interceptor sending this `authorization` value.
    pub fn with(value: MetadataValue<tonic::metadata::Ascii>) -> Self {
        Self(Some(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The real server, on port 0, over a fresh database, with a clock the test moves.
pub struct TestServer {
    pub handle: Option<tokenvault::api::ServerHandle>,
    pub clock: Arc<ManualClock>,
    pub db: TestDb,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new(backend).await;
        let mut config = base_config(&db);
        tweak(&mut config);
        Self::start_on(db, config).await
    }

    pub async fn start_on(db: TestDb, config: Config) -> Self {
        let clock = Arc::new(ManualClock::new());
        let app = App::build(config, clock.clone(), true).await.expect("app builds");
        let handle = tokenvault::api::start(Arc::new(app)).await.expect("server starts");
        let endpoint = Channel::from_shared(format!("http://{}", handle.grpc_addr)).unwrap();
        // A TLS server is reached through the test's own TLS channels; this one stays unused.
        let channel = if handle.app.config.tls.is_some() {
            endpoint.connect_lazy()
        } else {
            endpoint.connect().await.expect("connect to test server")
        };
        Self {
            handle: Some(handle),
            clock,
            db,
            channel,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.handle.as_ref().expect("running").app
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.as_ref().expect("running").http_addr)
    }

    pub fn authed(&self, key: Option<&str>) -> Authed {
        let value = key.map(|k| format!("Bearer {k}").parse().expect("ascii key"));
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    pub fn tokens(&self, key: &str) -> tokenvault::proto::token_service_client::TokenServiceClient<Authed> {
        tokenvault::proto::token_service_client::TokenServiceClient::new(self.authed(Some(key)))
    }

    /// `GetAccessToken` for the whole grant of `connection_id`, with the agent key.
    pub async fn token_for(
        &self,
        connection_id: &str,
    ) -> Result<tokenvault::proto::GetAccessTokenResponse, tonic::Status> {
        self.tokens(super::keys::AGENT)
            .get_access_token(tokenvault::proto::GetAccessTokenRequest {
                connection_id: connection_id.to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub fn consent(&self, key: &str) -> tokenvault::proto::consent_service_client::ConsentServiceClient<Authed> {
        tokenvault::proto::consent_service_client::ConsentServiceClient::new(self.authed(Some(key)))
    }

    pub fn connections(
        &self,
        key: &str,
    ) -> tokenvault::proto::connection_service_client::ConnectionServiceClient<Authed> {
        tokenvault::proto::connection_service_client::ConnectionServiceClient::new(self.authed(Some(key)))
    }

    pub fn events(&self, key: &str) -> tokenvault::proto::event_service_client::EventServiceClient<Authed> {
        tokenvault::proto::event_service_client::EventServiceClient::new(self.authed(Some(key)))
    }

    pub fn admin(&self, key: &str) -> tokenvault::proto::admin_service_client::AdminServiceClient<Authed> {
        tokenvault::proto::admin_service_client::AdminServiceClient::new(self.authed(Some(key)))
    }

    /// Stops the server; drops its database.
    pub async fn stop(self) {
        drop(self.into_db().await);
    }

    /// Stops the server and hands back its database (for a restart on it).
    pub async fn into_db(mut self) -> TestDb {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
        self.db
    }
}
