//! moto's server mode: a real HTTP implementation of the AWS KMS API on
//! 127.0.0.1, one process per test, that the test can stop (SIGSTOP), resume
//! (SIGCONT) or kill. `moto_server` must be on PATH (`pip install 'moto[server]'`;
//! scripts/test installs it): without it these tests fail, never skip.

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenvault::config::{KeysBackend, KmsConfig};

pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub addr: SocketAddr,
    child: Child,
}

impl Moto {
    /// Whether `moto_server` can be run (the benches measure AWS KMS only then).
    pub fn available() -> bool {
        Command::new("moto_server")
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `moto_server` on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        // moto accepts any credentials; the SDK's environment provider reads these.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run `moto_server` ({error}): the AWS KMS tests need moto's server mode; \
                     install it with `pip install 'moto[server]==5.2.1'` (scripts/test does this when it is missing)"
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto_server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { addr, child }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[keys]` configuration for this moto with `active` (and `older`) keys.
    pub fn keys_config(&self, active: &str, older: &[&str]) -> tokenvault::config::KeysConfig {
        tokenvault::config::KeysConfig {
            backend: KeysBackend::AwsKms,
            kms: Some(KmsConfig {
                key_id: active.to_owned(),
                older_key_ids: older.iter().map(|id| id.to_string()).collect(),
                region: REGION.to_owned(),
                endpoint_url: Some(self.url().parse().unwrap()),
                deletion_pending_days: 7,
            }),
            // No KEK epochs unless a test turns them on.
            rotate_every_days: Some(0),
            ..Default::default()
        }
    }

    /// A KMS client of its own (for creating and changing keys).
    pub async fn client(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(REGION))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// Creates a symmetric key; returns its ARN.
    pub async fn create_key(&self) -> String {
        let created = self
            .client()
            .await
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .send()
            .await
            .unwrap();
        created.key_metadata().unwrap().arn().unwrap().to_owned()
    }

    /// Creates a key and `alias/<name>` for it; returns the key's ARN.
    pub async fn create_aliased_key(&self, name: &str) -> String {
        let arn = self.create_key().await;
        self.client()
            .await
            .create_alias()
            .alias_name(format!("alias/{name}"))
            .target_key_id(&arn)
            .send()
            .await
            .unwrap();
        arn
    }

    /// Freezes the server (SIGSTOP): connections hang, requests time out.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// Resumes a paused server (SIGCONT), its keys intact.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// Kills the server: connections are refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

impl Drop for Moto {
    fn drop(&mut self) {
        signal_quietly(&self.child);
        self.kill();
    }
}

fn signal_quietly(child: &Child) {
    let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
}
