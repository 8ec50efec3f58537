//! Serving an axum router on the HTTP listener: over TLS (hyper-util, with
//! the peer address and certificate identity in each request's extensions),
//! or over plain TCP with `axum::serve`; both stop gracefully when the stop
//! token is cancelled.

use super::accept::accept_tcp;
use super::connection::handshake;
use super::peer::PeerAddr;
use super::reload::TlsAcceptor;
use std::io;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Spawns `router` serving on `listener` (TLS when `tls` is set, see
/// [`serve_tls`]) until `stop` is cancelled; the task ends with the server's result.
pub fn spawn_http(
    router: axum::Router,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> JoinHandle<io::Result<()>> {
    match tls {
        Some(acceptor) => tokio::spawn(serve_tls(listener, acceptor, router, stop)),
        None => tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }),
    }
}

/// Serves an axum Router over TLS until `stop` is cancelled (hyper-util auto
/// builder, HTTP/1.1 and HTTP/2; graceful: stop accepting, let in-flight
/// requests finish); inserts [`PeerAddr`], [`TlsConnectInfo`](super::TlsConnectInfo),
/// `axum::extract::ConnectInfo<SocketAddr>` and (if any)
/// [`PeerCertificateIdentity`](super::PeerCertificateIdentity) into each request's extensions.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    stop: CancellationToken,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper only enforces its header read timeout when it has a timer.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some((stream, remote_addr)) = accept_tcp(&listener, stop.cancelled()).await {
        // Taken now, so shutdown waits for handshakes in progress too.
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let connection = match handshake(&acceptor, stream, remote_addr).await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::debug!(%remote_addr, %error, "TLS handshake failed");
                    return;
                }
            };
            let info = connection.info().clone();
            let service = router.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(PeerAddr(info.remote_addr));
                if let Some(addr) = info.remote_addr {
                    extensions.insert(axum::extract::ConnectInfo(addr));
                }
                if let Some(identity) = &info.identity {
                    extensions.insert(identity.clone());
                }
                extensions.insert(info.clone());
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let served = builder.serve_connection_with_upgrades(TokioIo::new(connection), service);
            if let Err(error) = watcher.watch(served).await {
                tracing::debug!(%remote_addr, %error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::{listener, Leaf, Pki};
    use crate::transport::PeerCertificateIdentity;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn serve_http_serves_a_router_over_tls_and_stops_gracefully() {
        use axum::routing::get;

        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        let (listener, addr) = listener().await;
        let router = axum::Router::new()
            .route(
                "/whoami",
                get(
                    |axum::Extension(PeerAddr(peer)): axum::Extension<PeerAddr>,
                     identity: Option<axum::Extension<PeerCertificateIdentity>>| async move {
                        let subjects = identity
                            .map(|i| {
                                i.0.subjects
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        format!("{}|{subjects}", peer.map(|p| p.to_string()).unwrap_or_default())
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }),
            );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_tls(listener, acceptor, router, stop.clone()));

        let client = |identity: Option<&Leaf>| {
            let mut builder = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
                .resolve("localhost", addr);
            if let Some(leaf) = identity {
                let pem = format!("{}{}", leaf.cert_pem, leaf.key_pem);
                builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
            }
            builder.build().unwrap()
        };
        let url = format!("https://localhost:{}/whoami", addr.port());

        let body = client(None).get(&url).send().await.unwrap().text().await.unwrap();
        let (peer, subjects) = body.split_once('|').unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        assert_ne!(peer.port(), addr.port());
        assert_eq!(subjects, "");

        let agent = pki.ca.issue("agent-7", &["agent.internal"], &[], true, 70);
        let body = client(Some(&agent))
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.ends_with("|dns:agent.internal,cn:agent-7"), "{body}");

        // A request in flight when stop is cancelled still completes.
        let slow_client = client(None);
        let slow = tokio::spawn(
            slow_client
                .get(format!("https://localhost:{}/slow", addr.port()))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        let response = slow.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }
}
