//! Key-encryption keys (KEKs): 256-bit keys with ids, one of them active.
//! They only ever wrap and unwrap data keys; tokens are sealed by data keys.
//! A keyring that can also create and destroy its own keys
//! ([`Keyring::manages_keys`]) supports KEK epochs (see [`super::epochs`]).

use super::{DataKey, VaultError};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What destroying a KEK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KekDestroyed {
    /// When the key material is gone for good: at once for a key file or an
    /// HSM, at the end of the pending-deletion window for AWS KMS.
    pub gone_at: DateTime<Utc>,
}

/// Wraps and unwraps data keys. The local implementation holds the keys in
/// memory; a KMS- or HSM-backed one calls the device, which is why wrapping
/// is async (the vault's data-key cache keeps it off the hot path).
///
/// The active key can change while the process runs (a new KEK epoch), so it
/// is read with [`Keyring::active_id`] each time and switched with
/// [`Keyring::activate`].
#[async_trait::async_trait]
pub trait Keyring: Send + Sync + 'static {
    /// The backend's name as configured: `file`, `aws-kms` or `pkcs11`.
    fn backend(&self) -> &'static str;
    /// Id of the key new data keys are wrapped with.
    fn active_id(&self) -> String;
    /// Whether a key with this id is present.
    fn contains(&self, kek_id: &str) -> bool;
    /// Ids of every key present.
    fn ids(&self) -> Vec<String>;
    /// Wraps `dek` (whose id is `dek_id`) under the active key; returns the key id used and the wrapped bytes.
    async fn wrap(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError>;
    /// Unwraps a data key wrapped under `kek_id`.
    async fn unwrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<DataKey, VaultError>;
    /// Re-wraps a data key under the active key without exposing it to the caller where the backend allows.
    async fn rewrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<(String, Vec<u8>), VaultError>;
    /// Makes `kek_id` (present in the keyring) the key new data keys are wrapped with.
    fn activate(&self, kek_id: &str) -> Result<(), VaultError>;

    /// Whether this keyring can create and destroy its own keys, which KEK epochs need.
    fn manages_keys(&self) -> bool {
        false
    }
    /// Days between asking for a key's destruction and its material being
    /// gone (AWS KMS's pending-deletion window; 0 elsewhere).
    fn destruction_delay_days(&self) -> u32 {
        0
    }
    /// Creates a new key named after `label` (not yet active) and returns its id.
    async fn create_key(&self, label: &str) -> Result<String, VaultError> {
        let _ = label;
        Err(VaultError::Keyring(format!(
            "the {} keyring cannot create key-encryption keys",
            self.backend()
        )))
    }
    /// Makes a key created elsewhere (by another replica) usable here.
    async fn load_key(&self, kek_id: &str) -> Result<(), VaultError> {
        if self.contains(kek_id) {
            Ok(())
        } else {
            Err(VaultError::UnknownKek(kek_id.to_owned()))
        }
    }
    /// Destroys a key that is not active: everything wrapped only by it,
    /// in every backup, becomes unreadable once it is gone.
    async fn destroy_key(&self, kek_id: &str) -> Result<KekDestroyed, VaultError> {
        let _ = kek_id;
        Err(VaultError::Keyring(format!(
            "the {} keyring cannot destroy key-encryption keys",
            self.backend()
        )))
    }
}

/// The KEK ids a remote keyring (AWS KMS, PKCS#11) knows and which is active,
/// shared between requests and the epoch job.
#[derive(Debug)]
pub(super) struct KekSet {
    state: std::sync::RwLock<KekIds>,
}

#[derive(Debug)]
struct KekIds {
    active: String,
    known: Vec<String>,
}

impl KekSet {
    /// `active` first, then `older` (duplicates dropped).
    pub(super) fn new(active: String, older: Vec<String>) -> Self {
        let mut known = vec![active.clone()];
        for id in older {
            if !known.contains(&id) {
                known.push(id);
            }
        }
        Self {
            state: std::sync::RwLock::new(KekIds { active, known }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KekIds> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KekIds> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The active KEK id.
    pub(super) fn active(&self) -> String {
        self.read().active.clone()
    }

    /// Whether `id` is known.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.read().known.iter().any(|known| known == id)
    }

    /// Every known id.
    pub(super) fn ids(&self) -> Vec<String> {
        self.read().known.clone()
    }

    /// Makes a known `id` the active one.
    pub(super) fn activate(&self, id: &str) -> Result<(), VaultError> {
        let mut state = self.write();
        if !state.known.iter().any(|known| known == id) {
            return Err(VaultError::UnknownKek(id.to_owned()));
        }
        state.active = id.to_owned();
        Ok(())
    }

    /// Adds `id` unless it is known.
    pub(super) fn add(&self, id: String) {
        let mut state = self.write();
        if !state.known.contains(&id) {
            state.known.push(id);
        }
    }

    /// Forgets `id` (destroyed).
    pub(super) fn remove(&self, id: &str) {
        self.write().known.retain(|known| known != id);
    }
}
