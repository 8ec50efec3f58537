//! Callers: API keys (stored hashed), client certificates, roles and the
//! tenants each caller may act for.

pub mod api_key;
mod caller;
mod failure_audit;
mod layer;
mod rate_limit;

pub use api_key::{digest_api_key, generate_api_key, hash_api_key};
pub use caller::{Caller, CallerRegistry};
pub use failure_audit::{FailureAudit, Refusal, UNAUTHENTICATED_ACTOR};
pub use layer::{required_role, AuthLayer, Authenticator};
pub use rate_limit::{FailureLimiter, FailureLimits, FailureVerdict, PeerKey};
