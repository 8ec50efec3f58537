//! `tokenvault serve` as a separate process (the real binary), configured for
//! the test tenants' keys and the fake provider.

use crate::support::provider::CatalogOptions;
use crate::support::{keys, TestDb};
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::path::Path;
use tokenvault::proto::token_service_client::TokenServiceClient;
use tokenvault_testkit::fake_provider::FakeProvider;
use tokenvault_testkit::server_process::ProcessConfig;

/// `tokenvault serve` in its own process, configured for the test tenant's
/// keys and the fake provider, with its temporary directory.
pub struct ServerProcess {
    pub process: tokenvault_testkit::server_process::ServerProcess,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub async fn spawn(db: &TestDb, kek: &str, fake: &FakeProvider, log_level: &str) -> Self {
        Self::spawn_with(db, kek, fake, log_level, "").await
    }

    /// As [`ServerProcess::spawn`], with `more` TOML appended to the configuration.
    pub async fn spawn_with(db: &TestDb, kek: &str, fake: &FakeProvider, log_level: &str, more: &str) -> Self {
        Self::spawn_with_keys(db, kek, "", fake, log_level, more).await
    }

    /// As [`ServerProcess::spawn_with`], with `keys_extra` lines in its `[keys]` section.
    pub async fn spawn_with_keys(
        db: &TestDb,
        kek: &str,
        keys_extra: &str,
        fake: &FakeProvider,
        log_level: &str,
        more: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(&catalog, fake.catalog_toml(&CatalogOptions::default())).unwrap();
        let key = |k: &str| tokenvault::auth::hash_api_key(k);
        let extra = format!(
            r#"[[auth.api_keys]]
name = "agent"
sha256 = "{agent}"
roles = ["agent"]
tenants = ["{tenant}"]
[[auth.api_keys]]
name = "platform"
sha256 = "{platform}"
roles = ["platform"]
tenants = ["{tenant}"]
[[auth.api_keys]]
name = "admin"
sha256 = "{admin}"
roles = ["admin"]
tenants = ["*"]
[lifecycle]
sweep_interval_seconds = 0
outbox_poll_seconds = 1
{more}
"#,
            agent = key(keys::AGENT),
            platform = key(keys::PLATFORM),
            admin = key(keys::ADMIN),
            tenant = keys::TENANT,
        );
        let config = ProcessConfig {
            database_url: db.url.expose_secret(),
            kek,
            log_level,
            catalog: &catalog,
            fake,
            keys_extra,
            extra: &extra,
        };
        let process = tokenvault_testkit::server_process::ServerProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_tokenvault")),
            dir.path(),
            "server",
            |grpc, http| config.render(grpc, http),
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        Self {
            grpc: process.grpc,
            http: process.http,
            process,
            _dir: dir,
        }
    }

    pub async fn tokens(&self) -> TokenServiceClient<crate::support::Authed> {
        let value = format!("Bearer {}", keys::AGENT).parse().unwrap();
        TokenServiceClient::new(tonic::service::interceptor::InterceptedService::new(
            self.process.channel().await.expect("connect to tokenvault"),
            crate::support::Bearer::with(value),
        ))
    }

    pub fn kill9(&mut self) {
        self.process.kill();
    }

    pub fn stop(mut self) -> String {
        self.kill9();
        self.process.log_text()
    }
}
