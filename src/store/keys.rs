//! Wrapped data keys: [`KeyStore`], the table the vault keeps its DEKs in
//! (wrapped by a KEK), possibly in its own database (`key_database_url`).
//! Deleting a row crypto-shreds everything sealed under that key.

use super::sql::error::map_err;
use super::sql::query::{placeholders, Fetch, ID_CHUNK};
use super::sql::rows::{Columns, DATA_KEY_COLUMNS, KEK_EPOCH_COLUMNS};
use super::sql::SqlStore;
use super::{KekEpoch, LeaderGuard, StoreError, WrappedDataKey};
use crate::clock::to_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
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
    /// Replaces the wrapping of each key of a batch `(key, expected_kek)` that
    /// is still under its `expected_kek`, in one transaction; returns how many
    /// were replaced (a key destroyed or re-wrapped elsewhere meanwhile is left
    /// as it is).
    async fn rewrap_data_keys(&self, keys: &[(WrappedDataKey, String)]) -> Result<u64, StoreError>;
    /// Each KEK id in use and how many data keys it wraps.
    async fn kek_usage(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// A page of keys not wrapped by `kek_id`, ordered by id.
    async fn data_keys_not_under(
        &self,
        kek_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WrappedDataKey>, StoreError>;

    /// Every KEK epoch, oldest first.
    async fn kek_epochs(&self) -> Result<Vec<KekEpoch>, StoreError>;
    /// Makes `epoch` the active one and retires every other epoch not yet
    /// retired, in one transaction; `false` (nothing changed) when an epoch
    /// with that KEK id already exists.
    async fn begin_kek_epoch(&self, epoch: &KekEpoch) -> Result<bool, StoreError>;
    /// Records that a retired epoch's KEK was destroyed.
    async fn kek_epoch_destroyed(
        &self,
        kek_id: &str,
        destroyed_at: DateTime<Utc>,
        gone_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Records why an epoch's KEK could not be destroyed yet (`None` clears it).
    async fn kek_epoch_error(&self, kek_id: &str, error: Option<&str>) -> Result<(), StoreError>;
    /// Becomes the one process running the KEK epoch job (an advisory lock on this database).
    async fn try_lead_key_epochs(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError>;
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

    async fn rewrap_data_keys(&self, keys: &[(WrappedDataKey, String)]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut rewrapped = 0;
        for (key, expected_kek) in keys {
            rewrapped += sqlx::query("UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE id = $3 AND kek_id = $4")
                .bind(key.kek_id.clone())
                .bind(key.wrapped.clone())
                .bind(key.id.to_string())
                .bind(expected_kek.clone())
                .run(&mut *tx)
                .await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(rewrapped)
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

    async fn data_keys_not_under(
        &self,
        kek_id: &str,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WrappedDataKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DATA_KEY_COLUMNS} FROM data_keys WHERE kek_id <> $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(kek_id.to_owned())
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .records(&self.pool)
        .await
    }

    async fn kek_epochs(&self) -> Result<Vec<KekEpoch>, StoreError> {
        sqlx::query(&format!(
            "SELECT {KEK_EPOCH_COLUMNS} FROM kek_epochs ORDER BY activated_at, kek_id"
        ))
        .records(&self.pool)
        .await
    }

    async fn begin_kek_epoch(&self, epoch: &KekEpoch) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT kek_id FROM kek_epochs WHERE kek_id = $1")
            .bind(epoch.kek_id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query("UPDATE kek_epochs SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(to_millis(epoch.activated_at))
            .run(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO kek_epochs ({KEK_EPOCH_COLUMNS}) VALUES ($1, $2, $3, NULL, NULL, NULL, NULL)"
        ))
        .bind(epoch.kek_id.clone())
        .bind(epoch.backend.clone())
        .bind(to_millis(epoch.activated_at))
        .run(&mut *tx)
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn kek_epoch_destroyed(
        &self,
        kek_id: &str,
        destroyed_at: DateTime<Utc>,
        gone_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE kek_epochs SET destroyed_at = $1, gone_at = $2, last_error = NULL WHERE kek_id = $3")
            .bind(to_millis(destroyed_at))
            .bind(to_millis(gone_at))
            .bind(kek_id.to_owned())
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn try_lead_key_epochs(&self) -> Result<Option<Box<dyn LeaderGuard>>, StoreError> {
        self.try_advisory_lock(super::leader::KEY_EPOCH_LOCK).await
    }

    async fn kek_epoch_error(&self, kek_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE kek_epochs SET last_error = $1 WHERE kek_id = $2")
            .bind(error.map(str::to_owned))
            .bind(kek_id.to_owned())
            .run(&self.pool)
            .await?;
        Ok(())
    }
}
