//! Who is on the other end of a connection: the peer address and the verified
//! client-certificate identity the acceptors attach to each request, the
//! certificate subject names that identity is made of, and how the auth layer
//! reads them back from a request's extensions.

use std::net::{IpAddr, SocketAddr};
use tonic::transport::server::TcpConnectInfo;

/// A verified client certificate's identity, inserted by the TLS acceptor.
#[derive(Debug, Clone)]
pub struct PeerCertificateIdentity {
    /// Subject names of the leaf certificate (common name, DNS and URI SANs).
    pub subjects: Vec<String>,
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

/// Subject names of a certificate: the subject common name, every DNS SAN,
/// every URI SAN, in that order. `None` when the certificate cannot be parsed.
pub fn certificate_subjects(der: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut subjects: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        }));
        subjects.extend(names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        }));
    }
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
    fn subjects_list_the_common_name_then_dns_then_uri_names() {
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
            vec!["worker", "a.example", "b.example", "spiffe://x/y", "urn:z"]
        );
        assert_eq!(certificate_subjects(b"not der"), None);
    }
}
