//! The optional client certificate revocation list file (`tls.client_crl_file`):
//! one or more CRLs, PEM (`-----BEGIN X509 CRL-----` blocks) or a single DER
//! CRL, parsed into what rustls' client verifier takes. A certificate whose
//! serial a CRL of its issuer lists is refused at the handshake.

use super::certs::TlsError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use std::path::Path;

/// The CRLs in `contents` (the file at `path`): every PEM `X509 CRL` block,
/// or the whole file as one DER CRL. At least one, each one parseable. Warns
/// when a CRL's next update has passed: it is still used, but its issuer has
/// probably published a newer one.
pub(super) fn client_crls(
    path: &Path,
    contents: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<CertificateRevocationListDer<'static>> = if contents.trim_ascii().is_empty() {
        Vec::new()
    } else if looks_like_pem(contents) {
        CertificateRevocationListDer::pem_slice_iter(contents)
            .collect::<Result<_, _>>()
            .map_err(|e| bad_crl(path, format!("invalid PEM: {e}")))?
    } else {
        vec![CertificateRevocationListDer::from(contents.to_vec())]
    };
    if crls.is_empty() {
        return Err(bad_crl(
            path,
            "no CRL in it (expected `-----BEGIN X509 CRL-----` blocks or one DER CRL)".into(),
        ));
    }
    for (index, crl) in crls.iter().enumerate() {
        let (rest, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| bad_crl(path, format!("CRL #{} is not a valid X.509 CRL: {e}", index + 1)))?;
        if !rest.is_empty() {
            return Err(bad_crl(
                path,
                format!("CRL #{} is followed by {} stray bytes", index + 1, rest.len()),
            ));
        }
        if let Some(next_update) = parsed.next_update() {
            if next_update < x509_parser::time::ASN1Time::now() {
                tracing::warn!(
                    crl_file = %path.display(),
                    issuer = %parsed.issuer(),
                    %next_update,
                    "a client CRL is past its next update; it is still enforced, publish a fresh one"
                );
            }
        }
    }
    Ok(crls)
}

/// Whether the file is PEM rather than DER (a DER CRL starts with a SEQUENCE tag, never with `-`).
fn looks_like_pem(contents: &[u8]) -> bool {
    contents.trim_ascii_start().starts_with(b"-----")
}

/// A [`TlsError::BadCrl`] for the file at `path`.
pub(super) fn bad_crl(path: &Path, reason: String) -> TlsError {
    TlsError::BadCrl {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::Ca;

    #[test]
    fn pem_and_der_crls_are_read() {
        let ca = Ca::new("ca");
        let crl = ca.crl(&[7, 9]);
        let path = Path::new("crl.pem");
        let pem = client_crls(path, crl.pem.as_bytes()).unwrap();
        assert_eq!(pem.len(), 1);
        assert_eq!(pem[0].as_ref(), &crl.der[..]);
        let two = format!("{}\n{}", crl.pem, ca.crl(&[1]).pem);
        assert_eq!(client_crls(path, two.as_bytes()).unwrap().len(), 2);
        let der = client_crls(Path::new("crl.der"), &crl.der).unwrap();
        assert_eq!(der[0].as_ref(), &crl.der[..]);
    }

    #[test]
    fn unusable_crl_files_are_clear_errors_naming_the_file() {
        let path = Path::new("/etc/tokenvault/crl.pem");
        for (contents, expected) in [
            (&b""[..], "no CRL in it"),
            (
                &b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"[..],
                "no CRL in it",
            ),
            (&b"\x30\x03\x02\x01\x01"[..], "CRL #1 is not a valid X.509 CRL"),
            (&b"garbage"[..], "CRL #1 is not a valid X.509 CRL"),
        ] {
            let error = client_crls(path, contents).unwrap_err();
            assert!(matches!(error, TlsError::BadCrl { .. }), "{error}");
            let message = error.to_string();
            assert!(message.contains("/etc/tokenvault/crl.pem"), "{message}");
            assert!(message.contains(expected), "`{expected}` missing from: {message}");
        }
    }
}
