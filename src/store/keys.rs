//! Wrapped data keys: [`KeyStore`], the table the vault keeps its DEKs in
//! (wrapped by a KEK), possibly in its own database (`key_database_url`).
//! Deleting a row crypto-shreds everything sealed under that key.

use super::sql::error::map_err;
use super::sql::query::{placeholders, Fetch, ID_CHUNK};
use super::sql::rows::{Columns, DATA_KEY_COLUMNS};
use super::sql::SqlStore;
use super::{StoreError, WrappedDataKey};
use crate::clock::to_millis;
use async_trait::async_trait;
use sqlx::any::AnyRow;
use uuid::Uuid;

/// The table of wrapped data keys, possibly in its own database.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new wrapped key.
    async fn insert_data_key(&self, key: &WrappedDataKey) -> Result<(), StoreError>;
    /// Reads a wrapped key.
    async fn data_key(&self, id: Uuid) -> Result<Option<WrappedDataKey>, StoreError>;
    /// Destroys keys (crypto-shredding), in bounded id lists; returns how many existed.
    async fn delete_data_keys(&self, ids: &[Uuid]) -> Result<u64, StoreError>;
    /// A page of keys ordered by id.
    async fn data_keys_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<WrappedDataKey>, StoreError>;
    /// Replaces a key's wrapping if it is still under `expected_kek`.
    async fn rewrap_data_key(&self, key: &WrappedDataKey, expected_kek: &str) -> Result<bool, StoreError>;
    /// Each KEK id in use and how many data keys it wraps.
    async fn kek_usage(&self) -> Result<Vec<(String, u64)>, StoreError>;
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_data_key(&self, key: &WrappedDataKey) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO data_keys ({DATA_KEY_COLUMNS}) VALUES ($1, $2, $3, $4)"
        ))
        .bind(key.id.to_string())
        .bind(key.kek_id.clone())
        .bind(key.wrapped.clone())
        .bind(to_millis(key.created_at))
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn data_key(&self, id: Uuid) -> Result<Option<WrappedDataKey>, StoreError> {
        sqlx::query(&format!("SELECT {DATA_KEY_COLUMNS} FROM data_keys WHERE id = $1"))
            .bind(id.to_string())
            .record(&self.pool)
            .await
    }

    async fn delete_data_keys(&self, ids: &[Uuid]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        // Bounded id lists, each chunk its own statement: a key destroyed stays destroyed if a later chunk fails.
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!("DELETE FROM data_keys WHERE id IN ({})", placeholders(1, chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            deleted += query.run(&self.pool).await?;
        }
        Ok(deleted)
    }

    async fn data_keys_page(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<WrappedDataKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DATA_KEY_COLUMNS} FROM data_keys WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .records(&self.pool)
        .await
    }

    async fn rewrap_data_key(&self, key: &WrappedDataKey, expected_kek: &str) -> Result<bool, StoreError> {
        let rewrapped = sqlx::query("UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE id = $3 AND kek_id = $4")
            .bind(key.kek_id.clone())
            .bind(key.wrapped.clone())
            .bind(key.id.to_string())
            .bind(expected_kek.to_owned())
            .run(&self.pool)
            .await?;
        Ok(rewrapped == 1)
    }

    async fn kek_usage(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<AnyRow> =
            sqlx::query("SELECT kek_id, COUNT(*) AS n FROM data_keys GROUP BY kek_id ORDER BY kek_id")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let c = Columns(row);
                let n: i64 = c.read("n")?;
                Ok((c.read("kek_id")?, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }
}
