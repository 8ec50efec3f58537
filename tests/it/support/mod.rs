//! Test kit: a fresh database per test (PostgreSQL or SQLite), and the real
//! server on port 0 with typed, authenticated clients.

#![allow(dead_code)]

pub mod provider;
pub mod proxy;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use std::sync::Arc;
use tokenvault::app::App;
use tokenvault::clock::ManualClock;
use tokenvault::config::{ApiKeyConfig, Config, Role};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The server PostgreSQL tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("TOKENVAULT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The `host:port` of the PostgreSQL server the tests use.
pub fn pg_host_port() -> String {
    let url = pg_admin_url();
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}

/// A database that exists for one test and is dropped afterwards (even on panic).
pub struct TestDb {
    pub backend: Backend,
    pub url: SecretString,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    backend,
                    url: SecretString::from(url),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("tv_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL must be reachable (set TOKENVAULT_TEST_PG)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let base = pg_admin_url();
                let url = match base.rsplit_once('/') {
                    Some((prefix, _)) => format!("{prefix}/{name}"),
                    None => panic!("TOKENVAULT_TEST_PG must end in /<database>"),
                };
                Self {
                    backend,
                    url: SecretString::from(url),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// The same database, without owning it (a second replica's view).
    pub fn attach(other: &TestDb) -> Self {
        Self {
            backend: other.backend,
            url: other.url.clone(),
            pg_name: None,
            _dir: None,
        }
    }

    /// A second database on the same backend (for a separate key database).
    pub async fn sibling(&self) -> Self {
        Self::new(self.backend).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

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

    pub fn consent(&self, key: &str) -> tokenvault::proto::consent_service_client::ConsentServiceClient<Authed> {
        tokenvault::proto::consent_service_client::ConsentServiceClient::new(self.authed(Some(key)))
    }

    pub fn connections(
        &self,
        key: &str,
    ) -> tokenvault::proto::connection_service_client::ConnectionServiceClient<Authed> {
        tokenvault::proto::connection_service_client::ConnectionServiceClient::new(self.authed(Some(key)))
    }

    pub fn admin(&self, key: &str) -> tokenvault::proto::admin_service_client::AdminServiceClient<Authed> {
        tokenvault::proto::admin_service_client::AdminServiceClient::new(self.authed(Some(key)))
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

/// Every text and byte column of every table, for "no secret in clear" checks.
pub async fn dump_database(pool: &sqlx::AnyPool) -> Vec<u8> {
    use sqlx::Row;
    let mut out = Vec::new();
    for table in [
        "users",
        "data_keys",
        "connections",
        "access_tokens",
        "consent_requests",
        "audit_events",
        "revocation_outbox",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(pool)
            .await
            .expect("dump");
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(text)) = row.try_get::<Option<String>, _>(i) {
                    out.extend_from_slice(text.as_bytes());
                } else if let Ok(Some(bytes)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    out.extend_from_slice(&bytes);
                }
                out.push(b'\n');
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Exposes a secret for assertions.
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

/// Runs an async test body on both backends: `on_both!(name, body)` makes
/// the tests `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::support::Backend::Postgres).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::support::Backend::Sqlite).await;
            }
        }
    };
}
