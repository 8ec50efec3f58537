//! The fake as tokenvault's operator catalog describes it: one provider
//! entry (TOML) pointing at its endpoints, with one capability per scope.

use super::FakeProvider;

/// How the fake is described in the catalog.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The provider's name in the catalog.
    pub name: &'static str,
    /// Whether the catalog names an incremental-authorization parameter.
    pub incremental: bool,
    /// Whether refresh may ask for a narrower scope (RFC 6749 §6).
    pub narrowing: bool,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        Self {
            name: "fake",
            incremental: true,
            narrowing: true,
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
        let mut text = format!(
            "[providers.{name}]\ndisplay_name = \"Fake\"\nauthorization_url = \"{a}\"\ntoken_url = \"{t}\"\nrevocation_url = \"{r}\"\n\
             client_auth = \"client_secret_basic\"\nscope_separator = \" \"\nauthorization_params = {{ access_type = \"offline\" }}\n\
             refresh_scope_narrowing = {narrowing}\nissues_refresh_tokens = true\nallowed_scopes = [{allowed}]\n",
            name = options.name,
            a = self.authorization_url(),
            t = self.token_url(),
            r = self.revocation_url(),
            narrowing = options.narrowing,
            allowed = CATALOG_SCOPES.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "),
        );
        if options.incremental {
            text.push_str("incremental_authorization = { param = \"include_granted_scopes\", value = \"true\" }\n");
        }
        text.push_str(&format!("[providers.{}.capabilities]\n", options.name));
        for scope in CATALOG_SCOPES {
            text.push_str(&format!("\"{scope}\" = [\"{scope}\"]\n"));
        }
        text
    }
}
