//! Persistence. One [`Store`] trait (and [`KeyStore`] for the wrapped data
//! keys, which may live in their own database), implemented once over
//! `sqlx` for PostgreSQL and SQLite: the schema uses portable types (text
//! ids, integer milliseconds, bytes), so the same statements serve both and
//! only locking and notifications differ.
//!
//! Every read that a caller can reach takes a [`TenantScope`] and never
//! returns another tenant's rows. Every method that changes state takes the
//! [`Trail`] that records it (its audit events) and appends it in the same
//! transaction: the change and its record commit together or not at all.
//!
//! [`Store`] is the sum of one trait per aggregate; each is defined in its
//! own file together with its implementation for [`SqlStore`]:
//!
//! | file | trait | holds |
//! |---|---|---|
//! | `users.rs` | [`UserStore`] | users, deletion and restore, purge of a user's rows |
//! | `connections.rs` | [`ConnectionStore`] | connections and access tokens: reads, consent grant, revoke, usage, purge |
//! | `refresh.rs` | [`RefreshStore`] | the refresh lease (single flight across replicas), its journal, and the fenced commit |
//! | `consents.rs` | [`ConsentStore`] | consent requests |
//! | `audit.rs` | [`AuditStore`] | audit events written on their own, listing, purge |
//! | `events.rs` | [`EventStore`] | the event log: reads after a cursor, bounds, purge, `LISTEN` |
//! | `webhooks.rs` | [`WebhookStore`] | webhook endpoints, the delivery outbox and its attempts |
//! | `trail.rs` | [`Trail`] | the records a state change appends in its own transaction (audit and log events) |
//! | `outbox.rs` | [`OutboxStore`] | the provider revocation outbox |
//! | `notify.rs` | [`NotifyStore`] | invalidations between replicas (NOTIFY / LISTEN) |
//! | `leader.rs` | [`LeaderStore`] | the sweeper's advisory lock |
//! | `keys.rs` | [`KeyStore`] | wrapped data keys (not part of `Store`: possibly another database) |
//! | `model.rs` | — | the records read and written |
//! | `sql/` | — | [`SqlStore`]: pool and backend (`mod.rs`), SQLite files (`sqlite.rs`), error mapping (`error.rs`), row mapping (`rows.rs`), statement helpers (`query.rs`) |
//!
//! Methods of every aggregate can be called on a `dyn Store`; on a concrete
//! [`SqlStore`], bring the traits into scope with `use tokenvault::store::prelude::*`.

mod audit;
mod connections;
mod consents;
mod events;
mod keys;
mod leader;
mod model;
mod notify;
mod outbox;
mod refresh;
mod sql;
mod trail;
mod users;
mod webhooks;

pub use audit::AuditStore;
pub use connections::{next_token_version, ConnectionStore, ConsentGrant, RevokeResult};
pub use consents::{Approval, ConsentStore};
pub use events::{EventLogBounds, EventStore};
pub use keys::KeyStore;
pub use leader::{LeaderGuard, LeaderStore};
pub use model::*;
pub use notify::NotifyStore;
pub use outbox::{OutboxOutcome, OutboxStore};
pub use refresh::{version_after_refresh, InterruptedRefresh, RefreshClaim, RefreshCommit, RefreshStore, RefreshWrite};
pub use sql::{SqlStore, StoreOptions};
pub use trail::{Trail, TrailOf};
pub use users::{RestoreOutcome, UserStore};
pub use webhooks::{DeliveryFilter, DeliveryNext, SecretRotation, WebhookStore};

use async_trait::async_trait;
use sql::error::map_err;
use sql::Backend;

/// The store traits, to call their methods on a concrete [`SqlStore`].
pub mod prelude {
    pub use super::{
        AuditStore, ConnectionStore, ConsentStore, EventStore, KeyStore, LeaderStore, NotifyStore, OutboxStore,
        RefreshStore, Store, UserStore, WebhookStore,
    };
}

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
    /// The change lost to a concurrent one that ended what it was about.
    #[error("{0}")]
    Conflict(String),
}

/// The main database: every aggregate, plus migrations and a liveness probe.
#[async_trait]
pub trait Store:
    UserStore
    + ConnectionStore
    + RefreshStore
    + ConsentStore
    + AuditStore
    + EventStore
    + WebhookStore
    + OutboxStore
    + NotifyStore
    + LeaderStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Cheap liveness probe (`SELECT 1`).
    async fn ping(&self) -> Result<(), StoreError>;
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self.backend {
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await,
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await,
        };
        result.map_err(|e| StoreError::Migration(e.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }
}
