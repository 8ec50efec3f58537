//! The broker's error: why no token was handed out, and the metric label of
//! each reason.

use crate::store::StoreError;
use crate::vault::VaultError;
use uuid::Uuid;

/// Why no token was handed out. Messages never contain a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// No such connection for this caller.
    #[error("no connection {0}")]
    NotFound(Uuid),
    /// The connection belongs to a tenant the caller may not act for.
    #[error("caller may not act for this connection's tenant")]
    WrongTenant,
    /// Scopes or capabilities asked for are not granted: the user must consent.
    #[error("{0}")]
    ConsentRequired(Box<super::ConsentRequired>),
    /// The connection's provider has no capability of that name.
    #[error("provider `{provider}` has no capability `{capability}`")]
    UnknownCapability {
        /// The connection's provider.
        provider: String,
        /// The capability asked for.
        capability: String,
    },
    /// Revoked.
    #[error("connection is revoked")]
    Revoked,
    /// The user must consent again.
    #[error("connection needs re-consent: {0}")]
    NeedsReauth(String),
    /// The user is deleted.
    #[error("the connection's user is deleted (pending purge)")]
    UserDeleted,
    /// The provider is down or slow and nothing valid is cached.
    #[error("provider unavailable and no valid token cached: {0}")]
    ProviderUnavailable(String),
    /// The caller's deadline passed while the refresh was still running; the
    /// refresh goes on without it and its result serves the next call.
    #[error("no token before the caller's deadline; the refresh continues and the next call gets its result")]
    DeadlineExceeded,
    /// The caller insisted on a `min_ttl` longer than the freshest token the
    /// provider issues lives.
    #[error("the freshest token expires in {remaining_seconds} s, sooner than the {min_ttl_seconds} s required (the provider issues tokens of about {lifetime_seconds} s)")]
    MinTtlUnattainable {
        /// Seconds the freshest token still lives.
        remaining_seconds: i64,
        /// What the caller required.
        min_ttl_seconds: i64,
        /// The lifetime the provider gave the token.
        lifetime_seconds: i64,
    },
    /// The provider refused tokenvault itself (configuration).
    #[error("{0}")]
    ProviderMisconfigured(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl BrokerError {
    /// The issuance metric's outcome label for this error.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            BrokerError::NotFound(_) => "not_found",
            BrokerError::WrongTenant | BrokerError::ConsentRequired(_) => "denied",
            BrokerError::UnknownCapability { .. } => "invalid",
            BrokerError::Revoked => "revoked",
            BrokerError::NeedsReauth(_) => "needs_reauth",
            BrokerError::UserDeleted => "user_deleted",
            BrokerError::ProviderUnavailable(_) | BrokerError::ProviderMisconfigured(_) => "provider_error",
            BrokerError::DeadlineExceeded => "deadline_exceeded",
            BrokerError::MinTtlUnattainable { .. } => "min_ttl_unattainable",
            BrokerError::Store(_) | BrokerError::Vault(_) => "internal",
        }
    }
}
