//! The authentication layer in front of every gRPC service: it resolves the
//! caller from `authorization: Bearer <key>` (or a verified client
//! certificate), checks the role the service needs, and attaches the
//! [`Caller`] to the request. Health and reflection stay open.

use super::rate_limit::FailureLimiter;
use super::{digest_api_key, Caller, CallerRegistry};
use crate::config::Role;
use crate::telemetry::Metrics;
use crate::transport::{certificate_identity, peer_ip};
use futures::future::{Either, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// The role a gRPC path needs: `Ok(None)` for open services, `Err` for unknown ones.
pub fn required_role(path: &str) -> Option<Option<Role>> {
    let service = path.strip_prefix('/')?.split('/').next()?;
    Some(match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "tokenvault.v1.TokenService" => Some(Role::Agent),
        "tokenvault.v1.ConsentService" | "tokenvault.v1.ConnectionService" => Some(Role::Platform),
        "tokenvault.v1.AdminService" => Some(Role::Admin),
        _ => return None,
    })
}

/// Everything the layer needs, shared by all connections.
#[derive(Debug)]
pub struct Authenticator {
    registry: CallerRegistry,
    limiter: FailureLimiter,
    metrics: Metrics,
}

impl Authenticator {
    /// An authenticator over `registry`, refusing peers after `max_failures_per_minute` failures.
    pub fn new(registry: CallerRegistry, max_failures_per_minute: u32, metrics: Metrics) -> Self {
        Self {
            registry,
            limiter: FailureLimiter::new(max_failures_per_minute),
            metrics,
        }
    }

    /// Resolves and authorizes the caller of a request to `path`.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        role: Role,
    ) -> Result<Arc<Caller>, Status> {
        let peer = peer_ip(extensions);
        if let Some(peer) = peer {
            if self.limiter.is_blocked(peer) {
                self.metrics.auth_failure("rate_limited");
                return Err(Status::resource_exhausted(
                    "too many failed authentication attempts from this address; try again later",
                ));
            }
        }
        let caller = match self.resolve(headers, extensions) {
            Ok(caller) => caller,
            Err(reason) => {
                self.metrics.auth_failure(reason);
                if let Some(peer) = peer {
                    if self.limiter.record_failure(peer) {
                        tracing::warn!(%peer, "authentication failures over the limit; refusing this peer for a while");
                    }
                }
                let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
                tracing::info!(%peer, reason, "authentication failed");
                return Err(Status::unauthenticated(match reason {
                    "missing" => "missing credentials: send `authorization: Bearer <api key>`",
                    "malformed" => "malformed authorization header: expected `Bearer <api key>`",
                    _ => "unknown API key or client certificate",
                }));
            }
        };
        if !caller.has_role(role) {
            self.metrics.auth_failure("wrong_role");
            return Err(Status::permission_denied(format!(
                "caller `{}` lacks the `{}` role this service needs",
                caller.name,
                role.as_str()
            )));
        }
        Ok(caller)
    }

    fn resolve(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> Result<Arc<Caller>, &'static str> {
        match headers.get(http::header::AUTHORIZATION) {
            Some(value) => {
                let text = value.to_str().map_err(|_| "malformed")?;
                let key = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty() && k.len() <= 512)
                    .ok_or("malformed")?;
                // Unknown and wrong keys take exactly the same path: one hash, one lookup.
                self.registry.by_key_digest(&digest_api_key(key)).ok_or("unknown")
            }
            None => {
                let identity = certificate_identity(extensions).ok_or("missing")?;
                identity
                    .subjects
                    .iter()
                    .find_map(|subject| self.registry.by_cert_subject(subject))
                    .ok_or("unknown")
            }
        }
    }
}

/// Tower layer applying the [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over a shared authenticator.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(Some(role)) = required_role(request.uri().path()) else {
            // Open services, and unknown paths (answered UNIMPLEMENTED by the router).
            return Either::Right(self.inner.call(request));
        };
        match self
            .authenticator
            .authenticate(request.headers(), request.extensions(), role)
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{PeerCertificateIdentity, TlsConnectInfo};

    #[test]
    fn roles_follow_the_contract() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), Some(None));
        assert_eq!(
            required_role("/tokenvault.v1.TokenService/GetAccessToken"),
            Some(Some(Role::Agent))
        );
        assert_eq!(
            required_role("/tokenvault.v1.ConsentService/StartConsent"),
            Some(Some(Role::Platform))
        );
        assert_eq!(
            required_role("/tokenvault.v1.ConnectionService/Disconnect"),
            Some(Some(Role::Platform))
        );
        assert_eq!(
            required_role("/tokenvault.v1.AdminService/RotateKeys"),
            Some(Some(Role::Admin))
        );
        assert_eq!(required_role("/other.Service/X"), None);
    }

    fn cert_authenticator(max_failures_per_minute: u32) -> Authenticator {
        let auth = crate::config::AuthConfig {
            client_certs: vec![crate::config::ClientCertConfig {
                name: "agent-worker".into(),
                subject: "spiffe://tokenvault/agent/7".into(),
                roles: vec![Role::Agent],
                tenants: vec!["*".into()],
            }],
            max_failures_per_minute,
            ..Default::default()
        };
        let registry = CallerRegistry::from_config(&auth).unwrap();
        Authenticator::new(registry, max_failures_per_minute, Metrics::new())
    }

    fn tls_info(subjects: Option<&[&str]>) -> http::Extensions {
        let mut extensions = http::Extensions::new();
        extensions.insert(TlsConnectInfo {
            remote_addr: Some("192.0.2.9:4000".parse().unwrap()),
            identity: subjects.map(|s| PeerCertificateIdentity {
                subjects: s.iter().map(|s| s.to_string()).collect(),
            }),
        });
        extensions
    }

    #[test]
    fn the_identity_in_tls_connect_info_authenticates() {
        let authenticator = cert_authenticator(20);
        let headers = http::HeaderMap::new();
        let extensions = tls_info(Some(&["agent-7", "agent.internal", "spiffe://tokenvault/agent/7"]));
        let caller = authenticator.authenticate(&headers, &extensions, Role::Agent).unwrap();
        assert_eq!(&*caller.name, "agent-worker");
        let denied = authenticator
            .authenticate(&headers, &extensions, Role::Admin)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);

        let anonymous = authenticator
            .authenticate(&headers, &tls_info(None), Role::Agent)
            .unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert!(
            anonymous.message().contains("missing credentials"),
            "{}",
            anonymous.message()
        );
    }

    #[test]
    fn failures_are_counted_against_the_tls_peer_address() {
        let authenticator = cert_authenticator(2);
        let headers = http::HeaderMap::new();
        let unknown = tls_info(Some(&["someone-else"]));
        for _ in 0..3 {
            let status = authenticator.authenticate(&headers, &unknown, Role::Agent).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        // The peer from TlsConnectInfo is now refused, even with a good certificate.
        let good = tls_info(Some(&["spiffe://tokenvault/agent/7"]));
        let refused = authenticator.authenticate(&headers, &good, Role::Agent).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }
}
