//! Key-encryption keys in a PKCS#11 token (an HSM; SoftHSM2 in the tests).
//!
//! Each KEK is an AES-256 secret-key object on the token, found by its
//! `CKA_LABEL` (the KEK id tokenvault stores), generated on the token as
//! sensitive and not extractable: its value never leaves the device. A data
//! key is wrapped with `CKM_AES_GCM` on the token — a fresh 96-bit IV, a
//! 128-bit tag, and additional data naming the data key and the KEK — and
//! stored as `version ‖ IV ‖ ciphertext ‖ tag`. A wrapped key moved to
//! another data key id or relabelled to another KEK does not unwrap.
//!
//! PKCS#11 calls block, so each runs on Tokio's blocking pool with a session
//! from a small pool of logged-in read/write sessions; a session the token
//! has dropped (device reset, token removed and reinserted) is replaced and
//! the call tried once more. The token out of reach is
//! [`VaultError::HsmUnavailable`].

use super::keyring::KekSet;
use super::{is_valid_key_id, DataKey, KekDestroyed, Keyring, VaultError};
use crate::config::Pkcs11Config;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::SecretString;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The first byte of every wrapped data key (the format's version).
const FORMAT_V1: u8 = 1;
/// AES-GCM IV length in bytes.
const IV_LEN: usize = 12;
/// AES-GCM tag length in bits.
const TAG_BITS: u64 = 128;
/// Length of a wrapped data key: version, IV, 32-byte key, 16-byte tag.
pub const PKCS11_WRAPPED_LEN: usize = 1 + IV_LEN + 32 + 16;
/// Idle sessions kept open for the next call.
const IDLE_SESSIONS: usize = 8;

/// KEKs held in a PKCS#11 token, addressed by their labels.
pub struct Pkcs11Keyring {
    token: Arc<Token>,
    /// Key labels, the active one first at start-up.
    keys: KekSet,
}

/// The token: the loaded library, its slot, the user PIN and idle sessions.
struct Token {
    context: Pkcs11,
    slot: Slot,
    label: String,
    pin: AuthPin,
    idle: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Pkcs11Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Keyring")
            .field("token", &self.token.label)
            .field("active", &self.keys.active())
            .field("keys", &self.keys.ids())
            .finish_non_exhaustive()
    }
}

/// One initialised library per module path for the whole process: PKCS#11
/// allows `C_Initialize` once per process, and logging in is per process too.
fn library(module: &Path) -> Result<Pkcs11, VaultError> {
    static LIBRARIES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut libraries = LIBRARIES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(context) = libraries.get(module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module).map_err(|error| {
        VaultError::Keyring(format!("cannot load the PKCS#11 library {}: {error}", module.display()))
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => {
            return Err(VaultError::Keyring(format!(
                "the PKCS#11 library {} did not initialise: {error}",
                module.display()
            )))
        }
    }
    libraries.insert(module.to_owned(), context.clone());
    Ok(context)
}

/// Reads the user PIN from `path`; surrounding whitespace (a trailing newline) is not part of it.
fn read_pin(path: &Path) -> Result<AuthPin, VaultError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
        VaultError::Keyring(format!("cannot read keys.pkcs11.pin_file {}: {error}", path.display()))
    })?);
    let pin = text.trim();
    if pin.is_empty() {
        return Err(VaultError::Keyring(format!(
            "keys.pkcs11.pin_file {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(pin.to_owned()))
}

impl Pkcs11Keyring {
    /// Loads the library, finds the token by label, logs in, and checks the
    /// keys: the active one must be an AES key on the token. `epochs` are the
    /// labels of the live KEK epochs recorded in the key database, newest
    /// last: when there are any, the newest is the active key and the
    /// configured `key_label` (the first epoch, perhaps destroyed since) need
    /// not be present.
    pub async fn connect(config: &Pkcs11Config, epochs: &[String]) -> Result<Self, VaultError> {
        let keyring = Self::open(config).await?;
        let (active, older) = match epochs.split_last() {
            Some((current, older_epochs)) => (current.clone(), older_epochs.to_vec()),
            None => (config.key_label.clone(), Vec::new()),
        };
        if !keyring.exists(&active).await? {
            return Err(VaultError::Keyring(format!(
                "no AES key labelled `{active}` on PKCS#11 token `{}`; create it with `tokenvault keys init-hsm` or configure another keys.pkcs11.key_label",
                config.token_label
            )));
        }
        let mut keys = vec![active.clone()];
        for label in older.iter().chain([&config.key_label]) {
            if keys.contains(label) {
                continue;
            }
            if keyring.exists(label).await? {
                keys.push(label.clone());
            } else {
                tracing::warn!(key = %label, "a retired PKCS#11 key is not on the token (destroyed)");
            }
        }
        for label in &config.older_key_labels {
            if keys.contains(label) {
                continue;
            }
            if !keyring.exists(label).await? {
                return Err(VaultError::Keyring(format!(
                    "keys.pkcs11.older_key_labels names `{label}`, which is not an AES key on token `{}`",
                    config.token_label
                )));
            }
            keys.push(label.clone());
        }
        Ok(Self {
            token: keyring.token,
            keys: KekSet::new(active, keys),
        })
    }

    /// Creates the configured `key_label` on the token unless it is there
    /// (`tokenvault keys init-hsm`); returns whether it was created.
    pub async fn create_configured_key(config: &Pkcs11Config) -> Result<bool, VaultError> {
        let keyring = Self::open(config).await?;
        if keyring.exists(&config.key_label).await? {
            return Ok(false);
        }
        keyring.create_key(&config.key_label).await?;
        Ok(true)
    }

    /// Finds the token and logs in; no key is known yet.
    async fn open(config: &Pkcs11Config) -> Result<Self, VaultError> {
        let module = config.module.clone();
        let token_label = config.token_label.clone();
        let pin = read_pin(&config.pin_file)?;
        let token = tokio::task::spawn_blocking(move || Token::open(&module, &token_label, pin))
            .await
            .map_err(|error| VaultError::Keyring(format!("PKCS#11 start-up task failed: {error}")))??;
        Ok(Self {
            token: Arc::new(token),
            keys: KekSet::new(String::new(), Vec::new()),
        })
    }

    /// Whether an AES key labelled `label` is on the token.
    async fn exists(&self, label: &str) -> Result<bool, VaultError> {
        let label = label.to_owned();
        self.token
            .run("C_FindObjects", move |session| {
                Ok(!session.find_objects(&key_template(&label))?.is_empty())
            })
            .await
    }

    async fn wrap_under(&self, kek: String, dek_id: Uuid, dek: Zeroizing<[u8; 32]>) -> Result<Vec<u8>, VaultError> {
        self.token
            .run("C_Encrypt", move |session| {
                let key = find_key(session, &kek)?;
                let mut iv = [0u8; IV_LEN];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
                let aad = additional_data(&kek, dek_id);
                let sealed = {
                    let mut iv_param = iv;
                    let params = GcmParams::new(&mut iv_param, &aad, TAG_BITS.into())?;
                    session.encrypt(&Mechanism::AesGcm(params), key, dek.as_slice())?
                };
                let mut wrapped = Vec::with_capacity(PKCS11_WRAPPED_LEN);
                wrapped.push(FORMAT_V1);
                wrapped.extend_from_slice(&iv);
                wrapped.extend_from_slice(&sealed);
                Ok(wrapped)
            })
            .await
    }

    async fn unwrap_bytes(&self, kek: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        if !self.contains(kek) {
            return Err(VaultError::UnknownKek(kek.to_owned()));
        }
        let parts = match wrapped.split_first() {
            Some((&FORMAT_V1, rest)) if wrapped.len() == PKCS11_WRAPPED_LEN => rest.split_at_checked(IV_LEN),
            _ => None,
        };
        let (iv, sealed) = parts.ok_or(VaultError::UnwrapFailed { dek_id })?;
        let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| VaultError::UnwrapFailed { dek_id })?;
        let (kek, sealed) = (kek.to_owned(), sealed.to_vec());
        let plain = self
            .token
            .run("C_Decrypt", move |session| {
                let key = find_key(session, &kek)?;
                let mut iv = iv;
                let aad = additional_data(&kek, dek_id);
                let params = GcmParams::new(&mut iv, &aad, TAG_BITS.into())?;
                match session.decrypt(&Mechanism::AesGcm(params), key, &sealed) {
                    Ok(plain) => Ok(Zeroizing::new(plain)),
                    Err(CkError::Pkcs11(
                        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::DataLenRange,
                        _,
                    )) => Err(Failure::Vault(VaultError::UnwrapFailed { dek_id })),
                    // Some tokens (SoftHSM2 among them) report a GCM tag that does not verify as a
                    // general failure: if the token still answers, the data is what failed.
                    Err(error @ CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)) => {
                        match session.get_session_info() {
                            Ok(_) => Err(Failure::Vault(VaultError::UnwrapFailed { dek_id })),
                            Err(_) => Err(error.into()),
                        }
                    }
                    Err(error) => Err(error.into()),
                }
            })
            .await?;
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::UnwrapFailed { dek_id })?;
        Ok(Zeroizing::new(bytes))
    }
}

/// The additional data of a wrapped data key: it binds the data key's id and the KEK's label.
fn additional_data(kek: &str, dek_id: Uuid) -> Vec<u8> {
    let mut aad = b"tokenvault:pkcs11:v1:".to_vec();
    aad.extend_from_slice(dek_id.as_bytes());
    aad.extend_from_slice(kek.as_bytes());
    aad
}

/// The search template of an AES key labelled `label`.
fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The one AES key labelled `label` on the token. The keyring knows the key
/// (it was there at start-up or when it was created): a token that no longer
/// shows it is failing, not a configuration error.
fn find_key(session: &Session, label: &str) -> Result<ObjectHandle, Failure> {
    let mut found = session.find_objects(&key_template(label))?;
    match found.len() {
        0 => Err(Failure::Vault(VaultError::HsmUnavailable(format!(
            "key `{label}` is no longer visible on the token"
        )))),
        1 => Ok(found.remove(0)),
        n => Err(Failure::Vault(VaultError::Keyring(format!(
            "{n} AES keys on the PKCS#11 token are labelled `{label}`; labels must be unique"
        )))),
    }
}

/// Why a PKCS#11 call failed: the device's answer, or ours.
enum Failure {
    Device(CkError),
    Vault(VaultError),
}

impl From<CkError> for Failure {
    fn from(error: CkError) -> Self {
        Self::Device(error)
    }
}

impl Failure {
    /// Whether a fresh session may succeed where this one failed.
    fn session_lost(&self) -> bool {
        matches!(
            self,
            Self::Device(CkError::Pkcs11(
                RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::UserNotLoggedIn
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::CryptokiNotInitialized,
                _
            ))
        )
    }

    fn into_vault(self) -> VaultError {
        match self {
            Self::Vault(error) => error,
            Self::Device(CkError::Pkcs11(rv, function)) => match rv {
                RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionCount
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::FunctionFailed
                | RvError::GeneralError
                | RvError::HostMemory
                | RvError::CryptokiNotInitialized => VaultError::HsmUnavailable(format!("{function:?}: {rv:?}")),
                other => VaultError::Keyring(format!("PKCS#11 {function:?} refused: {other:?}")),
            },
            Self::Device(other) => VaultError::Keyring(format!("PKCS#11: {other}")),
        }
    }
}

impl Token {
    /// Finds the initialised token labelled `label` and logs in once.
    fn open(module: &Path, label: &str, pin: AuthPin) -> Result<Self, VaultError> {
        let context = library(module)?;
        let slots = context
            .get_slots_with_initialized_token()
            .map_err(|error| VaultError::HsmUnavailable(format!("C_GetSlotList: {error}")))?;
        let mut seen = Vec::new();
        let mut slot = None;
        for candidate in slots {
            let info = context
                .get_token_info(candidate)
                .map_err(|error| VaultError::HsmUnavailable(format!("C_GetTokenInfo: {error}")))?;
            let found = info.label().trim_end().to_owned();
            if found == label {
                slot = Some(candidate);
                break;
            }
            seen.push(found);
        }
        let slot = slot.ok_or_else(|| {
            VaultError::Keyring(format!(
                "no initialised PKCS#11 token labelled `{label}` in {} (tokens seen: {})",
                module.display(),
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            ))
        })?;
        let token = Self {
            context,
            slot,
            label: label.to_owned(),
            pin,
            idle: Mutex::default(),
        };
        let session = token.session().map_err(|failure| match failure {
            Failure::Device(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                VaultError::Keyring(format!("the PIN in keys.pkcs11.pin_file is wrong for token `{label}`"))
            }
            Failure::Device(CkError::Pkcs11(RvError::PinLocked, _)) => {
                VaultError::Keyring(format!("token `{label}`: the user PIN is locked"))
            }
            other => other.into_vault(),
        })?;
        token.give_back(session);
        Ok(token)
    }

    /// An idle session, or a new one, logged in as the user.
    fn session(&self) -> Result<Session, Failure> {
        if let Some(session) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(session);
        }
        let session = self.context.open_rw_session(self.slot)?;
        match session.login(UserType::User, Some(&self.pin)) {
            // Login is per application: another session already holds it.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(error) => Err(error.into()),
        }
    }

    fn give_back(&self, session: Session) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_SESSIONS {
            idle.push(session);
        }
    }

    /// Runs `operation` with a session on the blocking pool; a lost session
    /// is replaced and the operation tried once more.
    async fn run<T, F>(self: &Arc<Self>, name: &'static str, operation: F) -> Result<T, VaultError>
    where
        T: Send + 'static,
        F: Fn(&Session) -> Result<T, Failure> + Send + 'static,
    {
        let token = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let outcome = token.session().and_then(|session| {
                    let outcome = operation(&session);
                    match &outcome {
                        Err(failure) if failure.session_lost() => drop(session),
                        _ => token.give_back(session),
                    }
                    outcome
                });
                match outcome {
                    Err(failure) if failure.session_lost() && attempt == 1 => {
                        // The token forgot our sessions (reset, reinserted): start again from none.
                        token.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    }
                    other => return other.map_err(Failure::into_vault),
                }
            }
        })
        .await
        .map_err(|error| VaultError::HsmUnavailable(format!("{name}: task failed: {error}")))?
    }
}

#[async_trait::async_trait]
impl Keyring for Pkcs11Keyring {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn active_id(&self) -> String {
        self.keys.active()
    }

    fn contains(&self, kek_id: &str) -> bool {
        self.keys.contains(kek_id)
    }

    fn ids(&self) -> Vec<String> {
        self.keys.ids()
    }

    fn activate(&self, kek_id: &str) -> Result<(), VaultError> {
        self.keys.activate(kek_id)
    }

    fn manages_keys(&self) -> bool {
        true
    }

    async fn create_key(&self, label: &str) -> Result<String, VaultError> {
        if !is_valid_key_id(label) {
            return Err(VaultError::Keyring(format!("`{label}` is not a valid key label")));
        }
        let name = label.to_owned();
        self.token
            .run("C_GenerateKey", move |session| {
                if !session.find_objects(&key_template(&name))?.is_empty() {
                    return Err(Failure::Vault(VaultError::Keyring(format!(
                        "an AES key labelled `{name}` is already on the token"
                    ))));
                }
                session.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(name.as_bytes().to_vec()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                    ],
                )?;
                Ok(())
            })
            .await?;
        self.keys.add(label.to_owned());
        Ok(label.to_owned())
    }

    async fn load_key(&self, kek_id: &str) -> Result<(), VaultError> {
        if self.contains(kek_id) {
            return Ok(());
        }
        if !self.exists(kek_id).await? {
            return Err(VaultError::UnknownKek(kek_id.to_owned()));
        }
        self.keys.add(kek_id.to_owned());
        Ok(())
    }

    async fn destroy_key(&self, kek_id: &str) -> Result<KekDestroyed, VaultError> {
        if self.active_id() == kek_id {
            return Err(VaultError::Keyring(format!(
                "PKCS#11 key `{kek_id}` is active and cannot be destroyed"
            )));
        }
        let label = kek_id.to_owned();
        // Every object with the label goes (none left: an earlier attempt whose answer was lost).
        self.token
            .run("C_DestroyObject", move |session| {
                for object in session.find_objects(&key_template(&label))? {
                    session.destroy_object(object)?;
                }
                Ok(())
            })
            .await?;
        self.keys.remove(kek_id);
        Ok(KekDestroyed {
            gone_at: chrono::Utc::now(),
        })
    }

    async fn wrap(&self, dek_id: Uuid, dek: &[u8; 32]) -> Result<(String, Vec<u8>), VaultError> {
        let kek = self.active_id();
        let wrapped = self.wrap_under(kek.clone(), dek_id, Zeroizing::new(*dek)).await?;
        Ok((kek, wrapped))
    }

    async fn unwrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<DataKey, VaultError> {
        let bytes = self.unwrap_bytes(kek_id, dek_id, wrapped).await?;
        Ok(DataKey::from_bytes(dek_id, &bytes))
    }

    async fn rewrap(&self, kek_id: &str, dek_id: Uuid, wrapped: &[u8]) -> Result<(String, Vec<u8>), VaultError> {
        // The token cannot re-encrypt in one call: the data key passes through
        // this process's memory (as on every unwrap) and is zeroized at once.
        let bytes = self.unwrap_bytes(kek_id, dek_id, wrapped).await?;
        let kek = self.active_id();
        let rewrapped = self.wrap_under(kek.clone(), dek_id, bytes).await?;
        Ok((kek, rewrapped))
    }
}
