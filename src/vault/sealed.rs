//! Data keys (DEKs) and the stored form of every sealed secret.
//!
//! Stored form (formats 1 and 2 have the same layout):
//!
//! ```text
//! +--------+----------------+-------------+------------------------+
//! | format | DEK id (16 B)  | nonce (12 B)| AES-256-GCM ct || tag  |
//! +--------+----------------+-------------+------------------------+
//! ```
//!
//! The additional authenticated data (AAD) binds the ciphertext to its
//! header (format byte and DEK id) and to `tenant/user/record/field`, so a
//! ciphertext copied into another row, another field or under another key
//! does not open. Format 2 (`0x02`, what every new value is sealed in) binds
//! the record's version too ([`Binding::version`]): for a connection's
//! refresh token its `token_version`, which every rotation and re-consent
//! increases, so an older ciphertext of the same row put back under the
//! current `token_version` does not open either. Putting back an old value
//! *and* its old version restores an old state, which authenticates: the AAD
//! cannot tell it from the past. Which record version each field binds is
//! documented on [`Field`].
//!
//! Format 1 (`0x01`) binds no record version. Values in it still open (the
//! format byte chooses the AAD; a format-1 value opens under any record
//! version) and are replaced by format 2 when their field is next written.
//! Until then a format-1 ciphertext put back into its own row opens whatever
//! the row's version, as before format 2 existed.

use super::VaultError;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};

use secrecy::{SecretBox, SecretString};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The version byte of format 1: the AAD binds the header and
/// `tenant/user/record/field`. Opened, never written.
pub const FORMAT_V1: u8 = 1;
/// The version byte of format 2: format 1's AAD plus the record version.
/// Every new value is sealed in it.
pub const FORMAT_V2: u8 = 2;
const HEADER_LEN: usize = 1 + 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Which secret of a record a ciphertext holds, and which record version
/// ([`Binding::version`]) a format-2 value of it binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A connection's refresh token. Version: the connection's
    /// `token_version` once the value is written (a rotation or re-consent
    /// writes the current version + 1); in the revocation outbox, the
    /// version the copy was taken at (`revocation_outbox.binding_version`).
    RefreshToken,
    /// A connection's access token (record id includes the scope set).
    /// Version: the `token_version` of its `access_tokens` row (the
    /// connection's version when it was stored).
    AccessToken,
    /// A consent request's PKCE code verifier. Version: 0 (written once).
    PkceVerifier,
    /// A consent request's exchanged grant awaiting the platform's
    /// confirmation (its tokens, as JSON). Version: 0 (written once).
    PendingGrant,
    /// A credential handed over to the provider-revocation outbox under the
    /// entry's own key and id. Version: 0 (`binding_version` of the entry).
    OutboxToken,
    /// A webhook endpoint's signing secret, under the endpoint's own key and
    /// id (tenant-bound, no user). Version: the endpoint's `secret_version`.
    WebhookSecret,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::RefreshToken => "refresh_token",
            Field::AccessToken => "access_token",
            Field::PkceVerifier => "pkce_verifier",
            Field::PendingGrant => "pending_grant",
            Field::OutboxToken => "outbox_token",
            Field::WebhookSecret => "webhook_secret",
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
    /// The record's version the value is stored at (see [`Field`] for which
    /// one each field uses). Bound by format 2; format 1 ignores it.
    pub version: i64,
}

impl Binding<'_> {
    /// The AAD for a value with `header` (whose first byte is the format).
    fn aad(&self, header: &[u8]) -> Vec<u8> {
        let format = header.first().copied();
        let mut aad = Vec::with_capacity(80 + self.tenant_id.len() + self.user_id.len() + self.record.len());
        let version = self.version.to_be_bytes();
        let (label, version): (&[u8], Option<&[u8]>) = if format == Some(FORMAT_V1) {
            (b"tokenvault.v1", None)
        } else {
            (b"tokenvault.v2", Some(&version))
        };
        aad.extend_from_slice(label);
        let parts = [
            header,
            self.tenant_id.as_bytes(),
            self.user_id.as_bytes(),
            self.record.as_bytes(),
            self.field.as_str().as_bytes(),
        ];
        for part in parts.into_iter().chain(version) {
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

    /// Seals `plaintext` for `binding` (in format 2) with a fresh random nonce.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_as(FORMAT_V2, binding, plaintext)
    }

    /// Seals `plaintext` in format 1, which tokenvault no longer writes: for
    /// tests of reading and upgrading values stored before format 2.
    #[doc(hidden)]
    pub fn seal_v1(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_as(FORMAT_V1, binding, plaintext)
    }

    fn seal_as(&self, format: u8, binding: &Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(format);
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

    /// Opens a sealed secret (format 1 or 2); fails if it was altered, moved,
    /// sealed under another key or (format 2) for another record version.
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
    if !matches!(sealed.first(), Some(&(FORMAT_V1 | FORMAT_V2))) {
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

    /// See [`a_value_stored_before_format_2_opens`].
    const FORMAT_1_VECTOR: &str = "0100000000000000000000000000000001842efd4b79f04c6ff819befc670dcd3fed9fd8692ae5236236040692f0dada96ee5c335d1aa06e25563131f6e3eaeb14cd510e";

    fn binding(record: &str) -> Binding<'_> {
        Binding {
            tenant_id: "acme",
            user_id: "u1",
            record,
            field: Field::RefreshToken,
            version: 7,
        }
    }

    fn at_version(record: &str, version: i64) -> Binding<'_> {
        Binding {
            version,
            ..binding(record)
        }
    }

    #[test]
    fn round_trip() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal(&binding("c1"), b"refresh-token-value").unwrap();
        assert_eq!(sealed[0], FORMAT_V2, "new values are sealed in format 2");
        assert_eq!(sealed_key_id(&sealed).unwrap(), key.id());
        assert!(!sealed.windows(7).any(|w| w == b"refresh"), "plaintext visible");
        let opened = key.open(&binding("c1"), &sealed).unwrap();
        assert_eq!(opened.expose_secret(), b"refresh-token-value");
    }

    #[test]
    fn format_2_binds_the_record_version() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal(&at_version("c1", 7), b"secret").unwrap();
        for other in [0, 6, 8, -7, i64::MAX] {
            assert!(
                matches!(key.open(&at_version("c1", other), &sealed), Err(VaultError::OpenFailed)),
                "opened at version {other}"
            );
        }
        assert!(key.open(&at_version("c1", 7), &sealed).is_ok());
    }

    #[test]
    fn format_1_still_opens_whatever_the_version() {
        let (key, _) = DataKey::generate();
        let sealed = key.seal_v1(&at_version("c1", 3), b"legacy").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed_key_id(&sealed).unwrap(), key.id());
        for version in [0, 3, 4, 1000] {
            let opened = key.open(&at_version("c1", version), &sealed).unwrap();
            assert_eq!(opened.expose_secret(), b"legacy");
        }
        // Format 1 still binds the rest.
        assert!(matches!(key.open(&binding("c2"), &sealed), Err(VaultError::OpenFailed)));
        let other_field = Binding {
            field: Field::AccessToken,
            ..binding("c1")
        };
        assert!(matches!(key.open(&other_field, &sealed), Err(VaultError::OpenFailed)));
    }

    /// A value sealed by the format-1 code as it was before format 2 (commit
    /// 2c706e7; key bytes `[7; 32]`, key id `00…01`, binding
    /// acme/u1/c1/refresh_token): the format-1 AAD is unchanged.
    #[test]
    fn a_value_stored_before_format_2_opens() {
        let key = DataKey::from_bytes(Uuid::from_u128(1), &[7u8; 32]);
        let sealed = hex::decode(FORMAT_1_VECTOR).unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        let opened = key.open(&binding("c1"), &sealed).unwrap();
        assert_eq!(opened.expose_secret(), b"refresh-token-before-v2");
        assert!(key.open(&binding("c2"), &sealed).is_err());
    }

    #[test]
    fn the_version_byte_cannot_be_swapped() {
        let (key, _) = DataKey::generate();
        // Claiming format 1 for a format-2 value would drop the version from the AAD.
        let mut downgraded = key.seal(&binding("c1"), b"secret").unwrap();
        downgraded[0] = FORMAT_V1;
        assert!(matches!(
            key.open(&binding("c1"), &downgraded),
            Err(VaultError::OpenFailed)
        ));
        let mut upgraded = key.seal_v1(&binding("c1"), b"secret").unwrap();
        upgraded[0] = FORMAT_V2;
        assert!(matches!(
            key.open(&binding("c1"), &upgraded),
            Err(VaultError::OpenFailed)
        ));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let (key, _) = DataKey::generate();
        for sealed in [
            key.seal(&binding("c1"), b"secret").unwrap(),
            key.seal_v1(&binding("c1"), b"secret").unwrap(),
        ] {
            for i in 0..sealed.len() * 8 {
                let mut tampered = sealed.clone();
                tampered[i / 8] ^= 1 << (i % 8);
                assert!(
                    key.open(&binding("c1"), &tampered).is_err(),
                    "format {}: bit {i} flip went unnoticed",
                    sealed[0]
                );
            }
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
        fn only_the_sealed_version_opens(version in any::<i64>(), other in any::<i64>()) {
            let (key, _) = DataKey::generate();
            let sealed = key.seal(&at_version("c", version), b"x").unwrap();
            prop_assert!(key.open(&at_version("c", version), &sealed).is_ok());
            prop_assert_eq!(key.open(&at_version("c", other), &sealed).is_ok(), other == version);
        }

        #[test]
        fn arbitrary_bytes_never_open_or_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (key, _) = DataKey::generate();
            prop_assert!(key.open(&binding("c"), &bytes).is_err());
        }
    }
}
