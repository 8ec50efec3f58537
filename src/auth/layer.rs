//! The authentication layer in front of every gRPC service: it resolves the
//! caller from `authorization: Bearer <key>` (or a verified client
//! certificate), checks the role the service needs, and attaches the
//! [`Caller`] to the request. Health and reflection stay open.

use super::failure_audit::{FailureAudit, Refusal};
use super::rate_limit::{FailureLimiter, FailureLimits, FailureVerdict};
use super::{digest_api_key, Caller, CallerRegistry};
use crate::config::Role;
use crate::telemetry::{Metrics, RequestId};
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

/// Why a credential did not resolve to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    /// `missing`, `malformed` or `unknown`.
    reason: &'static str,
    /// The kind of credential presented.
    credential: &'static str,
}

/// Everything the layer needs, shared by all connections.
#[derive(Debug)]
pub struct Authenticator {
    registry: CallerRegistry,
    limiter: FailureLimiter,
    metrics: Metrics,
    audit: Option<FailureAudit>,
}

impl Authenticator {
    /// An authenticator over `registry`, throttling failures by `limits`.
    pub fn new(registry: CallerRegistry, limits: FailureLimits, metrics: Metrics) -> Self {
        Self {
            registry,
            limiter: FailureLimiter::new(limits),
            metrics,
            audit: None,
        }
    }

    /// Records every refusal as an `auth.failure` audit event through `audit`.
    pub fn with_audit(mut self, audit: FailureAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Resolves and authorizes the caller of a request to `rpc`.
    ///
    /// The credential is always checked first (one SHA-256 and one map probe
    /// for an API key), so a valid one is served whatever its address or the
    /// whole server has failed lately; only failures are throttled.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        role: Role,
        rpc: &str,
    ) -> Result<Arc<Caller>, Status> {
        let peer = peer_ip(extensions);
        let request_id = extensions.get::<RequestId>().map(|r| r.0.as_str());
        let mut refusal = Refusal {
            reason: "",
            cause: None,
            credential: "none",
            actor: None,
            peer,
            rpc,
            request_id,
        };
        let caller = match self.resolve(headers, extensions) {
            Ok(caller) => caller,
            Err(failure) => {
                refusal.credential = failure.credential;
                let status = match self.limiter.failure(peer) {
                    FailureVerdict::Counted => {
                        refusal.reason = failure.reason;
                        Status::unauthenticated(match failure.reason {
                            "missing" => "missing credentials: send `authorization: Bearer <api key>`",
                            "malformed" => "malformed authorization header: expected `Bearer <api key>`",
                            _ => "unknown API key or client certificate",
                        })
                    }
                    FailureVerdict::PeerLimited => {
                        refusal.reason = "peer_limit";
                        refusal.cause = Some(failure.reason);
                        Status::resource_exhausted(
                            "too many failed authentication attempts from this address; \
                             a valid credential is still served, failures are refused for a while",
                        )
                    }
                    FailureVerdict::GlobalLimited => {
                        refusal.reason = "global_limit";
                        refusal.cause = Some(failure.reason);
                        Status::resource_exhausted(
                            "too many failed authentication attempts at this server; \
                             a valid credential is still served, failures are refused for a while",
                        )
                    }
                };
                self.refuse(&refusal);
                return Err(status);
            }
        };
        if !caller.has_role(role) {
            refusal.reason = "wrong_role";
            refusal.credential = credential_kind(headers);
            refusal.actor = Some(&caller.name);
            self.refuse(&refusal);
            return Err(Status::permission_denied(format!(
                "caller `{}` lacks the `{}` role this service needs",
                caller.name,
                role.as_str()
            )));
        }
        Ok(caller)
    }

    /// Counts, logs and audits one refusal.
    fn refuse(&self, refusal: &Refusal<'_>) {
        self.metrics.auth_failure(match refusal.reason {
            "missing" => "missing",
            "malformed" => "malformed",
            "wrong_role" => "wrong_role",
            "peer_limit" => "peer_limit",
            "global_limit" => "global_limit",
            _ => "unknown",
        });
        let peer = refusal.peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        if refusal.cause.is_some() {
            tracing::debug!(%peer, reason = refusal.reason, rpc = refusal.rpc, "authentication failure throttled");
        } else {
            tracing::info!(%peer, reason = refusal.reason, rpc = refusal.rpc, "authentication failed");
        }
        if let Some(audit) = &self.audit {
            audit.record(refusal);
        }
    }

    fn resolve(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> Result<Arc<Caller>, Failure> {
        match headers.get(http::header::AUTHORIZATION) {
            Some(value) => {
                let malformed = Failure {
                    reason: "malformed",
                    credential: "api_key",
                };
                let text = value.to_str().map_err(|_| malformed)?;
                let key = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty() && k.len() <= 512)
                    .ok_or(malformed)?;
                // Unknown and wrong keys take exactly the same path: one hash, one lookup.
                self.registry.by_key_digest(&digest_api_key(key)).ok_or(Failure {
                    reason: "unknown",
                    credential: "api_key",
                })
            }
            None => {
                let identity = certificate_identity(extensions).ok_or(Failure {
                    reason: "missing",
                    credential: "none",
                })?;
                identity
                    .subjects
                    .iter()
                    .find_map(|subject| self.registry.by_cert_subject(subject))
                    .ok_or(Failure {
                        reason: "unknown",
                        credential: "client_cert",
                    })
            }
        }
    }
}

/// The kind of credential a request carries (for audit events).
fn credential_kind(headers: &http::HeaderMap) -> &'static str {
    if headers.contains_key(http::header::AUTHORIZATION) {
        "api_key"
    } else {
        "client_cert"
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
            .authenticate(request.headers(), request.extensions(), role, request.uri().path())
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

    fn cert_authenticator(per_peer_per_minute: u32) -> Authenticator {
        let auth = crate::config::AuthConfig {
            client_certs: vec![crate::config::ClientCertConfig {
                name: "agent-worker".into(),
                subject: "spiffe://tokenvault/agent/7".into(),
                roles: vec![Role::Agent],
                tenants: vec!["*".into()],
            }],
            ..Default::default()
        };
        let registry = CallerRegistry::from_config(&auth).unwrap();
        let limits = FailureLimits {
            per_peer_per_minute,
            global_per_second: 0,
            tracked_peers: 100,
        };
        Authenticator::new(registry, limits, Metrics::new())
    }

    const RPC: &str = "/tokenvault.v1.TokenService/GetAccessToken";

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
        let caller = authenticator
            .authenticate(&headers, &extensions, Role::Agent, RPC)
            .unwrap();
        assert_eq!(&*caller.name, "agent-worker");
        let denied = authenticator
            .authenticate(&headers, &extensions, Role::Admin, RPC)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);

        let anonymous = authenticator
            .authenticate(&headers, &tls_info(None), Role::Agent, RPC)
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
        for _ in 0..2 {
            let status = authenticator
                .authenticate(&headers, &unknown, Role::Agent, RPC)
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        // The peer from TlsConnectInfo is now over its allowance: its failures are refused...
        let refused = authenticator
            .authenticate(&headers, &unknown, Role::Agent, RPC)
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // ...but a good certificate from it is still served.
        let good = tls_info(Some(&["spiffe://tokenvault/agent/7"]));
        let caller = authenticator.authenticate(&headers, &good, Role::Agent, RPC).unwrap();
        assert_eq!(&*caller.name, "agent-worker");
    }
}
