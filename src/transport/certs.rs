//! The TLS files: reading the certificate, key, client CA bundle and client CRL, telling
//! whether they changed, and parsing their PEM into what rustls takes, with
//! [`TlsError`] naming the file and the problem.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use tokio_rustls::rustls::RootCertStore;
use zeroize::Zeroizing;

/// Why the TLS files could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read TLS file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` PEM block.
    #[error("no certificate (`-----BEGIN CERTIFICATE-----` block) found in {}", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file holds no private-key PEM block.
    #[error("no private key (PKCS#8, PKCS#1 or SEC1 PEM block) found in {}", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// A file is not valid PEM.
    #[error("invalid PEM in {}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate or key is unusable (unsupported key type, malformed certificate, …).
    #[error("cannot use certificate {} with private key {}: {reason}", cert.display(), key.display())]
    BadCertificateOrKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// The client CRL file holds no CRL or an unusable one.
    #[error("bad client CRL file {}: {reason}", path.display())]
    BadCrl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client CA bundle is empty or holds an unusable certificate.
    #[error("bad client CA bundle {}: {reason}", path.display())]
    BadCaBundle {
        /// The CA bundle file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The files a [`TlsAcceptor`](super::TlsAcceptor) is built from.
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) client_ca_file: Option<PathBuf>,
    pub(super) client_crl_file: Option<PathBuf>,
}

/// The raw contents of the files; the key is wiped on drop.
pub(super) struct Material {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    pub(super) ca: Option<Vec<u8>>,
    pub(super) crl: Option<Vec<u8>>,
}

impl Material {
    /// Reads all the files, failing on the first that cannot be read.
    pub(super) fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read_file(&files.cert_file)?,
            key: Zeroizing::new(read_file(&files.key_file)?),
            ca: files.client_ca_file.as_deref().map(read_file).transpose()?,
            crl: files.client_crl_file.as_deref().map(read_file).transpose()?,
        })
    }

    /// A digest of all the contents, to tell whether anything changed.
    pub(super) fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [
            Some(&self.cert[..]),
            Some(&self.key[..]),
            self.ca.as_deref(),
            self.crl.as_deref(),
        ] {
            match part {
                Some(bytes) => {
                    hasher.update([1]);
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update([0]),
            }
        }
        hasher.finalize().into()
    }

    /// The certificate chain (leaf first, never empty) and the private key.
    /// Warns when the leaf is not valid now: rustls serves it anyway.
    pub(super) fn chain_and_key(
        &self,
        files: &TlsFiles,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = parse_certs(&self.cert).map_err(|e| TlsError::BadPem {
            path: files.cert_file.clone(),
            reason: e.to_string(),
        })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: files.cert_file.clone(),
            });
        };
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: files.key_file.clone(),
            },
            other => TlsError::BadPem {
                path: files.key_file.clone(),
                reason: other.to_string(),
            },
        })?;
        warn_if_not_valid_now(&files.cert_file, leaf);
        Ok((chain, key))
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, pem::Error> {
    CertificateDer::pem_slice_iter(pem_bytes).collect()
}

/// The trust roots of the client CA bundle at `path` (contents `ca_pem`):
/// at least one certificate, every one usable.
pub(super) fn client_roots(path: &Path, ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let certs = parse_certs(ca_pem).map_err(|e| bad_ca_bundle(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_ca_bundle(path, "no certificate in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| bad_ca_bundle(path, format!("certificate #{}: {e}", index + 1)))?;
    }
    Ok(roots)
}

/// A [`TlsError::BadCaBundle`] for the bundle at `path`.
pub(super) fn bad_ca_bundle(path: &Path, reason: String) -> TlsError {
    TlsError::BadCaBundle {
        path: path.to_path_buf(),
        reason,
    }
}

/// Logs a warning when the leaf certificate is expired or not yet valid: rustls serves it anyway.
fn warn_if_not_valid_now(path: &Path, leaf: &CertificateDer<'_>) {
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
        if !cert.validity().is_valid() {
            tracing::warn!(
                cert_file = %path.display(),
                not_before = %cert.validity().not_before,
                not_after = %cert.validity().not_after,
                "the TLS certificate is not valid now (expired or not yet valid); clients will reject it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::Pki;
    use crate::transport::TlsAcceptor;

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let pki = Pki::new();

        let mut config = pki.config(false);
        config.cert_file = pki.path("missing.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error}");
        assert!(
            error.to_string().contains(&*pki.path("missing.pem").to_string_lossy()),
            "{error}"
        );

        let other = pki.ca.server("tokenvault-other", 9);
        pki.write("other-key.pem", &other.key_pem);
        let mut config = pki.config(false);
        config.key_file = pki.path("other-key.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
        assert!(error.to_string().contains("other-key.pem"), "{error}");

        let mut config = pki.config(false);
        config.cert_file = pki.path("key.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");

        let mut config = pki.config(false);
        config.key_file = pki.path("cert.pem");
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error}");
        assert!(error.to_string().contains("no private key"), "{error}");

        pki.write("empty-ca.pem", "");
        let mut config = pki.config(true);
        config.client_ca_file = Some(pki.path("empty-ca.pem"));
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::BadCaBundle { .. }), "{error}");
        assert!(error.to_string().contains("empty-ca.pem"), "{error}");

        pki.write("empty-crl.pem", "\n");
        let mut config = pki.config(true);
        config.client_crl_file = Some(pki.path("empty-crl.pem"));
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::BadCrl { .. }), "{error}");
        assert!(error.to_string().contains("empty-crl.pem"), "{error}");
        assert!(error.to_string().contains("no CRL in it"), "{error}");

        let mut config = pki.config(true);
        config.client_crl_file = Some(pki.path("missing-crl.pem"));
        let error = TlsAcceptor::load(&config).unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error}");
        assert!(error.to_string().contains("missing-crl.pem"), "{error}");

        assert!(TlsAcceptor::load(&pki.config(true)).unwrap().mutual());
    }
}
