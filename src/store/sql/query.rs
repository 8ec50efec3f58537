//! Running statements: one call that executes a query and maps both the
//! driver error and the rows ([`Fetch`]), `$n` placeholder lists and the
//! bound on their length, the PostgreSQL row-lock suffix, and the batched
//! delete-or-count of the purges.

use super::error::map_err;
use super::rows::FromAnyRow;
use super::Backend;
use crate::clock::to_millis;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Executor};

/// A statement with its bound values, ready to run on either backend.
pub(in crate::store) type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// Runs a query and maps the driver error (and the rows, to records).
pub(in crate::store) trait Fetch<'q> {
    /// Executes the statement; returns how many rows it changed.
    async fn run<'e, 'c: 'e, E>(self, executor: E) -> Result<u64, StoreError>
    where
        'q: 'e,
        E: 'e + Executor<'c, Database = Any>;

    /// The first row as a record, if there is one.
    async fn record<'e, 'c: 'e, T, E>(self, executor: E) -> Result<Option<T>, StoreError>
    where
        'q: 'e,
        T: FromAnyRow,
        E: 'e + Executor<'c, Database = Any>;

    /// Every row as a record.
    async fn records<'e, 'c: 'e, T, E>(self, executor: E) -> Result<Vec<T>, StoreError>
    where
        'q: 'e,
        T: FromAnyRow,
        E: 'e + Executor<'c, Database = Any>;
}

impl<'q> Fetch<'q> for AnyQuery<'q> {
    async fn run<'e, 'c: 'e, E>(self, executor: E) -> Result<u64, StoreError>
    where
        'q: 'e,
        E: 'e + Executor<'c, Database = Any>,
    {
        let done = self.execute(executor).await.map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn record<'e, 'c: 'e, T, E>(self, executor: E) -> Result<Option<T>, StoreError>
    where
        'q: 'e,
        T: FromAnyRow,
        E: 'e + Executor<'c, Database = Any>,
    {
        let row = self.fetch_optional(executor).await.map_err(map_err)?;
        row.map(|r| T::from_row(&r)).transpose()
    }

    async fn records<'e, 'c: 'e, T, E>(self, executor: E) -> Result<Vec<T>, StoreError>
    where
        'q: 'e,
        T: FromAnyRow,
        E: 'e + Executor<'c, Database = Any>,
    {
        let rows = self.fetch_all(executor).await.map_err(map_err)?;
        rows.iter().map(T::from_row).collect()
    }
}

/// `$from, $from+1, …` for an `IN (…)` list of `count` values.
pub(in crate::store) fn placeholders(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a `SELECT` on `connections c` ends with to lock the row until commit
/// (PostgreSQL only; SQLite has one writer anyway).
pub(in crate::store) fn lock_suffix(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE OF c",
        Backend::Sqlite => "",
    }
}

/// What a claiming sub-`SELECT` ends with so that two workers never take one
/// row: PostgreSQL skips rows another claim holds; SQLite has a single writer.
pub(in crate::store) fn skip_locked(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    }
}

/// Most ids bound in one `IN (…)` list: far below PostgreSQL's 65,535 bind
/// parameters and SQLite's limit (999 in old builds) even when a statement
/// repeats the list four times.
pub(in crate::store) const ID_CHUNK: usize = 300;

/// Deletes the rows of `table` (keyed by `id`) matching `condition` (with
/// `$1` = `before`) in batches of at most `batch` rows, each batch its own
/// statement and so its own short transaction, until none is left; or, on a
/// dry run, only counts them.
pub(in crate::store) async fn purge_where(
    pool: &AnyPool,
    table: &str,
    condition: &str,
    before: DateTime<Utc>,
    dry_run: bool,
    batch: u32,
) -> Result<u64, StoreError> {
    purge_keyed_where(pool, table, "id", condition, before, dry_run, batch).await
}

/// As [`purge_where`], for a table keyed by the columns `key` (e.g.
/// `endpoint_id, event_id`).
pub(in crate::store) async fn purge_keyed_where(
    pool: &AnyPool,
    table: &str,
    key: &str,
    condition: &str,
    before: DateTime<Utc>,
    dry_run: bool,
    batch: u32,
) -> Result<u64, StoreError> {
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {condition}"))
            .bind(to_millis(before))
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    let sql = format!("DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {condition} LIMIT $2)");
    let batch = batch.max(1);
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(&sql)
            .bind(to_millis(before))
            .bind(i64::from(batch))
            .run(pool)
            .await?;
        purged += deleted;
        if deleted < u64::from(batch) {
            return Ok(purged);
        }
    }
}
