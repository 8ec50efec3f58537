//! The transport layer, below `api/`: the TCP listeners, TLS on them,
//! certificate reload, and who the peer is. It knows nothing of the services
//! it carries; `api/` hands it a tonic router and an axum router to serve.
//!
//! - `listeners.rs`: binding a listener, how the listeners are secured (for
//!   the start-up log), draining the running servers at shutdown.
//! - `grpc.rs` and `http.rs`: serving the tonic router and the axum router on a
//!   listener, over TLS or plain TCP, until a stop token is cancelled.
//! - `reload.rs`: [`TlsAcceptor`], the server TLS configuration in use,
//!   swapped at run time when the files change.
//! - `certs.rs`: reading the PEM files, their digest, parsing them, and
//!   [`TlsError`]; `crl.rs`: the optional client CRL file;
//!   `tls_config.rs`: the rustls server configurations built from them
//!   (versions, ALPN, optional client-certificate verifier checking the CRLs).
//! - `accept.rs`: accepting TCP connections (waiting out `accept` errors) and
//!   the TLS accept loop, a stream of connections for tonic;
//!   `connection.rs`: one TLS connection, its handshake and its I/O.
//! - `peer.rs`: the peer address and verified client-certificate identity the
//!   acceptors attach to requests, and how `auth/` reads them back;
//!   `subject.rs`: the typed certificate names (`uri:`, `dns:`, `cn:`) that
//!   identity is made of and configuration maps.
//!
//! When `client_ca_file` is set, clients *may* present a certificate signed
//! by that CA (mutual TLS); clients without one still connect and
//! authenticate with an API key. With `client_crl_file` as well, a client
//! certificate revoked by those CRLs is refused at the handshake.

mod accept;
mod certs;
mod connection;
mod crl;
mod grpc;
mod http;
mod listeners;
mod peer;
mod reload;
mod subject;
#[cfg(test)]
mod test_pki;
mod tls_config;

pub use accept::incoming;
pub use certs::TlsError;
pub use connection::{TlsConnection, HANDSHAKE_TIMEOUT};
pub use grpc::spawn_grpc;
pub use http::{serve_tls, spawn_http};
pub use listeners::{bind, security, BindError, Servers};
pub use peer::{
    certificate_identity, certificate_subjects, peer_ip, PeerAddr, PeerCertificateIdentity, TlsConnectInfo,
};
pub use reload::TlsAcceptor;
pub use subject::{CertSubject, SubjectError, SubjectKind};
