//! TLS on both listeners, and mutual TLS where a client certificate identifies
//! the caller by a typed subject (`uri:`, `dns:`, `cn:`) and a client CRL
//! refuses revoked certificates.

use crate::support::{base_config, keys, Backend, TestDb, TestServer};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
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
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Self {
            ca,
            ca_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        self.issue_with(cn, names, &[], client, None)
    }

    /// A client certificate with these DNS and URI SANs and this serial number.
    fn client(&self, cn: &str, dns: &[&str], uris: &[&str], serial: u64) -> (String, String) {
        self.issue_with(cn, dns, uris, true, Some(serial))
    }

    fn issue_with(
        &self,
        cn: &str,
        names: &[&str],
        uris: &[&str],
        client: bool,
        serial: Option<u64>,
    ) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.serial_number = serial.map(SerialNumber::from);
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

    /// A PEM CRL of this CA revoking these serial numbers.
    fn crl(&self, revoked: &[u64]) -> String {
        let at = rcgen::date_time_ymd(2020, 1, 1);
        CertificateRevocationListParams {
            this_update: at,
            next_update: rcgen::date_time_ymd(2999, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca, &self.ca_key)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// Writes `text` to the file `name` in the directory.
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self, mutual: bool) -> TlsConfig {
        let (cert, key) = self.issue("tokenvault", &["localhost"], false);
        TlsConfig {
            cert_file: self.write("tls.crt", &cert),
            key_file: self.write("tls.key", &key),
            client_ca_file: mutual.then(|| self.write("ca.crt", &self.ca.pem())),
            client_crl_file: None,
            reload_interval_seconds: 30,
        }
    }
}

async fn channel(server: &TestServer, pki: &Pki, identity: Option<(String, String)>) -> Channel {
    try_channel(server, pki, identity).await.expect("TLS connection")
}

async fn try_channel(
    server: &TestServer,
    pki: &Pki,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
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

/// One `[[auth.client_certs]]` entry.
fn cert_caller(name: &str, subject: &str, roles: &[Role]) -> ClientCertConfig {
    ClientCertConfig {
        name: name.into(),
        subject: subject.into(),
        roles: roles.to_vec(),
        tenants: vec![keys::TENANT.into()],
    }
}

/// The status a `GetAccessToken` call with only this client certificate gets:
/// `NOT_FOUND` once a caller with the agent role is authenticated (the
/// connection does not exist), `PERMISSION_DENIED` for a caller without it.
async fn token_call_with(server: &TestServer, pki: &Pki, identity: (String, String)) -> Code {
    let channel = channel(server, pki, Some(identity)).await;
    TokenServiceClient::new(channel)
        .get_access_token(token_request())
        .await
        .unwrap_err()
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_subjects_match_by_type_and_prefer_uri_sans() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    config.tls = Some(pki.config(true));
    config.auth.client_certs = vec![
        cert_caller("spiffe-agent", "uri:spiffe://tokenvault/agent/7", &[Role::Agent]),
        cert_caller("dns-agent", "dns:worker.internal", &[Role::Agent]),
        cert_caller("cn-agent", "cn:legacy-agent", &[Role::Agent]),
        // Maps names the agent certificates below also carry, without the agent role.
        cert_caller("cn-admin", "cn:admin-7", &[Role::Admin]),
        cert_caller("dns-admin", "dns:admin.internal", &[Role::Admin]),
    ];
    let server = TestServer::start_on(db, config).await;
    let call = |cn: &str, dns: &[&str], uris: &[&str], serial: u64| {
        token_call_with(&server, &pki, pki.client(cn, dns, uris, serial))
    };

    // Each type matches a certificate name of that type.
    assert_eq!(
        call("anyone", &[], &["spiffe://tokenvault/agent/7"], 1).await,
        Code::NotFound
    );
    assert_eq!(call("anyone", &["worker.internal"], &[], 2).await, Code::NotFound);
    assert_eq!(call("legacy-agent", &[], &[], 3).await, Code::NotFound);

    // The same text under another type is not a match.
    assert_eq!(
        call("spiffe://tokenvault/agent/7", &[], &[], 4).await,
        Code::Unauthenticated,
        "a common name that reads like the URI is not the URI SAN"
    );
    assert_eq!(call("worker.internal", &[], &[], 5).await, Code::Unauthenticated);
    assert_eq!(call("anyone", &["legacy-agent"], &[], 6).await, Code::Unauthenticated);
    // Exact values only.
    assert_eq!(
        call("anyone", &[], &["spiffe://tokenvault/agent/7/"], 7).await,
        Code::Unauthenticated
    );

    // URI SANs are preferred, then DNS SANs, then the common name: the agent
    // role proves which entry identified the certificate.
    assert_eq!(
        call("admin-7", &["admin.internal"], &["spiffe://tokenvault/agent/7"], 8).await,
        Code::NotFound,
        "identified by the URI SAN"
    );
    assert_eq!(
        call("admin-7", &["worker.internal"], &[], 9).await,
        Code::NotFound,
        "identified by the DNS SAN before the common name"
    );
    assert_eq!(
        call("admin-7", &["admin.internal"], &[], 10).await,
        Code::PermissionDenied,
        "identified by the DNS SAN, which lacks the role"
    );
    assert_eq!(
        call("legacy-agent", &[], &["spiffe://tokenvault/unmapped"], 11).await,
        Code::NotFound,
        "an unmapped URI SAN falls back to the other names"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untyped_client_certificate_subject_stops_start_up_naming_the_entry() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    config.tls = Some(pki.config(true));
    config.auth.client_certs = vec![cert_caller("old-style", "spiffe://tokenvault/agent/7", &[Role::Agent])];
    let built = tokenvault::app::App::build(config, std::sync::Arc::new(tokenvault::clock::SystemClock), true).await;
    let Err(error) = built else {
        panic!("an untyped subject must stop start-up");
    };
    let error = error.to_string();
    assert!(error.contains("auth.client_certs `old-style`"), "{error}");
    assert!(error.contains("`spiffe://tokenvault/agent/7` has no type"), "{error}");
    assert!(error.contains("uri:"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_on_the_crl_is_refused_and_one_not_on_it_is_served() {
    let pki = Pki::new();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    let mut tls = pki.config(true);
    tls.client_crl_file = Some(pki.write("crl.pem", &pki.crl(&[666])));
    config.tls = Some(tls);
    config.auth.client_certs = vec![
        cert_caller("good", "uri:spiffe://tokenvault/agent/good", &[Role::Agent]),
        cert_caller("revoked", "uri:spiffe://tokenvault/agent/revoked", &[Role::Agent]),
    ];
    let server = TestServer::start_on(db, config).await;

    let good = pki.client("good", &[], &["spiffe://tokenvault/agent/good"], 665);
    assert_eq!(token_call_with(&server, &pki, good).await, Code::NotFound, "served");

    // The revoked certificate is refused at the handshake: either the
    // connection fails, or (TLS 1.3, where the server's verdict follows the
    // client's Finished) the first call on it does, never reaching the service.
    let revoked = pki.client("revoked", &[], &["spiffe://tokenvault/agent/revoked"], 666);
    match try_channel(&server, &pki, Some(revoked)).await {
        Err(_) => {}
        Ok(channel) => {
            let error = TokenServiceClient::new(channel)
                .get_access_token(token_request())
                .await
                .unwrap_err();
            assert!(
                matches!(error.code(), Code::Unavailable | Code::Unknown | Code::Internal),
                "refused by the TLS layer, not the service: {error:?}"
            );
        }
    }

    // An API key still works on the same listener.
    let plain = channel(&server, &pki, None).await;
    let mut request = tonic::Request::new(token_request());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", keys::AGENT).parse().unwrap());
    let error = TokenServiceClient::new(plain)
        .get_access_token(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    server.stop().await;
}

/// `check-config` (like `serve`) refuses an untyped subject and an unusable
/// CRL file, naming each; with both fixed the configuration is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_untyped_subjects_and_bad_crl_files() {
    let pki = Pki::new();
    let tls = pki.config(true);
    let crl = pki.write(
        "crl.pem",
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    );
    let config = |subject: &str| {
        format!(
            "data_dir = \"{data}\"\n[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{ca}\"\n\
             client_crl_file = \"{crl}\"\n[[auth.client_certs]]\nname = \"agent-cert\"\nsubject = \"{subject}\"\n\
             roles = [\"agent\"]\ntenants = [\"acme\"]\n",
            data = pki.dir.path().join("data").display(),
            cert = tls.cert_file.display(),
            key = tls.key_file.display(),
            ca = tls.client_ca_file.as_ref().unwrap().display(),
            crl = crl.display(),
        )
    };
    let check = |config: String| {
        let dir = pki.dir.path().to_owned();
        tokio::task::spawn_blocking(move || crate::startup::run(&dir, &config, &["check-config"]))
    };

    for args in [&["check-config"][..], &["serve"][..]] {
        let (dir, text) = (pki.dir.path().to_owned(), config("agent-7"));
        let output = tokio::task::spawn_blocking(move || crate::startup::run(&dir, &text, args))
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("auth.client_certs `agent-cert`: subject `agent-7` has no type"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("`cn:<common name>`"), "{args:?}: {stderr}");
    }

    let output = check(config("cn:agent-7")).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad client CRL file"), "{stderr}");
    assert!(stderr.contains(&*crl.to_string_lossy()), "{stderr}");

    pki.write("crl.pem", &pki.crl(&[]));
    let output = check(config("cn:agent-7")).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
