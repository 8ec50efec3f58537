//! The catalog checker behind `tokenvault catalog check`: every problem of a
//! catalog file at once, each with its provider and field, where loading a
//! catalog stops at the first.
//!
//! Besides the rules every catalog obeys when it is loaded, the checker asks
//! of each entry what an operator needs for a complete one: https endpoints
//! (plain http on loopback is a development convenience of the loader only),
//! no client credentials, an explicit revocation decision and refresh
//! rotation, an account identity source, the API hosts, the documentation and
//! the page where the app is registered.

use std::fmt;
use std::path::Path;

use super::{raw_catalog_entry, validate, ProviderSpec, BUILTIN_CATALOG, BUILTIN_ORIGIN, PRESET_KEY};
use url::Url;

/// Keys that would put a client credential into a catalog.
const CREDENTIAL_KEYS: &[&str] = &["client_id", "client_secret", "client_secret_file"];

/// One problem of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The provider entry, or `None` for the file as a whole.
    pub provider: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.provider {
            Some(provider) => write!(f, "provider `{provider}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What checking one catalog found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where the catalog came from.
    pub origin: String,
    /// The entries checked, in name order.
    pub providers: Vec<String>,
    /// Every problem found; empty for a complete, consistent catalog.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether the catalog has no problem.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems of one provider.
    pub fn problems_of<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a Problem> + 'a {
        self.problems
            .iter()
            .filter(move |problem| problem.provider.as_deref() == Some(provider))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return writeln!(f, "{}: {} providers, no problems", self.origin, self.providers.len());
        }
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        writeln!(
            f,
            "{}: {} problems in {} providers",
            self.origin,
            self.problems.len(),
            self.providers.len()
        )
    }
}

/// Checks the built-in catalog.
pub fn check_builtin() -> Report {
    check_text(BUILTIN_CATALOG, BUILTIN_ORIGIN)
}

/// Checks a catalog file.
pub fn check_file(path: &Path) -> Report {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, &origin),
        Err(error) => Report {
            problems: vec![Problem {
                provider: None,
                message: format!("cannot read {origin}: {error}"),
            }],
            origin,
            providers: Vec::new(),
        },
    }
}

/// Checks catalog text, reporting every problem found.
pub fn check_text(text: &str, origin: &str) -> Report {
    let mut report = Report {
        origin: origin.to_owned(),
        providers: Vec::new(),
        problems: Vec::new(),
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(error) => {
            report.problems.push(Problem {
                provider: None,
                message: format!("not a TOML catalog: {error}"),
            });
            return report;
        }
    };
    for key in table.keys().filter(|key| *key != "providers") {
        report.problems.push(Problem {
            provider: None,
            message: format!("unknown top-level key `{key}`: a catalog holds only `[providers.<name>]` tables"),
        });
    }
    let providers = match table.get("providers") {
        None => return report,
        Some(toml::Value::Table(providers)) => providers,
        Some(_) => {
            report.problems.push(Problem {
                provider: None,
                message: "`providers` must be a table of `[providers.<name>]` entries".to_owned(),
            });
            return report;
        }
    };
    for (name, entry) in providers {
        report.providers.push(name.clone());
        let mut problem = |message: String| {
            report.problems.push(Problem {
                provider: Some(name.clone()),
                message,
            })
        };
        let toml::Value::Table(fields) = entry else {
            problem("the entry must be a table".to_owned());
            continue;
        };
        let mut fields = fields.clone();
        for key in CREDENTIAL_KEYS {
            if fields.remove(*key).is_some() {
                problem(format!(
                    "`{key}`: client credentials are not catalog data; set them in the server configuration \
                     under `[providers.{name}]`"
                ));
            }
        }
        let from_preset = fields.contains_key(PRESET_KEY);
        let raw = match raw_catalog_entry(&fields) {
            Ok(raw) => raw,
            Err(message) => {
                problem(message);
                continue;
            }
        };
        match validate(name.clone(), raw) {
            Ok(spec) => {
                for message in completeness(&spec) {
                    problem(if from_preset {
                        format!("{message} (after applying `{PRESET_KEY}`)")
                    } else {
                        message
                    });
                }
            }
            Err(errors) => {
                for error in errors {
                    problem(match error {
                        super::CatalogError::Invalid { reason, .. } => reason,
                        other => other.to_string(),
                    });
                }
            }
        }
    }
    report
}

/// What a valid entry still lacks to be complete.
fn completeness(spec: &ProviderSpec) -> Vec<String> {
    let mut missing = Vec::new();
    let urls: [(&str, Option<&Url>); 8] = [
        ("docs_url", spec.docs_url.as_ref()),
        ("registration_url", spec.registration_url.as_ref()),
        ("issuer", spec.issuer.as_ref()),
        ("authorization_url", spec.authorization_url.as_ref()),
        ("token_url", spec.token_url.as_ref()),
        ("refresh_url", spec.refresh_url.as_ref()),
        ("revocation_url", spec.revocation_url.as_ref()),
        ("revocation_user_page", spec.revocation_user_page.as_ref()),
    ];
    for (field, url) in urls {
        if let Some(url) = url {
            if url.scheme() != "https" {
                missing.push(format!(
                    "`{field}` must use https in a catalog meant for production (plain http on loopback is for development): {url}"
                ));
            }
        }
    }
    if let Some(super::AccountSource::Endpoint { url, .. }) = &spec.account {
        if url.scheme() != "https" {
            missing.push(format!("`account.url` must use https: {url}"));
        }
    }
    if spec.docs_url.is_none() {
        missing.push("`docs_url` is missing: link the provider's OAuth documentation".to_owned());
    }
    if spec.registration_url.is_none() {
        missing
            .push("`registration_url` is missing: the provider's page where an operator registers the app".to_owned());
    }
    if spec.account.is_none() {
        missing.push(
            "`account` is missing: say where the upstream account comes from (`[providers.<name>.account]` with \
             `source = \"id_token\"`, `\"endpoint\"` or `\"token_response\"`)"
                .to_owned(),
        );
    }
    if spec.api_hosts.is_empty() {
        missing.push("`api_hosts` is missing or empty: the hosts the provider's API is served from".to_owned());
    }
    if spec.issues_refresh_tokens && !spec.refresh_rotation_explicit {
        missing.push(
            "`refresh_rotation` is not stated: say whether a refresh keeps (\"none\"), rotates with a reuse grace \
             (\"rotating\") or rotates strictly (\"strict\") the refresh token"
                .to_owned(),
        );
    }
    missing
}
