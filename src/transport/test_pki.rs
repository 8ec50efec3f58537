//! Test fixtures for the transport unit tests: a throwaway CA, leaf
//! certificates, the files of a `TlsConfig`, and TLS clients to connect with.

use super::TlsConnection;
use crate::config::TlsConfig;
use futures::{Stream, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A throwaway certificate authority.
pub(super) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    /// A self-signed CA named `name`.
    pub(super) fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A CRL signed by this CA revoking the certificates with these serials.
    pub(super) fn crl(&self, revoked: &[u64]) -> Crl {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2999, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).unwrap();
        Crl {
            pem: crl.pem().unwrap(),
            der: crl.der().to_vec(),
        }
    }

    /// The CA certificate, PEM.
    pub(super) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf certificate signed by this CA.
    pub(super) fn issue(&self, cn: &str, dns: &[&str], uris: &[&str], client: bool, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for localhost.
    pub(super) fn server(&self, cn: &str, serial: u64) -> Leaf {
        self.issue(cn, &["localhost", "127.0.0.1"], &[], false, serial)
    }
}

/// A certificate revocation list, PEM and DER.
pub(super) struct Crl {
    pub(super) pem: String,
    pub(super) der: Vec<u8>,
}

/// A leaf certificate and its key.
pub(super) struct Leaf {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    pub(super) der: CertificateDer<'static>,
}

impl Leaf {
    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der.clone()],
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }
}

/// A CA, a server certificate for localhost, and the files of a `TlsConfig`.
pub(super) struct Pki {
    dir: tempfile::TempDir,
    pub(super) ca: Ca,
    pub(super) server: Leaf,
}

impl Pki {
    /// A fresh CA and server certificate, written to a temporary directory.
    pub(super) fn new() -> Self {
        let ca = Ca::new("tokenvault test CA");
        let server = ca.server("tokenvault-1", 1);
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
            server,
        };
        pki.write("cert.pem", &pki.server.cert_pem);
        pki.write("key.pem", &pki.server.key_pem);
        pki.write("ca.pem", &pki.ca.pem());
        pki
    }

    /// A file in the directory.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file in the directory.
    pub(super) fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).unwrap();
    }

    /// The `TlsConfig` of the files, with the client CA when `mutual`.
    pub(super) fn config(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            cert_file: self.path("cert.pem"),
            key_file: self.path("key.pem"),
            client_ca_file: mutual.then(|| self.path("ca.pem")),
            client_crl_file: None,
            reload_interval_seconds: 30,
        }
    }

    /// A client trusting the CA, presenting `identity` if given, offering ALPN `h2`.
    pub(super) fn client(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.cert.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(leaf) => {
                let (chain, key) = leaf.chain_and_key();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// The client side of a TLS connection.
pub(super) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` as `localhost`.
pub(super) async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented.
pub(super) fn served_leaf(stream: &ClientStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// The next connection `stream` yields, within 5 s.
pub(super) async fn next_connection(
    stream: &mut (impl Stream<Item = io::Result<TlsConnection>> + Unpin),
) -> TlsConnection {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a connection within 5 s")
        .expect("stream open")
        .expect("no error")
}

/// A listener on a free local port.
pub(super) async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}
