//! Data keys (DEKs) and the stored form of every sealed secret.
//!
//! Stored form, version 1:
//!
//! ```text
//! +------+----------------+-------------+------------------------+
//! | 0x01 | DEK id (16 B)  | nonce (12 B)| AES-256-GCM ct || tag  |
//! +------+----------------+-------------+------------------------+
//! ```
//!
//! The additional authenticated data binds the ciphertext to its header and
//! to `tenant/user/record/field`, so a ciphertext copied into another row,
//! another field or under another key does not open.

use super::VaultError;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};

use secrecy::{SecretBox, SecretString};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The version byte in front of every sealed secret.
pub const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Which secret of a record a ciphertext holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A connection's refresh token.
    RefreshToken,
    /// A connection's access token (record id includes the scope set).
    AccessToken,
    /// A consent request's PKCE code verifier.
    PkceVerifier,
    /// A refresh token waiting in the provider-revocation outbox.
    OutboxToken,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::RefreshToken => "refresh_token",
            Field::AccessToken => "access_token",
            Field::PkceVerifier => "pkce_verifier",
            Field::OutboxToken => "outbox_token",
        }
    }
}

/// What a ciphertext is bound to: the owner and place it is stored in.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Tenant owning the record.
    pub tenant_id: &'a str,
    /// User owning the record.
    pub user_id: &'a str,
    /// The record: a connection id, consent id or outbox id (plus a scope key for access tokens).
    pub record: &'a str,
    /// The field within the record.
    pub field: Field,
}

impl Binding<'_> {
    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.tenant_id.len() + self.user_id.len() + self.record.len());
        aad.extend_from_slice(b"tokenvault.v1");
        for part in [
            header,
            self.tenant_id.as_bytes(),
            self.user_id.as_bytes(),
            self.record.as_bytes(),
            self.field.as_str().as_bytes(),
        ] {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

/// A 256-bit data key, unwrapped, in memory: only its 32 raw bytes are kept
/// (zeroized on drop). The AES-256-GCM key schedule (about a kilobyte with
/// the portable fallback) is built for each operation and zeroized when it is
/// dropped (`aes`, `ghash` and `polyval` with their `zeroize` features), so a
/// cached key costs 32 bytes and no schedule outlives its use.
pub struct DataKey {
    id: Uuid,
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl DataKey {
    /// A fresh random key and its raw bytes (to be wrapped), with a new id.
    pub fn generate() -> (Self, Zeroizing<[u8; 32]>) {
        let id = Uuid::new_v4();
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut OsRng, bytes.as_mut());
        (Self::from_bytes(id, &bytes), bytes)
    }

    /// A key from its raw bytes.
    pub fn from_bytes(id: Uuid, bytes: &[u8; 32]) -> Self {
        Self {
            id,
            bytes: Zeroizing::new(*bytes),
        }
    }

    /// The cipher for one operation.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.bytes.as_ref()))
    }

    /// The key's id, stored beside it and in every ciphertext it seals.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Seals `plaintext` for `binding` with a fresh random nonce.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(self.id.as_bytes());
        let aad = binding.aad(&out);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Crypto("sealing failed"))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Seals a secret string.
    pub fn seal_str(&self, binding: &Binding<'_>, plaintext: &SecretString) -> Result<Vec<u8>, VaultError> {
        self.seal(binding, secrecy::ExposeSecret::expose_secret(plaintext).as_bytes())
    }

    /// Opens a sealed secret; fails if it was altered, moved, or sealed under another key.
    pub fn open(&self, binding: &Binding<'_>, sealed: &[u8]) -> Result<SecretBox<[u8]>, VaultError> {
        let (header, nonce, ciphertext) = split(sealed)?;
        if header_key_id(header) != self.id {
            return Err(VaultError::OpenFailed);
        }
        let aad = binding.aad(header);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::OpenFailed)?;
        Ok(SecretBox::new(plain.into_boxed_slice()))
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_string(&self, binding: &Binding<'_>, sealed: &[u8]) -> Result<SecretString, VaultError> {
        let bytes = self.open(binding, sealed)?;
        let text =
            std::str::from_utf8(secrecy::ExposeSecret::expose_secret(&bytes)).map_err(|_| VaultError::OpenFailed)?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// Header, nonce and ciphertext of a sealed value.
type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn split(sealed: &[u8]) -> Result<Parts<'_>, VaultError> {
    if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(VaultError::Malformed("sealed value is too short"));
    }
    if sealed.first() != Some(&FORMAT_V1) {
        return Err(VaultError::Malformed("unknown sealed-value version"));
    }
    let (header, rest) = sealed.split_at(HEADER_LEN);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    Ok((header, nonce, ciphertext))
}

/// The data-key id in a header (the 16 bytes after the version byte); nil
/// for a header too short to hold one, which no stored key has.
fn header_key_id(header: &[u8]) -> Uuid {
    header
        .get(1..HEADER_LEN)
        .and_then(|bytes| Uuid::from_slice(bytes).ok())
        .unwrap_or(Uuid::nil())
}

/// The id of the data key a stored value was sealed with.
pub fn sealed_key_id(sealed: &[u8]) -> Result<Uuid, VaultError> {
    let (header, _, _) = split(sealed)?;
    Ok(header_key_id(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    fn binding(record: &str) -> Binding<'_> {
        Binding {
            tenant_id: "acme",
            user_id: "u1",
            record,
            field: Field::RefreshToken,
        }
    }

    #[test]
    fn round_trip() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal(&binding("c1"), b"refresh-token-value").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed_key_id(&sealed).unwrap(), key.id());
        assert!(!sealed.windows(7).any(|w| w == b"refresh"), "plaintext visible");
        let opened = key.open(&binding("c1"), &sealed).unwrap();
        assert_eq!(opened.expose_secret(), b"refresh-token-value");
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal(&binding("c1"), b"secret").unwrap();
        for i in 0..sealed.len() * 8 {
            let mut tampered = sealed.clone();
            tampered[i / 8] ^= 1 << (i % 8);
            assert!(
                key.open(&binding("c1"), &tampered).is_err(),
                "bit {i} flip went unnoticed"
            );
        }
    }

    #[test]
    fn moved_ciphertext_does_not_open() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal(&binding("c1"), b"secret").unwrap();
        assert!(matches!(key.open(&binding("c2"), &sealed), Err(VaultError::OpenFailed)));
        let other_user = Binding {
            user_id: "u2",
            ..binding("c1")
        };
        assert!(key.open(&other_user, &sealed).is_err());
        let other_field = Binding {
            field: Field::AccessToken,
            ..binding("c1")
        };
        assert!(key.open(&other_field, &sealed).is_err());
        let (other_key, _) = DataKey::generate();
        assert!(other_key.open(&binding("c1"), &sealed).is_err());
    }

    #[test]
    fn malformed_values_are_named() {
        let (key, _) = DataKey::generate();
        assert!(matches!(
            key.open(&binding("c"), b"short"),
            Err(VaultError::Malformed(_))
        ));
        let mut sealed = key.seal(&binding("c"), b"x").unwrap();
        sealed[0] = 9;
        assert!(matches!(key.open(&binding("c"), &sealed), Err(VaultError::Malformed(m)) if m.contains("version")));
    }

    #[test]
    fn nonces_are_fresh() {
        let (key, _) = DataKey::generate();
        let a = key.seal(&binding("c"), b"same").unwrap();
        let b = key.seal(&binding("c"), b"same").unwrap();
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn any_plaintext_round_trips(plain in proptest::collection::vec(any::<u8>(), 0..2048), record in "[a-z0-9-]{1,40}") {
            let (key, _) = DataKey::generate();
            let b = binding(&record);
            let sealed = key.seal(&b, &plain).unwrap();
            let opened = key.open(&b, &sealed).unwrap();
            prop_assert_eq!(opened.expose_secret(), &plain[..]);
        }

        #[test]
        fn arbitrary_bytes_never_open_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (key, _) = DataKey::generate();
            prop_assert!(key.open(&binding("c"), &bytes).is_err());
        }
    }
}
