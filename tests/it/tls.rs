//! TLS on both listeners, and mutual TLS where a client certificate identifies the caller.

use crate::support::{base_config, keys, Backend, TestDb, TestServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use tokenvault::config::{ClientCertConfig, Role, TlsConfig};
use tokenvault::proto::token_service_client::TokenServiceClient;
use tokenvault::proto::GetAccessTokenRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tokenvault test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Self {
            ca,
            ca_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(&self, mutual: bool) -> TlsConfig {
        let (cert, key) = self.issue("tokenvault", &["localhost"], false);
        let write = |name: &str, text: &str| {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TlsConfig {
            cert_file: write("tls.crt", &cert),
            key_file: write("tls.key", &key),
            client_ca_file: mutual.then(|| write("ca.crt", &self.ca.pem())),
            client_crl_file: None,
            reload_interval_seconds: 30,
        }
    }
}

async fn channel(server: &TestServer, pki: &Pki, identity: Option<(String, String)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let addr = server.handle.as_ref().unwrap().grpc_addr;
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection")
}

fn token_request() -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        connection_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_speak_tls_and_client_certificates_identify_callers() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    config.tls = Some(pki.config(true));
    config.auth.client_certs = vec![ClientCertConfig {
        name: "agent-cert".into(),
        subject: "cn:agent-7".into(),
        roles: vec![Role::Agent],
        tenants: vec![keys::TENANT.into()],
    }];
    let server = TestServer::start_on(db, config).await;

    // gRPC over TLS with an API key.
    let plain = channel(&server, &pki, None).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(plain.clone());
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok());
    let mut request = tonic::Request::new(token_request());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", keys::AGENT).parse().unwrap());
    let error = TokenServiceClient::new(plain.clone())
        .get_access_token(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "authenticated by the API key: {error:?}");

    // No key and no certificate: UNAUTHENTICATED.
    let error = TokenServiceClient::new(plain)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // A client certificate signed by the configured CA identifies the caller.
    let with_cert = channel(&server, &pki, Some(pki.issue("agent-7", &["agent.internal"], true))).await;
    let error = TokenServiceClient::new(with_cert)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::NotFound,
        "authenticated by the certificate: {error:?}"
    );
    // A verified certificate nobody configured authenticates nobody.
    let stranger = channel(&server, &pki, Some(pki.issue("stranger", &[], true))).await;
    let error = TokenServiceClient::new(stranger)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // HTTP over TLS too.
    let http = server.handle.as_ref().unwrap().http_addr;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let body = client
        .get(format!("https://localhost:{}/healthz", http.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok\n");
    // Plain text is refused on the TLS port.
    assert!(reqwest::get(format!("http://127.0.0.1:{}/healthz", http.port()))
        .await
        .is_err());
    server.stop().await;
}

#[tokio::test]
async fn bad_tls_files_stop_start_up_with_a_clear_error() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    config.tls = Some(TlsConfig {
        cert_file: "/nonexistent/tls.crt".into(),
        key_file: "/nonexistent/tls.key".into(),
        client_ca_file: None,
        client_crl_file: None,
        reload_interval_seconds: 30,
    });
    let app = tokenvault::app::App::build(config, std::sync::Arc::new(tokenvault::clock::SystemClock), true)
        .await
        .unwrap();
    let error = tokenvault::api::start(std::sync::Arc::new(app)).await.unwrap_err();
    assert!(error.to_string().contains("/nonexistent/tls.crt"), "{error}");
}
