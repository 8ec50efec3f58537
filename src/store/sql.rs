//! [`Store`] and [`KeyStore`] over `sqlx`, for PostgreSQL and SQLite.
//!
//! The statements use `$n` placeholders and portable column types, which both
//! backends accept; the differences (row locks, advisory locks, LISTEN/NOTIFY,
//! SQLite pragmas) are confined to a few branches on [`Backend`].

use super::*;
use crate::clock::{from_millis, to_millis};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Row};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

/// NOTIFY channel for cache invalidations between replicas.
const CHANNEL: &str = "tokenvault_invalidation";
/// Advisory lock key of the retention sweeper ("tokenvlt").
const SWEEPER_LOCK: i64 = 0x746f_6b65_6e76_6c74;

/// The SQL store: a pool on PostgreSQL or SQLite.
#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    url: SecretString,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

impl SqlStore {
    /// Connects to `postgres://…` or `sqlite:…` (a SQLite file is created if missing).
    pub async fn connect(url: &SecretString, options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let (backend, url) = if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            (Backend::Postgres, raw.to_owned())
        } else if raw.starts_with("sqlite:") {
            (Backend::Sqlite, prepare_sqlite_url(raw)?)
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

    fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }
}

fn prepare_sqlite_url(raw: &str) -> Result<String, StoreError> {
    let path_part = raw.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path_part.split('?').next().unwrap_or_default();
    if !path.is_empty() && path != ":memory:" {
        let file = std::path::Path::new(path);
        if let Some(parent) = file.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create directory {}: {e}", parent.display()))
                })?;
            }
        }
        create_owner_only(file)?;
    }
    Ok(if raw.contains("mode=") {
        raw.to_owned()
    } else if raw.contains('?') {
        format!("{raw}&mode=rwc")
    } else {
        format!("{raw}?mode=rwc")
    })
}

/// Creates a missing database file readable only by its owner (SQLite
/// gives its journal files the same mode).
fn create_owner_only(file: &std::path::Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {error}",
            file.display()
        ))),
    }
}

/// Maps a driver error: connection trouble is `Unavailable`, the rest `Database`.
fn map_err(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // PostgreSQL SQLSTATEs have five characters: 08xxx connection
            // exceptions, 57P0x shutdown, 53xxx resources. SQLite codes are
            // numbers whose low byte 5/6 means busy/locked.
            let unavailable = if code.len() == 5 {
                code.starts_with("08") || code.starts_with("57P0") || code.starts_with("53")
            } else {
                code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
            };
            if unavailable {
                StoreError::Unavailable(db.message().to_owned())
            } else {
                StoreError::Database(db.message().to_owned())
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Database(error.to_string()),
    }
}

fn uuid_col(row: &AnyRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(column).map_err(map_err)?;
    Uuid::from_str(&text).map_err(|_| StoreError::Corrupt(format!("{column} is not a UUID")))
}

fn opt_uuid_col(row: &AnyRow, column: &str) -> Result<Option<Uuid>, StoreError> {
    let text: Option<String> = row.try_get(column).map_err(map_err)?;
    text.map(|t| Uuid::from_str(&t).map_err(|_| StoreError::Corrupt(format!("{column} is not a UUID"))))
        .transpose()
}

fn time_col(row: &AnyRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let millis: i64 = row.try_get(column).map_err(map_err)?;
    Ok(from_millis(millis))
}

fn opt_time_col(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let millis: Option<i64> = row.try_get(column).map_err(map_err)?;
    Ok(millis.map(from_millis))
}

fn text_col(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    row.try_get(column).map_err(map_err)
}

fn opt_text_col(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    row.try_get(column).map_err(map_err)
}

fn opt_sealed_col(row: &AnyRow, column: &str) -> Result<Option<Sealed>, StoreError> {
    let bytes: Option<Vec<u8>> = row.try_get(column).map_err(map_err)?;
    Ok(bytes.map(Sealed))
}

const CONNECTION_COLUMNS: &str = "c.id, c.tenant_id, c.user_id, c.provider, c.granted_scopes, c.status, \
     c.status_reason, c.dek_id, c.refresh_token, c.token_version, c.created_at, c.updated_at, \
     c.last_used_at, u.deleted_at AS user_deleted_at, u.purge_at AS user_purge_at";
const CONNECTION_FROM: &str = "FROM connections c JOIN users u ON u.tenant_id = c.tenant_id AND u.user_id = c.user_id";

fn connection_from_row(row: &AnyRow) -> Result<Connection, StoreError> {
    let status = text_col(row, "status")?;
    Ok(Connection {
        id: uuid_col(row, "id")?,
        tenant_id: text_col(row, "tenant_id")?,
        user_id: text_col(row, "user_id")?,
        provider: text_col(row, "provider")?,
        granted_scopes: scopes_from_text(&text_col(row, "granted_scopes")?),
        stored_status: ConnectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status `{status}`")))?,
        status_reason: opt_text_col(row, "status_reason")?,
        dek_id: opt_uuid_col(row, "dek_id")?,
        refresh_token: opt_sealed_col(row, "refresh_token")?,
        token_version: row.try_get("token_version").map_err(map_err)?,
        created_at: time_col(row, "created_at")?,
        updated_at: time_col(row, "updated_at")?,
        last_used_at: opt_time_col(row, "last_used_at")?,
        user_deleted_at: opt_time_col(row, "user_deleted_at")?,
        purge_at: opt_time_col(row, "user_purge_at")?,
    })
}

const ACCESS_TOKEN_COLUMNS: &str = "t.connection_id AS t_connection_id, t.scope_key AS t_scope_key, \
     t.token AS t_token, t.token_type AS t_token_type, t.scopes AS t_scopes, \
     t.expires_at AS t_expires_at, t.token_version AS t_token_version";

fn access_token_from_row(row: &AnyRow) -> Result<Option<AccessTokenRecord>, StoreError> {
    let Some(token) = opt_sealed_col(row, "t_token")? else {
        return Ok(None);
    };
    Ok(Some(AccessTokenRecord {
        connection_id: uuid_col(row, "t_connection_id")?,
        scope_key: text_col(row, "t_scope_key")?,
        token,
        token_type: text_col(row, "t_token_type")?,
        scopes: scopes_from_text(&text_col(row, "t_scopes")?),
        expires_at: time_col(row, "t_expires_at")?,
        token_version: row.try_get("t_token_version").map_err(map_err)?,
    }))
}

const CONSENT_COLUMNS: &str = "id, state_hash, tenant_id, user_id, provider, capabilities, requested_scopes, \
     asked_scopes, incremental, return_url, redirect_uri, dek_id, pkce_verifier, state, connection_id, \
     error, created_at, expires_at, completed_at, actor";

fn consent_from_row(row: &AnyRow) -> Result<ConsentRecord, StoreError> {
    let state = text_col(row, "state")?;
    let incremental: i64 = row.try_get("incremental").map_err(map_err)?;
    Ok(ConsentRecord {
        id: uuid_col(row, "id")?,
        state_hash: text_col(row, "state_hash")?,
        tenant_id: text_col(row, "tenant_id")?,
        user_id: text_col(row, "user_id")?,
        provider: text_col(row, "provider")?,
        capabilities: text_col(row, "capabilities")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        requested_scopes: scopes_from_text(&text_col(row, "requested_scopes")?),
        asked_scopes: scopes_from_text(&text_col(row, "asked_scopes")?),
        incremental: incremental != 0,
        return_url: opt_text_col(row, "return_url")?,
        redirect_uri: text_col(row, "redirect_uri")?,
        dek_id: uuid_col(row, "dek_id")?,
        pkce_verifier: opt_sealed_col(row, "pkce_verifier")?,
        state: ConsentState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown consent state `{state}`")))?,
        connection_id: opt_uuid_col(row, "connection_id")?,
        error: opt_text_col(row, "error")?,
        created_at: time_col(row, "created_at")?,
        expires_at: time_col(row, "expires_at")?,
        completed_at: opt_time_col(row, "completed_at")?,
        actor: text_col(row, "actor")?,
    })
}

const AUDIT_COLUMNS: &str =
    "id, occurred_at, tenant_id, user_id, connection_id, actor, action, outcome, detail, request_id";

fn audit_from_row(row: &AnyRow) -> Result<AuditEvent, StoreError> {
    let detail = text_col(row, "detail")?;
    Ok(AuditEvent {
        id: uuid_col(row, "id")?,
        occurred_at: time_col(row, "occurred_at")?,
        tenant_id: opt_text_col(row, "tenant_id")?,
        user_id: opt_text_col(row, "user_id")?,
        connection_id: opt_uuid_col(row, "connection_id")?,
        actor: text_col(row, "actor")?,
        action: text_col(row, "action")?,
        outcome: text_col(row, "outcome")?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
        request_id: opt_text_col(row, "request_id")?,
    })
}

const OUTBOX_COLUMNS: &str = "id, connection_id, tenant_id, user_id, provider, dek_id, token, token_type_hint, \
     binding_record, attempts, next_attempt_at, give_up_at, status, last_error, created_at";

fn outbox_from_row(row: &AnyRow) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        id: uuid_col(row, "id")?,
        connection_id: uuid_col(row, "connection_id")?,
        tenant_id: text_col(row, "tenant_id")?,
        user_id: text_col(row, "user_id")?,
        provider: text_col(row, "provider")?,
        dek_id: uuid_col(row, "dek_id")?,
        token: opt_sealed_col(row, "token")?,
        token_type_hint: text_col(row, "token_type_hint")?,
        binding_record: text_col(row, "binding_record")?,
        attempts: row.try_get("attempts").map_err(map_err)?,
        next_attempt_at: time_col(row, "next_attempt_at")?,
        give_up_at: time_col(row, "give_up_at")?,
        status: text_col(row, "status")?,
        last_error: opt_text_col(row, "last_error")?,
        created_at: time_col(row, "created_at")?,
    })
}

fn data_key_from_row(row: &AnyRow) -> Result<WrappedDataKey, StoreError> {
    Ok(WrappedDataKey {
        id: uuid_col(row, "id")?,
        kek_id: text_col(row, "kek_id")?,
        wrapped: row.try_get("wrapped").map_err(map_err)?,
        created_at: time_col(row, "created_at")?,
    })
}

/// `$from, $from+1, …` for an `IN (…)` list of `count` values.
fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lock_suffix(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE OF c",
        Backend::Sqlite => "",
    }
}

async fn notify_on(conn: &mut AnyConnection, backend: Backend, invalidation: &Invalidation) -> Result<(), StoreError> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let payload = serde_json::to_string(invalidation).map_err(|e| StoreError::Database(e.to_string()))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

fn upsert_access_token(record: &AccessTokenRecord, now: DateTime<Utc>) -> AnyQuery<'static> {
    sqlx::query(
        "INSERT INTO access_tokens (connection_id, scope_key, token, token_type, scopes, expires_at, token_version, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (connection_id, scope_key) DO UPDATE SET token = excluded.token, token_type = excluded.token_type, \
         scopes = excluded.scopes, expires_at = excluded.expires_at, token_version = excluded.token_version, \
         created_at = excluded.created_at",
    )
    .bind(record.connection_id.to_string())
    .bind(record.scope_key.clone())
    .bind(record.token.0.clone())
    .bind(record.token_type.clone())
    .bind(scopes_to_text(&record.scopes))
    .bind(to_millis(record.expires_at))
    .bind(record.token_version)
    .bind(to_millis(now))
}

/// A refresh in progress. On PostgreSQL a transaction holds the row lock
/// (`SELECT … FOR UPDATE`) until commit, so other replicas wait and then
/// re-read. On SQLite (one process, whose broker already single-flights) the
/// read is plain and the commit re-checks the version in a short transaction.
struct SqlRefresh {
    lock: Option<sqlx::Transaction<'static, Any>>,
    pool: AnyPool,
    backend: Backend,
    connection: Connection,
}

impl SqlRefresh {
    async fn writer(&mut self) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        match self.lock.take() {
            Some(tx) => Ok(tx),
            None => self.pool.begin().await.map_err(map_err),
        }
    }
}

#[async_trait]
impl RefreshTxn for SqlRefresh {
    fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn access_token(&mut self, scope_key: &str) -> Result<Option<AccessTokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {ACCESS_TOKEN_COLUMNS} FROM access_tokens t WHERE t.connection_id = $1 AND t.scope_key = $2"
        );
        let query = sqlx::query(&sql)
            .bind(self.connection.id.to_string())
            .bind(scope_key.to_owned());
        let row = match self.lock.as_mut() {
            Some(tx) => query.fetch_optional(&mut **tx).await,
            None => query.fetch_optional(&self.pool).await,
        }
        .map_err(map_err)?;
        row.map(|r| access_token_from_row(&r)).transpose().map(Option::flatten)
    }

    async fn commit_refresh(
        mut self: Box<Self>,
        write: RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let tx = self.writer().await?;
        write_refresh(tx, self.connection.id, self.connection.token_version, &write, now).await
    }

    async fn commit_needs_reauth(
        mut self: Box<Self>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let mut tx = self.writer().await?;
        let updated = sqlx::query(
            "UPDATE connections SET status = 'needs_reauth', status_reason = $1, updated_at = $2 \
             WHERE id = $3 AND token_version = $4 AND status = 'active'",
        )
        .bind(reason.to_owned())
        .bind(to_millis(now))
        .bind(self.connection.id.to_string())
        .bind(self.connection.token_version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(RefreshCommit::Superseded);
        }
        notify_on(
            &mut tx,
            self.backend,
            &Invalidation::Connection { id: self.connection.id },
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(RefreshCommit::Stored)
    }
}

/// Writes a refresh's result in `tx` if the connection is still active at
/// `version`, and commits; rolls back and reports `Superseded` otherwise.
async fn write_refresh(
    mut tx: sqlx::Transaction<'static, Any>,
    id: Uuid,
    version: i64,
    write: &RefreshWrite,
    now: DateTime<Utc>,
) -> Result<RefreshCommit, StoreError> {
    let scopes = write.granted_scopes.as_ref().map(scopes_to_text);
    let updated = match &write.new_refresh_token {
        Some(token) => sqlx::query(
            "UPDATE connections SET refresh_token = $1, token_version = token_version + 1, \
             granted_scopes = COALESCE($2, granted_scopes), updated_at = $3 \
             WHERE id = $4 AND token_version = $5 AND status = 'active'",
        )
        .bind(token.0.clone())
        .bind(scopes)
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version),
        None => sqlx::query(
            "UPDATE connections SET granted_scopes = COALESCE($1, granted_scopes), updated_at = $2 \
             WHERE id = $3 AND token_version = $4 AND status = 'active'",
        )
        .bind(scopes)
        .bind(to_millis(now))
        .bind(id.to_string())
        .bind(version),
    }
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    if updated.rows_affected() != 1 {
        tx.rollback().await.map_err(map_err)?;
        return Ok(RefreshCommit::Superseded);
    }
    let mut record = write.access_token.clone();
    record.token_version = version + i64::from(write.new_refresh_token.is_some());
    upsert_access_token(&record, now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(RefreshCommit::Stored)
}

/// Holds a dedicated connection that owns the sweeper's advisory lock; closing it releases the lock.
struct PgLeader {
    _connection: AnyConnection,
}

impl LeaderGuard for PgLeader {}

struct SqliteLeader;

impl LeaderGuard for SqliteLeader {}

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

    async fn ensure_user(&self, tenant_id: &str, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (tenant_id, user_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(to_millis(now))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT tenant_id, user_id, created_at, deleted_at, purge_at FROM users WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    async fn delete_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
        purge_at: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE users SET deleted_at = $1, purge_at = $2 WHERE tenant_id = $3 AND user_id = $4 AND deleted_at IS NULL",
        )
        .bind(to_millis(now))
        .bind(to_millis(purge_at))
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let row = sqlx::query(
            "SELECT tenant_id, user_id, created_at, deleted_at, purge_at FROM users WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let invalidation = Invalidation::User {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        notify_on(&mut tx, self.backend, &invalidation).await?;
        tx.commit().await.map_err(map_err)?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    async fn restore_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<RestoreOutcome, StoreError> {
        let Some(user) = self.user(tenant_id, user_id).await? else {
            return Ok(RestoreOutcome::NotFound);
        };
        let Some(purge_at) = user.purge_at.filter(|_| user.deleted_at.is_some()) else {
            return Ok(RestoreOutcome::NotDeleted);
        };
        if purge_at <= now {
            return Ok(RestoreOutcome::PurgeDue(purge_at));
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let updated = sqlx::query(
            "UPDATE users SET deleted_at = NULL, purge_at = NULL WHERE tenant_id = $1 AND user_id = $2 AND purge_at > $3",
        )
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(to_millis(now))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let invalidation = Invalidation::User {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        notify_on(&mut tx, self.backend, &invalidation).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(if updated.rows_affected() == 1 {
            RestoreOutcome::Restored
        } else {
            RestoreOutcome::NotDeleted
        })
    }

    async fn users_due_for_purge(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, user_id, created_at, deleted_at, purge_at FROM users \
             WHERE purge_at IS NOT NULL AND purge_at <= $1 ORDER BY purge_at LIMIT $2",
        )
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn purge_user_rows(&self, tenant_id: &str, user_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Explicit deletes (not only ON DELETE CASCADE) so the order is clear and SQLite needs no pragma.
        for sql in [
            "DELETE FROM access_tokens WHERE connection_id IN (SELECT id FROM connections WHERE tenant_id = $1 AND user_id = $2)",
            "DELETE FROM connections WHERE tenant_id = $1 AND user_id = $2",
            "DELETE FROM consent_requests WHERE tenant_id = $1 AND user_id = $2",
            "DELETE FROM users WHERE tenant_id = $1 AND user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(tenant_id.to_owned())
                .bind(user_id.to_owned())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let invalidation = Invalidation::User {
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        notify_on(&mut tx, self.backend, &invalidation).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn connection(&self, scope: &TenantScope, id: Uuid) -> Result<Option<Connection>, StoreError> {
        let sql = format!("SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let connection = row.map(|r| connection_from_row(&r)).transpose()?;
        Ok(connection.filter(|c| scope.allows(&c.tenant_id)))
    }

    async fn connection_with_token(
        &self,
        scope: &TenantScope,
        id: Uuid,
        scope_key: &str,
    ) -> Result<Option<(Connection, Option<AccessTokenRecord>)>, StoreError> {
        let row = self.connections_with_token(&[id], scope_key).await?.into_iter().next();
        Ok(row.filter(|(connection, _)| scope.allows(&connection.tenant_id)))
    }

    async fn connections_with_token(
        &self,
        ids: &[Uuid],
        scope_key: &str,
    ) -> Result<Vec<(Connection, Option<AccessTokenRecord>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Padded to a power of two (repeating the last id) so that a few
        // prepared statements serve every batch size.
        let padded = ids.len().next_power_of_two();
        let placeholders = (0..padded)
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS}, {ACCESS_TOKEN_COLUMNS} {CONNECTION_FROM} \
             LEFT JOIN access_tokens t ON t.connection_id = c.id AND t.scope_key = $1 WHERE c.id IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql).bind(scope_key.to_owned());
        for i in 0..padded {
            query = query.bind(ids[i.min(ids.len() - 1)].to_string());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|row| Ok((connection_from_row(row)?, access_token_from_row(row)?)))
            .collect()
    }

    async fn connection_for(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let sql = format!("SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.tenant_id = $1 AND c.user_id = $2 AND c.provider = $3");
        let row = sqlx::query(&sql)
            .bind(tenant_id.to_owned())
            .bind(user_id.to_owned())
            .bind(provider.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| connection_from_row(&r)).transpose()
    }

    async fn list_connections(&self, filter: &ConnectionFilter) -> Result<Vec<Connection>, StoreError> {
        let mut sql = format!("SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.tenant_id = $1");
        let mut binds = vec![filter.tenant_id.clone()];
        if let Some(user) = &filter.user_id {
            binds.push(user.clone());
            sql.push_str(&format!(" AND c.user_id = ${}", binds.len()));
        }
        if let Some(provider) = &filter.provider {
            binds.push(provider.clone());
            sql.push_str(&format!(" AND c.provider = ${}", binds.len()));
        }
        if let Some(after) = filter.after_id {
            binds.push(after.to_string());
            sql.push_str(&format!(" AND c.id > ${}", binds.len()));
        }
        sql.push_str(&format!(" ORDER BY c.id LIMIT {}", filter.limit.max(1)));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn get_or_create_connection(
        &self,
        tenant_id: &str,
        user_id: &str,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<Connection, StoreError> {
        self.ensure_user(tenant_id, user_id, now).await?;
        sqlx::query(
            "INSERT INTO connections (id, tenant_id, user_id, provider, granted_scopes, status, token_version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, '', 'needs_reauth', 0, $5, $5) ON CONFLICT (tenant_id, user_id, provider) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .bind(provider.to_owned())
        .bind(to_millis(now))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        self.connection_for(tenant_id, user_id, provider)
            .await?
            .ok_or_else(|| StoreError::Database("connection vanished right after it was created".to_owned()))
    }

    async fn store_consent_grant(&self, grant: &ConsentGrant, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let updated = sqlx::query(
            "UPDATE connections SET granted_scopes = $1, status = 'active', status_reason = NULL, dek_id = $2, \
             refresh_token = $3, token_version = token_version + 1, updated_at = $4 \
             WHERE id = $5 AND token_version = $6",
        )
        .bind(scopes_to_text(&grant.granted_scopes))
        .bind(grant.dek_id.to_string())
        .bind(grant.refresh_token.as_ref().map(|t| t.0.clone()))
        .bind(to_millis(now))
        .bind(grant.connection_id.to_string())
        .bind(grant.expected_version)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if updated.rows_affected() != 1 {
            tx.rollback().await.map_err(map_err)?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM access_tokens WHERE connection_id = $1")
            .bind(grant.connection_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut record = grant.access_token.clone();
        record.token_version = grant.expected_version + 1;
        upsert_access_token(&record, now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        notify_on(
            &mut tx,
            self.backend,
            &Invalidation::Connection {
                id: grant.connection_id,
            },
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn store_refresh_result(
        &self,
        id: Uuid,
        expected_version: i64,
        write: &RefreshWrite,
        now: DateTime<Utc>,
    ) -> Result<RefreshCommit, StoreError> {
        let tx = self.pool.begin().await.map_err(map_err)?;
        write_refresh(tx, id, expected_version, write, now).await
    }

    async fn begin_refresh(&self, id: Uuid) -> Result<Option<Box<dyn RefreshTxn>>, StoreError> {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.id = $1{}",
            lock_suffix(self.backend)
        );
        let query = sqlx::query(&sql).bind(id.to_string());
        let (lock, row) = if self.is_postgres() {
            let mut tx = self.pool.begin().await.map_err(map_err)?;
            let row = query.fetch_optional(&mut *tx).await.map_err(map_err)?;
            (Some(tx), row)
        } else {
            (None, query.fetch_optional(&self.pool).await.map_err(map_err)?)
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let connection = connection_from_row(&row)?;
        Ok(Some(Box::new(SqlRefresh {
            lock,
            pool: self.pool.clone(),
            backend: self.backend,
            connection,
        })))
    }

    async fn revoke_connection(
        &self,
        id: Uuid,
        reason: &str,
        now: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
    ) -> Result<Option<RevokeResult>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} {CONNECTION_FROM} WHERE c.id = $1{}",
            lock_suffix(self.backend)
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        };
        let mut connection = connection_from_row(&row)?;
        if connection.stored_status == ConnectionStatus::Revoked {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Some(RevokeResult {
                connection,
                outbox: None,
                dek_to_destroy: None,
                changed: false,
            }));
        }
        // The credential to revoke at the provider: the refresh token, or for
        // providers without one, the access token of the full grant.
        let credential = match (&connection.refresh_token, connection.dek_id) {
            (Some(token), Some(dek)) => Some((token.clone(), "refresh_token", id.to_string(), dek)),
            (None, Some(dek)) => {
                let token: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT token FROM access_tokens WHERE connection_id = $1 AND scope_key = ''")
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                token.map(|t| (Sealed(t), "access_token", access_token_record(id, ""), dek))
            }
            _ => None,
        };
        sqlx::query(
            "UPDATE connections SET status = 'revoked', status_reason = $1, refresh_token = NULL, dek_id = NULL, \
             token_version = token_version + 1, updated_at = $2 WHERE id = $3",
        )
        .bind(reason.to_owned())
        .bind(to_millis(now))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM access_tokens WHERE connection_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let outbox = match credential {
            Some((token, hint, record, dek_id)) => {
                let entry = OutboxEntry {
                    id: Uuid::now_v7(),
                    connection_id: id,
                    tenant_id: connection.tenant_id.clone(),
                    user_id: connection.user_id.clone(),
                    provider: connection.provider.clone(),
                    dek_id,
                    token: Some(token),
                    token_type_hint: hint.to_owned(),
                    binding_record: record,
                    attempts: 0,
                    next_attempt_at: now,
                    give_up_at,
                    status: "pending".to_owned(),
                    last_error: None,
                    created_at: now,
                };
                sqlx::query(&format!(
                    "INSERT INTO revocation_outbox ({OUTBOX_COLUMNS}) VALUES ({})",
                    placeholders(1, 15)
                ))
                .bind(entry.id.to_string())
                .bind(entry.connection_id.to_string())
                .bind(entry.tenant_id.clone())
                .bind(entry.user_id.clone())
                .bind(entry.provider.clone())
                .bind(entry.dek_id.to_string())
                .bind(entry.token.as_ref().map(|t| t.0.clone()))
                .bind(entry.token_type_hint.clone())
                .bind(entry.binding_record.clone())
                .bind(entry.attempts)
                .bind(to_millis(entry.next_attempt_at))
                .bind(to_millis(entry.give_up_at))
                .bind(entry.status.clone())
                .bind(entry.last_error.clone())
                .bind(to_millis(entry.created_at))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                Some(entry)
            }
            None => None,
        };
        notify_on(&mut tx, self.backend, &Invalidation::Connection { id }).await?;
        tx.commit().await.map_err(map_err)?;
        let dek_to_destroy = if outbox.is_none() { connection.dek_id } else { None };
        connection.stored_status = ConnectionStatus::Revoked;
        connection.status_reason = Some(reason.to_owned());
        connection.refresh_token = None;
        connection.dek_id = None;
        connection.token_version += 1;
        connection.updated_at = now;
        Ok(Some(RevokeResult {
            connection,
            outbox,
            dek_to_destroy,
            changed: true,
        }))
    }

    async fn touch_connections(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE connections SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(to_millis(*at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn referenced_data_keys(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = placeholders(1, ids.len());
        let sql = format!(
            "SELECT dek_id FROM connections WHERE dek_id IN ({list}) \
             UNION SELECT dek_id FROM consent_requests WHERE dek_id IN ({list}) \
             UNION SELECT dek_id FROM revocation_outbox WHERE token IS NOT NULL AND dek_id IN ({list})"
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for id in ids {
            query = query.bind(id.to_string());
        }
        let found = query.fetch_all(&self.pool).await.map_err(map_err)?;
        Ok(found.iter().filter_map(|t| Uuid::from_str(t).ok()).collect())
    }

    async fn purge_revoked_connections(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(
            &self.pool,
            "connections",
            "status = 'revoked' AND updated_at < $1",
            before,
            dry_run,
        )
        .await
    }

    async fn insert_consent(&self, consent: &ConsentRecord) -> Result<(), StoreError> {
        self.ensure_user(&consent.tenant_id, &consent.user_id, consent.created_at)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO consent_requests ({CONSENT_COLUMNS}) VALUES ({})",
            placeholders(1, 20)
        ))
        .bind(consent.id.to_string())
        .bind(consent.state_hash.clone())
        .bind(consent.tenant_id.clone())
        .bind(consent.user_id.clone())
        .bind(consent.provider.clone())
        .bind(consent.capabilities.join(" "))
        .bind(scopes_to_text(&consent.requested_scopes))
        .bind(scopes_to_text(&consent.asked_scopes))
        .bind(i64::from(consent.incremental))
        .bind(consent.return_url.clone())
        .bind(consent.redirect_uri.clone())
        .bind(consent.dek_id.to_string())
        .bind(consent.pkce_verifier.as_ref().map(|v| v.0.clone()))
        .bind(consent.state.as_str())
        .bind(consent.connection_id.map(|c| c.to_string()))
        .bind(consent.error.clone())
        .bind(to_millis(consent.created_at))
        .bind(to_millis(consent.expires_at))
        .bind(consent.completed_at.map(to_millis))
        .bind(consent.actor.clone())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn consent(&self, scope: &TenantScope, id: Uuid) -> Result<Option<ConsentRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let consent = row.map(|r| consent_from_row(&r)).transpose()?;
        Ok(consent.filter(|c| scope.allows(&c.tenant_id)))
    }

    async fn consent_by_state(&self, state_hash: &str) -> Result<Option<ConsentRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE state_hash = $1"
        ))
        .bind(state_hash.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| consent_from_row(&r)).transpose()
    }

    async fn claim_consent(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE consent_requests SET state = 'exchanging' WHERE id = $1 AND state = 'pending' AND expires_at > $2",
        )
        .bind(id.to_string())
        .bind(to_millis(now))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_consent(
        &self,
        id: Uuid,
        state: ConsentState,
        connection_id: Option<Uuid>,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE consent_requests SET state = $1, connection_id = $2, error = $3, completed_at = $4, pkce_verifier = NULL WHERE id = $5",
        )
        .bind(state.as_str())
        .bind(connection_id.map(|c| c.to_string()))
        .bind(error.map(str::to_owned))
        .bind(to_millis(now))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn consents_of_user(&self, tenant_id: &str, user_id: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSENT_COLUMNS} FROM consent_requests WHERE tenant_id = $1 AND user_id = $2 ORDER BY id"
        ))
        .bind(tenant_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn purge_consents(&self, before: DateTime<Utc>, dry_run: bool) -> Result<(u64, Vec<Uuid>), StoreError> {
        let rows = sqlx::query("SELECT id, dek_id FROM consent_requests WHERE expires_at < $1")
            .bind(to_millis(before))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut deks = Vec::with_capacity(rows.len());
        for row in &rows {
            deks.push(uuid_col(row, "dek_id")?);
        }
        if dry_run {
            return Ok((rows.len() as u64, deks));
        }
        let done = sqlx::query("DELETE FROM consent_requests WHERE expires_at < $1")
            .bind(to_millis(before))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok((done.rows_affected(), deks))
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        const COLUMNS: usize = 10;
        const CHUNK: usize = 50;
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for chunk in events.chunks(CHUNK) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * COLUMNS + 1, COLUMNS)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES {values}");
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query
                    .bind(event.id.to_string())
                    .bind(to_millis(event.occurred_at))
                    .bind(event.tenant_id.clone())
                    .bind(event.user_id.clone())
                    .bind(event.connection_id.map(|c| c.to_string()))
                    .bind(event.actor.clone())
                    .bind(event.action.clone())
                    .bind(event.outcome.clone())
                    .bind(event.detail.to_string())
                    .bind(event.request_id.clone());
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        enum Bind {
            Text(String),
            Int(i64),
        }
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        let mut add = |condition: &str, bind: Bind| {
            binds.push(bind);
            conditions.push(condition.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = &filter.tenant_id {
            add("tenant_id = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = &filter.user_id {
            add("user_id = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = filter.connection_id {
            add("connection_id = ?", Bind::Text(v.to_string()));
        }
        if let Some(v) = &filter.action {
            add("action = ?", Bind::Text(v.clone()));
        }
        if let Some(v) = filter.since {
            add("occurred_at >= ?", Bind::Int(to_millis(v)));
        }
        if let Some(v) = filter.until {
            add("occurred_at < ?", Bind::Int(to_millis(v)));
        }
        if let Some(v) = filter.before_id {
            add("id < ?", Bind::Text(v.to_string()));
        }
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", filter.limit.max(1)));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = match bind {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn purge_audit(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(&self.pool, "audit_events", "occurred_at < $1", before, dry_run).await
    }

    async fn claim_outbox(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1 \
             WHERE status = 'pending' AND next_attempt_at <= $2 AND id IN \
             (SELECT id FROM revocation_outbox WHERE status = 'pending' AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3) \
             RETURNING {OUTBOX_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(to_millis(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn claim_outbox_entry(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let sql = format!(
            "UPDATE revocation_outbox SET next_attempt_at = $1 \
             WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3 RETURNING {OUTBOX_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(to_millis(lease_until))
            .bind(id.to_string())
            .bind(to_millis(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| outbox_from_row(&r)).transpose()
    }

    async fn retry_outbox(
        &self,
        id: Uuid,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE revocation_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE id = $4 AND status = 'pending'")
            .bind(attempts)
            .bind(to_millis(next_attempt_at))
            .bind(error.to_owned())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn finish_outbox(
        &self,
        id: Uuid,
        status: &str,
        attempts: i64,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE revocation_outbox SET status = $1, attempts = $2, last_error = $3, finished_at = $4, token = NULL WHERE id = $5",
        )
        .bind(status.to_owned())
        .bind(attempts)
        .bind(error.map(str::to_owned))
        .bind(to_millis(now))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn outbox_for_connection(&self, connection_id: Uuid) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM revocation_outbox WHERE connection_id = $1 ORDER BY id"
        ))
        .bind(connection_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn purge_outbox(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64, StoreError> {
        purge_where(
            &self.pool,
            "revocation_outbox",
            "status <> 'pending' AND finished_at < $1",
            before,
            dry_run,
        )
        .await
    }

    async fn try_lead(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError> {
        if !self.is_postgres() {
            return Ok(Some(Box::new(SqliteLeader)));
        }
        let mut connection = AnyConnection::connect(self.url.expose_secret())
            .await
            .map_err(map_err)?;
        let locked: i32 = sqlx::query_scalar("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END")
            .bind(SWEEPER_LOCK)
            .fetch_one(&mut connection)
            .await
            .map_err(map_err)?;
        if locked == 1 {
            Ok(Some(Box::new(PgLeader {
                _connection: connection,
            })))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    async fn notify(&self, invalidation: &Invalidation) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let mut connection = self.pool.acquire().await.map_err(map_err)?;
        notify_on(&mut connection, self.backend, invalidation).await
    }

    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Invalidation>>, StoreError> {
        if !self.is_postgres() {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(self.url.expose_secret())
            .await
            .map_err(map_err)?;
        listener.listen(CHANNEL).await.map_err(map_err)?;
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(forward_notifications(listener, sender));
        Ok(Some(receiver))
    }
}

/// Forwards notifications; after a lost connection (notices may have been
/// missed) it sends [`Invalidation::All`] and keeps going.
async fn forward_notifications(mut listener: sqlx::postgres::PgListener, sender: mpsc::Sender<Invalidation>) {
    loop {
        let next = match listener.try_recv().await {
            Ok(Some(notification)) => match serde_json::from_str::<Invalidation>(notification.payload()) {
                Ok(invalidation) => invalidation,
                Err(error) => {
                    tracing::warn!(%error, "ignoring a malformed invalidation notice");
                    continue;
                }
            },
            Ok(None) => {
                tracing::warn!("lost the notification connection; dropping every cached token");
                Invalidation::All
            }
            Err(error) => {
                tracing::warn!(%error, "notification listener failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Invalidation::All
            }
        };
        if sender.send(next).await.is_err() {
            return;
        }
    }
}

/// Deletes the rows of `table` matching `condition` (with `$1` = `before`),
/// or on a dry run only counts them.
async fn purge_where(
    pool: &AnyPool,
    table: &str,
    condition: &str,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, StoreError> {
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {condition}"))
            .bind(to_millis(before))
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    let done = sqlx::query(&format!("DELETE FROM {table} WHERE {condition}"))
        .bind(to_millis(before))
        .execute(pool)
        .await
        .map_err(map_err)?;
    Ok(done.rows_affected())
}

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        tenant_id: text_col(row, "tenant_id")?,
        user_id: text_col(row, "user_id")?,
        created_at: time_col(row, "created_at")?,
        deleted_at: opt_time_col(row, "deleted_at")?,
        purge_at: opt_time_col(row, "purge_at")?,
    })
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_data_key(&self, key: &WrappedDataKey) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)")
            .bind(key.id.to_string())
            .bind(key.kek_id.clone())
            .bind(key.wrapped.clone())
            .bind(to_millis(key.created_at))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn data_key(&self, id: Uuid) -> Result<Option<WrappedDataKey>, StoreError> {
        let row = sqlx::query("SELECT id, kek_id, wrapped, created_at FROM data_keys WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| data_key_from_row(&r)).transpose()
    }

    async fn delete_data_keys(&self, ids: &[Uuid]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!("DELETE FROM data_keys WHERE id IN ({})", placeholders(1, ids.len()));
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id.to_string());
        }
        let done = query.execute(&self.pool).await.map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn data_keys_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<WrappedDataKey>, StoreError> {
        let rows =
            sqlx::query("SELECT id, kek_id, wrapped, created_at FROM data_keys WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after.map(|a| a.to_string()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter().map(data_key_from_row).collect()
    }

    async fn rewrap_data_key(&self, key: &WrappedDataKey, expected_kek: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE id = $3 AND kek_id = $4")
            .bind(key.kek_id.clone())
            .bind(key.wrapped.clone())
            .bind(key.id.to_string())
            .bind(expected_kek.to_owned())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn kek_usage(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query("SELECT kek_id, COUNT(*) AS n FROM data_keys GROUP BY kek_id ORDER BY kek_id")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n").map_err(map_err)?;
                Ok((text_col(row, "kek_id")?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }
}
