//! The one place where errors become gRPC statuses. Unexpected failures are
//! logged under a random reference, and only the reference reaches the
//! caller; messages never carry a token, code or verifier.

use crate::store::StoreError;
use crate::vault::VaultError;
use tonic::Status;
use uuid::Uuid;

/// An `INTERNAL` status whose detail stays in the log under a reference id.
pub fn internal(error: &dyn std::fmt::Display) -> Status {
    let reference = Uuid::new_v4();
    tracing::error!(%reference, %error, "internal error");
    Status::internal(format!("internal error (reference {reference})"))
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                Status::unavailable("database unavailable; retry shortly")
            }
            StoreError::Conflict(message) => Status::aborted(message),
            other => internal(&other),
        }
    }
}

impl From<VaultError> for Status {
    fn from(error: VaultError) -> Self {
        match error {
            VaultError::Store(store) => store.into(),
            VaultError::OpenFailed | VaultError::Malformed(_) | VaultError::UnwrapFailed { .. } => {
                let reference = Uuid::new_v4();
                tracing::error!(%reference, %error, "stored secret failed integrity check");
                Status::data_loss(format!(
                    "a stored secret failed its integrity check (reference {reference}); the platform must re-consent"
                ))
            }
            VaultError::KmsUnavailable(_) | VaultError::HsmUnavailable(_) => {
                tracing::warn!(%error, "key service unavailable");
                Status::unavailable(format!("{error}; cached tokens are still served, retry later"))
            }
            VaultError::EpochBehind(_) => {
                tracing::error!(%error, "new data key refused: the current KEK epoch does not load on this replica");
                Status::unavailable(format!("{error}; retry later (another replica may serve it)"))
            }
            VaultError::KmsRefused(_) => {
                tracing::error!(%error, "key service refused a data-key operation");
                Status::failed_precondition(format!(
                    "{error}; an operator must restore tokenvault's access to the key (IAM policy, key state)"
                ))
            }
            other => internal(&other),
        }
    }
}

impl From<crate::consent::ConsentError> for Status {
    fn from(error: crate::consent::ConsentError) -> Self {
        use crate::consent::catalog::CatalogError;
        use crate::consent::ConsentError as E;
        use crate::provider::ProviderError;
        match error {
            E::Invalid(_) | E::UnknownProvider(_) | E::UnknownState => Status::invalid_argument(error.to_string()),
            E::Catalog(ref inner) => match inner {
                CatalogError::UnknownCapability { .. }
                | CatalogError::ScopeNotAllowed { .. }
                | CatalogError::NothingRequested { .. }
                | CatalogError::UnknownProvider { .. } => Status::invalid_argument(error.to_string()),
                _ => internal(&error),
            },
            E::ProviderUnusable(
                ProviderError::Unavailable(_) | ProviderError::Unreachable(_) | ProviderError::Throttled { .. },
            ) => Status::unavailable(error.to_string()),
            E::ProviderUnusable(_) => Status::failed_precondition(error.to_string()),
            E::WrongTenant { .. } | E::OtherUser(_) | E::WrongCompletionCode(_) | E::NotBound => {
                Status::permission_denied(error.to_string())
            }
            E::ProviderMismatch { .. } | E::IssuerMismatch { .. } | E::IssuerMissing(_) | E::StartUnusable => {
                Status::invalid_argument(error.to_string())
            }
            E::ForeignConnection(_) => Status::invalid_argument(error.to_string()),
            E::UserDeleted(_) | E::Expired | E::AlreadyUsed | E::NotApproved(_) | E::OtherAccount { .. } => {
                Status::failed_precondition(error.to_string())
            }
            E::NotFound(_) => Status::not_found(error.to_string()),
            E::Store(inner) => inner.into(),
            E::Vault(inner) => inner.into(),
        }
    }
}

/// `PERMISSION_DENIED` for what a token request lacks, with the standard
/// `google.rpc.ErrorInfo` detail (reason `CONSENT_REQUIRED`, domain
/// `tokenvault`) naming the connection, its provider and the missing scopes
/// and capabilities (space-separated), so that any gRPC client can turn it
/// into a consent prompt.
fn consent_required(message: String, needed: &crate::broker::ConsentRequired) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let metadata = std::collections::HashMap::from([
        ("connection_id".to_owned(), needed.connection_id.to_string()),
        ("provider".to_owned(), needed.provider.clone()),
        ("missing_scopes".to_owned(), needed.missing_scopes.join(" ")),
        ("missing_capabilities".to_owned(), needed.missing_capabilities.join(" ")),
    ]);
    Status::with_error_details(
        tonic::Code::PermissionDenied,
        message,
        ErrorDetails::with_error_info(CONSENT_REQUIRED, ERROR_DOMAIN, metadata),
    )
}

/// `ErrorInfo.reason` of a token request that needs the user's consent.
pub const CONSENT_REQUIRED: &str = "CONSENT_REQUIRED";
/// `ErrorInfo.domain` of tokenvault's errors.
pub const ERROR_DOMAIN: &str = "tokenvault";

impl From<crate::broker::BrokerError> for Status {
    fn from(error: crate::broker::BrokerError) -> Self {
        use crate::broker::BrokerError as E;
        match error {
            E::NotFound(_) => Status::not_found(error.to_string()),
            E::WrongTenant => Status::permission_denied(error.to_string()),
            E::ConsentRequired(ref needed) => consent_required(error.to_string(), needed),
            E::UnknownCapability { .. } => Status::invalid_argument(error.to_string()),
            E::Revoked | E::NeedsReauth(_) | E::UserDeleted | E::ProviderMisconfigured(_) => {
                Status::failed_precondition(error.to_string())
            }
            E::ProviderUnavailable(_) => Status::unavailable(error.to_string()),
            E::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
            E::MinTtlUnattainable { .. } => Status::out_of_range(error.to_string()),
            E::Store(inner) => inner.into(),
            E::Vault(inner) => inner.into(),
        }
    }
}

impl From<crate::lifecycle::LifecycleError> for Status {
    fn from(error: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError as E;
        match error {
            E::NotFound(_) => Status::not_found(error.to_string()),
            E::WrongTenant(_) => Status::permission_denied(error.to_string()),
            E::Precondition(_) => Status::failed_precondition(error.to_string()),
            E::Store(inner) => inner.into(),
            E::Vault(inner) => inner.into(),
        }
    }
}

impl From<crate::events::WatchError> for Status {
    fn from(error: crate::events::WatchError) -> Self {
        use crate::events::WatchError as E;
        match error {
            E::Expired { .. } | E::Ahead { .. } => Status::out_of_range(error.to_string()),
            E::Busy(_) => Status::resource_exhausted(error.to_string()),
            E::Store(inner) => inner.into(),
        }
    }
}

impl From<crate::events::webhook::WebhookError> for Status {
    fn from(error: crate::events::webhook::WebhookError) -> Self {
        use crate::events::webhook::WebhookError as E;
        match error {
            E::Url(_) | E::Invalid(_) => Status::invalid_argument(error.to_string()),
            E::NotFound(_) => Status::not_found(error.to_string()),
            E::TooMany { .. } => Status::resource_exhausted(error.to_string()),
            E::Conflict => Status::aborted(error.to_string()),
            E::Vault(inner) => inner.into(),
            E::Store(inner) => inner.into(),
        }
    }
}
