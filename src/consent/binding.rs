//! What ties a consent to the user who started it: the start handle in the
//! authorization URL, the browser cookie set when the handle is visited, and
//! the one-time completion code the platform confirms with. Each is a random
//! 256-bit value handed out once and stored only as its SHA-256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The length of every random value here, base64url without padding (32 bytes).
pub const SECRET_LEN: usize = 43;

/// The path (and every path under it) the binding cookie is sent to: the
/// callbacks under tokenvault's public OAuth base (`/oauth/callback`, or
/// under the prefix of a `public_url` with a path).
pub fn cookie_path(oauth_base: &url::Url) -> String {
    format!("{}callback", oauth_base.path())
}

/// A fresh random value (32 bytes, base64url).
pub fn new_secret() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text = URL_SAFE_NO_PAD.encode(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    SecretString::from(text)
}

/// Hex SHA-256: the only form in which handles, cookies, codes and states are stored.
pub fn hash_secret(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Whether `value` has the shape of a value made by [`new_secret`] (checked
/// before anything is looked up).
pub fn well_formed(value: &str) -> bool {
    value.len() == SECRET_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `presented` hashes to `stored_hash` (compared in constant time).
pub fn matches(presented: &str, stored_hash: Option<&str>) -> bool {
    stored_hash.is_some_and(|stored| bool::from(hash_secret(presented).as_bytes().ct_eq(stored.as_bytes())))
}

/// The cookie that binds a consent to the browser that visited its start handle.
pub struct BindingCookie {
    /// The cookie's name (one per consent, so parallel consents do not clash).
    pub name: String,
    /// Its value.
    pub value: SecretString,
    /// Seconds until the consent expires.
    pub max_age_seconds: i64,
    /// Sent only over TLS (the callback is https).
    pub secure: bool,
    /// The callbacks' path ([`cookie_path`]).
    pub path: String,
}

impl std::fmt::Debug for BindingCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingCookie")
            .field("name", &self.name)
            .field("value", &"[REDACTED]")
            .field("max_age_seconds", &self.max_age_seconds)
            .field("secure", &self.secure)
            .field("path", &self.path)
            .finish()
    }
}

impl BindingCookie {
    /// The cookie binding `consent_id` to a browser with `value` for
    /// `max_age_seconds`: sent only to the callbacks under tokenvault's public
    /// OAuth base ([`cookie_path`]), and only over TLS when that base is https.
    pub fn new(consent_id: Uuid, value: SecretString, max_age_seconds: i64, oauth_base: &url::Url) -> Self {
        Self {
            name: Self::name_for(consent_id),
            value,
            max_age_seconds,
            secure: oauth_base.scheme() == "https",
            path: cookie_path(oauth_base),
        }
    }

    /// The binding cookie's name for `consent_id`.
    pub fn name_for(consent_id: Uuid) -> String {
        format!("tokenvault_consent_{}", consent_id.simple())
    }

    /// The attributes after `name=value`, with `Max-Age={max_age}`.
    fn attributes(&self, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("Max-Age={max_age}; Path={}; HttpOnly; SameSite=Lax{secure}", self.path)
    }

    /// The `Set-Cookie` header value: `HttpOnly`, `SameSite=Lax` (the
    /// provider's redirect is a top-level navigation), `Secure` over TLS,
    /// sent only to the callback path.
    pub fn header_value(&self) -> SecretString {
        SecretString::from(format!(
            "{}={}; {}",
            self.name,
            self.value.expose_secret(),
            self.attributes(self.max_age_seconds.max(1))
        ))
    }

    /// The `Set-Cookie` value that removes `consent_id`'s cookie (same name,
    /// path and `Secure`) once the callback used it.
    pub fn removal(consent_id: Uuid, oauth_base: &url::Url) -> String {
        let cookie = Self::new(consent_id, SecretString::from(String::new()), 0, oauth_base);
        format!("{}=; {}", cookie.name, cookie.attributes(0))
    }
}

/// The value of the cookie `name` in a request's `Cookie` headers, if any.
pub fn cookie_value<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<String> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_well_formed_and_stored_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(well_formed(a.expose_secret()));
        assert!(!well_formed("short"));
        assert!(!well_formed(&"a".repeat(42).replace('a', "/")));
        let hash = hash_secret(a.expose_secret());
        assert_eq!(hash.len(), 64);
        assert!(matches(a.expose_secret(), Some(&hash)));
        assert!(!matches(b.expose_secret(), Some(&hash)));
        assert!(!matches(a.expose_secret(), None));
    }

    #[test]
    fn the_cookie_is_http_only_lax_and_scoped_to_the_callback() {
        let id = Uuid::nil();
        let tls = url::Url::parse("https://tv.example.com/oauth/").unwrap();
        let cookie = BindingCookie::new(id, SecretString::from("v".to_owned()), 600, &tls);
        let header = cookie.header_value();
        assert_eq!(
            header.expose_secret(),
            "tokenvault_consent_00000000000000000000000000000000=v; Max-Age=600; Path=/oauth/callback; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!format!("{cookie:?}").contains("=v"));
        let plain = url::Url::parse("http://127.0.0.1:8080/oauth/").unwrap();
        let plain = BindingCookie::new(id, SecretString::from("v".to_owned()), 600, &plain);
        assert!(!plain.header_value().expose_secret().contains("Secure"));
    }

    #[test]
    fn the_cookie_path_follows_a_public_url_prefix() {
        let base = url::Url::parse("http://example.com/tokenvault/oauth/").unwrap();
        assert_eq!(cookie_path(&base), "/tokenvault/oauth/callback");
        assert_eq!(
            BindingCookie::removal(Uuid::nil(), &base),
            "tokenvault_consent_00000000000000000000000000000000=; Max-Age=0; Path=/tokenvault/oauth/callback; HttpOnly; SameSite=Lax"
        );
        let tls = url::Url::parse("https://example.com/oauth/").unwrap();
        assert!(BindingCookie::removal(Uuid::nil(), &tls)
            .ends_with("; Path=/oauth/callback; HttpOnly; SameSite=Lax; Secure"));
    }

    #[test]
    fn cookie_values_are_found_among_others() {
        let headers = ["a=1; tokenvault_consent_x=abc", "b=2"];
        assert_eq!(cookie_value(headers, "tokenvault_consent_x").as_deref(), Some("abc"));
        assert_eq!(cookie_value(headers, "b").as_deref(), Some("2"));
        assert_eq!(cookie_value(headers, "tokenvault_consent_y"), None);
        assert_eq!(cookie_value(["x"], "x"), None);
    }
}
