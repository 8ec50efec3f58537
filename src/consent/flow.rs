//! The consent flow: start (least-privilege scopes, PKCE S256, a start
//! handle stored only hashed), the browser's visit of the handle (a binding
//! cookie and a single-use state, both stored only hashed), the callback
//! (bound to that browser, `iss` checked, code exchanged), the platform's
//! confirmation (a one-time completion code) and the grant stored on its
//! connection, sealed, with audit.
//!
//! The audit events are written in the same transaction as what they
//! record: `consent.started` with the request, `consent.completed` with the
//! stored grant (and the request's completion), `consent.denied` and
//! `consent.failed` with the request's outcome. When that transaction fails
//! the callback fails and nothing of it is stored; the request stays claimed
//! (its state is single use and the provider's code is spent), so the user
//! starts consent again.

use super::account;
use super::binding::{self, BindingCookie};
use super::pending;
use super::return_url::ReturnUrlPolicy;
use crate::audit::EventBuilder;
use crate::broker::TokenCache;
use crate::clock::SharedClock;
use crate::config::{ConsentConfig, OtherAccount};
use crate::consent::catalog::{AccountIdentity, CatalogError, ProviderSpec};
use crate::events::{Event, EventType};
use crate::lifecycle::{CredentialKind, Handover, Purpose};
use crate::provider::{new_pkce, ProviderError, Providers, TokenSet};
use crate::store::{
    access_token_record, next_token_version, AccessTokenRecord, Approval, AuditEvent, Connection, ConnectionStatus,
    ConsentGrant, ConsentRecord, ConsentState, OutboxEntry, ScopeSet, Sealed, Store, StoreError, TenantScope, Trail,
};
use crate::telemetry::Metrics;
use crate::vault::{Binding, DataKey, Field, Vault, VaultError};
use chrono::{DateTime, Utc};
use oauth2::{PkceCodeChallenge, PkceCodeVerifier};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashSet;
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
    /// The start handle names no pending, unexpired consent.
    #[error("this consent link has expired or was already completed: start consent again")]
    StartUnusable,
    /// The callback came without the cookie of the browser that started the consent.
    #[error("this browser did not start this consent (its binding cookie is missing or does not match): start consent again from the application")]
    NotBound,
    /// The callback arrived on another provider's redirect path.
    #[error("this callback is for provider `{route}`, but the consent is for `{consent}`")]
    ProviderMismatch {
        /// The provider of the callback path.
        route: String,
        /// The consent's provider.
        consent: String,
    },
    /// The authorization response's `iss` names another issuer (RFC 9207).
    #[error("the authorization response comes from issuer `{got}`, not `{expected}` (mix-up refused)")]
    IssuerMismatch {
        /// The `iss` received (control characters removed, shortened).
        got: String,
        /// The provider's issuer.
        expected: String,
    },
    /// The provider says it always sends `iss`, and this response has none.
    #[error("the authorization response carries no `iss`, which provider `{0}` always sends (RFC 9207)")]
    IssuerMissing(String),
    /// The consent was started for another user than the one confirming it.
    #[error("consent {0} was started for another user; it is cancelled and nothing was stored")]
    OtherUser(Uuid),
    /// The completion code does not belong to this consent.
    #[error("the completion code does not match consent {0}")]
    WrongCompletionCode(Uuid),
    /// The consent has not reached the provider's approval yet (or was finished otherwise).
    #[error("consent {0} is not waiting for confirmation")]
    NotApproved(Uuid),
    /// The provider answered for another upstream account than the one the
    /// user's connection belongs to: nothing is stored.
    #[error("the provider signed in account `{got}`, but connection {connection_id} belongs to account `{recorded}`: it is unchanged; sign in to the provider as `{recorded}` to re-consent it")]
    OtherAccount {
        /// The connection.
        connection_id: Uuid,
        /// Its account (display name, else subject).
        recorded: String,
        /// The account the grant is for.
        got: String,
    },
    /// A re-consent for a connection of another user or provider.
    #[error("connection {0} is not a connection of this user at this provider")]
    ForeignConnection(Uuid),
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
    /// The connection to re-consent (or extend), if any.
    pub connection_id: Option<Uuid>,
    /// The account the user should sign in with, passed to the provider as a hint.
    pub account_hint: Option<String>,
}

/// `StartConsent`'s result.
#[derive(Debug, Clone)]
pub struct Started {
    /// Consent id.
    pub consent_id: Uuid,
    /// Where to send the user's browser: tokenvault's `/oauth/start/{handle}`.
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
    /// `iss` (RFC 9207), when the provider sends it.
    pub iss: Option<String>,
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
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// How a completed callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connection was stored.
    Connected,
    /// The user approved; the grant waits for the platform's `ConfirmConsent`.
    Approved,
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
            Outcome::Approved => "approved",
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
    /// `return_url` with `consent_id`, `status`, and `completion_code`,
    /// `connection_id` or `error` added.
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
    confirmation: Confirmation,
    /// What a re-consent for another account does.
    other_account: OtherAccount,
    oauth_base: Arc<OnceLock<Url>>,
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
    binding::hash_secret(state)
}

/// Which tenants' grants wait for the platform's confirmation, and for how long.
#[derive(Debug, Clone)]
struct Confirmation {
    required: bool,
    exempt: HashSet<String>,
    ttl: chrono::Duration,
}

impl Confirmation {
    fn required_for(&self, tenant_id: &str) -> bool {
        self.required && !self.exempt.contains(tenant_id)
    }
}

/// Who completes a callback, and what proves it is the user who started the consent.
#[derive(Debug, Clone, Copy)]
pub enum Completer<'a> {
    /// The user's browser at `/oauth/callback/{provider}`, with its `Cookie` headers.
    Browser {
        /// The provider named by the callback path.
        provider: &'a str,
        /// The browser's `Cookie` header values (the consent's binding cookie among them).
        cookies: &'a [String],
    },
    /// A platform that received the provider's redirect itself
    /// (`CompleteConsent`), inside the session of `user_id`.
    Platform {
        /// The user of the platform session.
        user_id: &'a str,
    },
}

/// The browser's visit of a start handle: where to send it, and the cookie that binds it.
#[derive(Debug)]
pub struct Bound {
    /// Consent id.
    pub consent_id: Uuid,
    /// The provider's authorization URL (state and PKCE challenge made for this visit).
    pub provider_url: Url,
    /// The binding cookie to set.
    pub cookie: BindingCookie,
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
        config: &ConsentConfig,
        oauth_base: Arc<OnceLock<Url>>,
        cache: Arc<TokenCache>,
        handover: Handover,
    ) -> Self {
        let seconds = |value: u64, default: i64| chrono::Duration::seconds(i64::try_from(value).unwrap_or(default));
        Self {
            store,
            vault,
            providers,
            clock,
            metrics,
            policy,
            ttl: seconds(config.ttl_seconds, 600),
            confirmation: Confirmation {
                required: config.require_confirmation,
                exempt: config.tenants_without_confirmation.iter().cloned().collect(),
                ttl: seconds(config.confirmation_ttl_seconds, 300),
            },
            other_account: config.other_account,
            oauth_base,
            cache,
            handover,
        }
    }

    fn oauth_base(&self) -> Result<&Url, ConsentError> {
        self.oauth_base
            .get()
            .ok_or_else(|| ConsentError::Invalid("the HTTP listener is not running yet".to_owned()))
    }

    /// The `redirect_uri` of `provider`: its own callback path.
    pub fn callback_url(&self, provider: &str) -> Result<Url, ConsentError> {
        self.oauth_base()?
            .join(&format!("callback/{provider}"))
            .map_err(|e| ConsentError::Invalid(format!("callback URL: {e}")))
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
        if return_url.is_none() && self.confirmation.required_for(&request.tenant_id) {
            return Err(ConsentError::Invalid(
                "return_url is required: the platform confirms the consent with the completion code sent there \
                 (consent.require_confirmation)"
                    .to_owned(),
            ));
        }
        self.providers
            .client(&request.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        let now = self.clock.now();
        if let Some(user) = self.store.user(&request.tenant_id, &request.user_id).await? {
            if user.deleted_at.is_some() {
                return Err(ConsentError::UserDeleted(request.user_id));
            }
        }
        let base = self.plan_connection(&request).await?;
        let granted = match &base {
            Some(existing) if existing.status() == ConnectionStatus::Active => existing.granted_scopes.clone(),
            _ => ScopeSet::new(),
        };
        let plan = spec.scope_plan(&requested, &granted);
        let mut wanted = requested.clone();
        wanted.extend(granted.iter().filter(|s| spec.allowed_scopes.contains(*s)).cloned());

        let consent_id = Uuid::now_v7();
        let handle = binding::new_secret();
        let authorization_url = self
            .oauth_base()?
            .join(&format!("start/{}", handle.expose_secret()))
            .map_err(|e| ConsentError::Invalid(format!("start URL: {e}")))?;
        let (_, verifier) = new_pkce();
        let key = self.vault.create_data_key().await?;
        let mut record = ConsentRecord {
            id: consent_id,
            // No state exists until the browser visits the start handle.
            state_hash: hash_state(binding::new_secret().expose_secret()),
            start_hash: Some(binding::hash_secret(handle.expose_secret())),
            binding_hash: None,
            completion_hash: None,
            pending_grant: None,
            account_subject: None,
            account_display: None,
            target_connection_id: request.connection_id,
            account_hint: request.account_hint.clone(),
            tenant_id: request.tenant_id.clone(),
            user_id: request.user_id.clone(),
            provider: request.provider.clone(),
            capabilities: request.capabilities.clone(),
            requested_scopes: wanted,
            asked_scopes: plan.ask.clone(),
            incremental: plan.incremental,
            return_url: return_url.as_ref().map(Url::to_string),
            redirect_uri: self.callback_url(&request.provider)?.to_string(),
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
        let trail = EventBuilder::new("consent.started", "success", actor, now)
            .user(&record.tenant_id, &record.user_id)
            .request_id(request_id)
            .detail("consent_id", consent_id.to_string())
            .detail("provider", record.provider.clone())
            .detail("capabilities", record.capabilities.clone())
            .detail("asked_scopes", plan.ask.iter().cloned().collect::<Vec<_>>())
            .detail("incremental", plan.incremental)
            .detail(
                "connection_id",
                request.connection_id.map(|c| c.to_string()).unwrap_or_default(),
            )
            .build()
            .into();
        self.store.insert_consent(&record, &trail).await?;
        self.metrics.consent("started");
        tracing::debug!(%consent_id, provider = %record.provider, asked = plan.ask.len(), incremental = plan.incremental,
            target = ?request.connection_id, "consent: started");
        Ok(Started {
            consent_id,
            authorization_url,
            scopes: plan.ask,
            expires_at: record.expires_at,
        })
    }

    /// The connection whose grant a consent extends: the one named by
    /// `connection_id` (which must be this user's, at this provider), else
    /// the user's connection of the provider when there is exactly one (with
    /// several accounts, a consent without `connection_id` is planned as a
    /// new account's).
    async fn plan_connection(&self, request: &StartRequest) -> Result<Option<Connection>, ConsentError> {
        let Some(id) = request.connection_id else {
            let mut all = self
                .store
                .connections_at(&request.tenant_id, &request.user_id, &request.provider)
                .await?;
            return Ok(if all.len() == 1 { all.pop() } else { None });
        };
        let connection = self
            .store
            .connection(&TenantScope::Only([request.tenant_id.clone()].into()), id)
            .await?
            .ok_or(ConsentError::NotFound(id))?;
        if connection.user_id != request.user_id || connection.provider != request.provider {
            return Err(ConsentError::ForeignConnection(id));
        }
        Ok(Some(connection))
    }

    /// The browser's visit of a start handle: a fresh state and binding
    /// cookie replace those of any earlier visit (a link scanner's visit
    /// does not spend the link), and the browser is sent to the provider.
    pub async fn begin(&self, handle: &str) -> Result<Bound, ConsentError> {
        if !binding::well_formed(handle) {
            return Err(ConsentError::StartUnusable);
        }
        let now = self.clock.now();
        let state = binding::new_secret();
        let cookie_value = binding::new_secret();
        let consent = self
            .store
            .bind_consent(
                &binding::hash_secret(handle),
                &hash_state(state.expose_secret()),
                &binding::hash_secret(cookie_value.expose_secret()),
                now,
            )
            .await?
            .ok_or(ConsentError::StartUnusable)?;
        let client = self
            .providers
            .client(&consent.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        let sealed = consent.pkce_verifier.as_ref().ok_or(ConsentError::StartUnusable)?;
        let record_id = consent.id.to_string();
        let key = self.vault.data_key(consent.dek_id).await?;
        let verifier = key.open_string(&consent_binding(&consent, &record_id), sealed.as_bytes())?;
        let challenge =
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.expose_secret().to_owned()));
        let redirect_uri = Url::parse(&consent.redirect_uri)
            .map_err(|_| ConsentError::Invalid("stored redirect_uri is invalid".to_owned()))?;
        let plan = crate::consent::catalog::ScopePlan {
            ask: consent.asked_scopes.iter().cloned().collect(),
            incremental: consent.incremental,
        };
        let mut provider_url = client.authorization_url(&plan, state.expose_secret(), challenge, &redirect_uri);
        if let Some(hint) = &consent.account_hint {
            provider_url.query_pairs_mut().append_pair("login_hint", hint);
        }
        tracing::debug!(consent_id = %consent.id, "consent: start link opened; the browser is bound");
        Ok(Bound {
            consent_id: consent.id,
            provider_url,
            cookie: BindingCookie::new(
                consent.id,
                cookie_value,
                (consent.expires_at - now).num_seconds(),
                self.oauth_base()?,
            ),
        })
    }

    /// Reads a consent request within the caller's tenants.
    pub async fn get(&self, scope: &TenantScope, id: Uuid) -> Result<(ConsentRecord, bool), ConsentError> {
        let record = self.store.consent(scope, id).await?.ok_or(ConsentError::NotFound(id))?;
        // Still waiting past its window, or ended by the sweeper for that (error `expired`).
        let expired = (matches!(record.state, ConsentState::Pending | ConsentState::Approved)
            && record.expires_at <= self.clock.now())
            || (record.state == ConsentState::Failed && record.error.as_deref() == Some(EXPIRED_ERROR));
        Ok((record, expired))
    }

    /// Completes consent from the provider's redirect at the HTTP callback
    /// (any tenant): the browser must hold the consent's binding cookie.
    pub async fn complete(
        &self,
        actor: &str,
        params: CallbackParams,
        completer: Completer<'_>,
        request_id: Option<&str>,
    ) -> Result<Completion, ConsentError> {
        self.complete_for(actor, &TenantScope::All, params, completer, request_id)
            .await
    }

    /// Completes consent for a caller limited to `scope`. A browser's
    /// approved grant waits for [`ConsentFlow::confirm`] unless the tenant
    /// does without confirmation; a platform's `CompleteConsent` is its own
    /// confirmation.
    pub async fn complete_for(
        &self,
        actor: &str,
        scope: &TenantScope,
        params: CallbackParams,
        completer: Completer<'_>,
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
        if let Err(error) = check_completer(&consent, completer) {
            if matches!(error, ConsentError::OtherUser(_)) {
                self.cancel(
                    &consent,
                    actor,
                    request_id,
                    "completed from another user's session: cancelled",
                )
                .await?;
            }
            return Err(error);
        }
        self.check_issuer(&consent, params.iss.as_deref())?;
        if !self.store.claim_consent(consent.id, now).await? {
            // Claimed by a concurrent callback, or expired in between.
            return Err(ConsentError::AlreadyUsed);
        }
        let ending = Ending::maker(&consent, actor, request_id, now);
        let exchanged = match (&params.error, &params.code) {
            (Some(error), _) => Err((
                Outcome::Denied,
                describe_refusal(error, params.error_description.as_deref()),
            )),
            (None, Some(code)) => self.exchange(&consent, code).await,
            (None, None) => Err((Outcome::Failed, "no code".to_owned())),
        };
        let confirm_later =
            matches!(completer, Completer::Browser { .. }) && self.confirmation.required_for(&consent.tenant_id);
        // A grant is stored (or put aside for confirmation) together with the request's new state and its event.
        // A grant for another account than the connection's is refused before anything is kept.
        let exchanged = match exchanged {
            Ok(grant) => match self.check_account(&consent, grant.account.as_ref()).await {
                Ok(()) => Ok(grant),
                Err(error) => {
                    // The other account's fresh grant is kept nowhere: revoke it at the provider.
                    self.discard_grant(&consent, &grant.tokens, actor, request_id).await;
                    Err((Outcome::Failed, error.to_string()))
                }
            },
            Err(refused) => Err(refused),
        };
        let result = match exchanged {
            Ok(ExchangedGrant {
                tokens,
                granted,
                account,
            }) if confirm_later => self
                .put_aside(
                    &consent,
                    &tokens,
                    &granted,
                    account.as_ref(),
                    &ending(Outcome::Approved, None, &granted, None),
                )
                .await
                .map(|code| Stored::Approved(code, granted))
                .map_err(|e| {
                    (
                        Outcome::Failed,
                        format!("keeping the grant for confirmation failed: {e}"),
                    )
                }),
            Ok(ExchangedGrant {
                tokens,
                granted,
                account,
            }) => {
                let trail = |connection_id, replaced: &Replacement| -> Trail {
                    let mut ending = ending(Outcome::Connected, Some(connection_id), &granted, None);
                    ending.replaced = Some(replaced.note());
                    ending.event().into()
                };
                self.store_tokens(&consent, tokens, granted.clone(), account, &trail)
                    .await
                    .map(|id| Stored::Connected(id, granted))
                    .map_err(|e| (Outcome::Failed, format!("storing the connection failed: {e}")))
            }
            Err(refused) => Err(refused),
        };
        if !matches!(result, Ok(Stored::Approved(..))) {
            // The verifier's key is no longer needed (an approved grant keeps it until confirmed).
            self.destroy_consent_key(&consent).await;
        }
        let (outcome, connection_id, completion_code, granted, error) = match result {
            Ok(Stored::Connected(id, granted)) => (Outcome::Connected, Some(id), None, granted, None),
            Ok(Stored::Approved(code, granted)) => (Outcome::Approved, None, Some(code), granted, None),
            Err((outcome, reason)) => (outcome, None, None, ScopeSet::new(), Some(reason)),
        };
        if matches!(outcome, Outcome::Denied | Outcome::Failed) {
            let trail = Trail::from(ending(outcome, None, &granted, error.as_deref()).event()).with_event(
                consent_failed_event(&consent, outcome, error.as_deref(), self.clock.now()),
            );
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
        tracing::debug!(consent_id = %consent.id, provider = %consent.provider, outcome = outcome.as_str(),
            connection_id = ?connection_id, "consent: callback completed");
        let redirect_url = consent
            .return_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .map(|mut url| {
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("consent_id", &consent.id.to_string());
                    if let Some(code) = &completion_code {
                        query.append_pair("completion_code", code.expose_secret());
                    }
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

    /// Refuses an authorization response whose `iss` names another issuer
    /// than the provider's, or that lacks the `iss` its issuer's metadata
    /// promises (RFC 9207). Without a known issuer, the provider's own
    /// callback path is the mix-up defence.
    fn check_issuer(&self, consent: &ConsentRecord, iss: Option<&str>) -> Result<(), ConsentError> {
        let client = self
            .providers
            .client(&consent.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        let Some(expected) = client.spec().issuer.as_ref() else {
            return Ok(());
        };
        let same = |got: &str| got.trim_end_matches('/') == expected.as_str().trim_end_matches('/');
        match iss {
            Some(got) if same(got) => Ok(()),
            Some(got) => Err(ConsentError::IssuerMismatch {
                got: got.chars().filter(|c| !c.is_control()).take(200).collect(),
                expected: expected.to_string(),
            }),
            None if client.endpoints().iss_parameter_supported => {
                Err(ConsentError::IssuerMissing(consent.provider.clone()))
            }
            None => Ok(()),
        }
    }

    /// Seals an exchanged grant under the request's key with a fresh
    /// completion code, moves the request to `approved` until the
    /// confirmation window closes, and returns the code.
    async fn put_aside(
        &self,
        consent: &ConsentRecord,
        tokens: &TokenSet,
        granted: &ScopeSet,
        account: Option<&AccountIdentity>,
        ending: &Ending<'_>,
    ) -> Result<SecretString, ConsentError> {
        let key = self.vault.data_key(consent.dek_id).await?;
        let grant = pending::seal(&key, consent, tokens, granted)?;
        let code = binding::new_secret();
        let approval = Approval {
            id: consent.id,
            completion_hash: binding::hash_secret(code.expose_secret()),
            grant,
            account_subject: account.map(|a| a.subject.clone()),
            account_display: account.and_then(|a| a.display.clone()),
            expires_at: self.clock.now() + self.confirmation.ttl,
        };
        let trail = ending.approved_event().into();
        self.store.approve_consent(&approval, &trail).await?;
        Ok(code)
    }

    /// Confirms an approved grant from the platform's session of `user_id`
    /// (`ConfirmConsent`): only now is the connection created or updated.
    /// A confirmation for another user cancels the consent.
    pub async fn confirm(
        &self,
        actor: &str,
        scope: &TenantScope,
        consent_id: Uuid,
        completion_code: &SecretString,
        user_id: &str,
        request_id: Option<&str>,
    ) -> Result<Completion, ConsentError> {
        let consent = self
            .store
            .consent(scope, consent_id)
            .await?
            .ok_or(ConsentError::NotFound(consent_id))?;
        let now = self.clock.now();
        match consent.state {
            ConsentState::Approved if consent.expires_at <= now => return Err(ConsentError::Expired),
            ConsentState::Approved => {}
            ConsentState::Completed | ConsentState::Confirming => return Err(ConsentError::AlreadyUsed),
            ConsentState::Pending | ConsentState::Exchanging | ConsentState::Failed => {
                return Err(ConsentError::NotApproved(consent_id))
            }
        }
        if !binding::matches(completion_code.expose_secret(), consent.completion_hash.as_deref()) {
            return Err(ConsentError::WrongCompletionCode(consent_id));
        }
        let ending = Ending::maker(&consent, actor, request_id, now);
        if consent.user_id != user_id {
            self.cancel(
                &consent,
                actor,
                request_id,
                "confirmed from another user's session: cancelled",
            )
            .await?;
            return Err(ConsentError::OtherUser(consent_id));
        }
        let code_hash = binding::hash_secret(completion_code.expose_secret());
        if !self.store.claim_confirmation(consent.id, &code_hash, now).await? {
            return Err(ConsentError::AlreadyUsed);
        }
        let stored = async {
            let sealed = consent
                .pending_grant
                .as_ref()
                .ok_or(ConsentError::NotApproved(consent_id))?;
            let key = self.vault.data_key(consent.dek_id).await?;
            let (tokens, granted) = pending::open(&key, &consent, sealed)?;
            let account = consent.account_subject.clone().map(|subject| AccountIdentity {
                subject,
                display: consent.account_display.clone(),
            });
            let trail = |connection_id, replaced: &Replacement| -> Trail {
                let mut ending = ending(Outcome::Connected, Some(connection_id), &granted, None);
                ending.replaced = Some(replaced.note());
                ending.event().into()
            };
            let id = self
                .store_tokens(&consent, tokens, granted.clone(), account, &trail)
                .await?;
            Ok::<_, ConsentError>((id, granted))
        }
        .await;
        let (connection_id, granted) = match stored {
            Ok(done) => done,
            Err(error @ ConsentError::OtherAccount { .. }) => {
                // Another account than the connection's: retrying cannot help.
                self.cancel(&consent, actor, request_id, &error.to_string()).await?;
                return Err(error);
            }
            Err(error) => {
                // Given back, so that the platform may retry while the window is open.
                if let Err(release) = self.store.release_confirmation(consent.id).await {
                    tracing::warn!(error = %release, %consent_id, "could not give a confirmation back; the consent expires");
                }
                return Err(error);
            }
        };
        self.destroy_consent_key(&consent).await;
        self.metrics.consent(Outcome::Connected.as_str());
        tracing::debug!(%consent_id, %connection_id, "consent: confirmed");
        Ok(Completion {
            consent_id,
            connection_id: Some(connection_id),
            outcome: Outcome::Connected,
            granted_scopes: granted,
            redirect_url: None,
            error: None,
        })
    }

    /// Cancels a consent presented from another user's session: it fails
    /// with `reason` (and its event), and its key goes with the verifier and
    /// any grant it kept, so that no one can finish it.
    async fn cancel(
        &self,
        consent: &ConsentRecord,
        actor: &str,
        request_id: Option<&str>,
        reason: &str,
    ) -> Result<(), ConsentError> {
        let now = self.clock.now();
        let ending =
            Ending::maker(consent, actor, request_id, now)(Outcome::Failed, None, &ScopeSet::new(), Some(reason));
        let trail =
            Trail::from(ending.event()).with_event(consent_failed_event(consent, Outcome::Failed, Some(reason), now));
        self.store
            .finish_consent(consent.id, ConsentState::Failed, None, Some(reason), now, &trail)
            .await?;
        self.destroy_consent_key(consent).await;
        self.metrics.consent(Outcome::Failed.as_str());
        Ok(())
    }

    /// Destroys a finished request's data key (its verifier, and any grant it kept).
    async fn destroy_consent_key(&self, consent: &ConsentRecord) {
        if let Err(error) = self.vault.destroy_data_keys(&[consent.dek_id]).await {
            tracing::warn!(%error, consent_id = %consent.id, "could not destroy a consent data key; retention will");
        }
    }

    /// Refuses, before anything is kept, a re-consent of one connection
    /// that came back with another upstream account than the connection's
    /// (unless `consent.other_account = "new_connection"`).
    async fn check_account(
        &self,
        consent: &ConsentRecord,
        account: Option<&AccountIdentity>,
    ) -> Result<(), ConsentError> {
        if self.other_account == OtherAccount::NewConnection {
            return Ok(());
        }
        match self.target_connection(consent).await? {
            Some(target) => refuse_other_account(&target, account),
            None => Ok(()),
        }
    }

    /// Queues the credentials of a grant that is stored nowhere (another
    /// account's, refused) for revocation at the provider, under the
    /// re-consented connection (best effort: a failure is logged and audited).
    async fn discard_grant(&self, consent: &ConsentRecord, tokens: &TokenSet, actor: &str, request_id: Option<&str>) {
        let Ok(Some(connection)) = self.target_connection(consent).await else {
            tracing::warn!(consent_id = %consent.id, "the refused grant's connection is gone; its credentials are not revoked");
            return;
        };
        if self
            .providers
            .spec(&consent.provider)
            .is_none_or(|spec| spec.revocation_unsupported().is_some())
        {
            return;
        }
        let (token, kind) = match &tokens.refresh_token {
            Some(refresh) => (refresh, CredentialKind::RefreshToken),
            None => (&tokens.access_token, CredentialKind::AccessToken),
        };
        let now = self.clock.now();
        let event = |outcome: &str| {
            EventBuilder::new("consent.grant_discarded", outcome, actor, now)
                .user(&consent.tenant_id, &consent.user_id)
                .connection(connection.id)
                .request_id(request_id)
                .detail("consent_id", consent.id.to_string())
                .detail("provider", consent.provider.clone())
                .detail("reason", "the grant is for another account than the connection's")
        };
        let trail = |entry: &crate::store::OutboxEntry| {
            Trail::from(
                event("queued")
                    .detail("revocation_outbox_id", entry.id.to_string())
                    .build(),
            )
        };
        let queued = self
            .handover
            .queue(&*self.store, (&connection, token, kind), Purpose::Orphan, trail, now)
            .await;
        if let Err(error) = queued {
            tracing::warn!(consent_id = %consent.id, %error, "could not queue a refused grant for revocation at the provider");
        }
    }

    /// The connection a consent re-consents (`StartConsent.connection_id`),
    /// when it still exists and is this user's at this provider.
    async fn target_connection(&self, consent: &ConsentRecord) -> Result<Option<Connection>, ConsentError> {
        let Some(id) = consent.target_connection_id else {
            return Ok(None);
        };
        let scope = TenantScope::Only([consent.tenant_id.clone()].into());
        Ok(self
            .store
            .connection(&scope, id)
            .await?
            .filter(|c| c.user_id == consent.user_id && c.provider == consent.provider))
    }

    /// The connection a grant for `account` is stored on: the re-consented
    /// connection when the account is the same (or unknown on either side);
    /// else that account's own connection; else the user's one connection
    /// whose account is not known yet (made before accounts were learned),
    /// which thereby learns it; else a new connection. A grant whose account
    /// is not known goes to the connection of unknown account. Never another
    /// account's connection.
    async fn grant_connection(
        &self,
        consent: &ConsentRecord,
        account: Option<&AccountIdentity>,
        now: DateTime<Utc>,
    ) -> Result<Connection, ConsentError> {
        if let Some(target) = self.target_connection(consent).await? {
            if account::same_account(target.account_subject.as_deref(), account) {
                return Ok(target);
            }
            if self.other_account == OtherAccount::Refuse {
                refuse_other_account(&target, account)?;
            }
        }
        let subject = account.map(|a| a.subject.as_str());
        if subject.is_some() {
            let existing = self
                .store
                .connections_at(&consent.tenant_id, &consent.user_id, &consent.provider)
                .await?;
            if let Some(found) = existing.iter().find(|c| c.account_subject.as_deref() == subject) {
                return Ok(found.clone());
            }
            let mut unknown = existing.iter().filter(|c| c.account_subject.is_none());
            if let (Some(only), None) = (unknown.next(), unknown.next()) {
                return Ok(only.clone());
            }
        }
        Ok(self
            .store
            .get_or_create_connection(&consent.tenant_id, &consent.user_id, &consent.provider, subject, now)
            .await?)
    }

    /// Exchanges the code: the tokens, the scopes they grant, and the account they are for.
    async fn exchange(
        &self,
        consent: &ConsentRecord,
        code: &SecretString,
    ) -> Result<ExchangedGrant, (Outcome, String)> {
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
        let exchanged = client
            .exchange_code(code, &verifier, &redirect_uri, self.clock.now())
            .await
            .map_err(|e| {
                self.metrics.upstream_error(&consent.provider, e.kind());
                failed(format!("code exchange failed: {e}"))
            })?;
        let account = match account::learn(&client, &exchanged, self.clock.now()).await {
            Ok(account) => account,
            Err(error) => {
                // The grant is still good; its connection's account stays as recorded (or unknown).
                tracing::warn!(%error, provider = %consent.provider, consent_id = %consent.id,
                    "could not learn which account the grant is for");
                None
            }
        };
        let tokens = exchanged.tokens;
        let granted = tokens.scopes.clone().unwrap_or_else(|| consent.asked_scopes.clone());
        let granted = if consent.incremental && tokens.scopes.is_none() {
            // Incremental grants keep what was granted before.
            consent.requested_scopes.union(&granted).cloned().collect()
        } else {
            granted
        };
        Ok(ExchangedGrant {
            tokens,
            granted,
            account,
        })
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
        account: Option<AccountIdentity>,
        trail: &(dyn Fn(Uuid, &Replacement) -> Trail + Send + Sync),
    ) -> Result<Uuid, ConsentError> {
        let client = self
            .providers
            .client(&consent.provider)
            .map_err(ConsentError::ProviderUnusable)?;
        for _ in 0..3 {
            let now = self.clock.now();
            let connection = self.grant_connection(consent, account.as_ref(), now).await?;
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
                expected_status: connection.stored_status,
                dek_id: key.id(),
                refresh_token,
                granted_scopes: granted.clone(),
                access_token: access,
                consent_id: Some(consent.id),
                replaced: replacement.entry().cloned(),
                account_subject: account.as_ref().map(|a| a.subject.clone()),
                account_display: account.as_ref().and_then(|a| a.display.clone()),
            };
            let events = grant_events(consent, &connection, &granted, account.as_ref(), now);
            let trail = events
                .into_iter()
                .fold(trail(connection.id, &replacement), Trail::with_event);
            let stored = self.store.store_consent_grant(&grant, &trail, now).await;
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

/// What a callback did with an exchanged grant.
enum Stored {
    /// Stored on this connection.
    Connected(Uuid, ScopeSet),
    /// Put aside until the platform confirms with this completion code.
    Approved(SecretString, ScopeSet),
}

/// Refuses a callback that does not come from the user who started the
/// consent: a browser without the consent's binding cookie (or on another
/// provider's callback path), or a platform acting for another user.
fn check_completer(consent: &ConsentRecord, completer: Completer<'_>) -> Result<(), ConsentError> {
    match completer {
        Completer::Browser { provider, .. } if provider != consent.provider => Err(ConsentError::ProviderMismatch {
            route: provider.chars().filter(|c| !c.is_control()).take(64).collect(),
            consent: consent.provider.clone(),
        }),
        Completer::Browser { cookies, .. } => {
            let name = BindingCookie::name_for(consent.id);
            match binding::cookie_value(cookies.iter().map(String::as_str), &name) {
                Some(value) if binding::matches(&value, consent.binding_hash.as_deref()) => Ok(()),
                _ => Err(ConsentError::NotBound),
            }
        }
        Completer::Platform { user_id } if user_id == consent.user_id => Ok(()),
        Completer::Platform { .. } => Err(ConsentError::OtherUser(consent.id)),
    }
}

/// A code exchange's grant: its tokens, the scopes they grant, and the
/// upstream account they are for (when the catalog says how to learn it).
struct ExchangedGrant {
    tokens: TokenSet,
    granted: ScopeSet,
    account: Option<AccountIdentity>,
}

/// [`ConsentError::OtherAccount`] when `connection` belongs to another
/// upstream account than `account`.
fn refuse_other_account(connection: &Connection, account: Option<&AccountIdentity>) -> Result<(), ConsentError> {
    if account::same_account(connection.account_subject.as_deref(), account) {
        return Ok(());
    }
    Err(ConsentError::OtherAccount {
        connection_id: connection.id,
        recorded: account::shown(
            connection.account_subject.as_deref().unwrap_or_default(),
            connection.account_display.as_deref(),
        ),
        got: account
            .map(|a| account::shown(&a.subject, a.display.as_deref()))
            .unwrap_or_default(),
    })
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

impl<'a> Ending<'a> {
    /// What makes the ending of `consent` (by `actor`, at `at`) from its
    /// outcome, connection, granted scopes and error.
    fn maker(
        consent: &'a ConsentRecord,
        actor: &'a str,
        request_id: Option<&'a str>,
        at: DateTime<Utc>,
    ) -> impl Fn(Outcome, Option<Uuid>, &ScopeSet, Option<&str>) -> Ending<'a> {
        move |outcome, connection_id, granted, error| Ending {
            consent,
            actor,
            request_id,
            at,
            outcome,
            connection_id,
            granted: granted.clone(),
            error: error.map(str::to_owned),
            replaced: None,
        }
    }

    /// `consent.approved`: the grant waits for the platform's confirmation.
    fn approved_event(&self) -> AuditEvent {
        let consent = self.consent;
        EventBuilder::new("consent.approved", "success", self.actor, self.at)
            .user(&consent.tenant_id, &consent.user_id)
            .request_id(self.request_id)
            .detail("consent_id", consent.id.to_string())
            .detail("provider", consent.provider.clone())
            .detail("granted_scopes", self.granted.iter().cloned().collect::<Vec<_>>())
            .build()
    }

    /// `consent.completed`, `consent.denied` or `consent.failed`.
    fn event(self) -> AuditEvent {
        let consent = self.consent;
        let (action, result) = match self.outcome {
            Outcome::Connected => ("consent.completed", "success"),
            Outcome::Approved => ("consent.approved", "success"),
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

/// The `error` of a consent request the sweeper ended because it expired while waiting.
pub const EXPIRED_ERROR: &str = "expired";

/// The events of a grant stored on `before` (the connection as read, at
/// the version the grant is fenced on): `connection.created` for a
/// connection that held no grant (new, or revoked), `connection.recovered`
/// for one that needed re-consent, `connection.updated` when the scopes or
/// the account changed; then `consent.completed`.
fn grant_events(
    consent: &ConsentRecord,
    before: &Connection,
    granted: &ScopeSet,
    account: Option<&AccountIdentity>,
    now: DateTime<Utc>,
) -> Vec<Event> {
    let subject = account.map(|a| a.subject.as_str());
    let mut after = before.clone();
    after.stored_status = ConnectionStatus::Active;
    after.granted_scopes = granted.clone();
    if let Some(account) = account {
        after.account_subject = Some(account.subject.clone());
        after.account_display = account.display.clone().or(after.account_display);
    }
    let never_granted = before.token_version == 0 || before.stored_status == ConnectionStatus::Revoked;
    let changed = crate::events::grant_changes(before, granted, subject);
    let kind = if never_granted {
        Some(EventType::ConnectionCreated)
    } else if before.stored_status == ConnectionStatus::NeedsReauth {
        Some(EventType::ConnectionRecovered)
    } else if !changed.is_empty() {
        Some(EventType::ConnectionUpdated)
    } else {
        None
    };
    let mut events: Vec<Event> = kind
        .map(|kind| {
            Event::of_connection(kind, &after, now).scopes(granted).with(|d| {
                d.consent_id = Some(consent.id);
                if kind == EventType::ConnectionUpdated {
                    d.changed = changed;
                }
            })
        })
        .into_iter()
        .collect();
    events.push(
        Event::of_connection(EventType::ConsentCompleted, &after, now)
            .scopes(granted)
            .with(|d| d.consent_id = Some(consent.id)),
    );
    events
}

/// `consent.denied` or `consent.failed` for a consent that ended without a grant.
fn consent_failed_event(consent: &ConsentRecord, outcome: Outcome, reason: Option<&str>, now: DateTime<Utc>) -> Event {
    let kind = match outcome {
        Outcome::Denied => EventType::ConsentDenied,
        _ => EventType::ConsentFailed,
    };
    let event = Event::new(kind, &consent.tenant_id, &consent.user_id, now).with(|d| {
        d.provider = Some(consent.provider.clone());
        d.consent_id = Some(consent.id);
    });
    match reason {
        Some(reason) => event.reason(reason),
        None => event,
    }
}

fn describe_refusal(error: &str, description: Option<&str>) -> String {
    let clean = |text: &str| -> String { text.chars().filter(|c| !c.is_control()).take(200).collect() };
    match description {
        Some(d) if !d.is_empty() => format!("{}: {}", clean(error), clean(d)),
        _ => clean(error),
    }
}
