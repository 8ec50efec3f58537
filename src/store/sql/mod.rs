//! The plumbing the aggregates share: [`SqlStore`] (one `sqlx` pool on
//! PostgreSQL or SQLite, chosen by the URL), its options, error mapping,
//! row mapping and statement helpers.
//!
//! The statements use `$n` placeholders and portable column types, which both
//! backends accept; the differences (row locks, advisory locks, LISTEN/NOTIFY,
//! SQLite pragmas) are confined to a few branches on [`Backend`].

pub(super) mod error;
pub(super) mod query;
pub(super) mod rows;
mod sqlite;

use crate::store::StoreError;
use error::map_err;
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};
use std::time::Duration;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL `lock_timeout`: the longest a statement waits for a row lock.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout`: the longest one statement may run.
    pub statement_timeout: Duration,
    /// PostgreSQL `idle_in_transaction_session_timeout`: a transaction left
    /// open and idle this long is ended by the server, releasing its locks.
    pub idle_in_transaction_timeout: Duration,
    /// Most rows one retention purge statement deletes; a purge runs such
    /// batches, each its own short transaction, until nothing is left.
    pub purge_batch_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(30),
            purge_batch_size: 1000,
        }
    }
}

impl StoreOptions {
    /// The settings (name, milliseconds) that bound every pooled PostgreSQL session.
    fn postgres_session_settings(&self) -> [(&'static str, String); 3] {
        let ms = |d: Duration| d.as_millis().max(1).to_string();
        [
            ("lock_timeout", ms(self.lock_timeout)),
            ("statement_timeout", ms(self.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction_timeout),
            ),
        ]
    }
}

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    /// PostgreSQL: row locks, advisory locks, LISTEN/NOTIFY.
    Postgres,
    /// SQLite: one process, none of those.
    Sqlite,
}

/// The SQL store: a pool on PostgreSQL or SQLite.
#[derive(Clone)]
pub struct SqlStore {
    /// The connection pool.
    pub(super) pool: AnyPool,
    /// Which database it is.
    pub(super) backend: Backend,
    /// The URL, for the dedicated connections of LISTEN and the advisory lock.
    pub(super) url: SecretString,
    /// This store's name on the notification channel: its own notices are
    /// not delivered back to it (the writer has invalidated its cache already).
    pub(super) origin: std::sync::Arc<str>,
    /// Rows per retention purge batch ([`StoreOptions::purge_batch_size`], at least 1).
    pub(super) purge_batch: u32,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Connects to `postgres://…` or `sqlite:…` (a SQLite file is created if missing).
    pub async fn connect(url: &SecretString, options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let (backend, url) = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            (Backend::Postgres, raw.to_owned())
        } else if raw.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite::prepare_sqlite_url(raw)?)
        } else {
            return Err(StoreError::Database(
                "database URL must start with postgres://, postgresql:// or sqlite:".to_owned(),
            ));
        };
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            // No ping round trip before every query: a connection broken by a
            // database restart fails its one query (UNAVAILABLE) and is dropped.
            .test_before_acquire(false);
        if backend == Backend::Postgres {
            // Bounds on every pooled session: no statement waits on a lock, runs,
            // or holds a transaction open without limit.
            let settings = options.postgres_session_settings();
            pool_options = pool_options.after_connect(move |conn, _meta| {
                let settings = settings.clone();
                Box::pin(async move {
                    for (name, value) in settings {
                        sqlx::query("SELECT set_config($1, $2, false)")
                            .bind(name)
                            .bind(value)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if in_memory {
                // Each connection to ":memory:" is its own database.
                pool_options = pool_options.max_connections(1);
            }
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query("PRAGMA busy_timeout = 30000").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect(&url).await.map_err(map_err)?;
        if backend == Backend::Sqlite {
            // Readers never block the writer; persistent for the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(map_err)?;
        }
        Ok(Self {
            pool,
            backend,
            url: SecretString::from(url),
            origin: std::sync::Arc::from(uuid::Uuid::new_v4().simple().to_string()),
            purge_batch: options.purge_batch_size.max(1),
        })
    }

    /// `postgres` or `sqlite`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The underlying pool (for tests that inspect raw rows).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the pool is on PostgreSQL.
    pub(super) fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Starts a transaction on a pooled connection. On SQLite it takes the
    /// write lock at once (`BEGIN IMMEDIATE`, waiting up to `busy_timeout`):
    /// a deferred transaction that reads and then writes fails at once with
    /// "database is locked" when another connection committed in between.
    pub(super) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Postgres => self.pool.begin().await,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
        .map_err(map_err)
    }
}
