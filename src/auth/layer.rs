//! The authentication layer in front of every gRPC service: it resolves the
//! caller from `authorization: Bearer <key>`, a workload token
//! (`Bearer <jwt>`, verified asynchronously, see [`super::workload`]) or a
//! verified client certificate, checks the role the service needs, and attaches the
//! [`Caller`] to the request. Health and reflection stay open.

use super::failure_audit::{FailureAudit, Refusal};
use super::rate_limit::{FailureLimiter, FailureLimits, FailureVerdict};
use super::workload::{looks_like_jwt, WorkloadError, WorkloadVerifier};
use super::{digest_api_key, Caller, CallerRegistry};
use crate::config::Role;
use crate::telemetry::{Metrics, RequestId};
use crate::transport::{certificate_identity, peer_ip};
use futures::future::{BoxFuture, Either, Ready};
use std::borrow::Cow;
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
        "tokenvault.v1.ConsentService" | "tokenvault.v1.ConnectionService" | "tokenvault.v1.EventService" => {
            Some(Role::Platform)
        }
        "tokenvault.v1.AdminService" => Some(Role::Admin),
        _ => return None,
    })
}

/// What a refused credential gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// `UNAUTHENTICATED` with this message (or `RESOURCE_EXHAUSTED` past the failure limits).
    Unauthenticated(Cow<'static, str>),
    /// `UNAVAILABLE`: the credential could not be checked (the issuer is away); not the caller's failure.
    Unavailable(String),
    /// `PERMISSION_DENIED`: a verified workload identity no `[[auth.workloads]]` entry maps.
    Unmapped(String),
}

/// Why a credential did not resolve to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// `missing`, `malformed`, `unknown`, or a workload token's reason.
    reason: &'static str,
    /// The kind of credential presented.
    credential: &'static str,
    answer: Answer,
}

impl Failure {
    fn api_key(reason: &'static str) -> Self {
        let message = match reason {
            "missing" => "missing credentials: send `authorization: Bearer <api key or workload token>`",
            "malformed" => "malformed authorization header: expected `Bearer <api key or workload token>`",
            _ => "unknown API key or client certificate",
        };
        Self {
            reason,
            credential: if reason == "missing" { "none" } else { "api_key" },
            answer: Answer::Unauthenticated(Cow::Borrowed(message)),
        }
    }
}

/// The first step of authentication: done at once, or a workload token to verify.
#[derive(Debug)]
pub enum Begin {
    /// The caller, or the status to answer.
    Done(Result<Arc<Caller>, Status>),
    /// A workload token (JWT) to verify with [`Authenticator::authenticate_workload`].
    Workload(String),
}

/// What the audit event of a refusal needs from the request, owned (for the workload path).
#[derive(Debug, Clone)]
pub struct RequestFacts {
    peer: Option<std::net::IpAddr>,
    rpc: String,
    request_id: Option<String>,
}

impl RequestFacts {
    /// The facts of a request to `rpc`.
    pub fn of(extensions: &http::Extensions, rpc: &str) -> Self {
        Self {
            peer: peer_ip(extensions),
            rpc: rpc.to_owned(),
            request_id: extensions.get::<RequestId>().map(|r| r.0.clone()),
        }
    }
}

/// Everything the layer needs, shared by all connections.
#[derive(Debug)]
pub struct Authenticator {
    registry: CallerRegistry,
    limiter: FailureLimiter,
    metrics: Metrics,
    audit: Option<FailureAudit>,
    workload: Option<WorkloadVerifier>,
}

impl Authenticator {
    /// An authenticator over `registry`, throttling failures by `limits`.
    pub fn new(registry: CallerRegistry, limits: FailureLimits, metrics: Metrics) -> Self {
        Self {
            registry,
            limiter: FailureLimiter::new(limits),
            metrics,
            audit: None,
            workload: None,
        }
    }

    /// Records every refusal as an `auth.failure` audit event through `audit`.
    pub fn with_audit(mut self, audit: FailureAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Accepts workload tokens verified by `verifier`.
    pub fn with_workload_identity(mut self, verifier: WorkloadVerifier) -> Self {
        self.workload = Some(verifier);
        self
    }

    /// Resolves and authorizes the caller of a request to `rpc`: at once for
    /// API keys and client certificates, or hands back a workload token to verify.
    ///
    /// The credential is always checked first (one SHA-256 and one map probe
    /// for an API key), so a valid one is served whatever its address or the
    /// whole server has failed lately; only failures are throttled.
    pub fn begin(&self, headers: &http::HeaderMap, extensions: &http::Extensions, role: Role, rpc: &str) -> Begin {
        let resolved = match self.resolve(headers, extensions) {
            Ok(Resolved::Caller(caller)) => Ok(caller),
            Ok(Resolved::Workload(token)) => return Begin::Workload(token),
            Err(failure) => Err(failure),
        };
        let facts = Refusal {
            reason: "",
            cause: None,
            credential: credential_kind(headers),
            actor: None,
            subject: None,
            peer: peer_ip(extensions),
            rpc,
            request_id: extensions.get::<RequestId>().map(|r| r.0.as_str()),
        };
        Begin::Done(self.conclude(resolved, facts, role))
    }

    /// Verifies a workload token from [`begin`](Self::begin) and authorizes its caller.
    pub async fn authenticate_workload(
        &self,
        token: &str,
        facts: &RequestFacts,
        role: Role,
    ) -> Result<Arc<Caller>, Status> {
        let resolved = match &self.workload {
            Some(verifier) => match verifier.verify(token).await {
                Ok(subject) => self.registry.by_workload_subject(&subject).ok_or(Failure {
                    reason: "unmapped",
                    credential: "workload_token",
                    answer: Answer::Unmapped(subject),
                }),
                Err(error) => Err(Failure {
                    reason: error.reason(),
                    credential: "workload_token",
                    answer: match &error {
                        WorkloadError::Unavailable(_) => Answer::Unavailable(error.to_string()),
                        _ => Answer::Unauthenticated(Cow::Owned(error.to_string())),
                    },
                }),
            },
            None => Err(Failure::api_key("unknown")),
        };
        let refusal = Refusal {
            reason: "",
            cause: None,
            credential: "workload_token",
            actor: None,
            subject: None,
            peer: facts.peer,
            rpc: &facts.rpc,
            request_id: facts.request_id.as_deref(),
        };
        self.conclude(resolved, refusal, role)
    }

    /// Throttles and audits a failure, or checks the caller's role.
    fn conclude(
        &self,
        resolved: Result<Arc<Caller>, Failure>,
        mut refusal: Refusal<'_>,
        role: Role,
    ) -> Result<Arc<Caller>, Status> {
        let caller = match resolved {
            Ok(caller) => caller,
            Err(failure) => {
                refusal.credential = failure.credential;
                refusal.reason = failure.reason;
                let status = match failure.answer {
                    Answer::Unauthenticated(message) => match self.limiter.failure(refusal.peer) {
                        FailureVerdict::Counted => Status::unauthenticated(message),
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
                    },
                    Answer::Unavailable(message) => {
                        self.refuse(&refusal);
                        return Err(Status::unavailable(format!(
                            "{message}; API keys and client certificates still work, retry later"
                        )));
                    }
                    Answer::Unmapped(subject) => {
                        self.refuse(&Refusal {
                            subject: Some(&subject),
                            ..refusal
                        });
                        return Err(Status::permission_denied(format!(
                            "workload identity `{subject}` is verified but not mapped to a caller: \
                             add it to [[auth.workloads]]"
                        )));
                    }
                };
                self.refuse(&refusal);
                return Err(status);
            }
        };
        if !caller.has_role(role) {
            self.refuse(&Refusal {
                reason: "wrong_role",
                actor: Some(&caller.name),
                ..refusal
            });
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
            "unknown" => "unknown",
            "unmapped" => "workload_unmapped",
            "issuer_unavailable" => "issuer_unavailable",
            _ => "workload_invalid",
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

    fn resolve(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> Result<Resolved, Failure> {
        match headers.get(http::header::AUTHORIZATION) {
            Some(value) => {
                let text = value.to_str().map_err(|_| Failure::api_key("malformed"))?;
                let credential = text
                    .strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| Failure::api_key("malformed"))?;
                if self.workload.is_some() && looks_like_jwt(credential) {
                    return Ok(Resolved::Workload(credential.to_owned()));
                }
                if credential.len() > 512 {
                    return Err(Failure::api_key("malformed"));
                }
                // Unknown and wrong keys take exactly the same path: one hash, one lookup.
                self.registry
                    .by_key_digest(&digest_api_key(credential))
                    .map(Resolved::Caller)
                    .ok_or_else(|| Failure::api_key("unknown"))
            }
            None => {
                let identity = certificate_identity(extensions).ok_or_else(|| Failure::api_key("missing"))?;
                self.registry
                    .by_cert_subjects(&identity.subjects)
                    .map(Resolved::Caller)
                    .ok_or(Failure {
                        reason: "unknown",
                        credential: "client_cert",
                        answer: Answer::Unauthenticated(Cow::Borrowed("unknown API key or client certificate")),
                    })
            }
        }
    }
}

/// A credential resolved at once, or a workload token still to verify.
enum Resolved {
    Caller(Arc<Caller>),
    Workload(String),
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
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        Either<Ready<Result<S::Response, S::Error>>, S::Future>,
        BoxFuture<'static, Result<S::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let role = match required_role(request.uri().path()) {
            Some(Some(role)) => role,
            // Health and reflection: open.
            Some(None) => return Either::Left(Either::Right(self.inner.call(request))),
            // Fail closed: a service the role table does not name is never reached.
            None => {
                let refused = Status::unimplemented("no such service");
                return Either::Left(Either::Left(futures::future::ready(Ok(refused.into_http()))));
            }
        };
        match self
            .authenticator
            .begin(request.headers(), request.extensions(), role, request.uri().path())
        {
            Begin::Done(Ok(caller)) => {
                request.extensions_mut().insert(caller);
                Either::Left(Either::Right(self.inner.call(request)))
            }
            Begin::Done(Err(status)) => Either::Left(Either::Left(futures::future::ready(Ok(status.into_http())))),
            Begin::Workload(token) => {
                // The inner service was made ready for this call: take it, leave a clone.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let authenticator = self.authenticator.clone();
                let facts = RequestFacts::of(request.extensions(), request.uri().path());
                Either::Right(Box::pin(async move {
                    match authenticator.authenticate_workload(&token, &facts, role).await {
                        Ok(caller) => {
                            request.extensions_mut().insert(caller);
                            inner.call(request).await
                        }
                        Err(status) => Ok(status.into_http()),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{CertSubject, PeerCertificateIdentity, TlsConnectInfo};

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

    #[tokio::test]
    async fn a_service_the_role_table_does_not_name_is_refused_before_it_is_reached() {
        use tower::{Layer, ServiceExt};
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let inner = {
            let reached = reached.clone();
            tower::service_fn(move |_: http::Request<()>| {
                reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                futures::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(String::new())))
            })
        };
        let service = AuthLayer::new(Arc::new(cert_authenticator(10))).layer(inner);
        let call = |path: &'static str| {
            let service = service.clone();
            async move {
                let request = http::Request::builder().uri(path).body(()).unwrap();
                service.oneshot(request).await.unwrap()
            }
        };
        let refused = call("/tokenvault.v1.SecretService/Dump").await;
        assert_eq!(refused.headers()["grpc-status"], "12", "UNIMPLEMENTED");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "never reached");
        call("/grpc.health.v1.Health/Check").await;
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1, "health is open");
        let unauthenticated = call(RPC).await;
        assert_eq!(unauthenticated.headers()["grpc-status"], "16", "UNAUTHENTICATED");
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    fn cert_authenticator(per_peer_per_minute: u32) -> Authenticator {
        let auth = crate::config::AuthConfig {
            client_certs: vec![crate::config::ClientCertConfig {
                name: "agent-worker".into(),
                subject: "uri:spiffe://tokenvault/agent/7".into(),
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

    impl Authenticator {
        fn authenticate(
            &self,
            headers: &http::HeaderMap,
            extensions: &http::Extensions,
            role: Role,
            rpc: &str,
        ) -> Result<Arc<Caller>, Status> {
            match self.begin(headers, extensions, role, rpc) {
                Begin::Done(result) => result,
                Begin::Workload(_) => panic!("no workload identity configured"),
            }
        }
    }

    fn tls_info(subjects: Option<&[CertSubject]>) -> http::Extensions {
        let mut extensions = http::Extensions::new();
        extensions.insert(TlsConnectInfo {
            remote_addr: Some("192.0.2.9:4000".parse().unwrap()),
            identity: subjects.map(|s| PeerCertificateIdentity { subjects: s.to_vec() }),
        });
        extensions
    }

    #[test]
    fn the_identity_in_tls_connect_info_authenticates() {
        let authenticator = cert_authenticator(20);
        let headers = http::HeaderMap::new();
        let extensions = tls_info(Some(&[
            CertSubject::uri("spiffe://tokenvault/agent/7"),
            CertSubject::dns("agent.internal"),
            CertSubject::cn("agent-7"),
        ]));
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
        // The configured URI as a common name is not the URI SAN.
        let unknown = tls_info(Some(&[CertSubject::cn("spiffe://tokenvault/agent/7")]));
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
        let good = tls_info(Some(&[CertSubject::uri("spiffe://tokenvault/agent/7")]));
        let caller = authenticator.authenticate(&headers, &good, Role::Agent, RPC).unwrap();
        assert_eq!(&*caller.name, "agent-worker");
    }
}
