//! Key-encryption keys (KEKs): 256-bit keys with ids, one of them active.
//! They only ever wrap and unwrap data keys; tokens are sealed by data keys.

use super::{is_valid_key_id, DataKey, VaultError};
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
/// Length of a wrapped data key: nonce, 32-byte key, 16-byte tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

/// Wraps and unwraps data keys. The local implementation holds the keys in
/// memory; a KMS-backed one calls the service, which is why
/// wrapping is async (the vault's data-key cache keeps it off the hot path).
#[async_trait::async_trait]
pub trait Keyring: Send + Sync + 'static {
    /// Id of the key new data keys are wrapped with.
    fn active_id(&self) -> &str;
    /// Whether a key with this id is present.
    fn contains(&self, kek_id: &str) -> bool;
    /// Ids of every key present.
    fn ids(&self) -> Vec<String>;
    /// Wraps `dek` (whose id is `dek_id`) under the active key; returns the key id used and the wrapped bytes.
    async fn wrap(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError>;
    /// Unwraps a data key wrapped under `kek_id`.
    async fn unwrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<DataKey, VaultError>;
    /// Re-wraps a data key under the active key without exposing it to the caller.
    async fn rewrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<(String, Vec<u8>), VaultError>;
}

/// KEKs held in process memory, loaded from a key file or the environment.
pub struct LocalKeyring {
    keys: BTreeMap<String, Aes256Gcm>,
    active: String,
}

impl std::fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("keys", &"[REDACTED]")
            .finish()
    }
}

/// The key file: `active = "id"` and `[[keys]]` with `id` and base64 `key`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    active: Option<String>,
    keys: Vec<KeyFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    id: String,
    key: SecretString,
}

impl LocalKeyring {
    /// Builds a keyring from `(id, 32-byte key)` pairs; `active` must be one of them.
    pub fn new(keys: Vec<(String, Zeroizing<[u8; 32]>)>, active: &str) -> Result<Self, VaultError> {
        let mut map = BTreeMap::new();
        for (id, key) in keys {
            if !is_valid_key_id(&id) {
                return Err(VaultError::Keyring(format!(
                    "key id `{id}` must be 1-64 characters of A-Z a-z 0-9 . _ -"
                )));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice()));
            if map.insert(id.clone(), cipher).is_some() {
                return Err(VaultError::Keyring(format!("key id `{id}` appears twice")));
            }
        }
        if map.is_empty() {
            return Err(VaultError::Keyring("no key-encryption keys configured".to_owned()));
        }
        if !map.contains_key(active) {
            return Err(VaultError::Keyring(format!(
                "the active key `{active}` is not among the configured keys"
            )));
        }
        Ok(Self {
            keys: map,
            active: active.to_owned(),
        })
    }

    /// Loads a key file; `active` overrides the file's own `active`.
    pub fn from_file(path: &Path, active: Option<&str>) -> Result<Self, VaultError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|error| VaultError::Keyring(format!("cannot read key file `{}`: {error}", path.display())))?,
        );
        let file: KeyFile = toml::from_str(&text)
            .map_err(|error| VaultError::Keyring(format!("key file `{}`: {}", path.display(), error.message())))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in &file.keys {
            keys.push((entry.id.clone(), decode_key(&entry.id, entry.key.expose_secret())?));
        }
        let active = active
            .map(str::to_owned)
            .or(file.active)
            .or_else(|| match file.keys.as_slice() {
                [only] => Some(only.id.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                VaultError::Keyring(format!(
                    "key file `{}` holds several keys but names no `active` one",
                    path.display()
                ))
            })?;
        Self::new(keys, &active)
    }

    /// Parses `id:base64,id:base64`; `active` defaults to the first key.
    pub fn from_inline(spec: &SecretString, active: Option<&str>) -> Result<Self, VaultError> {
        let mut keys = Vec::new();
        for part in spec.expose_secret().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, key) = part.split_once(':').ok_or_else(|| {
                VaultError::Keyring("inline keys must look like `id:base64key,id:base64key`".to_owned())
            })?;
            keys.push((id.to_owned(), decode_key(id, key)?));
        }
        let first = keys.first().map(|(id, _)| id.clone()).unwrap_or_default();
        Self::new(keys, active.unwrap_or(&first))
    }

    /// A fresh random key file with one key, as TOML text (for `keys generate` and the development setup).
    pub fn generate_file_text(id: &str) -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut OsRng, key.as_mut());
        let encoded = Zeroizing::new(BASE64.encode(key.as_ref()));
        Zeroizing::new(format!(
            "# tokenvault key-encryption keys. Keep this file secret (mode 0600) and backed up:\n\
             # without it no stored token can be read.\n\
             active = \"{id}\"\n\n[[keys]]\nid = \"{id}\"\nkey = \"{}\"\n",
            encoded.as_str()
        ))
    }

    fn cipher(&self, kek_id: &str) -> Option<&Aes256Gcm> {
        self.keys.get(kek_id)
    }
}

fn decode_key(id: &str, text: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let bytes = Zeroizing::new(
        BASE64
            .decode(text.trim())
            .map_err(|_| VaultError::Keyring(format!("key `{id}` is not valid base64")))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(VaultError::Keyring(format!(
            "key `{id}` must be 32 bytes (256 bits), found {}",
            bytes.len()
        )));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Additional data binding a wrapped data key to its own id and its KEK's id.
fn wrap_aad(dek_id: Uuid, kek_id: &str) -> Vec<u8> {
    let mut aad = b"tokenvault.dek.v1\0".to_vec();
    aad.extend_from_slice(dek_id.as_bytes());
    aad.extend_from_slice(kek_id.as_bytes());
    aad
}

#[async_trait::async_trait]
impl Keyring for LocalKeyring {
    fn active_id(&self) -> &str {
        &self.active
    }

    fn contains(&self, kek_id: &str) -> bool {
        self.keys.contains_key(kek_id)
    }

    fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    async fn wrap(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError> {
        self.wrap_raw(dek_id, dek)
    }

    async fn unwrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        let key = self.unwrap_raw(kek_id, dek_id, wrapped)?;
        Ok(DataKey::from_bytes(dek_id, &key))
    }

    async fn rewrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<(String, Vec<u8>), VaultError> {
        let key = self.unwrap_raw(kek_id, dek_id, wrapped)?;
        self.wrap_raw(dek_id, &key)
    }
}

impl LocalKeyring {
    fn wrap_raw(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError> {
        let cipher = self
            .cipher(&self.active)
            .ok_or_else(|| VaultError::UnknownKek(self.active.clone()))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = wrap_aad(dek_id, &self.active);
        let sealed = cipher
            .encrypt(&nonce, Payload { msg: dek, aad: &aad })
            .map_err(|_| VaultError::Crypto("wrapping a data key failed"))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok((self.active.clone(), out))
    }

    fn unwrap_raw(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let cipher = self
            .cipher(kek_id)
            .ok_or_else(|| VaultError::UnknownKek(kek_id.to_owned()))?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(VaultError::UnwrapFailed { dek_id });
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let aad = wrap_aad(dek_id, kek_id);
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
                .map_err(|_| VaultError::UnwrapFailed { dek_id })?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != key.len() {
            return Err(VaultError::UnwrapFailed { dek_id });
        }
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([byte; 32])
    }

    #[tokio::test]
    async fn wrap_unwrap_round_trip_and_wrong_kek_fails() {
        let ring = LocalKeyring::new(vec![("a".into(), key(1)), ("b".into(), key(2))], "a").unwrap();
        let dek_id = Uuid::new_v4();
        let (kek, wrapped) = ring.wrap(dek_id, &[7u8; 32]).await.unwrap();
        assert_eq!(kek, "a");
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert!(ring.unwrap("a", dek_id, &wrapped).await.is_ok());
        assert!(matches!(
            ring.unwrap("b", dek_id, &wrapped).await,
            Err(VaultError::UnwrapFailed { .. })
        ));
        assert!(matches!(ring.unwrap("zz", dek_id, &wrapped).await, Err(VaultError::UnknownKek(id)) if id == "zz"));
        // A wrapped key moved to another data key id does not unwrap.
        assert!(ring.unwrap("a", Uuid::new_v4(), &wrapped).await.is_err());
    }

    #[test]
    fn key_files_parse_and_errors_are_clear() {
        let text = LocalKeyring::generate_file_text("k1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, text.as_bytes()).unwrap();
        let ring = LocalKeyring::from_file(&path, None).unwrap();
        assert_eq!(ring.active_id(), "k1");
        assert!(!format!("{ring:?}").contains(text.lines().last().unwrap()));

        std::fs::write(&path, "[[keys]]\nid = \"x\"\nkey = \"c2hvcnQ=\"\n").unwrap();
        let error = LocalKeyring::from_file(&path, None).unwrap_err().to_string();
        assert!(error.contains("32 bytes"), "{error}");

        let error = LocalKeyring::from_file(&path, Some("nope")).unwrap_err().to_string();
        assert!(error.contains("32 bytes") || error.contains("nope"), "{error}");
    }

    #[test]
    fn inline_keys_parse() {
        let spec = SecretString::from(format!(
            "old:{},new:{}",
            BASE64.encode([1u8; 32]),
            BASE64.encode([2u8; 32])
        ));
        let ring = LocalKeyring::from_inline(&spec, Some("new")).unwrap();
        assert_eq!(ring.active_id(), "new");
        assert_eq!(ring.ids(), vec!["new".to_owned(), "old".to_owned()]);
        let error = LocalKeyring::from_inline(&SecretString::from("nocolon".to_owned()), None).unwrap_err();
        assert!(error.to_string().contains("id:base64key"));
    }
}
