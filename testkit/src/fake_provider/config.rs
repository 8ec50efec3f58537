//! How a [`FakeProvider`](super::FakeProvider) behaves: its one client, token
//! lifetimes, rotation, scope syntax and consent, fixed when it starts.

use std::time::Duration;

/// Prefix of every access token the fake issues.
pub const ACCESS_TOKEN_PREFIX: &str = "fake_at_";
/// Prefix of every refresh token the fake issues.
pub const REFRESH_TOKEN_PREFIX: &str = "fake_rt_";
/// Prefix of every authorization code the fake issues.
pub const CODE_PREFIX: &str = "fake_code_";

/// How the fake expects clients to authenticate at `/token` and `/revoke`
/// (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    Post,
    /// Either of the two (but never both in one request).
    Either,
}

/// Configuration of a [`FakeProvider`](super::FakeProvider).
#[derive(Debug, Clone)]
pub struct FakeProviderConfig {
    /// The only client the provider knows; default `"test-client"`.
    pub client_id: String,
    /// That client's secret; default `"test-secret"`.
    pub client_secret: String,
    /// Accepted client authentication; default [`ClientAuthMethod::Either`].
    pub client_auth: ClientAuthMethod,
    /// Lifetime of access tokens, returned as `expires_in`; default 3600 s.
    pub access_token_ttl: Duration,
    /// Default `true`: each refresh returns a new refresh token and
    /// invalidates the old one. When `false`, refresh responses carry no
    /// `refresh_token` and the old one stays valid.
    pub rotate_refresh_tokens: bool,
    /// When `true` (default `false`), presenting a refresh token that was
    /// already rotated away revokes the whole grant (reuse detection, as in
    /// the OAuth 2.0 Security BCP).
    pub revoke_grant_on_refresh_token_reuse: bool,
    /// Separator of scopes in requests and responses; default `" "`
    /// (GitHub/Slack style providers use `","`).
    pub scope_separator: String,
    /// Incremental authorization switch, e.g.
    /// `Some(("include_granted_scopes".into(), "true".into()))`: when that
    /// parameter with that value is on an authorization request, the new
    /// grant's scopes are the user's previously granted scopes (over its live
    /// grants) ∪ the requested ones. Default `None`.
    pub incremental_param: Option<(String, String)>,
    /// Default `true`; `false` makes `/authorize` redirect with
    /// `error=access_denied`.
    pub auto_approve: bool,
    /// When `true` (default `false`), the code exchange answers as a GitHub
    /// OAuth app does: an access token that never expires, no `expires_in`
    /// and no refresh token.
    pub non_expiring_access_tokens: bool,
    /// When `true` (default `false`), every authorization response carries
    /// `iss` (the fake's base URL) and the metadata says so
    /// (`authorization_response_iss_parameter_supported`, RFC 9207).
    pub send_iss: bool,
    /// When `true` (default `false`), refreshes are served at `POST /refresh`
    /// only and `POST /token` refuses `grant_type=refresh_token`, as a
    /// provider with its own refresh endpoint does (Figma).
    pub separate_refresh_endpoint: bool,
}

impl Default for FakeProviderConfig {
    fn default() -> Self {
        Self {
            client_id: "test-client".to_owned(),
            client_secret: "test-secret".to_owned(),
            client_auth: ClientAuthMethod::Either,
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            revoke_grant_on_refresh_token_reuse: false,
            scope_separator: " ".to_owned(),
            incremental_param: None,
            auto_approve: true,
            non_expiring_access_tokens: false,
            send_iss: false,
            separate_refresh_endpoint: false,
        }
    }
}
