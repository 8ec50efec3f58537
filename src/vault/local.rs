//! KEKs held in process memory, from a key file or the environment.
//!
//! A key file can also be *managed*: with KEK epochs on, tokenvault adds each
//! new epoch's key to the file and removes destroyed ones (written to a
//! temporary file and renamed over the old one, under an exclusive lock on
//! `<file>.lock`, so several processes on one host can share the file).
//! Inline keys (`keys.inline`, from the environment) cannot be managed.

use super::keyring::{KekDestroyed, Keyring};
use super::{is_valid_key_id, DataKey, VaultError};
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use uuid::Uuid;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
/// Length of a wrapped data key: nonce, 32-byte key, 16-byte tag.
pub const WRAPPED_LEN: usize = NONCE_LEN + 32 + 16;

/// Raw key bytes by id; the AES key schedule is built for each operation.
type KeyMap = BTreeMap<String, Zeroizing<[u8; 32]>>;

/// KEKs held in process memory, loaded from a key file or the environment.
pub struct LocalKeyring {
    state: RwLock<State>,
    /// The key file, when the keys came from one (only then can keys be created and destroyed).
    file: Option<PathBuf>,
}

struct State {
    keys: KeyMap,
    active: String,
}

impl std::fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("LocalKeyring")
            .field("ids", &state.keys.keys().collect::<Vec<_>>())
            .field("active", &state.active)
            .field("file", &self.file)
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
        let keys = key_map(keys)?;
        if !keys.contains_key(active) {
            return Err(VaultError::Keyring(format!(
                "the active key `{active}` is not among the configured keys"
            )));
        }
        Ok(Self {
            state: RwLock::new(State {
                keys,
                active: active.to_owned(),
            }),
            file: None,
        })
    }

    /// Loads a key file; `active` overrides the file's own `active`.
    pub fn from_file(path: &Path, active: Option<&str>) -> Result<Self, VaultError> {
        let (keys, file_active) = read_key_file(path)?;
        let active = active
            .map(str::to_owned)
            .or(file_active)
            .or_else(|| match keys.as_slice() {
                [(only, _)] => Some(only.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                VaultError::Keyring(format!(
                    "key file `{}` holds several keys but names no `active` one",
                    path.display()
                ))
            })?;
        let mut ring = Self::new(keys, &active)?;
        ring.file = Some(path.to_owned());
        Ok(ring)
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
        let mut keys = KeyMap::new();
        keys.insert(id.to_owned(), random_key());
        key_file_text(&keys, id)
    }

    /// Fails unless the key file can be rewritten (KEK epochs add and remove keys in it).
    pub fn check_manageable(&self) -> Result<(), VaultError> {
        let Some(path) = &self.file else {
            return Err(VaultError::Keyring(
                "inline keys (keys.inline) cannot be rotated by tokenvault: use a key file it can write \
                 (keys.file), keys.backend = \"aws-kms\" or \"pkcs11\""
                    .to_owned(),
            ));
        };
        let dir = parent_dir(path);
        let probe = tempfile::NamedTempFile::new_in(dir).map_err(|error| {
            VaultError::Keyring(format!(
                "KEK epochs rewrite the key file, but its directory `{}` is not writable: {error}",
                dir.display()
            ))
        })?;
        drop(probe);
        std::fs::OpenOptions::new().append(true).open(path).map_err(|error| {
            VaultError::Keyring(format!(
                "KEK epochs rewrite the key file, but `{}` is not writable: {error}",
                path.display()
            ))
        })?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cipher for one operation under `kek_id` (its key schedule is zeroized when dropped).
    fn cipher(&self, kek_id: &str) -> Option<Aes256Gcm> {
        let state = self.read();
        let key = state.keys.get(kek_id)?;
        Some(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice())))
    }

    fn managed_file(&self) -> Result<&Path, VaultError> {
        self.file.as_deref().ok_or_else(|| {
            VaultError::Keyring("inline keys (keys.inline) cannot be created or destroyed by tokenvault".to_owned())
        })
    }

    /// Re-reads the key file under its lock, lets `change` edit the keys, and
    /// writes the result back when `change` says so; memory follows the file.
    fn edit_file(&self, change: impl FnOnce(&mut KeyMap, &str) -> Result<bool, VaultError>) -> Result<(), VaultError> {
        let path = self.managed_file()?;
        let _lock = FileLock::acquire(path)?;
        let (keys, _) = read_key_file(path)?;
        let mut keys = key_map(keys)?;
        let active = self.read().active.clone();
        if change(&mut keys, &active)? {
            write_key_file(path, &key_file_text(&keys, &active))?;
        }
        self.write().keys = keys;
        Ok(())
    }
}

fn key_map(keys: Vec<(String, Zeroizing<[u8; 32]>)>) -> Result<KeyMap, VaultError> {
    let mut map = KeyMap::new();
    for (id, key) in keys {
        if !is_valid_key_id(&id) {
            return Err(VaultError::Keyring(format!(
                "key id `{id}` must be 1-64 characters of A-Z a-z 0-9 . _ -"
            )));
        }
        if map.insert(id.clone(), key).is_some() {
            return Err(VaultError::Keyring(format!("key id `{id}` appears twice")));
        }
    }
    if map.is_empty() {
        return Err(VaultError::Keyring("no key-encryption keys configured".to_owned()));
    }
    Ok(map)
}

type FileKeys = (Vec<(String, Zeroizing<[u8; 32]>)>, Option<String>);

fn read_key_file(path: &Path) -> Result<FileKeys, VaultError> {
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
    Ok((keys, file.active))
}

fn key_file_text(keys: &KeyMap, active: &str) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!(
        "# tokenvault key-encryption keys. Keep this file secret (mode 0600). With KEK epochs\n\
         # on, tokenvault adds and removes keys here itself: do not keep old copies of it.\n\
         active = \"{active}\"\n"
    ));
    for (id, key) in keys {
        let encoded = Zeroizing::new(BASE64.encode(key.as_ref()));
        text.push_str(&format!("\n[[keys]]\nid = \"{id}\"\nkey = \"{}\"\n", encoded.as_str()));
    }
    text
}

/// Replaces the key file atomically: a private temporary file beside it, synced, renamed over it.
fn write_key_file(path: &Path, text: &str) -> Result<(), VaultError> {
    let fail =
        |error: std::io::Error| VaultError::Keyring(format!("cannot rewrite key file `{}`: {error}", path.display()));
    let dir = parent_dir(path);
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    temp.write_all(text.as_bytes()).map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(path).map_err(|error| fail(error.error))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// An exclusive lock on `<key file>.lock`, released on drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, VaultError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| VaultError::Keyring(format!("cannot lock the key file: {error}")))?;
        file.lock()
            .map_err(|error| VaultError::Keyring(format!("cannot lock the key file: {error}")))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut OsRng, key.as_mut());
    key
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
    fn backend(&self) -> &'static str {
        "file"
    }

    fn active_id(&self) -> String {
        self.read().active.clone()
    }

    fn contains(&self, kek_id: &str) -> bool {
        self.read().keys.contains_key(kek_id)
    }

    fn ids(&self) -> Vec<String> {
        self.read().keys.keys().cloned().collect()
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

    fn activate(&self, kek_id: &str) -> Result<(), VaultError> {
        let mut state = self.write();
        if !state.keys.contains_key(kek_id) {
            return Err(VaultError::UnknownKek(kek_id.to_owned()));
        }
        state.active = kek_id.to_owned();
        Ok(())
    }

    fn manages_keys(&self) -> bool {
        self.file.is_some()
    }

    async fn create_key(&self, label: &str) -> Result<String, VaultError> {
        if !is_valid_key_id(label) {
            return Err(VaultError::Keyring(format!("`{label}` is not a valid key id")));
        }
        self.edit_file(|keys, _| {
            if keys.contains_key(label) {
                return Err(VaultError::Keyring(format!("key `{label}` already exists")));
            }
            keys.insert(label.to_owned(), random_key());
            Ok(true)
        })?;
        Ok(label.to_owned())
    }

    async fn load_key(&self, kek_id: &str) -> Result<(), VaultError> {
        if self.contains(kek_id) {
            return Ok(());
        }
        if self.file.is_some() {
            self.edit_file(|_, _| Ok(false))?;
        }
        if self.contains(kek_id) {
            Ok(())
        } else {
            Err(VaultError::UnknownKek(kek_id.to_owned()))
        }
    }

    async fn destroy_key(&self, kek_id: &str) -> Result<KekDestroyed, VaultError> {
        self.edit_file(|keys, active| {
            if kek_id == active {
                return Err(VaultError::Keyring(format!(
                    "key `{kek_id}` is active and cannot be destroyed"
                )));
            }
            Ok(keys.remove(kek_id).is_some())
        })?;
        Ok(KekDestroyed {
            gone_at: chrono::Utc::now(),
        })
    }
}

impl LocalKeyring {
    fn wrap_raw(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError> {
        let active = self.active_id();
        let cipher = self
            .cipher(&active)
            .ok_or_else(|| VaultError::UnknownKek(active.clone()))?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = wrap_aad(dek_id, &active);
        let sealed = cipher
            .encrypt(&nonce, Payload { msg: dek, aad: &aad })
            .map_err(|_| VaultError::Crypto("wrapping a data key failed"))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok((active, out))
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

    #[tokio::test]
    async fn a_managed_key_file_gains_and_loses_keys_and_another_process_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, LocalKeyring::generate_file_text("k1").as_bytes()).unwrap();
        let ring = LocalKeyring::from_file(&path, None).unwrap();
        ring.check_manageable().unwrap();
        let other = LocalKeyring::from_file(&path, None).unwrap();

        let new = ring.create_key("k2").await.unwrap();
        assert!(ring.create_key("k2").await.is_err(), "ids are unique");
        ring.activate(&new).unwrap();
        let dek_id = Uuid::new_v4();
        let (kek, wrapped) = ring.wrap(dek_id, &[9u8; 32]).await.unwrap();
        assert_eq!(kek, "k2");
        // The other keyring learns the new key from the file.
        assert!(!other.contains("k2"));
        other.load_key("k2").await.unwrap();
        assert!(other.unwrap("k2", dek_id, &wrapped).await.is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the rewritten key file stays private");
        }

        assert!(ring.destroy_key("k2").await.is_err(), "the active key is not destroyed");
        ring.destroy_key("k1").await.unwrap();
        assert_eq!(ring.ids(), vec!["k2".to_owned()]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("id = \"k1\""), "{text}");
        assert!(LocalKeyring::from_file(&path, Some("k1")).is_err());

        let inline =
            LocalKeyring::from_inline(&SecretString::from(format!("a:{}", BASE64.encode([1u8; 32]))), None).unwrap();
        assert!(!inline.manages_keys());
        assert!(inline.check_manageable().is_err());
        assert!(inline.create_key("b").await.is_err());
    }
}
