//! The rustls server configurations built from one version of the TLS files:
//! TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, and — with a client CA — a
//! verifier that checks client certificates (against the client CRLs too,
//! when configured) but lets clients without one in.

use super::certs::{bad_ca_bundle, client_roots, Material, TlsError, TlsFiles};
use super::crl::{bad_crl, client_crls};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
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
            let crl = files.client_crl_file.as_deref().zip(material.crl.as_deref());
            let verifier = client_verifier(ca_file, ca_pem, crl, &provider)?;
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

/// The verifier of client certificates: signed by the bundle at `path`
/// (contents `ca_pem`), optional, and — with `crl` (its path and contents) —
/// refused when revoked. Only the client's own certificate is checked against
/// the CRLs, and one whose issuer has no CRL there is refused (fail closed).
fn client_verifier(
    path: &Path,
    ca_pem: &[u8],
    crl: Option<(&Path, &[u8])>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = client_roots(path, ca_pem)?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).allow_unauthenticated();
    if let Some((crl_path, contents)) = crl {
        builder = builder
            .with_crls(client_crls(crl_path, contents)?)
            .only_check_end_entity_revocation();
    }
    builder.build().map_err(|e| match (e, crl) {
        (error @ VerifierBuilderError::InvalidCrl(_), Some((crl_path, _))) => bad_crl(crl_path, error.to_string()),
        (e, _) => bad_ca_bundle(path, e.to_string()),
    })
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
