//! Callers: API keys (stored hashed), client certificates, workload identity
//! tokens (Kubernetes service-account JWTs, SPIFFE JWT-SVIDs), roles and the
//! tenants each caller may act for.

pub mod api_key;
mod caller;
mod failure_audit;
mod jwks;
mod layer;
mod rate_limit;
mod workload;

pub use api_key::{digest_api_key, generate_api_key, hash_api_key};
pub use caller::{Caller, CallerRegistry};
pub use failure_audit::{FailureAudit, Refusal, UNAUTHENTICATED_ACTOR};
pub use jwks::{IssuerKeys, IssuerSource, JwksError};
pub use layer::{required_role, AuthLayer, Authenticator, Begin, RequestFacts};
pub use rate_limit::{FailureLimiter, FailureLimits, FailureVerdict, PeerKey};
pub use workload::{looks_like_jwt, WorkloadError, WorkloadSettings, WorkloadVerifier};
