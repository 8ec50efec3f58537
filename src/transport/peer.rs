//! Who is on the other end of a connection: the peer address and the verified
//! client-certificate identity the acceptors attach to each request, the
//! typed certificate names that identity is made of, and how the auth layer
//! reads them back from a request's extensions.

use super::subject::CertSubject;
use std::net::{IpAddr, SocketAddr};
use tonic::transport::server::TcpConnectInfo;

/// A verified client certificate's identity, inserted by the TLS acceptor.
#[derive(Debug, Clone)]
pub struct PeerCertificateIdentity {
    /// Typed names of the leaf certificate, in the order an identity is
    /// resolved from them: URI SANs, then DNS SANs, then common names.
    pub subjects: Vec<CertSubject>,
}

/// The peer's address, inserted by whichever acceptor accepted the connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<SocketAddr>);

/// What tonic (and axum) see about a TLS peer.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's identity, when the client presented one.
    pub identity: Option<PeerCertificateIdentity>,
}

/// Typed names of a certificate, in the order an identity is resolved from
/// them: every URI SAN, then every DNS SAN, then the subject common names.
/// `None` when the certificate cannot be parsed.
pub fn certificate_subjects(der: &[u8]) -> Option<Vec<CertSubject>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut subjects = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => Some(CertSubject::uri(*uri)),
            _ => None,
        }));
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(CertSubject::dns(*dns)),
            _ => None,
        }));
    }
    subjects.extend(
        cert.subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(CertSubject::cn),
    );
    Some(subjects)
}

/// The verified client-certificate identity of a request: the
/// [`PeerCertificateIdentity`] extension (HTTP over TLS), else the one in
/// [`TlsConnectInfo`] (gRPC over TLS). `None` without a client certificate.
pub fn certificate_identity(extensions: &http::Extensions) -> Option<&PeerCertificateIdentity> {
    extensions
        .get::<PeerCertificateIdentity>()
        .or_else(|| extensions.get::<TlsConnectInfo>()?.identity.as_ref())
}

/// The peer's IP address of a request: from [`PeerAddr`], else
/// [`TlsConnectInfo`], else tonic's plain-TCP `TcpConnectInfo`.
pub fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(Some(addr))) = extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    if let Some(TlsConnectInfo {
        remote_addr: Some(addr),
        ..
    }) = extensions.get::<TlsConnectInfo>()
    {
        return Some(addr.ip());
    }
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::Ca;

    #[test]
    fn subjects_are_typed_uri_then_dns_then_common_name() {
        let ca = Ca::new("ca");
        let leaf = ca.issue(
            "worker",
            &["a.example", "b.example"],
            &["spiffe://x/y", "urn:z"],
            true,
            5,
        );
        assert_eq!(
            certificate_subjects(&leaf.der).unwrap(),
            vec![
                CertSubject::uri("spiffe://x/y"),
                CertSubject::uri("urn:z"),
                CertSubject::dns("a.example"),
                CertSubject::dns("b.example"),
                CertSubject::cn("worker"),
            ]
        );
        assert_eq!(certificate_subjects(b"not der"), None);
    }

    #[test]
    fn a_common_name_that_reads_like_a_uri_stays_a_common_name() {
        let ca = Ca::new("ca");
        let leaf = ca.issue("spiffe://x/y", &[], &[], true, 6);
        assert_eq!(
            certificate_subjects(&leaf.der).unwrap(),
            vec![CertSubject::cn("spiffe://x/y")]
        );
    }
}
