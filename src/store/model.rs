//! Records the store reads and writes. Secrets appear here only sealed.

use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use uuid::Uuid;

/// A set of OAuth scopes, kept sorted so equal sets compare and print alike.
pub type ScopeSet = BTreeSet<String>;

/// Joins scopes with single spaces (the stored form; OAuth scope tokens never contain spaces).
pub fn scopes_to_text(scopes: &ScopeSet) -> String {
    scopes.iter().map(String::as_str).collect::<Vec<_>>().join(" ")
}

/// The inverse of [`scopes_to_text`].
pub fn scopes_from_text(text: &str) -> ScopeSet {
    text.split_whitespace().map(str::to_owned).collect()
}

/// The record part of an access token's sealing binding: connection id and scope key.
pub fn access_token_record(connection_id: Uuid, scope_key: &str) -> String {
    format!("{connection_id}/{scope_key}")
}

/// Ciphertext as stored: never printed, only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

impl Sealed {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Which tenants a caller may see; store reads never return rows outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant (keys configured with `"*"`).
    All,
    /// Only these tenants.
    Only(BTreeSet<String>),
}

impl TenantScope {
    /// Whether `tenant_id` is inside the scope.
    pub fn allows(&self, tenant_id: &str) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(tenants) => tenants.contains(tenant_id),
        }
    }
}

/// Stored status of a connection. `PendingDeletion` is never stored: it is
/// derived from the user's deletion, so restoring the user restores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionStatus {
    /// Tokens are served.
    Active,
    /// The provider rejected the refresh token; the user must consent again.
    NeedsReauth,
    /// Revoked; tokens destroyed.
    Revoked,
    /// The user is deleted; nothing is served until restore or purge.
    PendingDeletion,
}

impl ConnectionStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::NeedsReauth => "needs_reauth",
            ConnectionStatus::Revoked => "revoked",
            ConnectionStatus::PendingDeletion => "pending_deletion",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => ConnectionStatus::Active,
            "needs_reauth" => ConnectionStatus::NeedsReauth,
            "revoked" => ConnectionStatus::Revoked,
            "pending_deletion" => ConnectionStatus::PendingDeletion,
            _ => return None,
        })
    }
}

/// Where the revocation of a connection's credentials at the provider stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationState {
    /// Queued in the outbox (retried until final; the data key is kept until then).
    Pending,
    /// Revoked at the provider (or nothing was held to revoke).
    Done,
    /// The provider offers no way to revoke; the user must do it on the provider's page.
    Unsupported,
    /// Given up after retrying, or refused for good.
    Failed,
}

impl RevocationState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationState::Pending => "pending",
            RevocationState::Done => "done",
            RevocationState::Unsupported => "unsupported",
            RevocationState::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => RevocationState::Pending,
            "done" => RevocationState::Done,
            "unsupported" => RevocationState::Unsupported,
            "failed" => RevocationState::Failed,
            _ => return None,
        })
    }

    /// Whether nothing more will be tried.
    pub fn is_final(self) -> bool {
        self != RevocationState::Pending
    }
}

/// The provider revocation of a revoked connection, as reported to the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRevocation {
    /// Where it stands.
    pub state: RevocationState,
    /// When it reached this state.
    pub at: DateTime<Utc>,
    /// Why (unsupported), what went wrong last (pending, failed), or what was done (done); secret-free.
    pub detail: Option<String>,
    /// The provider's page where the user revokes the app themselves (unsupported).
    pub user_page: Option<String>,
    /// The kind of the last error (pending after a failure, failed): `unavailable`, `not_configured`, ...
    pub error_kind: Option<String>,
}

/// What a revocation does at the provider, decided from the catalog before the store is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationPlan {
    /// Queue the credential in the outbox (the connection reports `pending`).
    Queue,
    /// The provider cannot revoke: report `unsupported` at once and destroy the key.
    Unsupported {
        /// Why, from the catalog.
        reason: String,
        /// Where the user revokes the app themselves.
        user_page: Option<String>,
    },
}

/// An end user of a tenant, as far as tokenvault knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Owning tenant.
    pub tenant_id: String,
    /// The platform's id for the user.
    pub user_id: String,
    /// First seen.
    pub created_at: DateTime<Utc>,
    /// When `DeleteUser` was called, while it stands.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the user's data is destroyed for good.
    pub purge_at: Option<DateTime<Utc>>,
}

/// A user's authorization of one provider.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Connection id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: String,
    /// Owning user.
    pub user_id: String,
    /// Catalog name of the provider.
    pub provider: String,
    /// Scopes the provider reported granting.
    pub granted_scopes: ScopeSet,
    /// Stored status (never `PendingDeletion`).
    pub stored_status: ConnectionStatus,
    /// Why it is not active, in words.
    pub status_reason: Option<String>,
    /// The connection's data key; `None` once its tokens are destroyed.
    pub dek_id: Option<Uuid>,
    /// The sealed refresh token.
    pub refresh_token: Option<Sealed>,
    /// Bumped whenever the refresh token changes (optimistic concurrency).
    pub token_version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last time a token was handed out (kept in batches).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Set while the user is deleted.
    pub user_deleted_at: Option<DateTime<Utc>>,
    /// Set while the user is deleted: when everything is purged.
    pub purge_at: Option<DateTime<Utc>>,
    /// Set once revoked: what happened at the provider.
    pub provider_revocation: Option<ProviderRevocation>,
    /// The upstream account's stable id at the provider, once learned.
    pub account_subject: Option<String>,
    /// The account's name shown to people (never used for matching).
    pub account_display: Option<String>,
}

impl Connection {
    /// The status callers see: `PendingDeletion` while the user is deleted (unless revoked).
    pub fn status(&self) -> ConnectionStatus {
        match (self.user_deleted_at, self.stored_status) {
            (_, ConnectionStatus::Revoked) => ConnectionStatus::Revoked,
            (Some(_), _) => ConnectionStatus::PendingDeletion,
            (None, status) => status,
        }
    }
}

/// A sealed access token for one connection and scope set.
#[derive(Debug, Clone)]
pub struct AccessTokenRecord {
    /// The connection.
    pub connection_id: Uuid,
    /// Canonical scope key (empty for the full grant).
    pub scope_key: String,
    /// The sealed token.
    pub token: Sealed,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Scopes the token carries.
    pub scopes: ScopeSet,
    /// When the provider said it expires.
    pub expires_at: DateTime<Utc>,
    /// The connection's token version it was minted under.
    pub token_version: i64,
    /// When tokenvault received it from the provider (its lifetime is
    /// `expires_at - issued_at`).
    pub issued_at: DateTime<Utc>,
}

/// The state of a consent request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    /// Waiting for the provider's redirect.
    Pending,
    /// The callback arrived and the code is being exchanged (single use).
    Exchanging,
    /// The grant was exchanged and waits, sealed, for the platform's
    /// `ConfirmConsent` with the completion code.
    Approved,
    /// A `ConfirmConsent` is storing the grant (single use).
    Confirming,
    /// A connection was stored.
    Completed,
    /// The user refused or the exchange failed.
    Failed,
}

impl ConsentState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Pending => "pending",
            ConsentState::Exchanging => "exchanging",
            ConsentState::Approved => "approved",
            ConsentState::Confirming => "confirming",
            ConsentState::Completed => "completed",
            ConsentState::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => ConsentState::Pending,
            "exchanging" => ConsentState::Exchanging,
            "approved" => ConsentState::Approved,
            "confirming" => ConsentState::Confirming,
            "completed" => ConsentState::Completed,
            "failed" => ConsentState::Failed,
            _ => return None,
        })
    }
}

/// A consent request started by `StartConsent`.
#[derive(Debug, Clone)]
pub struct ConsentRecord {
    /// Consent id.
    pub id: Uuid,
    /// Hex SHA-256 of the `state` parameter (the state itself is never
    /// stored). Until the browser visits the start handle it is the hash of
    /// a random value no one was given.
    pub state_hash: String,
    /// Hex SHA-256 of the start handle in the authorization URL.
    pub start_hash: Option<String>,
    /// Hex SHA-256 of the binding cookie set by the last visit of the start handle.
    pub binding_hash: Option<String>,
    /// Hex SHA-256 of the one-time completion code, once the grant is approved.
    pub completion_hash: Option<String>,
    /// The exchanged grant awaiting confirmation, sealed under `dek_id`.
    pub pending_grant: Option<Sealed>,
    /// The upstream account the exchanged grant belongs to, when learned.
    pub account_subject: Option<String>,
    /// The account's display name (never used for matching).
    pub account_display: Option<String>,
    /// The connection this consent re-consents (`StartConsent.connection_id`).
    pub target_connection_id: Option<Uuid>,
    /// The account the platform suggested (`login_hint` or the provider's equivalent).
    pub account_hint: Option<String>,
    /// Owning tenant.
    pub tenant_id: String,
    /// Owning user.
    pub user_id: String,
    /// Catalog name of the provider.
    pub provider: String,
    /// Capabilities the platform asked for.
    pub capabilities: Vec<String>,
    /// All scopes the connection should hold afterwards.
    pub requested_scopes: ScopeSet,
    /// Scopes put in the authorization URL.
    pub asked_scopes: ScopeSet,
    /// Whether the provider was asked incrementally.
    pub incremental: bool,
    /// Where the browser goes afterwards.
    pub return_url: Option<String>,
    /// The `redirect_uri` sent to the provider.
    pub redirect_uri: String,
    /// The data key sealing the verifier.
    pub dek_id: Uuid,
    /// The sealed PKCE verifier.
    pub pkce_verifier: Option<Sealed>,
    /// Where the request stands.
    pub state: ConsentState,
    /// The connection it produced.
    pub connection_id: Option<Uuid>,
    /// Why it failed.
    pub error: Option<String>,
    /// Started.
    pub created_at: DateTime<Utc>,
    /// Unusable after this.
    pub expires_at: DateTime<Utc>,
    /// Finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// Caller that started it.
    pub actor: String,
}

/// One audit record. `detail` is a JSON object without secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Time-ordered id (UUIDv7).
    pub id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Tenant concerned, if any.
    pub tenant_id: Option<String>,
    /// User concerned, if any.
    pub user_id: Option<String>,
    /// Connection concerned, if any.
    pub connection_id: Option<Uuid>,
    /// Caller name or `system`.
    pub actor: String,
    /// What happened, e.g. `token.issued`.
    pub action: String,
    /// `success`, `failure`, `denied`, …
    pub outcome: String,
    /// Secret-free detail.
    pub detail: serde_json::Value,
    /// The request that caused it.
    pub request_id: Option<String>,
}

/// Filters for listing audit events.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this connection.
    pub connection_id: Option<Uuid>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Older than this id (keyset pagination, newest first).
    pub before_id: Option<Uuid>,
    /// Newer than this id; with it the list is oldest first (keyset pagination, oldest first).
    pub after_id: Option<Uuid>,
    /// Oldest first (ascending ids) instead of newest first, also without `after_id`.
    pub oldest_first: bool,
    /// Page size.
    pub limit: u32,
}

/// Filters for listing connections (keyset pagination by id).
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    /// Only this tenant.
    pub tenant_id: String,
    /// Only this user.
    pub user_id: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// After this id.
    pub after_id: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

/// A provider revocation waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Entry id.
    pub id: Uuid,
    /// The revoked connection.
    pub connection_id: Uuid,
    /// Tenant of the connection (part of the token's binding).
    pub tenant_id: String,
    /// User of the connection (part of the token's binding).
    pub user_id: String,
    /// Provider to call.
    pub provider: String,
    /// The data key that sealed the token; destroyed when the entry finishes.
    pub dek_id: Uuid,
    /// The sealed token, exactly as it was stored on the connection.
    pub token: Option<Sealed>,
    /// `refresh_token` or `access_token`.
    pub token_type_hint: String,
    /// The record part of the token's binding.
    pub binding_record: String,
    /// The version part of the token's binding: the connection's (or its
    /// access token's) token version when the copy was taken; 0 for a
    /// credential sealed to the entry itself.
    pub binding_version: i64,
    /// Attempts so far.
    pub attempts: i64,
    /// When to try next.
    pub next_attempt_at: DateTime<Utc>,
    /// When to stop trying.
    pub give_up_at: DateTime<Utc>,
    /// `pending`, `done` or `gave_up`.
    pub status: String,
    /// The last failure, secret-free.
    pub last_error: Option<String>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// The claim of the attempt in progress: only its holder may record the outcome.
    pub claim_token: Option<Uuid>,
    /// `revocation` (the connection's own; its outcome is reported on the
    /// connection), `replaced` (a credential a re-consent replaced) or
    /// `orphan` (obtained by a refresh that lost to a revocation).
    pub purpose: String,
    /// A refresh made while revoking may have rotated the refresh token
    /// unheard: a later `invalid_grant` does not prove the grant is gone.
    pub rotation_uncertain: bool,
    /// The kind of the last failure (`unavailable`, `not_configured`, ...).
    pub error_kind: Option<String>,
}

/// A sealed credential to copy into the outbox: what it is and what opens it.
#[derive(Debug, Clone)]
pub struct SealedCredential {
    /// The sealed token.
    pub token: Sealed,
    /// `refresh_token` or `access_token`.
    pub token_type_hint: &'static str,
    /// The record part of the token's sealing binding.
    pub binding_record: String,
    /// The version part of the token's sealing binding.
    pub binding_version: i64,
    /// The data key that sealed it.
    pub dek_id: Uuid,
}

impl OutboxEntry {
    /// A pending entry `id` revoking `credential` of `connection`, for
    /// `purpose` (`revocation`, `replaced` or `orphan`), due now, given up at `give_up_at`.
    pub fn pending(
        id: Uuid,
        connection: &Connection,
        credential: SealedCredential,
        purpose: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            connection_id: connection.id,
            tenant_id: connection.tenant_id.clone(),
            user_id: connection.user_id.clone(),
            provider: connection.provider.clone(),
            dek_id: credential.dek_id,
            token: Some(credential.token),
            token_type_hint: credential.token_type_hint.to_owned(),
            binding_record: credential.binding_record,
            binding_version: credential.binding_version,
            attempts: 0,
            next_attempt_at: now,
            give_up_at,
            status: "pending".to_owned(),
            last_error: None,
            created_at: now,
            claim_token: None,
            purpose: purpose.to_owned(),
            rotation_uncertain: false,
            error_kind: None,
        }
    }
}

/// One KEK epoch: a key-encryption key that has been (or is) the active one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekEpoch {
    /// The key-encryption key (its id in the keyring: key id, KMS ARN or PKCS#11 label).
    pub kek_id: String,
    /// The keyring backend that holds it (`file`, `aws-kms`, `pkcs11`).
    pub backend: String,
    /// When it became the active KEK.
    pub activated_at: DateTime<Utc>,
    /// When a newer epoch replaced it.
    pub retired_at: Option<DateTime<Utc>>,
    /// When tokenvault destroyed it (asked the keyring to).
    pub destroyed_at: Option<DateTime<Utc>>,
    /// When its material was gone for good (after AWS KMS's pending window).
    pub gone_at: Option<DateTime<Utc>>,
    /// Why the last attempt to destroy it did not happen, if it did not.
    pub last_error: Option<String>,
}

/// A wrapped data key as the key table holds it.
#[derive(Clone)]
pub struct WrappedDataKey {
    /// Data key id.
    pub id: Uuid,
    /// The key-encryption key that wraps it.
    pub kek_id: String,
    /// Nonce, wrapped key and tag.
    pub wrapped: Vec<u8>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("id", &self.id)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// What changed, for other replicas' caches (PostgreSQL NOTIFY).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// One connection's tokens or status changed.
    Connection {
        /// The connection.
        id: Uuid,
    },
    /// A user's deletion state changed.
    User {
        /// Tenant.
        tenant_id: String,
        /// User.
        user_id: String,
    },
    /// A data key was destroyed.
    DataKey {
        /// The key.
        id: Uuid,
    },
    /// Anything may have changed (a notification may have been missed).
    All,
}

/// A webhook endpoint of a tenant. Its signing secret is stored only sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEndpoint {
    /// Endpoint id.
    pub id: Uuid,
    /// Owning tenant: only its events are delivered here.
    pub tenant_id: String,
    /// Where deliveries are POSTed (checked when created; resolved again on each attempt).
    pub url: String,
    /// What the operator called it.
    pub description: String,
    /// The event types it wants (every type when empty).
    pub event_types: Vec<crate::events::EventType>,
    /// The data key its secrets are sealed under.
    pub dek_id: Uuid,
    /// The signing secret, sealed (bound to the endpoint and `secret_version`).
    pub secret: Sealed,
    /// Version of `secret`: 1, then one more per rotation.
    pub secret_version: i64,
    /// The secret before the last rotation, still signing beside the new one until `previous_until`.
    pub previous_secret: Option<Sealed>,
    /// Version of `previous_secret`.
    pub previous_secret_version: Option<i64>,
    /// Until when `previous_secret` signs too.
    pub previous_until: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed (secret rotation).
    pub updated_at: DateTime<Utc>,
}

/// Where one delivery of one event to one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: the endpoint did not accept it before the give-up time.
    Failed,
}

impl DeliveryStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event (its id is the `webhook-id` of every attempt).
    pub event_id: Uuid,
    /// The tenant of both.
    pub tenant_id: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (while pending; a claim moves it to the claim's end).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was queued (with its event).
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last HTTP status the endpoint answered.
    pub last_status_code: Option<i64>,
    /// The last error, in words.
    pub last_error: Option<String>,
    /// The claim of the worker holding it.
    pub claim_token: Option<String>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookAttempt {
    /// Attempt id.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// When it was made.
    pub attempted_at: DateTime<Utc>,
    /// The HTTP status answered (`None`: no answer).
    pub status_code: Option<i64>,
    /// How long it took, in milliseconds.
    pub latency_ms: i64,
    /// What went wrong, in words (`None` on a 2xx).
    pub error: Option<String>,
}
