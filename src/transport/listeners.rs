//! The listeners' life: binding them, saying how they are secured, and
//! draining the gRPC and HTTP servers on them at shutdown.

use super::reload::TlsAcceptor;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A listener could not bind.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: io::Error,
}

/// Binds a TCP listener on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// How the listeners are secured, in words for the start-up log.
pub fn security(tls: Option<&TlsAcceptor>) -> &'static str {
    match tls {
        Some(acceptor) if acceptor.mutual() => "TLS with optional client certificates",
        Some(_) => "TLS",
        None => "plain text (development, or behind a mesh that provides TLS)",
    }
}

/// The running gRPC and HTTP server tasks, as spawned by
/// [`spawn_grpc`](super::spawn_grpc) and [`spawn_http`](super::spawn_http).
#[derive(Debug)]
pub struct Servers {
    /// The gRPC server.
    pub grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The HTTP server.
    pub http: JoinHandle<io::Result<()>>,
}

impl Servers {
    /// Waits, at most `grace`, for both servers to end once their stop token
    /// is cancelled, logging a server that ended with an error, or in-flight
    /// requests that did not finish in time.
    pub async fn drain(self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            let grpc = self.grpc.await;
            let http = self.http.await;
            (grpc, http)
        })
        .await;
        match drained {
            Ok((grpc, http)) => {
                if let Ok(Err(error)) = grpc {
                    tracing::warn!(%error, "gRPC server ended with an error");
                }
                if let Ok(Err(error)) = http {
                    tracing::warn!(%error, "HTTP server ended with an error");
                }
            }
            Err(_) => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
        }
    }
}
