//! The consent flow: start (least-privilege scopes, PKCE S256, a single-use
//! state stored only hashed) and completion (code exchange, the one
//! connection per tenant, user and provider, sealed tokens, audit).
//!
//! The audit events are written in the same transaction as what they
//! record: `consent.started` with the request, `consent.completed` with the
//! stored grant (and the request's completion), `consent.denied` and
//! `consent.failed` with the request's outcome. When that transaction fails
//! the callback fails and nothing of it is stored; the request stays claimed
//! (its state is single use and the provider's code is spent), so the user
//! starts consent again.

use super::return_url::ReturnUrlPolicy;
use crate::audit::EventBuilder;
use crate::broker::TokenCache;
use crate::clock::SharedClock;
use crate::consent::catalog::{CatalogError, ProviderSpec};
use crate::lifecycle::{CredentialKind, Handover, Purpose};
use crate::provider::{new_pkce, ProviderError, Providers, TokenSet};
use crate::store::{
    access_token_record, next_token_version, AccessTokenRecord, AuditEvent, Connection, ConnectionStatus, ConsentGrant,
    ConsentRecord, ConsentState, OutboxEntry, ScopeSet, Sealed, Store, StoreError, TenantScope, Trail,
};
use crate::telemetry::Metrics;
use crate::vault::{Binding, DataKey, Field, Vault, VaultError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use url::Url;
use uuid::Uuid;

/// Why a consent operation was refused. Messages never contain a state, code or verifier.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// A malformed request field.
    #[error("{0}")]
    Invalid(String),
    /// The provider is not in the catalog.
    #[error("unknown provider `{0}`")]
    UnknownProvider(String),
    /// An unknown capability, a scope off the allow-list, or nothing requested.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The provider is known but cannot be used now.
    #[error("{0}")]
    ProviderUnusable(ProviderError),
    /// The caller may not act for the tenant.
    #[error("caller `{caller}` may not act for tenant `{tenant}`")]
    WrongTenant {
        /// Caller name.
        caller: String,
        /// Tenant asked for.
        tenant: String,
    },
    /// The user is deleted (pending purge).
    #[error("user `{0}` is deleted; restore the user before starting consent")]
    UserDeleted(String),
    /// No consent request has this state.
    #[error("unknown consent state: start consent again")]
    UnknownState,
    /// The request expired.
    #[error("consent request expired: start consent again")]
    Expired,
    /// The state was used before (single use).
    #[error("consent request was already used: start consent again")]
    AlreadyUsed,
    /// No such consent id (for this caller).
    #[error("no consent request {0}")]
    NotFound(Uuid),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// `StartConsent`'s input, validated by the API layer.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Tenant.
    pub tenant_id: String,
    /// User.
    pub user_id: String,
    /// Catalog provider name.
    pub provider: String,
    /// Capability names.
    pub capabilities: Vec<String>,
    /// Explicit scopes.
    pub scopes: Vec<String>,
    /// Where the browser goes afterwards (empty for none).
    pub return_url: String,
}

/// `StartConsent`'s result.
#[derive(Debug, Clone)]
pub struct Started {
    /// Consent id.
    pub consent_id: Uuid,
    /// Where to send the user's browser.
    pub authorization_url: Url,
    /// Scopes asked of the provider.
    pub scopes: ScopeSet,
    /// When the request stops being usable.
    pub expires_at: DateTime<Utc>,
}

/// The provider's redirect parameters.
pub struct CallbackParams {
    /// `state`.
    pub state: String,
    /// `code`, when the user approved.
    pub code: Option<SecretString>,
    /// `error`, when the user refused or the provider failed.
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackParams")
            .field("state", &"[REDACTED]")
            .field("code", &self.code.as_ref().map(|_| "[REDACTED]"))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// How a completed callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connection was stored.
    Connected,
    /// The user refused.
    Denied,
    /// The exchange failed.
    Failed,
}

impl Outcome {
    /// The `status` query parameter sent to `return_url`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Connected => "connected",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// A completed callback.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Consent id.
    pub consent_id: Uuid,
    /// The connection, when one was stored.
    pub connection_id: Option<Uuid>,
    /// How it ended.
    pub outcome: Outcome,
    /// Scopes the provider granted.
    pub granted_scopes: ScopeSet,
    /// `return_url` with `connection_id`, `status` (and `error`) added.
    pub redirect_url: Option<Url>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Everything the flow needs.
pub struct ConsentFlow {
    store: Arc<dyn Store>,
    vault: Vault,
    providers: Arc<Providers>,
    clock: SharedClock,
    metrics: Metrics,
    policy: ReturnUrlPolicy,
    ttl: chrono::Duration,
    callback_url: Arc<OnceLock<Url>>,
    cache: Arc<TokenCache>,
    handover: Handover,
}

impl std::fmt::Debug for ConsentFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentFlow")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a state value: the only form stored.
pub fn hash_state(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

fn new_state() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a consent request's PKCE verifier is bound to (version 0: it is written once).
fn consent_binding<'a>(consent: &'a ConsentRecord, record: &'a str) -> Binding<'a> {
    Binding {
        tenant_id: &consent.tenant_id,
        user_id: &consent.user_id,
        record,
        field: Field::PkceVerifier,
        version: 0,
    }
}

/// What a token of `consent`'s connection is bound to, at token version `version`.
fn grant_binding<'a>(consent: &'a ConsentRecord, record: &'a str, field: Field, version: i64) -> Binding<'a> {
    Binding {
        tenant_id: &consent.tenant_id,
        user_id: &consent.user_id,
        record,
        field,
        version,
    }
}

/// The refresh token `connection` keeps through a grant that brings none,
/// sealed again for the grant's `binding` (its new token version; a
/// format-1 value becomes format 2). One that does not open at the
/// connection's current version is kept as it is: it fails its integrity
/// check, and is reported, when a refresh presents it, as it would have.
fn kept_refresh_token(
    key: &DataKey,
    connection: &Connection,
    old: &Sealed,
    binding: &Binding<'_>,
) -> Result<Sealed, VaultError> {
    let current = Binding {
        version: connection.token_version,
        ..*binding
    };
    match key.open_string(&current, old.as_bytes()) {
        Ok(token) => Ok(Sealed(key.seal_str(binding, &token)?)),
        Err(error) => {
            tracing::warn!(%error, connection_id = %connection.id,
                "the refresh token an incremental grant keeps does not open; kept unchanged");
            Ok(old.clone())
        }
    }
}

impl ConsentFlow {
    /// Assembles the flow. `callback_url` is set once the HTTP listener is bound.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        providers: Arc<Providers>,
        clock: SharedClock,
        metrics: Metrics,
        policy: ReturnUrlPolicy,
        ttl_seconds: u64,
        callback_url: Arc<OnceLock<Url>>,
        cache: Arc<TokenCache>,
        handover: Handover,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            clock,
            metrics,
            policy,
            ttl: chrono::Duration::seconds(i64::try_from(ttl_seconds).unwrap_or(600)),
            callback_url,
            cache,
            handover,
        }
    }

    fn callback_url(&self) -> Result<&Url, ConsentError> {
        self.callback_url
            .get()
            .ok_or_else(|| ConsentError::Invalid("the HTTP listener is not running yet".to_owned()))
    }

    /// Starts consent: works out the fewest scopes, stores the request, returns the authorization URL.
    pub async fn start(
        &self,
        actor: &str,
        scope: &TenantScope,
        request: StartRequest,
        request_id: Option<&str>,
    ) -> Result<Started, ConsentError> {
        if !scope.allows(&request.tenant_id) {
            return Err(ConsentError::WrongTenant {
                caller: actor.to_owned(),
                tenant: request.tenant_id,
            });
        }
        let spec = self
            .providers
            .spec(&request.provider)
            .ok_or_else(|| ConsentError::UnknownProvider(request.provider.clone()))?;
        let requested = spec.resolve_scopes(&request.capabilities, &request.scopes)?;
        let return_url = if request.return_url.is_empty() {
            None
        } else {
            Some(self.policy.check(&request.return_url).map_err(ConsentError::Invalid)?)
        };
        let client = self
            .providers
            .client(&request.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        let now = self.clock.now();
        if let Some(user) = self.store.user(&request.tenant_id, &request.user_id).await? {
            if user.deleted_at.is_some() {
                return Err(ConsentError::UserDeleted(request.user_id));
            }
        }
        let granted = match self
            .store
            .connection_for(&request.tenant_id, &request.user_id, &request.provider)
            .await?
        {
            Some(existing) if existing.status() == ConnectionStatus::Active => existing.granted_scopes,
            _ => ScopeSet::new(),
        };
        let plan = spec.scope_plan(&requested, &granted);
        let mut wanted = requested.clone();
        wanted.extend(granted.iter().filter(|s| spec.allowed_scopes.contains(*s)).cloned());

        let consent_id = Uuid::now_v7();
        let state = new_state();
        let (challenge, verifier) = new_pkce();
        let key = self.vault.create_data_key().await?;
        let mut record = ConsentRecord {
            id: consent_id,
            state_hash: hash_state(&state),
            tenant_id: request.tenant_id.clone(),
            user_id: request.user_id.clone(),
            provider: request.provider.clone(),
            capabilities: request.capabilities.clone(),
            requested_scopes: wanted,
            asked_scopes: plan.ask.clone(),
            incremental: plan.incremental,
            return_url: return_url.as_ref().map(Url::to_string),
            redirect_uri: self.callback_url()?.to_string(),
            dek_id: key.id(),
            pkce_verifier: None,
            state: ConsentState::Pending,
            connection_id: None,
            error: None,
            created_at: now,
            expires_at: now + self.ttl,
            completed_at: None,
            actor: actor.to_owned(),
        };
        let record_id = consent_id.to_string();
        let sealed = key.seal_str(&consent_binding(&record, &record_id), &verifier)?;
        record.pkce_verifier = Some(Sealed(sealed));
        let authorization_url = client.authorization_url(&plan, &state, challenge, self.callback_url()?);
        let trail = EventBuilder::new("consent.started", "success", actor, now)
            .user(&record.tenant_id, &record.user_id)
            .request_id(request_id)
            .detail("consent_id", consent_id.to_string())
            .detail("provider", record.provider.clone())
            .detail("capabilities", record.capabilities.clone())
            .detail("asked_scopes", plan.ask.iter().cloned().collect::<Vec<_>>())
            .detail("incremental", plan.incremental)
            .build()
            .into();
        self.store.insert_consent(&record, &trail).await?;
        self.metrics.consent("started");
        Ok(Started {
            consent_id,
            authorization_url,
            scopes: plan.ask,
            expires_at: record.expires_at,
        })
    }

    /// Reads a consent request within the caller's tenants.
    pub async fn get(&self, scope: &TenantScope, id: Uuid) -> Result<(ConsentRecord, bool), ConsentError> {
        let record = self.store.consent(scope, id).await?.ok_or(ConsentError::NotFound(id))?;
        let expired = matches!(record.state, ConsentState::Pending) && record.expires_at <= self.clock.now();
        Ok((record, expired))
    }

    /// Completes consent from the provider's redirect (the HTTP callback: any tenant).
    pub async fn complete(
        &self,
        actor: &str,
        params: CallbackParams,
        request_id: Option<&str>,
    ) -> Result<Completion, ConsentError> {
        self.complete_for(actor, &TenantScope::All, params, request_id).await
    }

    /// Completes consent for a caller limited to `scope` (`CompleteConsent`).
    pub async fn complete_for(
        &self,
        actor: &str,
        scope: &TenantScope,
        params: CallbackParams,
        request_id: Option<&str>,
    ) -> Result<Completion, ConsentError> {
        if params.state.is_empty() || params.state.len() > 512 {
            return Err(ConsentError::Invalid("state is missing or malformed".to_owned()));
        }
        if params.error.is_none() && params.code.is_none() {
            return Err(ConsentError::Invalid(
                "the redirect carries neither `code` nor `error`".to_owned(),
            ));
        }
        let consent = self
            .store
            .consent_by_state(&hash_state(&params.state))
            .await?
            .filter(|c| scope.allows(&c.tenant_id))
            .ok_or(ConsentError::UnknownState)?;
        let now = self.clock.now();
        if consent.state != ConsentState::Pending {
            return Err(ConsentError::AlreadyUsed);
        }
        if consent.expires_at <= now {
            return Err(ConsentError::Expired);
        }
        if !self.store.claim_consent(consent.id, now).await? {
            // Claimed by a concurrent callback, or expired in between.
            return Err(ConsentError::AlreadyUsed);
        }
        let ending = |outcome, connection_id, granted: &ScopeSet, error: Option<&str>| Ending {
            consent: &consent,
            actor,
            request_id,
            at: now,
            outcome,
            connection_id,
            granted: granted.clone(),
            error: error.map(str::to_owned),
            replaced: None,
        };
        let exchanged = match (&params.error, &params.code) {
            (Some(error), _) => Err((
                Outcome::Denied,
                describe_refusal(error, params.error_description.as_deref()),
            )),
            (None, Some(code)) => self.exchange(&consent, code).await,
            (None, None) => Err((Outcome::Failed, "no code".to_owned())),
        };
        // A grant is stored together with the request's completion and its event.
        let result = match exchanged {
            Ok((tokens, granted)) => {
                let trail = |connection_id, replaced: &Replacement| -> Trail {
                    let mut ending = ending(Outcome::Connected, Some(connection_id), &granted, None);
                    ending.replaced = Some(replaced.note());
                    ending.event().into()
                };
                self.store_tokens(&consent, tokens, granted.clone(), &trail)
                    .await
                    .map(|id| (id, granted))
                    .map_err(|e| (Outcome::Failed, format!("storing the connection failed: {e}")))
            }
            Err(refused) => Err(refused),
        };
        // The verifier's key is no longer needed either way.
        if let Err(error) = self.vault.destroy_data_keys(&[consent.dek_id]).await {
            tracing::warn!(%error, consent_id = %consent.id, "could not destroy a consent data key; retention will");
        }
        let (outcome, connection_id, granted, error) = match result {
            Ok((connection_id, granted)) => (Outcome::Connected, Some(connection_id), granted, None),
            Err((outcome, reason)) => (outcome, None, ScopeSet::new(), Some(reason)),
        };
        if outcome != Outcome::Connected {
            let trail = ending(outcome, None, &granted, error.as_deref()).event().into();
            self.store
                .finish_consent(
                    consent.id,
                    ConsentState::Failed,
                    None,
                    error.as_deref(),
                    self.clock.now(),
                    &trail,
                )
                .await?;
        }
        self.metrics.consent(outcome.as_str());
        let redirect_url = consent
            .return_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .map(|mut url| {
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("consent_id", &consent.id.to_string());
                    if let Some(id) = connection_id {
                        query.append_pair("connection_id", &id.to_string());
                    }
                    query.append_pair("status", outcome.as_str());
                    if let Some(reason) = &error {
                        query.append_pair("error", reason);
                    }
                }
                url
            });
        Ok(Completion {
            consent_id: consent.id,
            connection_id,
            outcome,
            granted_scopes: granted,
            redirect_url,
            error,
        })
    }

    /// Exchanges the code: the tokens and the scopes they grant.
    async fn exchange(
        &self,
        consent: &ConsentRecord,
        code: &SecretString,
    ) -> Result<(TokenSet, ScopeSet), (Outcome, String)> {
        let failed = |reason: String| (Outcome::Failed, reason);
        let client = self
            .providers
            .client(&consent.provider)
            .map_err(|e| failed(e.to_string()))?;
        let sealed = consent
            .pkce_verifier
            .as_ref()
            .ok_or_else(|| failed("the consent request holds no verifier".to_owned()))?;
        let record_id = consent.id.to_string();
        let verifier = async {
            let key = self.vault.data_key(consent.dek_id).await?;
            key.open_string(&consent_binding(consent, &record_id), sealed.as_bytes())
        }
        .await
        .map_err(|e: VaultError| failed(format!("cannot open the PKCE verifier: {e}")))?;
        let redirect_uri =
            Url::parse(&consent.redirect_uri).map_err(|_| failed("stored redirect_uri is invalid".to_owned()))?;
        let tokens = client
            .exchange_code(code, &verifier, &redirect_uri, self.clock.now())
            .await
            .map_err(|e| {
                self.metrics.upstream_error(&consent.provider, e.kind());
                failed(format!("code exchange failed: {e}"))
            })?;
        let granted = tokens.scopes.clone().unwrap_or_else(|| consent.asked_scopes.clone());
        let granted = if consent.incremental && tokens.scopes.is_none() {
            // Incremental grants keep what was granted before.
            consent.requested_scopes.union(&granted).cloned().collect()
        } else {
            granted
        };
        Ok((tokens, granted))
    }

    /// Stores the tokens on the one connection and completes the request,
    /// queueing the credential they replace for revocation at the provider
    /// (see [`ConsentFlow::replaced_credential`]), with `trail(connection id,
    /// what became of the replaced credential)` in the same transaction.
    async fn store_tokens(
        &self,
        consent: &ConsentRecord,
        tokens: TokenSet,
        granted: ScopeSet,
        trail: &(dyn Fn(Uuid, &Replacement) -> Trail + Send + Sync),
    ) -> Result<Uuid, ConsentError> {
        let client = self
            .providers
            .client(&consent.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        for _ in 0..3 {
            let now = self.clock.now();
            let connection = self
                .store
                .get_or_create_connection(&consent.tenant_id, &consent.user_id, &consent.provider, now)
                .await?;
            let key = match connection.dek_id {
                Some(id) => self.vault.data_key(id).await?,
                None => self.vault.create_data_key().await?,
            };
            let connection_record = connection.id.to_string();
            // The version the store gives the connection with this grant: what its tokens are sealed for.
            let version = next_token_version(connection.token_version);
            let refresh_binding = grant_binding(consent, &connection_record, Field::RefreshToken, version);
            let refresh_token = match (&tokens.refresh_token, &connection.refresh_token, connection.dek_id) {
                (Some(new), _, _) => Some(Sealed(key.seal_str(&refresh_binding, new)?)),
                // An incremental grant without a new refresh token keeps the old one,
                // sealed again for the new version.
                (None, Some(old), Some(_)) if connection.stored_status != ConnectionStatus::Revoked => {
                    Some(kept_refresh_token(&key, &connection, old, &refresh_binding)?)
                }
                _ => None,
            };
            let access_record = access_token_record(connection.id, "");
            let access = AccessTokenRecord {
                connection_id: connection.id,
                scope_key: String::new(),
                token: Sealed(key.seal_str(
                    &grant_binding(consent, &access_record, Field::AccessToken, version),
                    &tokens.access_token,
                )?),
                token_type: tokens.token_type.clone(),
                issued_at: tokens.issued_at,
                scopes: granted.clone(),
                expires_at: tokens.expires_at,
                token_version: version,
            };
            let replacement = self
                .replaced_credential(client.spec(), &connection, &key, &tokens, now)
                .await?;
            let grant = ConsentGrant {
                connection_id: connection.id,
                expected_version: connection.token_version,
                dek_id: key.id(),
                refresh_token,
                granted_scopes: granted.clone(),
                access_token: access,
                consent_id: Some(consent.id),
                replaced: replacement.entry().cloned(),
            };
            let stored = self
                .store
                .store_consent_grant(&grant, &trail(connection.id, &replacement), now)
                .await;
            if !matches!(stored, Ok(true)) {
                // The entry was not stored: its key has nothing to keep.
                if let Some(entry) = replacement.entry() {
                    self.handover.discard(entry).await;
                }
            }
            if stored? {
                // This replica's cache at once (the store tells the others).
                self.cache.invalidate_connection(connection.id);
                if let Some(entry) = replacement.entry() {
                    self.handover.attempt_soon(entry.id);
                }
                return Ok(connection.id);
            }
        }
        Err(ConsentError::Store(StoreError::Database(
            "the connection kept changing while consent completed".to_owned(),
        )))
    }

    /// The credential a new grant replaces on `connection`, as an outbox
    /// entry under a data key of its own (`key` is the connection's, which
    /// stays with the connection): the old refresh token, or for a
    /// connection without one, the old full-grant access token. Nothing is
    /// queued when there is none (or it stays, as an incremental grant without
    /// a new refresh token keeps the old one), when the provider cannot
    /// revoke, when its revocation is grant-wide and shared with the new
    /// token ([`ProviderSpec::revoke_replaced_on_reconsent`]), or when the
    /// provider handed back the same token.
    async fn replaced_credential(
        &self,
        spec: &ProviderSpec,
        connection: &Connection,
        key: &DataKey,
        tokens: &TokenSet,
        now: DateTime<Utc>,
    ) -> Result<Replacement, ConsentError> {
        if connection.stored_status == ConnectionStatus::Revoked || connection.dek_id.is_none() {
            // A revoked connection's credential went to the outbox with its revocation.
            return Ok(Replacement::Nothing("none"));
        }
        let connection_record = connection.id.to_string();
        let access_record = access_token_record(connection.id, "");
        let (sealed, record, field, version, kind, new) = match &connection.refresh_token {
            Some(_) if tokens.refresh_token.is_none() => return Ok(Replacement::Nothing("kept")),
            Some(old) => (
                old.clone(),
                &connection_record,
                Field::RefreshToken,
                connection.token_version,
                CredentialKind::RefreshToken,
                tokens.refresh_token.as_ref(),
            ),
            None => {
                let stored = self
                    .store
                    .connection_with_token(&TenantScope::All, connection.id, "")
                    .await?
                    .and_then(|(_, token)| token);
                let Some(old) = stored else {
                    return Ok(Replacement::Nothing("none"));
                };
                (
                    old.token,
                    &access_record,
                    Field::AccessToken,
                    old.token_version,
                    CredentialKind::AccessToken,
                    Some(&tokens.access_token),
                )
            }
        };
        if spec.revocation_unsupported().is_some() {
            return Ok(Replacement::Nothing("unsupported"));
        }
        if !spec.revoke_replaced_on_reconsent() {
            return Ok(Replacement::Nothing("grant_shared"));
        }
        let binding = Binding {
            tenant_id: &connection.tenant_id,
            user_id: &connection.user_id,
            record,
            field,
            version,
        };
        let old = match key.open_string(&binding, sealed.as_bytes()) {
            Ok(old) => old,
            Err(error) => {
                tracing::warn!(%error, connection_id = %connection.id,
                    "the credential a re-consent replaces does not open; it cannot be revoked at the provider");
                return Ok(Replacement::Nothing("unreadable"));
            }
        };
        if new.is_some_and(|new| new.expose_secret() == old.expose_secret()) {
            return Ok(Replacement::Nothing("same_token"));
        }
        let entry = self
            .handover
            .entry(connection, &old, kind, Purpose::Replaced, now)
            .await?;
        Ok(Replacement::Queued(Box::new(entry)))
    }
}

/// What a consent does with the credential its grant replaces.
enum Replacement {
    /// Queued for revocation at the provider, in the grant's transaction.
    Queued(Box<OutboxEntry>),
    /// Not queued, and why (`none`, `kept`, `unsupported`, `grant_shared`,
    /// `unreadable`, `same_token`).
    Nothing(&'static str),
}

impl Replacement {
    /// The outbox entry, when queued.
    fn entry(&self) -> Option<&OutboxEntry> {
        match self {
            Replacement::Queued(entry) => Some(entry),
            Replacement::Nothing(_) => None,
        }
    }

    /// What `consent.completed` records of it.
    fn note(&self) -> ReplacedNote {
        match self {
            Replacement::Queued(entry) => ReplacedNote {
                outcome: "queued",
                token_type_hint: Some(entry.token_type_hint.clone()),
                outbox_id: Some(entry.id),
            },
            Replacement::Nothing(why) => ReplacedNote {
                outcome: why,
                token_type_hint: None,
                outbox_id: None,
            },
        }
    }
}

/// The audit record of a [`Replacement`] (no secret).
struct ReplacedNote {
    outcome: &'static str,
    token_type_hint: Option<String>,
    outbox_id: Option<Uuid>,
}

/// How a consent request ended, for its audit event.
struct Ending<'a> {
    consent: &'a ConsentRecord,
    actor: &'a str,
    request_id: Option<&'a str>,
    at: DateTime<Utc>,
    outcome: Outcome,
    connection_id: Option<Uuid>,
    granted: ScopeSet,
    error: Option<String>,
    /// What became of the credential a stored grant replaced.
    replaced: Option<ReplacedNote>,
}

impl Ending<'_> {
    /// `consent.completed`, `consent.denied` or `consent.failed`.
    fn event(self) -> AuditEvent {
        let consent = self.consent;
        let (action, result) = match self.outcome {
            Outcome::Connected => ("consent.completed", "success"),
            Outcome::Denied => ("consent.denied", "failure"),
            Outcome::Failed => ("consent.failed", "failure"),
        };
        let mut event = EventBuilder::new(action, result, self.actor, self.at)
            .user(&consent.tenant_id, &consent.user_id)
            .request_id(self.request_id)
            .detail("consent_id", consent.id.to_string())
            .detail("provider", consent.provider.clone())
            .detail(
                "requested_scopes",
                consent.requested_scopes.iter().cloned().collect::<Vec<_>>(),
            )
            .detail("granted_scopes", self.granted.into_iter().collect::<Vec<_>>());
        if let Some(id) = self.connection_id {
            event = event.connection(id);
        }
        if let Some(reason) = self.error {
            event = event.detail("error", reason);
        }
        if let Some(replaced) = self.replaced {
            event = event.detail("replaced_credential", replaced.outcome);
            if let Some(hint) = replaced.token_type_hint {
                event = event.detail("replaced_token_type_hint", hint);
            }
            if let Some(id) = replaced.outbox_id {
                event = event.detail("revocation_outbox_id", id.to_string());
            }
        }
        event.build()
    }
}

fn describe_refusal(error: &str, description: Option<&str>) -> String {
    let clean = |text: &str| -> String { text.chars().filter(|c| !c.is_control()).take(200).collect() };
    match description {
        Some(d) if !d.is_empty() => format!("{}: {}", clean(error), clean(d)),
        _ => clean(error),
    }
}
