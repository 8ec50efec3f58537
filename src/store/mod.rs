//! Persistence. One [`Store`] trait (and [`KeyStore`] for the wrapped data
//! keys, which may live in their own database), implemented once over
//! `sqlx` for PostgreSQL and SQLite: the schema uses portable types (text
//! ids, integer milliseconds, bytes), so the same statements serve both and
//! only locking and notifications differ.
//!
//! Every read that a caller can reach takes a [`TenantScope`] and never
//! returns another tenant's rows.

mod model;
mod sql;

pub use model::*;
pub use sql::{SqlStore, StoreOptions};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, restarting, pool exhausted).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(String),
    /// A stored value does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// The outcome of `RestoreUser`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// No such user.
    NotFound,
    /// The user was not deleted.
    NotDeleted,
    /// Too late: `purge_at` has passed.
    PurgeDue(DateTime<Utc>),
    /// Restored.
    Restored,
}

/// What revoking a connection left to do outside the database transaction.
#[derive(Debug, Clone)]
pub struct RevokeResult {
    /// The connection after revocation.
    pub connection: Connection,
    /// An outbox entry, when there was a token to revoke at the provider.
    pub outbox: Option<OutboxEntry>,
    /// A data key with nothing left under it, to destroy now.
    pub dek_to_destroy: Option<Uuid>,
    /// Whether this call changed anything (false when it was already revoked).
    pub changed: bool,
}

/// The new tokens a consent stores on its connection.
#[derive(Debug, Clone)]
pub struct ConsentGrant {
    /// Connection id (from [`Store::get_or_create_connection`]).
    pub connection_id: Uuid,
    /// The token version read before sealing; the write fails if it moved.
    pub expected_version: i64,
    /// The data key the tokens are sealed with.
    pub dek_id: Uuid,
    /// The sealed refresh token (`None` for providers that issue none).
    pub refresh_token: Option<Sealed>,
    /// Scopes the provider reported.
    pub granted_scopes: ScopeSet,
    /// The sealed access token for the full grant.
    pub access_token: AccessTokenRecord,
}

/// What a refresh stores.
#[derive(Debug, Clone)]
pub struct RefreshWrite {
    /// A rotated refresh token, sealed; `None` when the provider kept the old one.
    pub new_refresh_token: Option<Sealed>,
    /// The new access token, sealed.
    pub access_token: AccessTokenRecord,
    /// Granted scopes, when a full refresh reported a change.
    pub granted_scopes: Option<ScopeSet>,
}

/// How a locked refresh ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCommit {
    /// Stored.
    Stored,
    /// The connection was revoked, deleted or changed meanwhile; nothing stored.
    Superseded,
}

/// A connection locked for refreshing: other replicas wait on the lock
/// (PostgreSQL `SELECT … FOR UPDATE`); dropping it without committing rolls back.
#[async_trait]
pub trait RefreshTxn: Send {
    /// The connection as read under the lock.
    fn connection(&self) -> &Connection;
    /// The stored access token for `scope_key`, read under the lock.
    async fn access_token(&mut self, scope_key: &str) -> Result<Option<AccessTokenRecord>, StoreError>;
    /// Stores the refresh's result and releases the lock.
    async fn commit_refresh(
        self: Box<Self>,
        write: RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Marks the connection `NEEDS_REAUTH` (the stored refresh token failed) and releases the lock.
    async fn commit_needs_reauth(
        self: Box<Self>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
}

/// Held while this process is the one running the retention sweeper.
pub trait LeaderGuard: Send {}

/// The main database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Cheap liveness probe (`SELECT 1`).
    async fn ping(&self) -> Result<(), StoreError>;

    // ---- users ----
    /// Records the user if new.
    async fn ensure_user(&self, tenant_id: &str, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Reads a user.
    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError>;
    /// Marks a user deleted (idempotent: a second call keeps the first `purge_at`).
    async fn delete_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        purge_at: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError>;
    /// Undoes a deletion before `purge_at`.
    async fn restore_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<RestoreOutcome, StoreError>;
    /// Users whose `purge_at` has passed.
    async fn users_due_for_purge(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<User>, StoreError>;
    /// Removes a user and everything that belongs to them (connections, tokens, consents).
    async fn purge_user_rows(&self, tenant_id: &str, user_id: &str) -> Result<(), StoreError>;

    // ---- connections ----
    /// Reads a connection inside `scope`.
    async fn connection(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Connection>, StoreError>;
    /// Reads a connection and its stored access token for `scope_key` in one round trip.
    async fn connection_with_token(
        &self,
        scope: &TenantScope,
        id: Uuid,
        scope_key: &str,
    ) -> Result<Option<(Connection, Option<AccessTokenRecord>)>, StoreError>;
    /// Several connections (any tenant) with their stored access tokens for
    /// one `scope_key`, in one round trip; ids that do not exist are absent.
    async fn connections_with_token(
        &self,
        ids: &[Uuid],
        scope_key: &str,
    ) -> Result<Vec<(Connection, Option<AccessTokenRecord>)>, StoreError>;
    /// The connection of (tenant, user, provider), if any.
    async fn connection_for(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<Connection>, StoreError>;
    /// Lists connections, ordered by id.
    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError>;
    /// Returns the one connection of (tenant, user, provider), creating an empty one if needed.
    async fn get_or_create_connection(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<Connection, StoreError>;
    /// Stores a completed consent's tokens; `false` when the version moved (the caller retries).
    async fn store_consent_grant(&self, grant: &ConsentGrant, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Stores a refresh's result without the row lock, if the token version is
    /// still `expected_version` (persisting a rotated refresh token after the
    /// locked commit failed because the database went away).
    async fn store_refresh_result(
        &self,
        id: Uuid,
        expected_version: i64,
        write: &RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError>;
    /// Locks a connection for a refresh (see [`RefreshTxn`]).
    async fn begin_refresh(&self, id: Uuid) -> Result<Option<Box<dyn RefreshTxn>>, StoreError>;
    /// Revokes a connection: status `REVOKED`, tokens removed, an outbox entry for the provider.
    async fn revoke_connection(
        &self,
        id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
    ) -> Result<Option<RevokeResult>, StoreError>;
    /// Writes `last_used_at` for a batch of connections (never moves it backwards).
    async fn touch_connections(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), StoreError>;
    /// Ids of data keys still referenced by connections, consents or the outbox, among `ids`.
    async fn referenced_data_keys(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;
    /// Deletes revoked connections last changed before `before`; returns how many (or would, on a dry run).
    async fn purge_revoked_connections(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;

    // ---- consent ----
    /// Stores a new consent request.
    async fn insert_consent(&self, consent: &ConsentRecord) -> Result<(), StoreError>;
    /// Reads a consent request inside `scope`.
    async fn consent(&self, scope: &TenantScope, id: Uuid) -> Result<Option<ConsentRecord>, StoreError>;
    /// Finds a consent request by the hash of its state.
    async fn consent_by_state(&self, state_hash: &str) -> Result<Option<ConsentRecord>, StoreError>;
    /// Moves a pending, unexpired request to `exchanging`; `false` if it was not pending (single use).
    async fn claim_consent(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Records the outcome and drops the sealed verifier.
    async fn finish_consent(
        &self,
        id: Uuid,
        state: ConsentState,
        connection_id: Option<Uuid>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// A user's consent requests (for export).
    async fn consents_of_user(&self, tenant_id: &str, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError>;
    /// Deletes consent requests that expired before `before`; returns their data key ids (to destroy) and the count.
    async fn purge_consents(&self, before: DateTime<Utc>, dry_run: bool) -> Result<(u64, Vec<Uuid>), StoreError>;

    // ---- audit ----
    /// Appends audit events.
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Lists audit events, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    /// Deletes audit events older than `before`.
    async fn purge_audit(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;

    // ---- provider revocation outbox ----
    /// Claims due entries: each is hidden from other workers until `lease_until`.
    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Claims one entry (the first attempt right after a revocation).
    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError>;
    /// Schedules another attempt.
    async fn retry_outbox(
        &self,
        id: Uuid,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Ends an entry (`done` or `gave_up`) and drops its token copy.
    async fn finish_outbox(
        &self,
        id: Uuid,
        status: &str,
        attempts: i64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Entries of a connection (for tests and export).
    async fn outbox_for_connection(&self, connection_id: Uuid) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Deletes finished entries older than `before`.
    async fn purge_outbox(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError>;

    // ---- coordination ----
    /// Becomes the sweeper leader if no other process is (PostgreSQL advisory lock).
    async fn try_lead(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError>;
    /// Tells other replicas what changed (PostgreSQL NOTIFY; a no-op on SQLite).
    async fn notify(&self, invalidation: &Invalidation) -> Result<(), StoreError>;
    /// Notifications from other replicas; `None` when the backend has none (SQLite).
    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Invalidation>>, StoreError>;
}

/// The table of wrapped data keys, possibly in its own database.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new wrapped key.
    async fn insert_data_key(&self, key: &WrappedDataKey) -> Result<(), StoreError>;
    /// Reads a wrapped key.
    async fn data_key(&self, id: Uuid) -> Result<Option<WrappedDataKey>, StoreError>;
    /// Destroys keys (crypto-shredding); returns how many existed.
    async fn delete_data_keys(&self, ids: &[Uuid]) -> Result<u64, StoreError>;
    /// A page of keys ordered by id.
    async fn data_keys_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<WrappedDataKey>, StoreError>;
    /// Replaces a key's wrapping if it is still under `expected_kek`.
    async fn rewrap_data_key(&self, key: &WrappedDataKey, expected_kek: &str) -> Result<bool, StoreError>;
    /// Each KEK id in use and how many data keys it wraps.
    async fn kek_usage(&self) -> Result<Vec<(String, u64)>, StoreError>;
}
