//! The fake as tokenvault's operator catalog describes it: one provider
//! entry (TOML) pointing at its endpoints, with one capability per scope.

use super::FakeProvider;

/// How the catalog says the fake's credentials are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatalogRevocation {
    /// RFC 7009 at `/revoke` with the refresh token.
    #[default]
    Rfc7009,
    /// `revocation_method = "rfc7009_access_token"` (Notion-style): RFC 7009
    /// with an access token (a refresh token is exchanged for one first) at
    /// `/revoke-grant`, which ends the token's grant.
    Rfc7009AccessToken,
    /// `revocation_method = "bearer_access_token"` (Dropbox-style): the
    /// access token as `Authorization: Bearer`, no body, no client
    /// authentication, at `/bearer-revoke`, which ends the token's grant.
    BearerAccessToken,
    /// `revocation_method = "bearer_token"` (Slack-style): the stored
    /// credential itself (the refresh token) as `Authorization: Bearer`, no
    /// body, no client authentication, at `/slack-revoke`, which revokes
    /// exactly that token.
    BearerToken,
    /// GitHub-style grant deletion at `/applications/{client_id}/grant`
    /// (grant-wide; a re-consent shares the grant).
    GithubGrant,
    /// `revocation_method = "unsupported"`, with a reason and a user page.
    Unsupported,
}

/// Where the catalog says the fake's upstream account comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatalogAccount {
    /// No `account` table: the account is not learned.
    #[default]
    None,
    /// `source = "id_token"`: the ID token the fake issues when `openid` is
    /// granted (the entry then requires `openid` and names the fake as issuer).
    IdToken,
    /// `source = "endpoint"`: the fake's `/userinfo` (`sub`, `email`).
    Endpoint,
    /// `source = "token_response"`: the code exchange's `user` member (`id`, `email`).
    TokenResponse,
}

/// The reason the catalog gives when [`CatalogRevocation::Unsupported`].
pub const UNSUPPORTED_REASON: &str = "The fake provider offers no way to revoke.";

/// How the fake is described in the catalog.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The provider's name in the catalog.
    pub name: &'static str,
    /// Whether the catalog names an incremental-authorization parameter.
    pub incremental: bool,
    /// Whether refresh may ask for a narrower scope (RFC 6749 §6).
    pub narrowing: bool,
    /// How revocation is described.
    pub revocation: CatalogRevocation,
    /// Where the upstream account comes from.
    pub account: CatalogAccount,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        Self {
            name: "fake",
            incremental: true,
            narrowing: true,
            revocation: CatalogRevocation::Rfc7009,
            account: CatalogAccount::None,
        }
    }
}

/// Scopes the fake catalog allows, and its capabilities (one scope each).
pub const CATALOG_SCOPES: [&str; 5] = [
    "calendar.read",
    "calendar.write",
    "mail.read",
    "mail.send",
    "files.read",
];

impl FakeProvider {
    /// The operator-catalog entry (TOML) that points tokenvault at this fake,
    /// allowing [`CATALOG_SCOPES`] with one capability per scope.
    pub fn catalog_toml(&self, options: &CatalogOptions) -> String {
        let revocation = match options.revocation {
            CatalogRevocation::Rfc7009 => format!("revocation_url = \"{}\"\n", self.revocation_url()),
            CatalogRevocation::Rfc7009AccessToken => format!(
                "revocation_url = \"{}\"\nrevocation_method = \"rfc7009_access_token\"\nrevocation_scope = \"token\"\n",
                self.grant_revocation_url()
            ),
            CatalogRevocation::BearerAccessToken => format!(
                "revocation_url = \"{}\"\nrevocation_method = \"bearer_access_token\"\nrevocation_scope = \"token\"\n",
                self.bearer_revocation_url()
            ),
            CatalogRevocation::BearerToken => format!(
                "revocation_url = \"{}\"\nrevocation_method = \"bearer_token\"\nrevocation_scope = \"token\"\n",
                self.slack_revocation_url()
            ),
            CatalogRevocation::GithubGrant => format!(
                "revocation_url = \"{}\"\nrevocation_method = \"github_grant\"\nrevocation_scope = \"grant\"\n\
                 reconsent_same_grant = true\n",
                self.grant_deletion_url_template()
            ),
            CatalogRevocation::Unsupported => format!(
                "revocation_method = \"unsupported\"\nrevocation_unsupported_reason = \"{UNSUPPORTED_REASON}\"\n\
                 revocation_user_page = \"{}apps\"\n",
                self.base_url()
            ),
        };
        let mut text = format!(
            "[providers.{name}]\ndisplay_name = \"Fake\"\nauthorization_url = \"{a}\"\ntoken_url = \"{t}\"\n{revocation}\
             client_auth = \"client_secret_basic\"\nscope_separator = \" \"\nauthorization_params = {{ access_type = \"offline\" }}\n\
             refresh_scope_narrowing = {narrowing}\nissues_refresh_tokens = true\nallowed_scopes = [{allowed}]\n",
            name = options.name,
            a = self.authorization_url(),
            t = self.token_url(),
            narrowing = options.narrowing,
            allowed = CATALOG_SCOPES
                .iter()
                .chain((options.account == CatalogAccount::IdToken).then_some(&"openid"))
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if options.incremental {
            text.push_str("incremental_authorization = { param = \"include_granted_scopes\", value = \"true\" }\n");
        }
        match options.account {
            CatalogAccount::None => {}
            CatalogAccount::IdToken => text.push_str(&format!(
                "required_scopes = [\"openid\"]\nissuer = \"{}\"\n[providers.{}.account]\nsource = \"id_token\"\n",
                self.base_url().as_str().trim_end_matches('/'),
                options.name
            )),
            CatalogAccount::Endpoint => text.push_str(&format!(
                "[providers.{}.account]\nsource = \"endpoint\"\nurl = \"{}\"\nsubject = [\"/sub\"]\ndisplay = \"/email\"\n",
                options.name,
                self.userinfo_url()
            )),
            CatalogAccount::TokenResponse => text.push_str(&format!(
                "[providers.{}.account]\nsource = \"token_response\"\nsubject = [\"/user/id\"]\ndisplay = \"/user/email\"\n",
                options.name
            )),
        }
        text.push_str(&format!("[providers.{}.capabilities]\n", options.name));
        for scope in CATALOG_SCOPES {
            text.push_str(&format!("\"{scope}\" = [\"{scope}\"]\n"));
        }
        text
    }
}
