//! Serving a tonic router on the gRPC listener: over TLS through
//! [`incoming`], or over plain TCP with `TCP_NODELAY`, until
//! the stop token is cancelled (graceful: in-flight calls finish).

use super::accept::incoming;
use super::reload::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, StdError};
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tower::Layer;

/// Spawns `router` serving on `listener` (TLS when `tls` is set) until `stop`
/// is cancelled; the task ends with the server's result.
pub fn spawn_grpc<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    L: Layer<Routes> + Send + 'static,
    L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error: Into<StdError> + Send,
    ResBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<StdError>,
{
    match tls {
        Some(acceptor) => tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming(listener, acceptor), stop.cancelled_owned())
                .await
        }),
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_pki::{listener, Pki};
    use crate::transport::CertSubject;
    use crate::transport::TlsConnectInfo;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn tonic_serves_grpc_over_incoming() {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;

        let pki = Pki::new();
        let acceptor = TlsAcceptor::load(&pki.config(true)).unwrap();
        let (listener, addr) = listener().await;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen: Arc<Mutex<Vec<Option<TlsConnectInfo>>>> = Arc::default();
        let record = seen.clone();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(
                    move |request: tonic::Request<()>| {
                        record
                            .lock()
                            .unwrap()
                            .push(request.extensions().get::<TlsConnectInfo>().cloned());
                        Ok(request)
                    },
                ))
                .add_service(health)
                .serve_with_incoming_shutdown(incoming(listener, acceptor), stop.clone().cancelled_owned()),
        );

        let agent = pki.ca.issue("agent-7", &["agent.internal"], &[], true, 70);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca.pem()))
            .identity(Identity::from_pem(&agent.cert_pem, &agent.key_pem))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let info = seen[0].clone().expect("tonic inserts TlsConnectInfo");
        assert_eq!(info.remote_addr.unwrap().ip(), addr.ip());
        assert_eq!(
            info.identity.unwrap().subjects,
            vec![CertSubject::dns("agent.internal"), CertSubject::cn("agent-7")]
        );

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
