//! Accepting connections: the next TCP connection of a listener (with
//! `accept` errors waited out), and the TLS accept loop that completes
//! handshakes concurrently and yields a stream of [`TlsConnection`]s that
//! tonic serves.

use super::connection::{handshake, TlsConnection};
use super::reload::TlsAcceptor;
use futures::Stream;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Handles an `accept` error: per-connection errors are skipped, others
/// (such as running out of file descriptors) are logged and waited out.
async fn accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a TCP connection failed; retrying in one second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The next TCP connection `listener` accepts, or `None` once `stop`
/// completes first. Per-connection `accept` errors are skipped; others are
/// logged and waited out (one second) before accepting again.
pub(super) async fn accept_tcp(
    listener: &TcpListener,
    stop: impl Future<Output = ()>,
) -> Option<(TcpStream, SocketAddr)> {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => accept_error(error).await,
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// or failing handshake never blocks others; handshake timeout 10 s; failures
/// logged at debug and dropped), yielding connections for
/// `Server::serve_with_incoming_shutdown`.
///
/// Must be called inside a Tokio runtime: the accept loop is spawned at once
/// (so handshakes proceed before the stream is first polled) and stops,
/// closing the listener, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, acceptor, sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, sender: mpsc::Sender<io::Result<TlsConnection>>) {
    while let Some((stream, remote_addr)) = accept_tcp(&listener, sender.closed()).await {
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match handshake(&acceptor, stream, remote_addr).await {
                // Fails only when the server stopped; the connection is then dropped.
                Ok(connection) => drop(sender.send(Ok(connection)).await),
                Err(error) => tracing::debug!(%remote_addr, %error, "TLS handshake failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::{connect, listener, next_connection, served_leaf, Ca, Pki};
    use crate::transport::CertSubject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn handshake_through_incoming_reports_the_peer_address() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(false)).unwrap();
        assert!(!acceptor.mutual());
        let (listener, addr) = listener().await;
        let mut connections = Box::pin(incoming(listener, acceptor));

        // A client that opens TCP and never speaks does not hold up the others.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut client = tokio::time::timeout(Duration::from_secs(5), connect(addr, pki.client(None)))
            .await
            .expect("not held up by the silent client")
            .unwrap();
        assert_eq!(served_leaf(&client), pki.server.der);
        let mut server = next_connection(&mut connections).await;

        use tonic::transport::server::Connected;
        let info = server.connect_info();
        assert_eq!(info.remote_addr, Some(client.get_ref().0.local_addr().unwrap()));
        assert!(info.identity.is_none());
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));

        // Bytes flow both ways.
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn mutual_tls_reports_the_verified_identity_and_keeps_certificates_optional() {
        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        assert!(acceptor.mutual());
        let (listener, addr) = listener().await;
        let mut connections = Box::pin(incoming(listener, acceptor));

        let agent = pki.ca.issue(
            "agent-7",
            &["agent.internal"],
            &["spiffe://tokenvault/agent/7"],
            true,
            70,
        );
        let client = connect(addr, pki.client(Some(&agent))).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(
            server.info().remote_addr,
            Some(client.get_ref().0.local_addr().unwrap())
        );
        let identity = server.info().identity.clone().expect("a verified identity");
        assert_eq!(
            identity.subjects,
            vec![
                CertSubject::uri("spiffe://tokenvault/agent/7"),
                CertSubject::dns("agent.internal"),
                CertSubject::cn("agent-7"),
            ]
        );

        // No client certificate: still accepted, without an identity (API-key callers).
        let anonymous = connect(addr, pki.client(None)).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(
            server.info().remote_addr,
            Some(anonymous.get_ref().0.local_addr().unwrap())
        );
        assert!(server.info().identity.is_none());

        // A certificate from another CA is refused at the handshake.
        let stranger = Ca::new("someone else's CA").issue("agent-7", &["agent.internal"], &[], true, 71);
        let mut refused = connect(addr, pki.client(Some(&stranger))).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
            .await
            .unwrap();
        let error = read.expect_err("the server must abort the handshake");
        assert!(error.to_string().contains("alert"), "{error}");
        // ... and never reaches the server: the next connection yielded is the next good one.
        let good = connect(addr, pki.client(Some(&agent))).await.unwrap();
        let server = next_connection(&mut connections).await;
        assert_eq!(server.info().remote_addr, Some(good.get_ref().0.local_addr().unwrap()));
        assert!(server.info().identity.is_some());
    }
}
