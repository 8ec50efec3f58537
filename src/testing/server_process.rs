//! `tokenvault serve` as a separate operating-system process, for tests that
//! kill it and for benchmarks that must not share a runtime with their client.

use super::fake_provider::{CatalogOptions, FakeProvider};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a server may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Configuration of a server process on one database whose one provider is
/// the fake (under [`CatalogOptions::default`]'s name).
#[derive(Debug, Clone, Copy)]
pub struct ProcessConfig<'a> {
    /// `database_url`.
    pub database_url: &'a str,
    /// `keys.inline` (`id:base64`).
    pub kek: &'a str,
    /// `log.level` (the format is JSON).
    pub log_level: &'a str,
    /// The operator catalog file describing the fake ([`FakeProvider::catalog_toml`]).
    pub catalog: &'a Path,
    /// The fake, for its client credentials.
    pub fake: &'a FakeProvider,
    /// TOML appended as is: `[[auth.api_keys]]` entries and any other sections.
    pub extra: &'a str,
}

impl ProcessConfig<'_> {
    /// The configuration file's text for listeners on `grpc` and `http`.
    pub fn render(&self, grpc: SocketAddr, http: SocketAddr) -> String {
        format!(
            r#"database_url = "{db}"
[server]
grpc_listen = "{grpc}"
http_listen = "{http}"
shutdown_grace_seconds = 2
[log]
format = "json"
level = "{level}"
[keys]
inline = "{kek}"
[consent]
allowed_return_origins = ["https://app.example.com"]
[providers]
catalog_file = "{catalog}"
[providers.{provider}]
client_id = "{client_id}"
client_secret = "{client_secret}"
{extra}"#,
            db = self.database_url,
            level = self.log_level,
            kek = self.kek,
            catalog = self.catalog.display(),
            provider = CatalogOptions::default().name,
            client_id = self.fake.config().client_id,
            client_secret = self.fake.config().client_secret,
            extra = self.extra,
        )
    }
}

/// A running `tokenvault serve`; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The HTTP listener.
    pub http: SocketAddr,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Writes the configuration `config(grpc, http)` renders for two free
    /// ports to `dir/<name>.toml`, starts `binary serve --config` on it with
    /// no inherited `TOKENVAULT_*` variable, and waits until its gRPC health
    /// check answers. Panics (with the log) if it exits or never answers.
    pub async fn spawn(
        binary: &Path,
        dir: &Path,
        name: &str,
        config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    ) -> Self {
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config(grpc, http)).expect("write the server configuration");
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(binary);
        // The server reads every `TOKENVAULT_*` variable as configuration; the
        // caller's own (such as `TOKENVAULT_TEST_PG`) must not reach it.
        for (variable, _) in std::env::vars_os() {
            if variable.to_string_lossy().starts_with("TOKENVAULT_") {
                command.env_remove(&variable);
            }
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the server log"))
            .spawn()
            .expect("start tokenvault");
        let mut server = Self { child, grpc, http, log };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(channel) = self.try_channel().await {
                if HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tokenvault exited early ({status}): {}", self.log_text());
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "tokenvault did not become healthy: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("a valid URL")
            .connect()
            .await
    }

    /// A new HTTP/2 connection to the gRPC listener.
    pub async fn channel(&self) -> Channel {
        self.try_channel().await.expect("connect to tokenvault")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (Linux `/proc/<pid>/status`), if readable.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
