//! One server-side TLS connection: the handshake (with its timeout) that turns
//! an accepted TCP stream into a [`TlsConnection`], and that connection's
//! byte stream and [`TlsConnectInfo`] for tonic and hyper.

use super::peer::{certificate_subjects, PeerCertificateIdentity, TlsConnectInfo};
use super::reload::TlsAcceptor;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a client has to complete the TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS connection usable by tonic: implements `AsyncRead + AsyncWrite +
/// tonic::transport::server::Connected<ConnectInfo = TlsConnectInfo>`.
pub struct TlsConnection {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    /// The peer address and certificate identity.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The protocol agreed by ALPN (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Completes the server side of a handshake within [`HANDSHAKE_TIMEOUT`].
pub(super) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote_addr: SocketAddr,
) -> io::Result<TlsConnection> {
    // Latency matters more than segment count for gRPC; failure to set it is harmless.
    let _ = stream.set_nodelay(true);
    let accept = tokio_rustls::TlsAcceptor::from(acceptor.server_config()).accept(stream);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    // rustls only reports peer certificates that its verifier accepted.
    let identity = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
        Some(leaf) => match certificate_subjects(leaf) {
            Some(subjects) => Some(PeerCertificateIdentity { subjects }),
            None => {
                tracing::debug!(%remote_addr, "verified client certificate could not be parsed; ignoring it");
                None
            }
        },
        None => None,
    };
    Ok(TlsConnection {
        stream,
        info: TlsConnectInfo {
            remote_addr: Some(remote_addr),
            identity,
        },
    })
}
