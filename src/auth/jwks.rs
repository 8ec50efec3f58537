//! The workload-identity issuer's signing keys: found through OpenID
//! discovery (`{issuer}/.well-known/openid-configuration` → `jwks_uri`, the
//! document's `issuer` must be the configured one), read from the JWKS, and
//! cached by key id. RSA keys serve RS256 and P-256 keys ES256; any other key
//! (HMAC, encryption keys, other curves) is skipped.
//!
//! An unknown `kid` refreshes the cache, and so does a cache older than
//! `keys_max_age_seconds` (a key the issuer dropped stops being trusted).
//! Refreshes are bounded: one at a time (callers arriving meanwhile wait for
//! it), and at most one per `refresh_interval_seconds` whatever their
//! outcome, so tokens with made-up key ids cannot hammer the issuer. Every
//! HTTP exchange is bounded in time and size (the provider HTTP client).

use crate::provider::{HttpError, ProviderHttp};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Keys kept from one JWKS at most.
const MAX_KEYS: usize = 64;

/// Why the issuer's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP exchange failed.
    #[error("cannot read the workload identity issuer's {what}: {source}")]
    Http {
        /// The discovery document or the JWKS.
        what: &'static str,
        /// Why.
        source: HttpError,
    },
    /// The answer is not what discovery or a JWKS should be.
    #[error("the workload identity issuer's {0}")]
    Invalid(String),
    /// The token file for the issuer cannot be read.
    #[error("cannot read workload_identity.issuer_token_file: {0}")]
    TokenFile(String),
}

/// One verification key.
#[derive(Clone)]
pub struct IssuerKey {
    /// The only algorithm it verifies.
    pub algorithm: Algorithm,
    /// The key.
    pub decoding: DecodingKey,
}

struct KeySet {
    keys: HashMap<String, IssuerKey>,
    fetched_at: Option<Instant>,
}

/// Where the keys come from and how often they may be fetched.
#[derive(Debug, Clone)]
pub struct IssuerSource {
    /// The issuer URL (`iss`), without a trailing slash.
    pub issuer: String,
    /// A bearer token file sent to the issuer (a Kubernetes API server wants one), re-read at each fetch.
    pub token_file: Option<PathBuf>,
    /// Least time between two fetches.
    pub refresh_interval: Duration,
    /// Keys older than this are fetched again before use.
    pub max_age: Duration,
}

/// The cached keys of one issuer.
pub struct IssuerKeys {
    source: IssuerSource,
    http: ProviderHttp,
    current: RwLock<Arc<KeySet>>,
    /// When the last fetch started; held while a fetch runs (single flight).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.source.issuer)
            .finish()
    }
}

impl IssuerKeys {
    /// Keys of `source`, fetched with `http` when first needed.
    pub fn new(source: IssuerSource, http: ProviderHttp) -> Self {
        Self {
            source,
            http,
            current: RwLock::new(Arc::new(KeySet {
                keys: HashMap::new(),
                fetched_at: None,
            })),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The key `kid`, refreshing the cache when it is unknown or old (bounded, see the module docs).
    pub async fn key(&self, kid: &str) -> Result<IssuerKey, super::WorkloadError> {
        let set = self.snapshot();
        let fresh = set.fetched_at.is_some_and(|at| at.elapsed() < self.source.max_age);
        if fresh {
            if let Some(key) = set.keys.get(kid) {
                return Ok(key.clone());
            }
        }
        let refreshed = self.refresh().await;
        let set = self.snapshot();
        match (set.keys.get(kid), refreshed) {
            (Some(key), _) => Ok(key.clone()),
            // Never fetched successfully: the issuer is the problem, not the token.
            (None, Err(error)) if set.fetched_at.is_none() => Err(error.into()),
            (None, _) => Err(super::WorkloadError::UnknownKey(printable_kid(kid))),
        }
    }

    /// Fetches the keys unless a fetch started less than `refresh_interval` ago.
    async fn refresh(&self) -> Result<(), JwksError> {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.source.refresh_interval) {
            return Ok(());
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(issuer = %self.source.issuer, keys = keys.len(), "workload identity keys fetched");
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                match self.current.write() {
                    Ok(mut current) => *current = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.source.issuer, %error, "cannot refresh the workload identity keys; keeping the ones known");
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, IssuerKey>, JwksError> {
        let bearer = match &self.source.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| JwksError::TokenFile(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let discovery_url = format!("{}/.well-known/openid-configuration", self.source.issuer);
        let discovery = self
            .http
            .get_json_authorized(&discovery_url, bearer.as_deref())
            .await
            .map_err(|source| JwksError::Http {
                what: "discovery document",
                source,
            })?;
        let issuer = discovery.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
        if issuer.trim_end_matches('/') != self.source.issuer {
            return Err(JwksError::Invalid(format!(
                "discovery document names another issuer (`{}`)",
                issuer.chars().take(200).collect::<String>()
            )));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| JwksError::Invalid("discovery document has no jwks_uri".to_owned()))?;
        let jwks_url = url::Url::parse(jwks_uri)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| JwksError::Invalid("discovery document's jwks_uri is not an http(s) URL".to_owned()))?;
        let jwks = self
            .http
            .get_json_authorized(jwks_url.as_str(), bearer.as_deref())
            .await
            .map_err(|source| JwksError::Http { what: "JWKS", source })?;
        let entries = jwks
            .get("keys")
            .and_then(|v| v.as_array())
            .ok_or_else(|| JwksError::Invalid("JWKS has no `keys` array".to_owned()))?;
        let mut keys = HashMap::new();
        for entry in entries.iter().take(MAX_KEYS) {
            // One key of an unknown type must not hide the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            if let Some((kid, key)) = usable(&jwk) {
                keys.insert(kid, key);
            }
        }
        Ok(keys)
    }
}

/// The key id and key of a JWK usable for RS256 or ES256 signatures, if it is one.
fn usable(jwk: &Jwk) -> Option<(String, IssuerKey)> {
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let (algorithm, expected) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|a| a != expected) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, IssuerKey { algorithm, decoding }))
}

/// A key id safe to echo: short, plain characters.
fn printable_kid(kid: &str) -> String {
    if kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        kid.to_owned()
    } else {
        "(unprintable)".to_owned()
    }
}
