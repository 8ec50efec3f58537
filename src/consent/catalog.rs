//! The provider catalog: each OAuth provider's endpoints, protocol quirks,
//! scope allow-list and the capabilities a user can grant, each mapped to the
//! fewest scopes that serve it.
//!
//! The built-in catalog is `catalog/providers.toml`, compiled into the binary.
//! An operator file adds providers or replaces built-in ones whole, by name
//! ([`Catalog::merge`]). Every catalog is validated when it is loaded; the
//! format is described in `docs/providers.md`. Client ids and secrets are not
//! catalog data and are rejected as unknown fields.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::{Host, Url};

mod account;
pub mod check;

pub use account::{AccountError, AccountIdentity, AccountMethod, AccountSource, SUBJECT_SEPARATOR};

/// The built-in catalog (`catalog/providers.toml`) as compiled into the binary.
pub const BUILTIN_CATALOG: &str = include_str!("../../catalog/providers.toml");

const BUILTIN_ORIGIN: &str = "built-in catalog/providers.toml";
const TEXT_ORIGIN: &str = "(text)";

/// Authorization-request parameters tokenvault sets itself; a catalog entry
/// may not set or override them.
const RESERVED_AUTHORIZATION_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "nonce",
];

/// Request headers the provider client sets itself; `request_headers` may not
/// set them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

const MAX_NAME_LEN: usize = 64;

/// Errors of loading a catalog or of resolving a request against it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The text is not a well-formed catalog (TOML syntax, wrong type,
    /// unknown field such as `client_secret`). The message names the line
    /// but never quotes it: a misplaced secret is not repeated.
    #[error("cannot parse the provider catalog {origin}{}: {}", .line.map(|l| format!(" (line {l})")).unwrap_or_default(), .source.message())]
    Parse {
        /// Where the text came from: a file path, or the built-in catalog.
        origin: String,
        /// The line the problem is on, when known.
        line: Option<usize>,
        /// The TOML error.
        source: Box<toml::de::Error>,
    },
    /// A provider entry breaks a rule of the catalog format.
    #[error("provider `{provider}`: {reason}")]
    Invalid {
        /// The provider's name.
        provider: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// No provider of that name in the catalog.
    #[error("unknown provider `{provider}`")]
    UnknownProvider {
        /// The name asked for.
        provider: String,
    },
    /// The provider has no capability of that name.
    #[error("provider `{provider}` has no capability `{capability}`")]
    UnknownCapability {
        /// The provider's name.
        provider: String,
        /// The capability asked for.
        capability: String,
    },
    /// An explicitly requested scope is not on the provider's allow-list.
    #[error("scope `{scope}` is not on the allow-list of provider `{provider}`")]
    ScopeNotAllowed {
        /// The provider's name.
        provider: String,
        /// The scope asked for.
        scope: String,
    },
    /// Neither capabilities nor scopes were requested.
    #[error("nothing requested from provider `{provider}`: name at least one capability or scope")]
    NothingRequested {
        /// The provider's name.
        provider: String,
    },
    /// A catalog file could not be read.
    #[error("cannot read the provider catalog {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How tokenvault authenticates itself (the OAuth client) to the token and
/// revocation endpoints (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    ClientSecretPost,
}

/// How the bodies of token, refresh and revocation requests are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRequestBody {
    /// `application/x-www-form-urlencoded`, as RFC 6749 specifies.
    #[default]
    Form,
    /// `application/json` (Notion).
    Json,
}

/// The placeholder a `github_grant` revocation URL carries where the client
/// id goes (`https://api.github.com/applications/{client_id}/grant`); the
/// provider client fills it in, since client ids are not catalog data.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// How [`CLIENT_ID_PLACEHOLDER`] reads once parsed into a URL path.
pub const CLIENT_ID_PLACEHOLDER_ENCODED: &str = "%7Bclient_id%7D";

/// How a grant is revoked at the provider's `revocation_url`, or that it
/// cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationMethod {
    /// RFC 7009: POST `token` (the refresh token, with
    /// `token_type_hint=refresh_token`; the access token when there is no
    /// refresh token) with client authentication.
    #[default]
    Rfc7009,
    /// As RFC 7009, but `token` is the access token (Notion).
    Rfc7009AccessToken,
    /// POST with the access token as `Authorization: Bearer`, no body and no
    /// client authentication; revokes the token that authenticates the call
    /// and, at the provider, its refresh token (Dropbox `/2/auth/token/revoke`).
    /// A stored refresh token is exchanged for an access token first.
    BearerAccessToken,
    /// POST with the stored credential itself (the refresh token when there
    /// is one, else the access token) as `Authorization: Bearer`, no body and
    /// no client authentication; the provider revokes exactly the token given
    /// (Slack `auth.revoke` with token rotation). Nothing is refreshed first.
    /// An answer `{"ok": false, …}` is a refusal whatever its HTTP status.
    BearerToken,
    /// GitHub's "Delete an app authorization": `DELETE` the URL (with
    /// [`CLIENT_ID_PLACEHOLDER`] filled in), HTTP Basic with the client id and
    /// secret, JSON body `{"access_token": …}` (a refresh token is exchanged
    /// for an access token first). Ends every token of the app for that user.
    GithubGrant,
    /// The provider offers no way for tokenvault to revoke: the entry says why
    /// and where the user removes the app themselves
    /// ([`ProviderSpec::revocation_unsupported`]).
    Unsupported,
}

/// What revoking one credential ends at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationScope {
    /// That credential (and the tokens derived from it, e.g. a refresh
    /// token's access tokens), not other grants of the same user.
    #[default]
    Token,
    /// Every token of the user's authorization of this client, whichever one
    /// was presented (Google, GitHub's grant deletion).
    Grant,
}

/// Why a provider's credentials cannot be revoked by tokenvault, and where the
/// user removes the app themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedRevocation {
    /// Why, from the provider's documentation.
    pub reason: String,
    /// The provider's page where the user revokes the app's access.
    pub user_page: Url,
}

/// What a provider does with the refresh token it was sent (RFC 9700 §4.14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshRotation {
    /// The refresh token stays the same and stays usable (Google, Dropbox).
    None,
    /// A refresh may return a new refresh token, and the old one stays usable
    /// for a while (a reuse grace: Microsoft, Slack, Atlassian's 10 minutes), so
    /// presenting it again after a lost answer is safe.
    Rotating,
    /// Each refresh token works once: presenting it again may be refused and
    /// may revoke the whole grant (reuse detection: GitHub Apps). A refresh
    /// whose answer was lost is never retried blindly. The default for an
    /// entry that does not say.
    #[default]
    Strict,
}

/// The authorization-request parameter that makes a provider keep the scopes
/// granted before, so only new scopes need to be asked for (e.g. Google's
/// `include_granted_scopes=true`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalAuthorization {
    /// Parameter name.
    pub param: String,
    /// Parameter value.
    pub value: String,
}

/// What to ask the provider for in a consent, given what the user already
/// granted (see [`ProviderSpec::scope_plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePlan {
    /// The scopes to put in the authorization request.
    pub ask: BTreeSet<String>,
    /// Whether the provider's incremental-authorization parameter is sent,
    /// i.e. the provider adds the scopes granted before to the new grant.
    pub incremental: bool,
}

/// One provider of the catalog, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSpec {
    /// Catalog name, `[a-z0-9_-]{1,64}` (e.g. `google`).
    pub name: String,
    /// Name shown to people.
    pub display_name: String,
    /// The provider's OAuth documentation.
    pub docs_url: Option<Url>,
    /// Issuer for OpenID Connect discovery / RFC 8414 metadata; endpoints not
    /// given explicitly come from there at run time.
    pub issuer: Option<Url>,
    /// Authorization endpoint (always set when `issuer` is not).
    pub authorization_url: Option<Url>,
    /// Token endpoint (always set when `issuer` is not).
    pub token_url: Option<Url>,
    /// Endpoint of refresh requests when it is not the token endpoint
    /// (Figma's `/v1/oauth/refresh`); `None`: refreshes go to the token
    /// endpoint.
    pub refresh_url: Option<Url>,
    /// Revocation endpoint; `None` when revocation is unsupported or the
    /// endpoint comes from discovery.
    pub revocation_url: Option<Url>,
    /// How `revocation_url` is called, or [`RevocationMethod::Unsupported`].
    pub revocation_method: RevocationMethod,
    /// Why revocation is unsupported and where the user revokes instead; set
    /// exactly when `revocation_method` is [`RevocationMethod::Unsupported`].
    pub revocation_unsupported: Option<UnsupportedRevocation>,
    /// The provider's page where a user sees and removes the apps they
    /// authorized (always set when revocation is unsupported).
    pub revocation_user_page: Option<Url>,
    /// What one revocation ends at the provider.
    pub revocation_scope: RevocationScope,
    /// A re-consent's new tokens belong to the same grant as the ones they
    /// replace (so a grant-wide revocation of the old ones ends the new ones).
    pub reconsent_same_grant: bool,
    /// The provider's access tokens expire by time. `false` for providers
    /// whose access tokens live until revoked (GitHub OAuth apps): a token
    /// answer without `expires_in` is then taken as non-expiring.
    pub access_token_expires: bool,
    /// Client authentication at the token and revocation endpoints.
    pub client_auth: ClientAuth,
    /// Encoding of token, refresh and revocation request bodies.
    pub token_request_body: TokenRequestBody,
    /// Extra headers for token, refresh and revocation requests
    /// (e.g. Notion's `Notion-Version`).
    pub request_headers: BTreeMap<String, String>,
    /// Separator between scopes in requests (`" "`, or `","` for Slack).
    pub scope_separator: String,
    /// Authorization-request parameter that carries the scopes (`scope`, or
    /// `user_scope` for Slack user tokens).
    pub scope_param: String,
    /// `false` for providers without OAuth scopes (Notion): no scope is ever
    /// sent and capabilities are labels without scopes.
    pub uses_scopes: bool,
    /// JSON object of the code-exchange response that holds the token fields
    /// instead of the top level (`authed_user` for Slack user tokens).
    pub token_response_object: Option<String>,
    /// Member of the token answer that names the granted scopes when the
    /// answer has no `scope` (HubSpot's `scopes` array).
    pub granted_scopes_member: Option<String>,
    /// Fixed extra authorization-request parameters (e.g. Google's
    /// `access_type=offline`).
    pub authorization_params: BTreeMap<String, String>,
    /// Incremental-authorization parameter, when the provider has one.
    pub incremental_authorization: Option<IncrementalAuthorization>,
    /// The refresh request accepts a narrower `scope` (RFC 6749 §6).
    pub refresh_scope_narrowing: bool,
    /// The provider issues refresh tokens.
    pub issues_refresh_tokens: bool,
    /// What a refresh does to the refresh token.
    pub refresh_rotation: RefreshRotation,
    /// Refresh tokens unused this many days expire at the provider (Google:
    /// 180, Microsoft and Atlassian: 90); `None` when they do not.
    pub refresh_idle_expiry_days: Option<u32>,
    /// The `token_type` values (lower case) this provider sends for a bearer
    /// token; any other answer is refused. `["bearer"]` unless the provider
    /// names its bearer tokens otherwise (Slack: `user`).
    pub token_types: BTreeSet<String>,
    /// Scopes asked for in every consent (e.g. `offline_access`).
    pub required_scopes: BTreeSet<String>,
    /// The only scopes that may be requested explicitly.
    pub allowed_scopes: BTreeSet<String>,
    /// Capability name → the scopes that serve it.
    pub capabilities: BTreeMap<String, BTreeSet<String>>,
    /// The provider's page where an operator registers the OAuth app.
    pub registration_url: Option<Url>,
    /// The base URL the entry's `{base_url}` placeholders were filled from
    /// (self-managed GitLab); `None` for a fixed provider.
    pub base_url: Option<Url>,
    /// Whether the entry states `refresh_rotation` itself rather than taking
    /// the default (the catalog checker requires it).
    pub refresh_rotation_explicit: bool,
    /// Hosts the provider's API is served from (for the credential-injecting
    /// proxy, a later issue): host names, `host:port`, or `*.domain` for every
    /// subdomain (Salesforce instances).
    pub api_hosts: Vec<String>,
    /// Where the upstream account of a grant comes from.
    pub account: Option<AccountSource>,
}

impl ProviderSpec {
    /// The union of the capabilities' scopes, the explicit scopes and
    /// `required_scopes`.
    ///
    /// Errors: an unknown capability ([`CatalogError::UnknownCapability`]), an
    /// explicit scope not on the allow-list ([`CatalogError::ScopeNotAllowed`]),
    /// neither capabilities nor scopes given ([`CatalogError::NothingRequested`]).
    pub fn resolve_scopes(&self, capabilities: &[String], scopes: &[String]) -> Result<BTreeSet<String>, CatalogError> {
        if capabilities.is_empty() && scopes.is_empty() {
            return Err(CatalogError::NothingRequested {
                provider: self.name.clone(),
            });
        }
        let mut resolved = BTreeSet::new();
        for capability in capabilities {
            let serving = self
                .capabilities
                .get(capability)
                .ok_or_else(|| CatalogError::UnknownCapability {
                    provider: self.name.clone(),
                    capability: capability.clone(),
                })?;
            resolved.extend(serving.iter().cloned());
        }
        for scope in scopes {
            if !self.allowed_scopes.contains(scope) {
                return Err(CatalogError::ScopeNotAllowed {
                    provider: self.name.clone(),
                    scope: scope.clone(),
                });
            }
            resolved.insert(scope.clone());
        }
        resolved.extend(self.required_scopes.iter().cloned());
        Ok(resolved)
    }

    /// What to ask the provider when the user already holds `granted`.
    ///
    /// A provider with incremental authorization is asked only for
    /// `requested − granted` plus `required_scopes` (`incremental` = true); when
    /// everything requested is already granted, for `requested` again (a
    /// re-consent). Any other provider is asked for `granted ∪ requested`
    /// (plus `required_scopes`), since the new refresh token replaces the old
    /// one; granted scopes that are no longer on the allow-list are left out.
    pub fn scope_plan(&self, requested: &BTreeSet<String>, granted: &BTreeSet<String>) -> ScopePlan {
        let required = self.required_scopes.iter().cloned();
        if self.incremental_authorization.is_some() {
            let new: BTreeSet<String> = requested.difference(granted).cloned().collect();
            let mut ask = if new.is_empty() { requested.clone() } else { new };
            ask.extend(required);
            ScopePlan { ask, incremental: true }
        } else {
            let mut ask: BTreeSet<String> = granted
                .iter()
                .filter(|scope| self.allowed_scopes.contains(*scope))
                .cloned()
                .collect();
            ask.extend(requested.iter().cloned());
            ask.extend(required);
            ScopePlan {
                ask,
                incremental: false,
            }
        }
    }

    /// The scopes joined with `scope_separator`, as a request carries them.
    pub fn join_scopes(&self, scopes: &BTreeSet<String>) -> String {
        scopes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(&self.scope_separator)
    }

    /// How this provider's token answers depart from RFC 6749's shape.
    pub fn answer_shape(&self) -> crate::provider::AnswerShape<'_> {
        crate::provider::AnswerShape {
            response_object: self.token_response_object.as_deref(),
            scopes_member: self.granted_scopes_member.as_deref(),
            separator: &self.scope_separator,
        }
    }

    /// The scopes of a provider's answer. Tolerant: splits on the separator and
    /// also on whitespace and commas, and drops empty pieces.
    pub fn split_scopes(&self, text: &str) -> BTreeSet<String> {
        text.split(self.scope_separator.as_str())
            .flat_map(|piece| piece.split(|c: char| c.is_whitespace() || c == ','))
            .filter(|scope| !scope.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The authorization-request parameters the catalog contributes for
    /// `plan`: the scopes under `scope_param` (when the provider uses scopes
    /// and there are any), the fixed `authorization_params`, and the
    /// incremental-authorization parameter when the plan is incremental.
    /// `response_type`, `client_id`, `redirect_uri`, `state` and the PKCE
    /// challenge are the caller's.
    pub fn authorization_params_for(&self, plan: &ScopePlan) -> BTreeMap<String, String> {
        let mut params = self.authorization_params.clone();
        if self.uses_scopes && !plan.ask.is_empty() {
            params.insert(self.scope_param.clone(), self.join_scopes(&plan.ask));
        }
        if plan.incremental {
            if let Some(incremental) = &self.incremental_authorization {
                params.insert(incremental.param.clone(), incremental.value.clone());
            }
        }
        params
    }

    /// Whether endpoints not given explicitly come from discovery (`issuer`).
    pub fn uses_discovery(&self) -> bool {
        self.issuer.is_some()
    }

    /// Why tokenvault cannot revoke at this provider and where the user does
    /// it instead; `None` when the provider has a revocation method. Known
    /// without a network call, so an outcome can be reported at once.
    pub fn revocation_unsupported(&self) -> Option<&UnsupportedRevocation> {
        self.revocation_unsupported.as_ref()
    }

    /// Whether revocation presents an access token, so that a refresh token
    /// is exchanged for one first (bearer access token, RFC 7009 with the
    /// access token, GitHub's grant deletion). `false` for `bearer_token`,
    /// which presents the refresh token itself.
    pub fn revokes_with_access_token(&self) -> bool {
        matches!(
            self.revocation_method,
            RevocationMethod::BearerAccessToken | RevocationMethod::Rfc7009AccessToken | RevocationMethod::GithubGrant
        )
    }

    /// Whether a re-consent should revoke the credential it replaces.
    ///
    /// `false` when the provider's revocation is grant-wide and the new token
    /// shares the grant (revoking the old refresh token would end the new one:
    /// Google, GitHub), and when the provider cannot revoke at all; `true`
    /// otherwise. The reason per preset is in `docs/providers.md`.
    pub fn revoke_replaced_on_reconsent(&self) -> bool {
        if self.revocation_method == RevocationMethod::Unsupported {
            return false;
        }
        !(self.revocation_scope == RevocationScope::Grant && self.reconsent_same_grant)
    }
}

/// The set of providers tokenvault can connect to, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    providers: BTreeMap<String, ProviderSpec>,
}

impl Catalog {
    /// The built-in catalog ([`BUILTIN_CATALOG`]).
    pub fn builtin() -> Result<Catalog, CatalogError> {
        parse(BUILTIN_CATALOG, BUILTIN_ORIGIN)
    }

    /// A catalog from TOML text, validated.
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        parse(text, TEXT_ORIGIN)
    }

    /// A catalog from a TOML file, validated.
    pub fn from_file(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, &path.display().to_string())
    }

    /// Adds the providers of `overrides`; one with the name of a provider
    /// already here replaces it whole (no field-by-field merge).
    pub fn merge(&mut self, overrides: Catalog) {
        self.providers.extend(overrides.providers);
    }

    /// The provider of that name.
    pub fn provider(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.get(name)
    }

    /// The provider of that name, or [`CatalogError::UnknownProvider`].
    pub fn require(&self, name: &str) -> Result<&ProviderSpec, CatalogError> {
        self.provider(name).ok_or_else(|| CatalogError::UnknownProvider {
            provider: name.to_owned(),
        })
    }

    /// The providers' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.providers.keys().map(String::as_str)
    }

    /// The providers, in name order.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderSpec> + '_ {
        self.providers.values()
    }

    /// Number of providers.
    pub fn len(&self) -> usize {
        self.providers.len()
    }

    /// Whether the catalog has no provider.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

// ---------------------------------------------------------------------------
// The file format and its validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    display_name: String,
    docs_url: Option<String>,
    issuer: Option<String>,
    authorization_url: Option<String>,
    token_url: Option<String>,
    refresh_url: Option<String>,
    revocation_url: Option<String>,
    revocation_method: Option<RevocationMethod>,
    revocation_unsupported_reason: Option<String>,
    revocation_user_page: Option<String>,
    revocation_scope: Option<RevocationScope>,
    reconsent_same_grant: Option<bool>,
    access_token_expires: Option<bool>,
    #[serde(default)]
    client_auth: ClientAuth,
    #[serde(default)]
    token_request_body: TokenRequestBody,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default = "default_scope_separator")]
    scope_separator: String,
    #[serde(default = "default_scope_param")]
    scope_param: String,
    #[serde(default = "default_true")]
    uses_scopes: bool,
    token_response_object: Option<String>,
    granted_scopes_member: Option<String>,
    #[serde(default)]
    authorization_params: BTreeMap<String, String>,
    incremental_authorization: Option<IncrementalAuthorization>,
    #[serde(default)]
    refresh_scope_narrowing: bool,
    #[serde(default = "default_true")]
    issues_refresh_tokens: bool,
    #[serde(default)]
    refresh_rotation: Option<RefreshRotation>,
    refresh_idle_expiry_days: Option<u32>,
    #[serde(default = "default_token_types")]
    token_types: BTreeSet<String>,
    #[serde(default)]
    required_scopes: BTreeSet<String>,
    #[serde(default)]
    allowed_scopes: BTreeSet<String>,
    #[serde(default)]
    capabilities: BTreeMap<String, BTreeSet<String>>,
    registration_url: Option<String>,
    base_url: Option<String>,
    api_hosts: Option<Vec<String>>,
    account: Option<account::RawAccount>,
}

fn default_scope_separator() -> String {
    " ".to_owned()
}

fn default_scope_param() -> String {
    "scope".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_token_types() -> BTreeSet<String> {
    BTreeSet::from(["bearer".to_owned()])
}

/// The key of an operator entry that starts from a built-in preset.
pub const PRESET_KEY: &str = "preset";

/// The built-in catalog's entry `name` as TOML, for `preset = "name"`.
fn builtin_entry(name: &str) -> Option<toml::Table> {
    let builtin: toml::Table = toml::from_str(BUILTIN_CATALOG).ok()?;
    match builtin.get("providers")?.get(name)? {
        toml::Value::Table(entry) => Some(entry.clone()),
        _ => None,
    }
}

/// Resolves `preset = "<built-in name>"` in one entry: the built-in entry,
/// with every key the operator entry sets replacing the built-in one whole
/// (a table such as `capabilities` included). `Ok(None)` when the entry has
/// no preset.
fn resolve_preset(entry: &toml::Table) -> Result<Option<toml::Table>, String> {
    let Some(preset) = entry.get(PRESET_KEY) else {
        return Ok(None);
    };
    let Some(preset) = preset.as_str() else {
        return Err(format!("`{PRESET_KEY}` must be the name of a built-in provider"));
    };
    let mut resolved =
        builtin_entry(preset).ok_or_else(|| format!("`{PRESET_KEY}`: there is no built-in provider `{preset}`"))?;
    for (key, value) in entry {
        if key != PRESET_KEY {
            resolved.insert(key.clone(), value.clone());
        }
    }
    Ok(Some(resolved))
}

/// One entry as written (its preset resolved), for the checker; the error in words.
fn raw_catalog_entry(fields: &toml::Table) -> Result<RawProvider, String> {
    let resolved = resolve_preset(fields)?.unwrap_or_else(|| fields.clone());
    toml::Value::Table(resolved)
        .try_into()
        .map_err(|error: toml::de::Error| error.message().to_owned())
}

fn parse_error(origin: &str, text: &str, source: toml::de::Error) -> CatalogError {
    let line = source
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| before.lines().count().max(1) + usize::from(before.ends_with('\n')));
    CatalogError::Parse {
        origin: origin.to_owned(),
        line,
        source: Box::new(source),
    }
}

/// The catalog as written, with presets resolved. Without presets the text
/// is deserialized directly, so that errors keep their line and column.
fn raw_catalog(text: &str, origin: &str) -> Result<RawCatalog, CatalogError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| parse_error(origin, text, e))?;
    let mut resolved_any = false;
    if let Some(toml::Value::Table(providers)) = table.get_mut("providers") {
        for (name, entry) in providers.iter_mut() {
            let toml::Value::Table(fields) = entry else { continue };
            match resolve_preset(fields) {
                Ok(None) => {}
                Ok(Some(resolved)) => {
                    *fields = resolved;
                    resolved_any = true;
                }
                Err(reason) => {
                    return Err(CatalogError::Invalid {
                        provider: name.clone(),
                        reason,
                    })
                }
            }
        }
    }
    if resolved_any {
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| parse_error(origin, text, e))
    } else {
        toml::from_str(text).map_err(|e| parse_error(origin, text, e))
    }
}

fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
    let raw = raw_catalog(text, origin)?;
    let mut providers = BTreeMap::new();
    for (name, provider) in raw.providers {
        let spec = validate(name.clone(), provider).map_err(|mut errors| errors.remove(0))?;
        providers.insert(name, spec);
    }
    Ok(Catalog { providers })
}

/// Which rules a URL field follows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlRole {
    /// Documentation link: a fragment is fine.
    Docs,
    /// OAuth endpoint: no fragment (RFC 6749 §3.1, §3.2).
    Endpoint,
    /// Issuer: no query and no fragment (RFC 8414 §2).
    Issuer,
}

struct Check<'a> {
    provider: &'a str,
}

impl Check<'_> {
    fn invalid(&self, reason: String) -> CatalogError {
        CatalogError::Invalid {
            provider: self.provider.to_owned(),
            reason,
        }
    }

    fn url(&self, field: &str, value: Option<&str>, role: UrlRole) -> Result<Option<Url>, CatalogError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let url = Url::parse(value)
            .map_err(|error| self.invalid(format!("`{field}` is not a valid URL ({error}): {value}")))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            _ => {
                return Err(self.invalid(format!(
                    "`{field}` must use https (plain http is allowed only for localhost and 127.0.0.1): {value}"
                )))
            }
        }
        if url.host().is_none() {
            return Err(self.invalid(format!("`{field}` has no host: {value}")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(format!("`{field}` must not carry credentials")));
        }
        if role != UrlRole::Docs && url.fragment().is_some() {
            return Err(self.invalid(format!("`{field}` must not have a fragment: {value}")));
        }
        if role == UrlRole::Issuer && url.query().is_some() {
            return Err(self.invalid(format!("`{field}` must not have a query: {value}")));
        }
        Ok(Some(url))
    }

    fn scope(&self, field: &str, scope: &str, separator: &str) -> Result<(), CatalogError> {
        // RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E; commas are also
        // refused since split_scopes reads them as separators.
        let well_formed = !scope.is_empty()
            && scope
                .chars()
                .all(|c| matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E') && c != ',');
        if !well_formed {
            return Err(self.invalid(format!(
                "`{field}`: `{scope}` is not a valid scope (printable ASCII without spaces, commas, quotes or backslashes)"
            )));
        }
        if scope.contains(separator) {
            return Err(self.invalid(format!(
                "`{field}`: scope `{scope}` contains the scope separator `{separator}`"
            )));
        }
        Ok(())
    }

    fn param_name(&self, field: &str, name: &str) -> Result<(), CatalogError> {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(self.invalid(format!("`{field}`: `{name}` is not a valid parameter name")));
        }
        Ok(())
    }
}

/// A provider's revocation decision, validated.
struct RevocationDecision {
    method: RevocationMethod,
    user_page: Option<Url>,
    unsupported: Option<UnsupportedRevocation>,
}

const NO_DECISION: &str = "no revocation decision: set `revocation_url` (with `revocation_method` unless it is \
     RFC 7009), or `revocation_method = \"unsupported\"` with `revocation_unsupported_reason` and \
     `revocation_user_page` (where the user removes the app)";

impl Check<'_> {
    /// Every entry decides how its credentials are revoked: an endpoint and a
    /// method (the endpoint may come from the issuer's metadata), or
    /// `unsupported` with the reason and the user's page.
    fn revocation(
        &self,
        raw: &RawProvider,
        user_page: Option<&str>,
        url: Option<&Url>,
        has_issuer: bool,
    ) -> Result<RevocationDecision, CatalogError> {
        let user_page = self.url("revocation_user_page", user_page, UrlRole::Docs)?;
        let method = raw.revocation_method.unwrap_or_default();
        let placeholder = url.is_some_and(|url| url.path().contains(CLIENT_ID_PLACEHOLDER_ENCODED));
        if method != RevocationMethod::Unsupported && raw.revocation_unsupported_reason.is_some() {
            return Err(self.invalid(
                "`revocation_unsupported_reason` is set but `revocation_method` is not \"unsupported\"".to_owned(),
            ));
        }
        match method {
            RevocationMethod::Unsupported => {
                if url.is_some() {
                    return Err(
                        self.invalid("`revocation_method` is \"unsupported\" but `revocation_url` is set".to_owned())
                    );
                }
                if raw.revocation_scope.is_some() || raw.reconsent_same_grant.is_some() {
                    return Err(self.invalid(
                        "`revocation_method` is \"unsupported\": `revocation_scope` and `reconsent_same_grant` \
                         make no sense"
                            .to_owned(),
                    ));
                }
                let reason = raw
                    .revocation_unsupported_reason
                    .as_deref()
                    .map(str::trim)
                    .filter(|reason| !reason.is_empty())
                    .ok_or_else(|| {
                        self.invalid(
                            "`revocation_method` is \"unsupported\": `revocation_unsupported_reason` is required \
                             (why the provider cannot revoke)"
                                .to_owned(),
                        )
                    })?;
                let page = user_page.clone().ok_or_else(|| {
                    self.invalid(
                        "`revocation_method` is \"unsupported\": `revocation_user_page` is required \
                         (the provider's page where the user removes the app)"
                            .to_owned(),
                    )
                })?;
                Ok(RevocationDecision {
                    method,
                    user_page,
                    unsupported: Some(UnsupportedRevocation {
                        reason: reason.to_owned(),
                        user_page: page,
                    }),
                })
            }
            RevocationMethod::GithubGrant => {
                let Some(url) = url else {
                    return Err(self.invalid(
                        "`revocation_method` \"github_grant\" needs `revocation_url` \
                         (e.g. https://api.github.com/applications/{client_id}/grant); it is not discovered"
                            .to_owned(),
                    ));
                };
                if !placeholder {
                    return Err(self.invalid(format!(
                        "`revocation_url` must carry `{CLIENT_ID_PLACEHOLDER}` in its path for \"github_grant\": {url}"
                    )));
                }
                Ok(RevocationDecision {
                    method,
                    user_page,
                    unsupported: None,
                })
            }
            RevocationMethod::Rfc7009
            | RevocationMethod::Rfc7009AccessToken
            | RevocationMethod::BearerAccessToken
            | RevocationMethod::BearerToken => {
                if placeholder {
                    return Err(self.invalid(format!(
                        "`revocation_url` carries `{CLIENT_ID_PLACEHOLDER}`, which only \"github_grant\" fills in"
                    )));
                }
                if url.is_none() && !has_issuer {
                    return Err(self.invalid(if raw.revocation_method.is_some() {
                        "`revocation_method` is set but there is no `revocation_url` (nor an `issuer` to discover one)"
                            .to_owned()
                    } else {
                        NO_DECISION.to_owned()
                    }));
                }
                Ok(RevocationDecision {
                    method,
                    user_page,
                    unsupported: None,
                })
            }
        }
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn is_valid_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

fn is_header_name(name: &str) -> bool {
    // RFC 9110 token.
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Collects every problem of one provider entry instead of stopping at the
/// first, so that `tokenvault catalog check` can report them all at once.
struct Problems<'a> {
    check: Check<'a>,
    reasons: Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(provider: &'a str) -> Self {
        Problems {
            check: Check { provider },
            reasons: Vec::new(),
        }
    }

    fn push(&mut self, reason: impl Into<String>) {
        self.reasons.push(reason.into());
    }

    /// The value of `result`, or `None` with its problem recorded.
    fn keep<T>(&mut self, result: Result<T, CatalogError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(CatalogError::Invalid { reason, .. }) => {
                self.reasons.push(reason);
                None
            }
            Err(other) => {
                self.reasons.push(other.to_string());
                None
            }
        }
    }

    fn into_errors(self) -> Vec<CatalogError> {
        let provider = self.check.provider.to_owned();
        self.reasons
            .into_iter()
            .map(|reason| CatalogError::Invalid {
                provider: provider.clone(),
                reason,
            })
            .collect()
    }
}

/// The placeholder a URL field carries where the entry's `base_url` goes
/// (self-managed GitLab: `{base_url}/oauth/authorize`).
pub const BASE_URL_PLACEHOLDER: &str = "{base_url}";

/// The placeholder an `api_hosts` entry carries where the host of `base_url` goes.
pub const BASE_HOST_PLACEHOLDER: &str = "{base_host}";

/// `base_url` and its host, once validated.
struct Base {
    url: Url,
    prefix: String,
    host: String,
}

impl Base {
    fn substitute(&self, text: &str) -> String {
        text.replace(BASE_URL_PLACEHOLDER, &self.prefix)
            .replace(BASE_HOST_PLACEHOLDER, &self.host)
    }
}

/// Fills `{base_url}` into a field, or records that the entry has no base URL.
fn substitute(problems: &mut Problems<'_>, base: Option<&Base>, field: &str, value: Option<&str>) -> Option<String> {
    let value = value?;
    if !value.contains(BASE_URL_PLACEHOLDER) && !value.contains(BASE_HOST_PLACEHOLDER) {
        return Some(value.to_owned());
    }
    match base {
        Some(base) => Some(base.substitute(value)),
        None => {
            problems.push(format!(
                "`{field}` uses `{BASE_URL_PLACEHOLDER}` but the entry has no valid `base_url`"
            ));
            None
        }
    }
}

fn validate_base(problems: &mut Problems<'_>, raw: &RawProvider) -> Option<Base> {
    let text = raw.base_url.as_deref()?;
    let url = problems.keep(problems.check.url("base_url", Some(text), UrlRole::Issuer))??;
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let prefix = url.as_str().trim_end_matches('/').to_owned();
    Some(Base { url, prefix, host })
}

fn validate_api_hosts(problems: &mut Problems<'_>, base: Option<&Base>, raw: &RawProvider) -> Vec<String> {
    let mut hosts = Vec::new();
    for entry in raw.api_hosts.iter().flatten() {
        let Some(host) = substitute(problems, base, "api_hosts", Some(entry)) else {
            continue;
        };
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let (name, port) = match bare.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (bare, None),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && (name.contains('.') || name == "localhost")
            && name
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            && name == name.to_ascii_lowercase()
            // An IP address is not a host name (the proxy connects to names only).
            && !name.rsplit('.').next().unwrap_or_default().chars().all(|c| c.is_ascii_digit());
        let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p > 0));
        if !name_ok || !port_ok {
            problems.push(format!(
                "`api_hosts`: `{host}` is not a lower-case host name (optionally `*.` for its subdomains, `:port`; no IP address)"
            ));
            continue;
        }
        if hosts.contains(&host) {
            problems.push(format!("`api_hosts`: `{host}` is listed twice"));
            continue;
        }
        hosts.push(host);
    }
    hosts
}

fn validate_account(problems: &mut Problems<'_>, base: Option<&Base>, raw: &RawProvider) -> Option<AccountSource> {
    let account = raw.account.as_ref()?;
    let mut ok = true;
    let mut pointers = |problems: &mut Problems<'_>, field: &str, list: &[String]| {
        for pointer in list {
            if !account::is_json_pointer(pointer) {
                problems.push(format!(
                    "`account.{field}`: `{pointer}` is not a JSON pointer (RFC 6901, e.g. \"/user/id\")"
                ));
                ok = false;
            }
        }
    };
    pointers(problems, "subject", &account.subject);
    pointers(problems, "display", account.display.as_slice());
    let source = match account.source {
        account::RawAccountKind::IdToken => {
            if account.url.is_some() || account.body.is_some() || !account.subject.is_empty() {
                problems.push(
                    "`account`: source \"id_token\" takes its subject from `iss` and `sub`; `url`, `body` and \
                     `subject` make no sense",
                );
                ok = false;
            }
            let display = match &account.display {
                None => "email".to_owned(),
                Some(pointer) => pointer.trim_start_matches('/').replace("~1", "/").replace("~0", "~"),
            };
            AccountSource::IdToken { display }
        }
        account::RawAccountKind::Endpoint => {
            let url = substitute(problems, base, "account.url", account.url.as_deref());
            let url = match url {
                Some(url) => problems
                    .keep(problems.check.url("account.url", Some(&url), UrlRole::Endpoint))
                    .flatten(),
                None => {
                    if account.url.is_none() {
                        problems.push("`account`: source \"endpoint\" needs `url`");
                    }
                    None
                }
            };
            if account.subject.is_empty() {
                problems.push("`account`: source \"endpoint\" needs `subject` (JSON pointers into the answer)");
                ok = false;
            }
            if let Some(body) = &account.body {
                if account.method != AccountMethod::Post {
                    problems.push("`account.body` is set but `account.method` is not \"POST\"");
                    ok = false;
                } else if serde_json::from_str::<serde_json::Value>(body).is_err() {
                    problems.push("`account.body` is not JSON");
                    ok = false;
                }
            }
            AccountSource::Endpoint {
                url: url?,
                method: account.method,
                body: account.body.clone(),
                subject: account.subject.clone(),
                display: account.display.clone(),
            }
        }
        account::RawAccountKind::TokenResponse => {
            if account.url.is_some() || account.body.is_some() {
                problems.push(
                    "`account`: source \"token_response\" reads the token response; `url` and `body` make no sense",
                );
                ok = false;
            }
            if account.subject.is_empty() {
                problems.push(
                    "`account`: source \"token_response\" needs `subject` (JSON pointers into the token response)",
                );
                ok = false;
            }
            AccountSource::TokenResponse {
                subject: account.subject.clone(),
                display: account.display.clone(),
            }
        }
    };
    ok.then_some(source)
}

fn validate(name: String, raw: RawProvider) -> Result<ProviderSpec, Vec<CatalogError>> {
    let mut problems = Problems::new(&name);

    if !is_valid_name(&name, &['_', '-']) {
        problems.push("the provider name must be 1 to 64 characters of a-z, 0-9, `_` and `-`");
    }
    if raw.display_name.trim().is_empty() {
        problems.push("`display_name` is empty");
    }

    let base = validate_base(&mut problems, &raw);
    let base = base.as_ref();
    let url_field = |problems: &mut Problems<'_>, field: &str, value: Option<&str>, role: UrlRole| {
        let value = substitute(problems, base, field, value);
        problems
            .keep(problems.check.url(field, value.as_deref(), role))
            .flatten()
    };
    let docs_url = url_field(&mut problems, "docs_url", raw.docs_url.as_deref(), UrlRole::Docs);
    let registration_url = url_field(
        &mut problems,
        "registration_url",
        raw.registration_url.as_deref(),
        UrlRole::Docs,
    );
    let issuer = url_field(&mut problems, "issuer", raw.issuer.as_deref(), UrlRole::Issuer);
    let authorization_url = url_field(
        &mut problems,
        "authorization_url",
        raw.authorization_url.as_deref(),
        UrlRole::Endpoint,
    );
    let token_url = url_field(&mut problems, "token_url", raw.token_url.as_deref(), UrlRole::Endpoint);
    let refresh_url = url_field(
        &mut problems,
        "refresh_url",
        raw.refresh_url.as_deref(),
        UrlRole::Endpoint,
    );
    if raw.refresh_url.is_some() && !raw.issues_refresh_tokens {
        problems.push("`refresh_url` is set but the entry says `issues_refresh_tokens = false`");
    }
    let revocation_text = substitute(&mut problems, base, "revocation_url", raw.revocation_url.as_deref());
    let revocation_url = problems
        .keep(
            problems
                .check
                .url("revocation_url", revocation_text.as_deref(), UrlRole::Endpoint),
        )
        .flatten();
    let user_page_text = substitute(
        &mut problems,
        base,
        "revocation_user_page",
        raw.revocation_user_page.as_deref(),
    );
    if issuer.is_none() && raw.issuer.is_none() {
        if raw.authorization_url.is_none() {
            problems.push("`authorization_url` is required unless `issuer` is set");
        }
        if raw.token_url.is_none() {
            problems.push("`token_url` is required unless `issuer` is set");
        }
    }
    let revocation = problems.keep(problems.check.revocation(
        &raw,
        user_page_text.as_deref(),
        revocation_url.as_ref(),
        raw.issuer.is_some(),
    ));

    let separator = raw.scope_separator.clone();
    if separator.is_empty() {
        problems.push("`scope_separator` is empty");
    }
    problems.keep(problems.check.param_name("scope_param", &raw.scope_param));
    if raw.scope_param != "scope" && RESERVED_AUTHORIZATION_PARAMS.contains(&raw.scope_param.as_str()) {
        problems.push(format!(
            "`scope_param`: `{}` is a parameter tokenvault sets itself",
            raw.scope_param
        ));
    }
    for (field, member) in [
        ("token_response_object", &raw.token_response_object),
        ("granted_scopes_member", &raw.granted_scopes_member),
    ] {
        let Some(member) = member else { continue };
        let ok = !member.is_empty() && member.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            problems.push(format!(
                "`{field}`: `{member}` is not a JSON member name of letters, digits and `_`"
            ));
        }
    }
    if raw.granted_scopes_member.is_some() && !raw.uses_scopes {
        problems.push("`granted_scopes_member` needs scopes: the entry says `uses_scopes = false`".to_owned());
    }

    for (header, value) in &raw.request_headers {
        if !is_header_name(header) {
            problems.push(format!("`request_headers`: `{header}` is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "`request_headers`: `{header}` is set by tokenvault and cannot be configured"
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            problems.push(format!(
                "`request_headers`: the value of `{header}` contains a control character"
            ));
        }
    }

    for key in raw.authorization_params.keys() {
        if problems
            .keep(problems.check.param_name("authorization_params", key))
            .is_some()
            && (RESERVED_AUTHORIZATION_PARAMS.contains(&key.as_str()) || *key == raw.scope_param)
        {
            problems.push(format!(
                "`authorization_params`: `{key}` is a parameter tokenvault sets itself"
            ));
        }
    }
    if let Some(incremental) = &raw.incremental_authorization {
        problems.keep(
            problems
                .check
                .param_name("incremental_authorization.param", &incremental.param),
        );
        if RESERVED_AUTHORIZATION_PARAMS.contains(&incremental.param.as_str())
            || incremental.param == raw.scope_param
            || raw.authorization_params.contains_key(&incremental.param)
        {
            problems.push(format!(
                "`incremental_authorization.param`: `{}` clashes with another authorization parameter",
                incremental.param
            ));
        }
        if incremental.value.is_empty() {
            problems.push("`incremental_authorization.value` is empty");
        }
    }

    if !raw.issues_refresh_tokens && raw.refresh_rotation.is_some_and(|r| r != RefreshRotation::None) {
        problems.push("`refresh_rotation` is set but `issues_refresh_tokens` is false");
    }
    if !raw.issues_refresh_tokens && raw.refresh_idle_expiry_days.is_some() {
        problems.push("`refresh_idle_expiry_days` is set but `issues_refresh_tokens` is false");
    }
    if raw.refresh_idle_expiry_days == Some(0) {
        problems.push("`refresh_idle_expiry_days` must be at least 1");
    }
    if raw.token_types.is_empty() {
        problems.push("`token_types` is empty: name the token_type the provider sends (usually \"bearer\")");
    }
    if !raw.issues_refresh_tokens && raw.access_token_expires.is_none() {
        problems.push(
            "`issues_refresh_tokens` is false: say whether access tokens expire with `access_token_expires` \
             (false when they live until revoked, as GitHub OAuth-app tokens do)",
        );
    }
    if raw.refresh_scope_narrowing && !raw.issues_refresh_tokens {
        problems.push("`refresh_scope_narrowing` is true but `issues_refresh_tokens` is false");
    }

    for scope in &raw.allowed_scopes {
        if !separator.is_empty() {
            problems.keep(problems.check.scope("allowed_scopes", scope, &separator));
        }
    }
    for scope in &raw.required_scopes {
        if !raw.allowed_scopes.contains(scope) {
            problems.push(format!("`required_scopes`: `{scope}` is not in `allowed_scopes`"));
        }
    }
    for (capability, scopes) in &raw.capabilities {
        if !is_valid_name(capability, &['_', '.', '-']) {
            problems.push(format!(
                "`capabilities`: `{capability}` is not a valid capability name (1 to 64 characters of a-z, 0-9, `_`, `.` and `-`)"
            ));
        }
        if raw.uses_scopes && scopes.is_empty() {
            problems.push(format!("`capabilities.\"{capability}\"` maps to no scope"));
        }
        for scope in scopes {
            if !raw.allowed_scopes.contains(scope) {
                problems.push(format!(
                    "`capabilities.\"{capability}\"`: scope `{scope}` is not in `allowed_scopes`"
                ));
            }
        }
    }

    if !raw.uses_scopes {
        if !raw.allowed_scopes.is_empty() || !raw.required_scopes.is_empty() {
            problems.push("`uses_scopes` is false but `allowed_scopes` or `required_scopes` is not empty");
        }
        if raw.incremental_authorization.is_some() || raw.refresh_scope_narrowing {
            problems.push(
                "`uses_scopes` is false: `incremental_authorization` and `refresh_scope_narrowing` make no sense",
            );
        }
    }
    if raw.capabilities.is_empty() && raw.allowed_scopes.is_empty() {
        problems.push("neither `capabilities` nor `allowed_scopes`: nothing could ever be requested");
    }

    let api_hosts = validate_api_hosts(&mut problems, base, &raw);
    let account = validate_account(&mut problems, base, &raw);

    let revocation = match revocation {
        Some(revocation) if problems.reasons.is_empty() => revocation,
        _ => return Err(problems.into_errors()),
    };
    Ok(ProviderSpec {
        name: name.clone(),
        display_name: raw.display_name,
        docs_url,
        registration_url,
        base_url: base.map(|base| base.url.clone()),
        issuer,
        authorization_url,
        token_url,
        refresh_url,
        revocation_url,
        revocation_method: revocation.method,
        revocation_user_page: revocation.user_page,
        revocation_unsupported: revocation.unsupported,
        revocation_scope: raw.revocation_scope.unwrap_or_default(),
        reconsent_same_grant: raw.reconsent_same_grant.unwrap_or(false),
        access_token_expires: raw.access_token_expires.unwrap_or(true),
        client_auth: raw.client_auth,
        token_request_body: raw.token_request_body,
        request_headers: raw.request_headers,
        scope_separator: separator,
        scope_param: raw.scope_param,
        uses_scopes: raw.uses_scopes,
        token_response_object: raw.token_response_object,
        granted_scopes_member: raw.granted_scopes_member,
        authorization_params: raw.authorization_params,
        incremental_authorization: raw.incremental_authorization,
        refresh_scope_narrowing: raw.refresh_scope_narrowing,
        issues_refresh_tokens: raw.issues_refresh_tokens,
        refresh_rotation: if raw.issues_refresh_tokens {
            raw.refresh_rotation.unwrap_or_default()
        } else {
            RefreshRotation::None
        },
        refresh_rotation_explicit: raw.refresh_rotation.is_some(),
        refresh_idle_expiry_days: raw.refresh_idle_expiry_days,
        token_types: raw.token_types.iter().map(|t| t.to_ascii_lowercase()).collect(),
        required_scopes: raw.required_scopes,
        allowed_scopes: raw.allowed_scopes,
        capabilities: raw.capabilities,
        api_hosts,
        account,
    })
}

#[cfg(test)]
mod tests;
