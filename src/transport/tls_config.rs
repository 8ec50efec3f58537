//! The rustls server configurations built from one version of the TLS files:
//! TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, and — with a client CA — a
//! verifier that checks client certificates but lets clients without one in.

use super::certs::{bad_ca_bundle, client_roots, Material, TlsError, TlsFiles};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ServerConfig};

/// ALPN protocols offered, in order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server configurations built from one version of the files.
#[derive(Debug)]
pub(super) struct Configs {
    /// Requests (optionally) a client certificate when a client CA is configured.
    pub(super) client_auth: Arc<ServerConfig>,
    /// Never requests a client certificate.
    pub(super) server_only: Arc<ServerConfig>,
    /// The digest of the files these were built from.
    pub(super) digest: [u8; 32],
}

/// Builds both configurations from the contents of `files`.
pub(super) fn build(files: &TlsFiles, material: &Material) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = material.chain_and_key(files)?;
    let server_only = server_config(files, &provider, None, chain.clone(), key.clone_key())?;
    let client_auth = match (&files.client_ca_file, &material.ca) {
        (Some(ca_file), Some(ca_pem)) => {
            let verifier = client_verifier(ca_file, ca_pem, &provider)?;
            server_config(files, &provider, Some(verifier), chain, key)?
        }
        _ => server_only.clone(),
    };
    Ok(Configs {
        client_auth,
        server_only,
        digest: material.digest(),
    })
}

fn client_verifier(
    path: &Path,
    ca_pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = client_roots(path, ca_pem)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad_ca_bundle(path, e.to_string()))
}

fn server_config(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let unusable = |reason: String| TlsError::BadCertificateOrKey {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| unusable(e.to_string()))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        },
        other => unusable(other.to_string()),
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
