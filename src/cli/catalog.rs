//! `tokenvault catalog check | list | show`: the provider catalog as an
//! operator needs it — is it complete, which providers are there, and what to
//! enter at a provider to register the app.

use std::fmt::Write as _;
use std::path::Path;

use super::CliError;
use crate::config::{self, Config};
use crate::consent::catalog::check::{self, Report};
use crate::consent::catalog::{AccountSource, Catalog, ProviderSpec, RevocationMethod, RevocationScope};

/// The callback path of the HTTP listener; each provider's is this plus `/{name}`.
pub const CALLBACK_PATH: &str = "oauth/callback";

/// `catalog check [FILE]`: the built-in catalog, or the operator file given.
/// Prints every problem; an error (exit status 1) when there is any.
pub fn check(file: Option<&Path>) -> Result<(), CliError> {
    let report = match file {
        Some(path) => check::check_file(path),
        None => check::check_builtin(),
    };
    finish(&report)
}

fn finish(report: &Report) -> Result<(), CliError> {
    print!("{report}");
    if report.is_ok() {
        Ok(())
    } else {
        Err(CliError::Other(format!(
            "the catalog {} has {} problems",
            report.origin,
            report.problems.len()
        )))
    }
}

/// The catalog the server would run with: the built-in one and the
/// configured operator file over it.
fn server_catalog(config: &Config) -> Result<Catalog, CliError> {
    let mut catalog = Catalog::builtin().map_err(|e| CliError::Other(e.to_string()))?;
    if let Some(path) = &config.providers.catalog_file {
        catalog.merge(Catalog::from_file(path).map_err(|e| CliError::Other(e.to_string()))?);
    }
    Ok(catalog)
}

/// `catalog list`.
pub fn list(config_path: Option<&Path>) -> Result<(), CliError> {
    let config = config::load(config_path)?;
    let catalog = server_catalog(&config)?;
    print!("{}", render_list(&catalog, &config));
    Ok(())
}

/// `catalog show NAME`.
pub fn show(config_path: Option<&Path>, name: &str) -> Result<(), CliError> {
    let config = config::load(config_path)?;
    let catalog = server_catalog(&config)?;
    let spec = catalog.require(name).map_err(|e| {
        CliError::Other(format!(
            "{e}; the catalog has: {}",
            catalog.names().collect::<Vec<_>>().join(", ")
        ))
    })?;
    print!("{}", render_show(spec, &config));
    Ok(())
}

/// One line per provider: name, display name, whether a client is
/// configured, how revocation works, and where the app is registered.
pub fn render_list(catalog: &Catalog, config: &Config) -> String {
    let mut out = String::new();
    let width = catalog.names().map(str::len).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:28}  {:10}  {:11}  register the app at",
        "name", "provider", "client", "revocation"
    );
    for spec in catalog.providers() {
        let client = if config.providers.clients.contains_key(&spec.name) {
            "configured"
        } else {
            "-"
        };
        let revocation = if spec.revocation_method == RevocationMethod::Unsupported {
            "unsupported"
        } else {
            "supported"
        };
        let _ = writeln!(
            out,
            "{:width$}  {:28}  {:10}  {:11}  {}",
            spec.name,
            spec.display_name,
            client,
            revocation,
            spec.registration_url
                .as_ref()
                .map(|u| u.as_str())
                .unwrap_or("(not in the catalog)")
        );
    }
    out
}

/// The redirect URI to give the provider (its own callback path), and
/// whether it is the configured public one.
fn redirect_uri(config: &Config, provider: &str) -> (String, bool) {
    let base = match &config.server.public_url {
        Some(url) => url.as_str().to_owned(),
        None => format!("http://{}/", config.server.http_listen),
    };
    let uri = format!("{base}{CALLBACK_PATH}/{provider}");
    (uri, config.server.public_url.is_some())
}

/// Everything an operator needs to register the app at the provider and to
/// configure tokenvault for it.
pub fn render_show(spec: &ProviderSpec, config: &Config) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "  {label:24} {value}");
    };
    let _ = writeln!(out, "{} ({})", spec.display_name, spec.name);
    if let Some(url) = &spec.docs_url {
        line(&mut out, "documentation", url.as_str());
    }
    line(
        &mut out,
        "register the app at",
        spec.registration_url
            .as_ref()
            .map(|u| u.as_str())
            .unwrap_or("(the catalog does not say)"),
    );
    let (today, public) = redirect_uri(config, &spec.name);
    line(&mut out, "redirect URI", &today);
    if !public {
        line(
            &mut out,
            "",
            "(from server.http_listen: set server.public_url to the address the browser reaches)",
        );
    }
    if let Some(base) = &spec.base_url {
        line(&mut out, "base URL", base.as_str());
    }
    if let Some(url) = &spec.authorization_url {
        line(&mut out, "authorization endpoint", url.as_str());
    }
    if let Some(url) = &spec.token_url {
        line(&mut out, "token endpoint", url.as_str());
    }
    if let Some(url) = &spec.refresh_url {
        line(&mut out, "refresh endpoint", url.as_str());
    }
    if let Some(issuer) = &spec.issuer {
        line(&mut out, "issuer (discovery)", issuer.as_str());
    }
    line(
        &mut out,
        "client authentication",
        match spec.client_auth {
            crate::consent::catalog::ClientAuth::ClientSecretBasic => "client_secret_basic (HTTP Basic)",
            crate::consent::catalog::ClientAuth::ClientSecretPost => "client_secret_post (in the request body)",
        },
    );
    if spec.uses_scopes {
        let all: Vec<&str> = spec.allowed_scopes.iter().map(String::as_str).collect();
        line(&mut out, "scopes to enable", &all.join(" "));
        if !spec.required_scopes.is_empty() {
            let required: Vec<&str> = spec.required_scopes.iter().map(String::as_str).collect();
            line(&mut out, "asked in every consent", &required.join(" "));
        }
        line(
            &mut out,
            "scope separator",
            &format!("{:?} in `{}`", spec.scope_separator, spec.scope_param),
        );
    } else {
        line(
            &mut out,
            "scopes to enable",
            "none: the provider has no OAuth scopes; give the app the least permissions the capabilities below need",
        );
    }
    if !spec.authorization_params.is_empty() {
        let params: Vec<String> = spec
            .authorization_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line(&mut out, "extra parameters", &params.join(" "));
    }
    let _ = writeln!(out, "  capabilities:");
    for (capability, scopes) in &spec.capabilities {
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "    {capability:22} {}",
            if scopes.is_empty() {
                "(a label: no scope)".to_owned()
            } else {
                scopes.join(" ")
            }
        );
    }
    let refresh = if spec.issues_refresh_tokens {
        format!(
            "refresh tokens, rotation {:?}{}",
            spec.refresh_rotation,
            spec.refresh_idle_expiry_days
                .map(|days| format!(", expire after {days} days unused"))
                .unwrap_or_default()
        )
        .to_lowercase()
    } else {
        "no refresh tokens".to_owned()
    };
    line(&mut out, "refresh", &refresh);
    match spec.revocation_unsupported() {
        Some(unsupported) => {
            line(&mut out, "revocation", "unsupported");
            line(&mut out, "", &unsupported.reason);
            line(&mut out, "the user revokes at", unsupported.user_page.as_str());
        }
        None => {
            let at = spec
                .revocation_url
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "the issuer's revocation_endpoint".to_owned());
            let scope = match spec.revocation_scope {
                RevocationScope::Token => "that token",
                RevocationScope::Grant => "the whole grant",
            };
            line(
                &mut out,
                "revocation",
                &format!("{:?} at {at} (ends {scope})", spec.revocation_method).to_lowercase(),
            );
        }
    }
    let account = match &spec.account {
        None => "(the catalog does not say)".to_owned(),
        Some(AccountSource::IdToken { display }) => format!("ID token: iss and sub, display `{display}`"),
        Some(AccountSource::Endpoint {
            url,
            method,
            subject,
            display,
            ..
        }) => format!(
            "{} {url}: subject {}, display {}",
            format!("{method:?}").to_uppercase(),
            subject.join(" + "),
            display.as_deref().unwrap_or("-")
        ),
        Some(AccountSource::TokenResponse { subject, display }) => format!(
            "token response: subject {}, display {}",
            subject.join(" + "),
            display.as_deref().unwrap_or("-")
        ),
    };
    line(&mut out, "account", &account);
    line(&mut out, "API hosts", &spec.api_hosts.join(" "));
    let env_name = spec.name.to_uppercase().replace('-', "_");
    let configured = if config.providers.clients.contains_key(&spec.name) {
        "configured"
    } else {
        "not configured"
    };
    let _ = writeln!(
        out,
        "  configuration ({configured}):\n    [providers.{}]\n    client_id = \"<from the provider>\"\n    # client_secret from TOKENVAULT_PROVIDERS__{env_name}__CLIENT_SECRET or client_secret_file",
        spec.name
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public: Option<&str>) -> Config {
        let mut config = Config::default();
        config.server.public_url = public.map(|u| url::Url::parse(u).unwrap());
        config
    }

    #[test]
    fn show_gives_what_registration_needs() {
        let catalog = Catalog::builtin().unwrap();
        let text = render_show(
            catalog.require("google").unwrap(),
            &config(Some("https://tv.example.com/")),
        );
        assert!(
            !text.contains("oauth/callback\n"),
            "the provider's own callback:\n{text}"
        );
        for needle in [
            "register the app at      https://console.cloud.google.com/apis/credentials",
            "redirect URI             https://tv.example.com/oauth/callback/google\n",
            "https://www.googleapis.com/auth/calendar.events.readonly",
            "access_type=offline prompt=consent",
            "TOKENVAULT_PROVIDERS__GOOGLE__CLIENT_SECRET",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        // Without public_url, the listener's address, with a hint.
        let text = render_show(catalog.require("hubspot").unwrap(), &config(None));
        assert!(
            text.contains("http://127.0.0.1:8080/oauth/callback/hubspot\n"),
            "{text}"
        );
        assert!(text.contains("set server.public_url"), "{text}");
        assert!(text.contains("revocation               unsupported"), "{text}");
        assert!(text.contains("asked in every consent   oauth"), "{text}");
    }

    #[test]
    fn list_names_every_provider() {
        let catalog = Catalog::builtin().unwrap();
        let text = render_list(&catalog, &config(None));
        assert_eq!(text.lines().count(), catalog.len() + 1);
        assert!(
            text.lines()
                .any(|l| l.starts_with("gitlab ") && l.contains("https://gitlab.com/-/user_settings/applications")),
            "{text}"
        );
    }
}
