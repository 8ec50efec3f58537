//! Workload identity: a Kubernetes projected service-account token or a
//! SPIFFE JWT-SVID presented as `authorization: Bearer <jwt>`, verified
//! against the configured issuer's keys (OpenID discovery, then its JWKS,
//! see [`super::jwks`]).
//!
//! What is checked, in order: the size (`max_token_bytes`), the shape (three
//! base64url segments), the header's `alg` (RS256 or ES256 only: never
//! `none`, never an HMAC, so a public key can never serve as a shared
//! secret) and `kid`, the signature under that key (whose own type must
//! match `alg`), then `iss`, `aud`, `exp` and `nbf` (with `leeway_seconds`)
//! and a non-empty `sub`.

use super::jwks::{IssuerKeys, IssuerSource, JwksError};
use crate::config::WorkloadIdentityConfig;
use crate::provider::ProviderHttp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::time::Duration;

/// Why a workload token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Larger than `max_token_bytes`.
    #[error("workload token is larger than {0} bytes")]
    TooLarge(usize),
    /// Not a JWT (header or claims do not decode).
    #[error("workload token is not a well-formed JWT")]
    Malformed,
    /// `alg` is not RS256 or ES256.
    #[error("workload token algorithm `{0}` is not allowed (RS256 or ES256 only)")]
    Algorithm(String),
    /// No `kid` in the header.
    #[error("workload token has no key id (`kid`)")]
    NoKeyId,
    /// The issuer publishes no key with this id, even after a refresh.
    #[error("workload token key id `{0}` is not among the issuer's keys")]
    UnknownKey(String),
    /// The signature does not verify (or the key is not of the token's algorithm).
    #[error("workload token signature does not verify")]
    Signature,
    /// `iss` is not the configured issuer.
    #[error("workload token issuer is not the configured issuer")]
    Issuer,
    /// `aud` does not hold the configured audience.
    #[error("workload token audience does not include `{0}`")]
    Audience(String),
    /// Past `exp`.
    #[error("workload token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("workload token is not valid yet")]
    NotYetValid,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is missing, empty or mistyped.
    #[error("workload token lacks a valid `{0}` claim")]
    Claim(String),
    /// The issuer's keys could not be fetched and none is known for this token.
    #[error(transparent)]
    Unavailable(#[from] JwksError),
}

impl WorkloadError {
    /// The short reason recorded in audit events and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WorkloadError::TooLarge(_) => "token_too_large",
            WorkloadError::Malformed => "malformed",
            WorkloadError::Algorithm(_) => "algorithm_not_allowed",
            WorkloadError::NoKeyId => "no_key_id",
            WorkloadError::UnknownKey(_) => "unknown_key_id",
            WorkloadError::Signature => "bad_signature",
            WorkloadError::Issuer => "wrong_issuer",
            WorkloadError::Audience(_) => "wrong_audience",
            WorkloadError::Expired => "expired",
            WorkloadError::NotYetValid => "not_yet_valid",
            WorkloadError::Claim(_) => "missing_claim",
            WorkloadError::Unavailable(_) => "issuer_unavailable",
        }
    }
}

/// Largest discovery document or JWKS read from the issuer.
const MAX_ISSUER_RESPONSE_BYTES: usize = 256 * 1024;

/// What the verifier checks tokens against.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The audience every token must be for.
    pub audience: String,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Largest token accepted.
    pub max_token_bytes: usize,
}

/// Whether `token` has the shape of a JWT: three dot-separated base64url
/// segments, the first two non-empty (an unsigned `alg: none` token has an
/// empty third, and gets its own refusal). API keys (`tvk_…`) hold no dot.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let base64url = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(claims), Some(signature), None) => {
            !header.is_empty() && !claims.is_empty() && base64url(header) && base64url(claims) && base64url(signature)
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies workload tokens.
#[derive(Debug)]
pub struct WorkloadVerifier {
    settings: WorkloadSettings,
    keys: IssuerKeys,
}

impl WorkloadVerifier {
    /// A verifier for `settings`, with the issuer's keys from `keys`.
    pub fn new(settings: WorkloadSettings, keys: IssuerKeys) -> Self {
        Self { settings, keys }
    }

    /// The verifier `[auth.workload_identity]` describes (no request is made yet).
    pub fn from_config(identity: &WorkloadIdentityConfig) -> Result<Self, String> {
        let ca = match &identity.ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| format!("auth.workload_identity.ca_file `{}`: {e}", path.display()))?,
            ),
            None => None,
        };
        let http = ProviderHttp::with_root_ca(
            Duration::from_secs(identity.timeout_seconds.max(1)),
            MAX_ISSUER_RESPONSE_BYTES,
            ca.as_deref(),
        )
        .map_err(|e| format!("auth.workload_identity: {e}"))?;
        let issuer = identity.issuer.as_str().trim_end_matches('/').to_owned();
        let keys = IssuerKeys::new(
            IssuerSource {
                issuer: issuer.clone(),
                token_file: identity.issuer_token_file.clone(),
                refresh_interval: Duration::from_secs(identity.refresh_interval_seconds.max(1)),
                max_age: Duration::from_secs(identity.keys_max_age_seconds.max(1)),
            },
            http,
        );
        Ok(Self::new(
            WorkloadSettings {
                issuer,
                audience: identity.audience.clone(),
                leeway_seconds: identity.leeway_seconds,
                max_token_bytes: identity.max_token_bytes,
            },
            keys,
        ))
    }

    /// The largest token accepted.
    pub fn max_token_bytes(&self) -> usize {
        self.settings.max_token_bytes
    }

    /// Verifies `token`; returns its subject.
    pub async fn verify(&self, token: &str) -> Result<String, WorkloadError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(WorkloadError::TooLarge(self.settings.max_token_bytes));
        }
        let header_segment = token.split('.').next().ok_or(WorkloadError::Malformed)?;
        let header: RawHeader = URL_SAFE_NO_PAD
            .decode(header_segment)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(WorkloadError::Malformed)?;
        let alg_name = header.alg.unwrap_or_default();
        let algorithm = match alg_name.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(WorkloadError::Algorithm(printable(other))),
        };
        let kid = header.kid.filter(|k| !k.is_empty()).ok_or(WorkloadError::NoKeyId)?;
        let key = self.keys.key(&kid).await?;
        if key.algorithm != algorithm {
            return Err(WorkloadError::Signature);
        }
        let mut validation = Validation::new(algorithm);
        // `iss` as configured, with or without a trailing slash.
        let issuer = self.settings.issuer.trim_end_matches('/');
        validation.set_issuer(&[issuer.to_owned(), format!("{issuer}/")]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
                WorkloadError::Signature
            }
            ErrorKind::ExpiredSignature => WorkloadError::Expired,
            ErrorKind::ImmatureSignature => WorkloadError::NotYetValid,
            ErrorKind::InvalidIssuer => WorkloadError::Issuer,
            ErrorKind::InvalidAudience => WorkloadError::Audience(self.settings.audience.clone()),
            ErrorKind::MissingRequiredClaim(claim) => WorkloadError::Claim(claim.clone()),
            ErrorKind::InvalidAlgorithm => WorkloadError::Algorithm(printable(&alg_name)),
            ErrorKind::Json(_) => WorkloadError::Claim("sub".to_owned()),
            _ => WorkloadError::Malformed,
        })?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 512 {
            return Err(WorkloadError::Claim("sub".to_owned()));
        }
        Ok(data.claims.sub)
    }
}

/// A header value safe to echo in a message: short, printable ASCII.
fn printable(value: &str) -> String {
    if !value.is_empty() && value.len() <= 16 && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
        value.to_owned()
    } else if value.is_empty() {
        "(none given)".to_owned()
    } else {
        "(unprintable)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_and_api_keys_are_told_apart() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!looks_like_jwt("tvk_AbCdEf-_0123456789abcdefghijklmnopqrstuvwxy"));
        assert!(!looks_like_jwt("test-agent-key-acme"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a.b=.c"));
        assert!(!looks_like_jwt("a b.c.d"));
    }

    #[test]
    fn only_short_plain_values_are_echoed() {
        assert_eq!(printable("HS256"), "HS256");
        assert_eq!(printable("none"), "none");
        assert_eq!(printable(""), "(none given)");
        assert_eq!(printable("<script>"), "(unprintable)");
        assert_eq!(printable(&"A".repeat(40)), "(unprintable)");
    }
}
