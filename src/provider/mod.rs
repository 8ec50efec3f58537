//! Calls to providers: token, refresh and revocation endpoints, and
//! OpenID Connect / RFC 8414 discovery.

mod client;
mod discovery;
mod http;
mod registry;

pub use client::{
    never_expires, new_pkce, Endpoints, Exchanged, ProviderClient, RawAnswer, Revoked, DEFAULT_TOKEN_LIFETIME,
    NON_EXPIRING_LIFETIME,
};
pub use discovery::discover;
pub use http::{AnswerShape, HttpError, ProviderHttp};
pub use registry::{Providers, ProvidersError};

use chrono::{DateTime, Utc};
use secrecy::SecretString;

/// What a token endpoint answered. `Debug` shows no token.
pub struct TokenSet {
    /// The access token.
    pub access_token: SecretString,
    /// A refresh token, when issued (or rotated).
    pub refresh_token: Option<SecretString>,
    /// Usually `Bearer`.
    pub token_type: String,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// When the answer arrived (the token's lifetime is `expires_at - issued_at`).
    pub issued_at: DateTime<Utc>,
    /// Scopes the provider reported; `None` means "as requested" (RFC 6749 §5.1).
    pub scopes: Option<crate::store::ScopeSet>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"[REDACTED]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// Why a provider call failed. Messages never contain a token or code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The grant (code or refresh token) is invalid, expired or revoked.
    #[error("provider rejected the grant (invalid_grant){}", suffix(.0))]
    InvalidGrant(String),
    /// The requested scope exceeds the grant.
    #[error("provider rejected the scope (invalid_scope){}", suffix(.0))]
    InvalidScope(String),
    /// tokenvault's client id or secret was refused.
    #[error("{0}")]
    ClientRejected(String),
    /// Another OAuth error.
    #[error("{0}")]
    Rejected(String),
    /// Down, slow, or 5xx: worth retrying. The provider may have processed
    /// the request (a timeout, or a 5xx after it was received).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The connection to the provider could not be made: the request was
    /// never received, so sending it again is always safe.
    #[error("provider unavailable: {0}")]
    Unreachable(String),
    /// 429 or 503: the provider did not serve the request; worth retrying, not
    /// before `retry_after` (zero when it sent no `Retry-After`).
    #[error("provider unavailable: {message}")]
    Throttled {
        /// What the provider answered.
        message: String,
        /// How long it asked us to wait.
        retry_after: std::time::Duration,
    },
    /// An answer that is not a valid response.
    #[error("{0}")]
    Malformed(String),
    /// The provider cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The provider is not configured on this server.
    #[error("provider `{0}` is not configured on this server (no client credentials)")]
    NotConfigured(String),
}

fn suffix(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

impl ProviderError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::Unavailable(_) | ProviderError::Unreachable(_) | ProviderError::Throttled { .. }
        )
    }

    /// Whether the provider surely did not act on the request (no connection,
    /// or it asked us to come back later), so that repeating it cannot present
    /// a single-use refresh token twice.
    pub fn surely_unprocessed(&self) -> bool {
        matches!(self, ProviderError::Unreachable(_) | ProviderError::Throttled { .. })
    }

    /// How long the provider asked us to wait before the next attempt, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ProviderError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether the provider may have acted on the request although no usable
    /// answer came back (a timeout, a 5xx after it was received, an unreadable
    /// answer): a refresh token sent may have been rotated.
    pub fn may_have_acted(&self) -> bool {
        (self.is_transient() && !self.surely_unprocessed()) || matches!(self, ProviderError::Malformed(_))
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::InvalidGrant(_) => "invalid_grant",
            ProviderError::InvalidScope(_) => "invalid_scope",
            ProviderError::ClientRejected(_) => "client_rejected",
            ProviderError::Rejected(_) => "rejected",
            ProviderError::Unavailable(_) | ProviderError::Unreachable(_) | ProviderError::Throttled { .. } => {
                "unavailable"
            }
            ProviderError::Malformed(_) => "malformed",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::NotConfigured(_) => "not_configured",
        }
    }
}
