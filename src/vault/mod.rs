//! Envelope encryption. Key-encryption keys (KEKs, in the [`Keyring`]) wrap
//! one random data key (DEK) per connection and per pending consent; DEKs
//! are stored only wrapped, in a key table that may live in its own
//! database; DEKs seal every secret with AES-256-GCM (see [`sealed`]).
//! Destroying a DEK crypto-shreds everything sealed under it.

mod epochs;
mod keyring;
mod kms;
mod local;
mod pkcs11;
pub mod sealed;
use crate::aged_cache::AgedCache;

pub use epochs::{EpochPolicy, EpochReport, EpochStatus, KeyStatus};
pub use keyring::{KekDestroyed, Keyring};
pub use kms::{KmsKeyring, CONTEXT_KEY as KMS_CONTEXT_KEY};
pub use local::{LocalKeyring, WRAPPED_LEN};
pub use pkcs11::{Pkcs11Keyring, PKCS11_WRAPPED_LEN};
pub use sealed::{sealed_key_id, Binding, DataKey, Field};

use crate::clock::SharedClock;
use crate::store::{KeyStore, StoreError, WrappedDataKey};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Why a vault operation failed. Messages never contain key material or plaintext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// The keyring could not be built (file, format, ids).
    #[error("keyring: {0}")]
    Keyring(String),
    /// A stored data key names a KEK that is not configured.
    #[error("key-encryption key `{0}` is not in the keyring")]
    UnknownKek(String),
    /// A wrapped data key does not unwrap (wrong KEK or altered).
    #[error("data key {dek_id} does not unwrap: wrong key-encryption key or altered data")]
    UnwrapFailed {
        /// The data key.
        dek_id: Uuid,
    },
    /// The data key was destroyed (or never existed).
    #[error("data key {0} does not exist (destroyed)")]
    MissingDataKey(Uuid),
    /// A sealed value is not in a known format.
    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),
    /// A sealed value does not authenticate: altered, moved to another record, or under another key.
    #[error("sealed value does not authenticate (altered, or moved from another record)")]
    OpenFailed,
    /// The key service (AWS KMS) is out of reach or failing: retry later.
    #[error("the key service (AWS KMS) is unavailable: {0}")]
    KmsUnavailable(String),
    /// The key service refused: access denied, key disabled, pending deletion or not found.
    #[error("the key service (AWS KMS) refused: {0}")]
    KmsRefused(String),
    /// The HSM (PKCS#11 token) is out of reach or failing: retry later.
    #[error("the HSM (PKCS#11 token) is unavailable: {0}")]
    HsmUnavailable(String),
    /// This replica cannot use the current KEK epoch (its key did not load):
    /// new data keys are refused rather than wrapped under a key due for destruction.
    #[error("this replica cannot use the current key-encryption key epoch `{0}`; new data keys wait until it loads")]
    EpochBehind(String),
    /// The cipher refused (should not happen).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
    /// The key table could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `id` is a usable key id: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What `keys rotate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// The KEK every data key is now wrapped with.
    pub active_kek: String,
    /// Keys re-wrapped.
    pub rewrapped: u64,
    /// Keys already under the active KEK.
    pub unchanged: u64,
}

/// The vault: keyring, key table, and a bounded cache of unwrapped data keys.
#[derive(Clone)]
pub struct Vault {
    keyring: Arc<dyn Keyring>,
    keys: Arc<dyn KeyStore>,
    cache: Arc<AgedCache<Uuid, Arc<DataKey>>>,
    /// Recently destroyed keys: a reader that raced with the destruction must not cache them again.
    destroyed: moka::sync::Cache<Uuid, ()>,
    clock: SharedClock,
    /// How KEK epochs run (see [`epochs`]).
    epochs: EpochPolicy,
    /// The current epoch's KEK when this replica could not load it (new data keys are refused meanwhile).
    behind: Arc<std::sync::Mutex<Option<String>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("active_kek", &self.keyring.active_id())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over `keyring` and the key table `keys`; unwrapped keys are
    /// cached (at most `cache_capacity`, each for at most `cache_ttl`).
    pub fn new(
        keyring: Arc<dyn Keyring>,
        keys: Arc<dyn KeyStore>,
        clock: SharedClock,
        cache_capacity: u64,
        cache_ttl: Duration,
    ) -> Self {
        Self {
            keyring,
            keys,
            cache: Arc::new(AgedCache::new(
                usize::try_from(cache_capacity).unwrap_or(usize::MAX),
                cache_ttl,
            )),
            destroyed: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl.max(Duration::from_secs(60)))
                .build(),
            clock,
            epochs: EpochPolicy::default(),
            behind: Arc::default(),
        }
    }

    /// The same vault with KEK epochs run by `policy`.
    pub fn with_epochs(mut self, policy: EpochPolicy) -> Self {
        self.epochs = policy;
        self
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<dyn Keyring> {
        &self.keyring
    }

    /// Creates, wraps and stores a new data key.
    pub async fn create_data_key(&self) -> Result<Arc<DataKey>, VaultError> {
        if let Some(kek) = self.behind.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(VaultError::EpochBehind(kek));
        }
        let (key, bytes) = DataKey::generate();
        let (kek_id, wrapped) = self.keyring.wrap(key.id(), &bytes).await?;
        drop(bytes);
        self.keys
            .insert_data_key(&WrappedDataKey {
                id: key.id(),
                kek_id,
                wrapped,
                created_at: self.clock.now(),
            })
            .await?;
        let key = Arc::new(key);
        self.cache.insert(key.id(), key.clone());
        Ok(key)
    }

    /// The data key `id`, from the cache or unwrapped from the key table.
    pub async fn data_key(&self, id: Uuid) -> Result<Arc<DataKey>, VaultError> {
        if let Some(key) = self.cache.get(&id) {
            return Ok(key);
        }
        if self.destroyed.contains_key(&id) {
            return Err(VaultError::MissingDataKey(id));
        }
        let wrapped = self.keys.data_key(id).await?.ok_or(VaultError::MissingDataKey(id))?;
        let key = match self.keyring.unwrap(&wrapped.kek_id, id, &wrapped.wrapped).await {
            // Wrapped under a KEK another replica created (a new epoch) before this one
            // adopted it: adopt the recorded epochs now rather than fail until the next
            // epoch check. A KEK that is no recorded epoch stays unknown.
            Err(VaultError::UnknownKek(kek_id)) => {
                if let Err(error) = self.sync_epochs().await {
                    tracing::warn!(%error, kek = %kek_id, "adopting KEK epochs for an unknown KEK failed");
                }
                self.keyring.unwrap(&wrapped.kek_id, id, &wrapped.wrapped).await?
            }
            unwrapped => unwrapped?,
        };
        let key = Arc::new(key);
        self.cache.insert(key.id(), key.clone());
        if self.destroyed.contains_key(&id) {
            // Destroyed while we were reading it: do not keep it.
            self.cache.remove(&id);
            return Err(VaultError::MissingDataKey(id));
        }
        Ok(key)
    }

    /// Destroys data keys: everything sealed under them becomes unreadable, in backups too.
    pub async fn destroy_data_keys(&self, ids: &[Uuid]) -> Result<u64, VaultError> {
        for id in ids {
            self.destroyed.insert(*id, ());
            self.cache.remove(id);
        }
        Ok(self.keys.delete_data_keys(ids).await?)
    }

    /// Destroys data keys and tells the other replicas to drop them from their caches.
    pub async fn destroy_and_announce(&self, ids: &[Uuid], store: &dyn crate::store::Store) -> Result<u64, VaultError> {
        let destroyed = self.destroy_data_keys(ids).await?;
        for id in ids {
            if let Err(error) = store.notify(&crate::store::Invalidation::DataKey { id: *id }).await {
                tracing::warn!(%error, "could not announce a destroyed data key; other replicas drop it within minutes");
            }
        }
        Ok(destroyed)
    }

    /// Drops a key from this process's cache (another replica destroyed it).
    pub fn forget(&self, id: Uuid) {
        self.destroyed.insert(id, ());
        self.cache.remove(&id);
    }

    /// Drops every cached key.
    pub fn forget_all(&self) {
        self.cache.clear();
    }

    /// Fails when a stored data key is wrapped under a KEK the keyring lacks
    /// (checked at start-up, so a missing key is found before any request).
    pub async fn check_keyring_covers_store(&self) -> Result<Vec<(String, u64)>, VaultError> {
        let usage = self.keys.kek_usage().await?;
        let missing: Vec<String> = usage
            .iter()
            .filter(|(kek, _)| !self.keyring.contains(kek))
            .map(|(kek, n)| format!("`{kek}` ({n} data keys)"))
            .collect();
        if missing.is_empty() {
            Ok(usage)
        } else {
            Err(VaultError::Keyring(format!(
                "stored data keys are wrapped with key-encryption keys that are not configured: {}; \
                 add them to the key file (or restore it) before starting",
                missing.join(", ")
            )))
        }
    }
}
