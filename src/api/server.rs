//! Assembles the services — the tonic router with its layers, health and
//! reflection, and the HTTP routes — hands them to [`transport`] to serve,
//! and shuts them down gracefully.

use super::{AdminApi, ConnectionApi, ConsentApi, EventApi, TokenApi};
use crate::app::{App, StartupError};
use crate::auth::AuthLayer;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::connection_service_server::ConnectionServiceServer;
use crate::proto::consent_service_server::ConsentServiceServer;
use crate::proto::event_service_server::EventServiceServer;
use crate::proto::token_service_server::TokenServiceServer;
use crate::telemetry::TelemetryLayer;
use crate::transport::{self, BindError, Servers, TlsAcceptor};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

/// gRPC service names reported by the health service.
const SERVICES: [&str; 5] = [
    "tokenvault.v1.ConsentService",
    "tokenvault.v1.TokenService",
    "tokenvault.v1.ConnectionService",
    "tokenvault.v1.EventService",
    "tokenvault.v1.AdminService",
];

/// A running server; drop or [`shutdown`](ServerHandle::shutdown) to stop it.
pub struct ServerHandle {
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// The app behind it.
    pub app: Arc<App>,
    stop: CancellationToken,
    health: HealthReporter,
    servers: Servers,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartupError> {
    transport::bind(addr)
        .await
        .map_err(|BindError { addr, source }| StartupError::Bind { addr, source })
}

/// Binds both listeners and serves until shut down.
pub async fn start(app: Arc<App>) -> Result<ServerHandle, StartupError> {
    let config = app.config.clone();
    let grpc_listener = bind(config.server.grpc_listen).await?;
    let http_listener = bind(config.server.http_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    if app.oauth_base.get().is_none() {
        let url = config
            .oauth_base_url(http_addr)
            .map_err(|e| StartupError::Config(format!("OAuth base URL: {e}")))?;
        let _ = app.oauth_base.set(url);
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartupError::Config(format!("reflection: {e}")))?;

    let limit = config.server.max_request_bytes;
    let stop = CancellationToken::new();
    let tls = config
        .tls
        .as_ref()
        .map(|settings| TlsAcceptor::load_and_watch(settings, stop.clone()))
        .transpose()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    app.start_background(stop.child_token()).await?;
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(config.server.request_timeout_seconds))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(TelemetryLayer::new(app.metrics.clone()))
        .layer(AuthLayer::new(app.authenticator.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ConsentServiceServer::new(ConsentApi::new(app.clone())).max_decoding_message_size(limit))
        .add_service(TokenServiceServer::new(TokenApi::new(app.clone())).max_decoding_message_size(limit))
        .add_service(ConnectionServiceServer::new(ConnectionApi::new(app.clone())).max_decoding_message_size(limit))
        .add_service(EventServiceServer::new(EventApi::new(app.clone())).max_decoding_message_size(limit))
        .add_service(AdminServiceServer::new(AdminApi::new(app.clone())).max_decoding_message_size(limit));
    let servers = Servers {
        grpc: transport::spawn_grpc(router, grpc_listener, tls.clone(), stop.clone()),
        // Browsers reach the callback: never ask them for a client certificate.
        http: transport::spawn_http(
            super::http::router(app.clone()),
            http_listener,
            tls.as_ref().map(TlsAcceptor::without_client_auth),
            stop.clone(),
        ),
    };

    tracing::info!(
        %grpc_addr,
        %http_addr,
        backend = app.sql.backend_name(),
        transport = transport::security(tls.as_ref()),
        "tokenvault is listening"
    );
    Ok(ServerHandle {
        grpc_addr,
        http_addr,
        app,
        stop,
        health,
        servers,
    })
}

impl ServerHandle {
    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, flushes the audit queue and closes the database pools.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.app.config.server.shutdown_grace_seconds);
        for service in SERVICES {
            self.health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.health
            .set_not_serving::<tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>>()
            .await;
        self.stop.cancel();
        self.servers.drain(grace).await;
        self.app.broker.flush_usage().await;
        self.app.audit.shutdown().await;
        self.app.sql.close().await;
        self.app.key_sql.close().await;
        tracing::info!("tokenvault stopped");
    }
}
