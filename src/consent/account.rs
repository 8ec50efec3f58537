//! Which upstream account a grant belongs to, learned right after its code
//! exchange from the provider's catalog `account` source: the ID token's
//! claims, the provider's own account endpoint, or the token response.

use crate::consent::catalog::{AccountError, AccountIdentity, AccountSource};
use crate::provider::{Exchanged, ProviderClient, ProviderError};
use chrono::{DateTime, Utc};

/// How far an ID token's `exp` may lie in the past (clock skew).
const ID_TOKEN_LEEWAY_SECONDS: i64 = 60;

/// Why the account of a grant could not be learned. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// The token response could not be read (it is not JSON).
    #[error("the token response is not a JSON document")]
    NoAnswer,
    /// The source is `id_token` and the answer carries none.
    #[error("the token response carries no `id_token` (is the `openid` scope asked?)")]
    NoIdToken,
    /// The ID token is malformed, expired, or for another issuer or audience.
    #[error("the ID token is refused: {0}")]
    IdToken(String),
    /// The account endpoint failed.
    #[error("the account endpoint failed: {0}")]
    Endpoint(#[from] ProviderError),
    /// The document lacks the account's fields.
    #[error(transparent)]
    Extract(#[from] AccountError),
}

/// The account of the grant `exchanged` from `client`'s provider, as its
/// catalog entry's source says; `None` when the entry names no source.
///
/// An ID token is taken from the token endpoint's answer, which tokenvault
/// received itself from the provider's token endpoint (over TLS outside
/// development), so its signature is not checked (OpenID Connect Core
/// §3.1.3.7); its issuer (the provider's, when the catalog names one), its
/// audience (tokenvault's client id) and its expiry are.
pub async fn learn(
    client: &ProviderClient,
    exchanged: &Exchanged,
    now: DateTime<Utc>,
) -> Result<Option<AccountIdentity>, LearnError> {
    let Some(source) = client.spec().account.as_ref() else {
        return Ok(None);
    };
    let document = match source {
        AccountSource::IdToken { .. } => {
            let answer = exchanged
                .answer
                .as_ref()
                .and_then(|a| a.json())
                .ok_or(LearnError::NoAnswer)?;
            let token = answer
                .get("id_token")
                .and_then(serde_json::Value::as_str)
                .ok_or(LearnError::NoIdToken)?;
            id_token_claims(token, client.client_id(), client.spec().issuer.as_ref(), now)?
        }
        AccountSource::Endpoint { url, method, body, .. } => {
            client
                .account_document(url, *method, body.as_deref(), &exchanged.tokens.access_token)
                .await?
        }
        AccountSource::TokenResponse { .. } => exchanged
            .answer
            .as_ref()
            .and_then(|a| a.json())
            .ok_or(LearnError::NoAnswer)?,
    };
    Ok(Some(source.extract(&document)?))
}

/// The claims of an ID token, once its audience (`client_id`), issuer (the
/// provider's `issuer`, when known) and expiry are checked.
fn id_token_claims(
    token: &str,
    client_id: &str,
    issuer: Option<&url::Url>,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, LearnError> {
    let refused = |why: &str| LearnError::IdToken(why.to_owned());
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    // Expiry is checked against tokenvault's clock below.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.set_audience(&[client_id]);
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(token, &jsonwebtoken::DecodingKey::from_secret(&[]), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    refused("its audience is not tokenvault's client id")
                }
                _ => refused("it is not a well-formed JWT"),
            })?
            .claims;
    if claims.get("aud").is_none() {
        return Err(refused("it has no audience"));
    }
    let claimed = claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| refused("it has no issuer"))?;
    if let Some(expected) = issuer {
        if claimed.trim_end_matches('/') != expected.as_str().trim_end_matches('/') {
            return Err(refused("its issuer is not the provider's"));
        }
    }
    let expires = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| refused("it has no expiry"))?;
    if expires + ID_TOKEN_LEEWAY_SECONDS < now.timestamp() {
        return Err(refused("it has expired"));
    }
    Ok(claims)
}

/// Whether a grant for `learned` may be stored on a connection that belongs
/// to `recorded`: the same account, or either not known.
pub fn same_account(recorded: Option<&str>, learned: Option<&AccountIdentity>) -> bool {
    match (recorded, learned) {
        (Some(recorded), Some(learned)) => recorded == learned.subject,
        _ => true,
    }
}

/// The account as a person reads it: its display name, else its subject.
pub fn shown(subject: &str, display: Option<&str>) -> String {
    display.unwrap_or(subject).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"client-secret"),
        )
        .unwrap()
    }

    fn check(claims: serde_json::Value) -> Result<serde_json::Value, LearnError> {
        let issuer = url::Url::parse("https://idp.example.com/").unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        id_token_claims(&token(claims), "tokenvault", Some(&issuer), now)
    }

    #[test]
    fn id_tokens_are_checked_for_audience_issuer_and_expiry() {
        let good = serde_json::json!({
            "iss": "https://idp.example.com", "sub": "u1", "aud": "tokenvault", "exp": 1_800_000_100_i64,
        });
        assert_eq!(check(good.clone()).unwrap()["sub"], "u1");
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[key] = value;
            claims
        };
        assert_eq!(
            check(with("aud", serde_json::json!(["other", "tokenvault"]))).unwrap()["sub"],
            "u1"
        );
        for (claims, why) in [
            (with("aud", "someone-else".into()), "audience"),
            (with("iss", "https://evil.example.com".into()), "issuer"),
            (with("exp", 1_799_999_000_i64.into()), "expired"),
        ] {
            let error = check(claims).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
        let mut no_audience = good.clone();
        no_audience.as_object_mut().unwrap().remove("aud");
        assert!(check(no_audience).is_err());
        let mut no_expiry = good.clone();
        no_expiry.as_object_mut().unwrap().remove("exp");
        assert!(check(no_expiry).unwrap_err().to_string().contains("expiry"));
        let issuer = url::Url::parse("https://idp.example.com/").unwrap();
        let error = id_token_claims("not.a.jwt", "tokenvault", Some(&issuer), Utc::now()).unwrap_err();
        assert!(error.to_string().contains("well-formed"), "{error}");
    }

    #[test]
    fn accounts_match_when_either_is_unknown() {
        let learned = AccountIdentity {
            subject: "a".into(),
            display: None,
        };
        assert!(same_account(Some("a"), Some(&learned)));
        assert!(!same_account(Some("b"), Some(&learned)));
        assert!(same_account(None, Some(&learned)));
        assert!(same_account(Some("b"), None));
        assert_eq!(shown("a", Some("a@example.com")), "a@example.com");
        assert_eq!(shown("a", None), "a");
    }
}
