//! An exchanged grant put aside until the platform confirms it: the tokens
//! and what they grant, as one JSON document sealed under the consent
//! request's own data key (bound to the request, field `pending_grant`).
//! Destroying that key (confirmation, failure, expiry) destroys the grant.

use crate::provider::TokenSet;
use crate::store::{ConsentRecord, ScopeSet, Sealed};
use crate::vault::{Binding, DataKey, Field, VaultError};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The sealed document (never logged: it holds the tokens).
#[derive(Serialize, Deserialize)]
struct Document {
    access_token: String,
    refresh_token: Option<String>,
    token_type: String,
    expires_at: DateTime<Utc>,
    issued_at: DateTime<Utc>,
    reported_scopes: Option<Vec<String>>,
    granted: Vec<String>,
}

impl Drop for Document {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
        if let Some(token) = &mut self.refresh_token {
            zeroize::Zeroize::zeroize(token);
        }
    }
}

/// What the pending grant of `consent` is bound to.
fn binding<'a>(consent: &'a ConsentRecord, record: &'a str) -> Binding<'a> {
    Binding {
        tenant_id: &consent.tenant_id,
        user_id: &consent.user_id,
        record,
        field: Field::PendingGrant,
        version: 0,
    }
}

/// Seals `tokens` and the scopes they grant for `consent`.
pub fn seal(
    key: &DataKey,
    consent: &ConsentRecord,
    tokens: &TokenSet,
    granted: &ScopeSet,
) -> Result<Sealed, VaultError> {
    let document = Document {
        access_token: tokens.access_token.expose_secret().to_owned(),
        refresh_token: tokens.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
        token_type: tokens.token_type.clone(),
        expires_at: tokens.expires_at,
        issued_at: tokens.issued_at,
        reported_scopes: tokens.scopes.as_ref().map(|s| s.iter().cloned().collect()),
        granted: granted.iter().cloned().collect(),
    };
    let json = Zeroizing::new(
        serde_json::to_string(&document).map_err(|_| VaultError::Malformed("the pending grant does not serialize"))?,
    );
    let record = consent.id.to_string();
    let text = SecretString::from(json.as_str().to_owned());
    Ok(Sealed(key.seal_str(&binding(consent, &record), &text)?))
}

/// Opens the pending grant of `consent`: the tokens and the scopes they grant.
pub fn open(key: &DataKey, consent: &ConsentRecord, sealed: &Sealed) -> Result<(TokenSet, ScopeSet), VaultError> {
    let record = consent.id.to_string();
    let json = key.open_string(&binding(consent, &record), sealed.as_bytes())?;
    let document: Document = serde_json::from_str(json.expose_secret())
        .map_err(|_| VaultError::Malformed("the pending grant is not the expected document"))?;
    let tokens = TokenSet {
        access_token: SecretString::from(document.access_token.clone()),
        refresh_token: document.refresh_token.clone().map(SecretString::from),
        token_type: document.token_type.clone(),
        expires_at: document.expires_at,
        issued_at: document.issued_at,
        scopes: document.reported_scopes.as_ref().map(|s| s.iter().cloned().collect()),
    };
    Ok((tokens, document.granted.iter().cloned().collect()))
}
