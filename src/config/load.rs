//! Loading: defaults → TOML file → `TOKENVAULT_*` environment, then the
//! files the configuration points to, then validation.

use super::{ApiKeyConfig, Config};
use crate::transport::CertSubject;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Environment variables with this prefix override the file.
pub const ENV_PREFIX: &str = "TOKENVAULT_";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable does not parse or names an unknown key.
    #[error("configuration: {}", parse_problems(.0))]
    Parse(Box<figment::Error>),
    /// A file the configuration points to cannot be read.
    #[error("configuration: cannot read {what} `{path}`: {source}")]
    Read {
        /// What the file holds.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Values that parse but cannot work together; every problem is listed.
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Every problem a figment error holds (its `Display` shows only the first),
/// each naming its key as written (`consent.foo`, not figment's `default.consent.foo`).
fn parse_problems(error: &figment::Error) -> String {
    let problems: Vec<String> = error
        .clone()
        .into_iter()
        .map(|problem| problem.to_string().replace("key \"default.", "key \""))
        .collect();
    match problems.as_slice() {
        [one] => one.clone(),
        many => format!("{} problems:\n  - {}", many.len(), many.join("\n  - ")),
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        ConfigError::Parse(Box::new(error))
    }
}

/// Loads and validates the configuration from `file` (if any) and the process environment.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, &env)
}

/// Like [`load`], with the environment given explicitly (for tests).
pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Read {
                what: "configuration file",
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(EnvOverrides::from_pairs(env));
    let mut config: Config = extract_reporting_all(&figment).map_err(ConfigError::Parse)?;
    resolve_files(&mut config)?;
    validate(&config)?;
    Ok(config)
}

/// Most keys set aside while collecting parse problems (a bound, not a limit anyone meets).
const MAX_PARSE_PROBLEMS: usize = 64;

/// Extracts the configuration, reporting every key that does not parse:
/// serde stops at the first unknown key or wrongly typed value, so each
/// offending key is set aside and the rest parsed again until nothing more
/// is found, and all the problems are reported together.
fn extract_reporting_all(figment: &Figment) -> Result<Config, Box<figment::Error>> {
    let first = match figment.extract_lossy::<Config>() {
        Ok(config) => return Ok(config),
        Err(error) => error,
    };
    let Ok(mut data) = figment.data() else {
        return Err(Box::new(first));
    };
    let mut all = first.clone();
    let mut last = first;
    for _ in 0..MAX_PARSE_PROBLEMS {
        let mut removed = false;
        for problem in last.clone() {
            removed |= set_aside(&mut data, &problem);
        }
        if !removed {
            break;
        }
        let retry = data.iter().fold(Figment::new(), |figment, (profile, dict)| {
            figment.merge(figment::providers::Serialized::from(dict.clone(), profile.clone()))
        });
        match retry.extract_lossy::<Config>() {
            Ok(_) => break,
            Err(error) => {
                // Name the file or variable each key came from, not the re-parse.
                for mut problem in error.clone() {
                    problem.metadata = figment.find_metadata(&problem_key(&problem).join(".")).cloned();
                    all = all.chain(problem);
                }
                last = error;
            }
        }
    }
    Err(Box::new(all))
}

/// The path of the key `problem` is about (an unknown field's own name included).
fn problem_key(problem: &figment::Error) -> Vec<String> {
    let mut path = problem.path.clone();
    if let figment::error::Kind::UnknownField(field, _) = &problem.kind {
        if path.last() != Some(field) {
            path.push(field.clone());
        }
    }
    path
}

/// Removes the key `problem` is about from `data`; `false` when it cannot be found.
fn set_aside(data: &mut Map<Profile, Dict>, problem: &figment::Error) -> bool {
    let mut path = problem_key(problem);
    let profile = problem.profile.clone().unwrap_or(Profile::Default);
    let Some(dict) = data.get_mut(&profile) else {
        return false;
    };
    let profile_name = profile.as_str().as_str();
    if path.first().is_some_and(|p| p.as_str() == profile_name) && !dict.contains_key(profile_name) {
        path.remove(0);
    }
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    // Inside an array of tables (`[[auth.api_keys]]`) the walk stops: the
    // problem's nearest table key is set aside whole.
    let mut here = dict;
    for key in parents {
        if !matches!(here.get(key), Some(Value::Dict(..))) {
            return here.remove(key).is_some();
        }
        match here.get_mut(key) {
            Some(Value::Dict(_, inner)) => here = inner,
            _ => return false,
        }
    }
    here.remove(last).is_some()
}

/// Reads what the configuration keeps in separate files (API key hashes,
/// client secrets) and normalises `public_url` to end in `/`.
fn resolve_files(config: &mut Config) -> Result<(), ConfigError> {
    if let Some(url) = config.server.public_url.as_mut() {
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
    }
    if let Some(path) = &config.auth.api_keys_file {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ApiKeysFile {
            #[serde(default)]
            api_keys: Vec<ApiKeyConfig>,
        }
        let text = read_text("API keys file", path)?;
        let parsed: ApiKeysFile = toml::from_str(&text)
            .map_err(|error| ConfigError::Invalid(vec![format!("API keys file `{}`: {error}", path.display())]))?;
        config.auth.api_keys.extend(parsed.api_keys);
    }
    for (name, client) in &mut config.providers.clients {
        if let Some(path) = &client.client_secret_file {
            if client.client_secret.is_some() {
                return Err(ConfigError::Invalid(vec![format!(
                    "providers.{name}: set client_secret or client_secret_file, not both"
                )]));
            }
            let text = read_text("client secret file", path)?;
            client.client_secret = Some(SecretString::from(text.trim().to_owned()));
        }
    }
    Ok(())
}

fn read_text(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Checks values that parse but cannot work, and lists every problem at once.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (name, url) in [
        ("database_url", &config.database_url),
        ("key_database_url", &config.key_database_url),
    ] {
        if let Some(url) = url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                problems.push(format!("{name} must start with postgres://, postgresql:// or sqlite:"));
            }
        }
    }
    if let Some(url) = &config.server.public_url {
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            problems.push("server.public_url must be an http:// or https:// URL".to_owned());
        }
    }
    if tracing_subscriber::EnvFilter::try_new(&config.log.level).is_err() {
        problems.push(format!("log.level `{}` is not a valid filter", config.log.level));
    }
    if config.tracing.otlp_endpoint.is_some() && !cfg!(feature = "otel") {
        problems.push("tracing.otlp_endpoint needs a build with the `otel` cargo feature".to_owned());
    }
    if !(0.0..=1.0).contains(&config.tracing.sample_ratio) {
        problems.push("tracing.sample_ratio must be between 0 and 1".to_owned());
    }
    for (name, value) in [
        ("database.lock_timeout_seconds", config.database.lock_timeout_seconds),
        (
            "database.statement_timeout_seconds",
            config.database.statement_timeout_seconds,
        ),
        (
            "database.idle_in_transaction_timeout_seconds",
            config.database.idle_in_transaction_timeout_seconds,
        ),
    ] {
        if value == 0 {
            problems.push(format!("{name} must be at least 1"));
        }
    }
    if config.database.max_connections < 2 {
        problems.push("database.max_connections must be at least 2".to_owned());
    }
    if config.broker.store_readers == 0 || config.broker.store_readers > config.database.max_connections as usize {
        problems.push(format!(
            "broker.store_readers must be between 1 and database.max_connections ({})",
            config.database.max_connections
        ));
    }
    if let Some(active) = &config.keys.active {
        if !crate::vault::is_valid_key_id(active) {
            problems.push("keys.active must be 1-64 characters of A-Z a-z 0-9 . _ -".to_owned());
        }
    }
    validate_keys(&config.keys, &mut problems);
    validate_epochs(config, &mut problems);
    validate_callers(config, &mut problems);
    for origin in &config.consent.allowed_return_origins {
        if let Err(reason) = crate::consent::return_url::parse_origin(origin) {
            problems.push(format!("consent.allowed_return_origins: `{origin}` {reason}"));
        }
    }
    if config.consent.ttl_seconds == 0 || config.consent.ttl_seconds > 3600 {
        problems.push("consent.ttl_seconds must be between 1 and 3600".to_owned());
    }
    if config.consent.confirmation_ttl_seconds == 0 || config.consent.confirmation_ttl_seconds > 3600 {
        problems.push("consent.confirmation_ttl_seconds must be between 1 and 3600".to_owned());
    }
    for tenant in &config.consent.tenants_without_confirmation {
        if tenant.is_empty() || tenant.len() > 128 {
            problems.push(format!(
                "consent.tenants_without_confirmation: `{tenant}` is not a tenant id (1-128 characters)"
            ));
        }
    }
    if config.broker.max_lease_seconds == 0 {
        problems.push("broker.max_lease_seconds must be positive".to_owned());
    }
    if config.broker.refresh_attempts == 0 {
        problems.push("broker.refresh_attempts must be at least 1".to_owned());
    }
    if config.provider_http.timeout_seconds == 0 || config.provider_http.max_response_bytes < 1024 {
        problems.push("provider_http needs a positive timeout and max_response_bytes ≥ 1024".to_owned());
    }
    if config.lifecycle.purge_after_days == 0 || config.lifecycle.audit_retention_days == 0 {
        problems.push("lifecycle.purge_after_days and audit_retention_days must be positive".to_owned());
    }
    if config.lifecycle.retention_batch_size == 0 {
        problems.push("lifecycle.retention_batch_size must be at least 1".to_owned());
    }
    validate_events(&config.events, &mut problems);
    for (name, client) in &config.providers.clients {
        if client.client_id.trim().is_empty() {
            problems.push(format!("providers.{name}.client_id is empty"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn validate_events(events: &super::EventsConfig, problems: &mut Vec<String>) {
    if events.retention_days == 0 {
        problems.push("events.retention_days must be positive".to_owned());
    }
    if events.heartbeat_seconds == 0 || events.poll_interval_ms == 0 || events.max_watchers == 0 {
        problems.push("events.heartbeat_seconds, poll_interval_ms and max_watchers must be positive".to_owned());
    }
    let hooks = &events.webhooks;
    if hooks.request_timeout_seconds == 0 || hooks.give_up_after_seconds == 0 || hooks.retry_initial_ms == 0 {
        problems.push(
            "events.webhooks.request_timeout_seconds, give_up_after_seconds and retry_initial_ms must be positive"
                .to_owned(),
        );
    }
    if hooks.max_response_bytes == 0 || hooks.max_endpoints_per_tenant == 0 {
        problems.push("events.webhooks.max_response_bytes and max_endpoints_per_tenant must be positive".to_owned());
    }
    if let Err(problem) = crate::events::webhook::AddressPolicy::new(&hooks.allowed_networks, false) {
        problems.push(problem);
    }
}

fn validate_keys(keys: &super::KeysConfig, problems: &mut Vec<String>) {
    use super::KeysBackend;
    let file_fields = keys.file.is_some() || keys.inline.is_some() || keys.active.is_some();
    match keys.backend {
        KeysBackend::AwsKms => match &keys.kms {
            None => problems.push("keys.backend = \"aws-kms\" needs [keys.kms] with key_id and region".to_owned()),
            Some(kms) => {
                if file_fields {
                    problems.push(
                        "keys.file, keys.inline and keys.active belong to backend = \"file\"; with aws-kms set keys.kms.key_id"
                            .to_owned(),
                    );
                }
                if kms.key_id.trim().is_empty() || kms.older_key_ids.iter().any(|id| id.trim().is_empty()) {
                    problems.push("keys.kms.key_id and keys.kms.older_key_ids must not be empty".to_owned());
                }
                if kms.region.trim().is_empty() {
                    problems.push("keys.kms.region must be set (for example \"eu-west-1\")".to_owned());
                }
            }
        },
        KeysBackend::Pkcs11 => match &keys.pkcs11 {
            None => problems.push(
                "keys.backend = \"pkcs11\" needs [keys.pkcs11] with module, token_label, pin_file and key_label"
                    .to_owned(),
            ),
            Some(hsm) => {
                if file_fields {
                    problems.push(
                        "keys.file, keys.inline and keys.active belong to backend = \"file\"; with pkcs11 set keys.pkcs11.key_label"
                            .to_owned(),
                    );
                }
                if !hsm.module.is_absolute() {
                    problems.push(format!(
                        "keys.pkcs11.module must be the absolute path of the PKCS#11 library (got {})",
                        hsm.module.display()
                    ));
                }
                if hsm.token_label.trim().is_empty() || hsm.token_label.len() > 32 {
                    problems.push("keys.pkcs11.token_label must be 1-32 characters (a PKCS#11 token label)".to_owned());
                }
                for label in std::iter::once(&hsm.key_label).chain(&hsm.older_key_labels) {
                    if !crate::vault::is_valid_key_id(label) {
                        problems.push(format!(
                            "keys.pkcs11 key label `{label}` must be 1-64 of A-Z a-z 0-9 . _ -"
                        ));
                    }
                }
            }
        },
        KeysBackend::File => {}
    }
    if keys.backend != KeysBackend::AwsKms && keys.kms.is_some() {
        problems.push("[keys.kms] is set but keys.backend is not \"aws-kms\"".to_owned());
    }
    if keys.backend != KeysBackend::Pkcs11 && keys.pkcs11.is_some() {
        problems.push("[keys.pkcs11] is set but keys.backend is not \"pkcs11\"".to_owned());
    }
}

/// KEK epochs: the whole window (rotate + destroy + the keyring's own
/// destruction delay) must fit in the promise `keys.shred_within_days`.
fn validate_epochs(config: &Config, problems: &mut Vec<String>) {
    let keys = &config.keys;
    let rotate = keys.rotation_days(super::Setup::of(config));
    if keys.epoch_check_seconds == 0 {
        problems.push("keys.epoch_check_seconds must be at least 1".to_owned());
    }
    if rotate == 0 {
        return;
    }
    if keys.active.is_some() {
        problems.push(
            "keys.active cannot be set with KEK epochs (keys.rotate_every_days > 0): the newest epoch is the active key"
                .to_owned(),
        );
    }
    if keys.destroy_retired_after_days == 0 {
        problems.push(
            "keys.destroy_retired_after_days must be at least 1 (a retired key is destroyed only after every data key was re-wrapped away from it)"
                .to_owned(),
        );
    }
    let delay = keys.destruction_delay_days();
    let window = u64::from(rotate) + u64::from(keys.destroy_retired_after_days) + u64::from(delay);
    if window > u64::from(keys.shred_within_days) {
        let delay_part = if delay > 0 {
            format!(" + keys.kms.deletion_pending_days ({delay})")
        } else {
            String::new()
        };
        problems.push(format!(
            "KEK epochs would keep backups readable for up to {window} days after a token's data key is destroyed: \
             keys.rotate_every_days ({rotate}) + keys.destroy_retired_after_days ({}){delay_part} must be at most \
             keys.shred_within_days ({})",
            keys.destroy_retired_after_days, keys.shred_within_days
        ));
    }
    if let Some(kms) = &keys.kms {
        if !(7..=30).contains(&kms.deletion_pending_days) {
            problems.push("keys.kms.deletion_pending_days must be between 7 and 30 (AWS KMS's limits)".to_owned());
        }
    }
}

fn validate_callers(config: &Config, problems: &mut Vec<String>) {
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for key in &config.auth.api_keys {
        if !names.insert(key.name.as_str()) {
            problems.push(format!("auth: caller name `{}` is used twice", key.name));
        }
        if key.sha256.len() != 64 || hex::decode(&key.sha256).is_err() {
            problems.push(format!("auth.api_keys `{}`: sha256 must be 64 hex digits", key.name));
        }
        if !hashes.insert(key.sha256.to_ascii_lowercase()) {
            problems.push(format!(
                "auth.api_keys `{}`: the same key hash is configured twice",
                key.name
            ));
        }
        check_grant(&key.name, &key.roles, &key.tenants, problems);
    }
    let mut cert_subjects = std::collections::HashMap::new();
    for cert in &config.auth.client_certs {
        if !names.insert(cert.name.as_str()) {
            problems.push(format!("auth: caller name `{}` is used twice", cert.name));
        }
        if cert.subject.trim().is_empty() {
            problems.push(format!("auth.client_certs `{}`: subject is empty", cert.name));
        } else {
            match cert.subject.parse::<CertSubject>() {
                Ok(subject) => {
                    if let Some(first) = cert_subjects.insert(subject, cert.name.as_str()) {
                        problems.push(format!(
                            "auth.client_certs `{}`: subject `{}` is already mapped by `{first}`",
                            cert.name, cert.subject
                        ));
                    }
                }
                Err(error) => problems.push(format!("auth.client_certs `{}`: subject {error}", cert.name)),
            }
        }
        check_grant(&cert.name, &cert.roles, &cert.tenants, problems);
    }
    if !config.auth.client_certs.is_empty() && config.tls.as_ref().and_then(|t| t.client_ca_file.as_ref()).is_none() {
        problems.push("auth.client_certs needs tls.client_ca_file (mutual TLS)".to_owned());
    }
    if let Some(tls) = &config.tls {
        if tls.client_crl_file.is_some() && tls.client_ca_file.is_none() {
            problems.push(
                "tls.client_crl_file needs tls.client_ca_file (the CRLs revoke client certificates of those CAs)"
                    .to_owned(),
            );
        }
    }
    let mut subjects = HashSet::new();
    for workload in &config.auth.workloads {
        let name = workload.name.as_deref().unwrap_or(&workload.subject);
        if !names.insert(name) {
            problems.push(format!("auth: caller name `{name}` is used twice"));
        }
        if workload.subject.trim().is_empty() {
            problems.push(format!("auth.workloads `{name}`: subject is empty"));
        }
        if !subjects.insert(workload.subject.as_str()) {
            problems.push(format!(
                "auth.workloads: subject `{}` is mapped twice",
                workload.subject
            ));
        }
        check_grant(name, &workload.roles, &workload.tenants, problems);
    }
    match &config.auth.workload_identity {
        None if !config.auth.workloads.is_empty() => {
            problems.push("auth.workloads needs [auth.workload_identity] (the issuer and audience)".to_owned());
        }
        None => {}
        Some(identity) => validate_workload_identity(identity, problems),
    }
}

fn validate_workload_identity(identity: &super::WorkloadIdentityConfig, problems: &mut Vec<String>) {
    let issuer = &identity.issuer;
    let loopback = match issuer.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if issuer.scheme() != "https" && !(issuer.scheme() == "http" && loopback) {
        problems.push(format!(
            "auth.workload_identity.issuer `{issuer}` must be an https URL (http only on loopback)"
        ));
    }
    if issuer.query().is_some() || issuer.fragment().is_some() {
        problems.push("auth.workload_identity.issuer must have no query or fragment".to_owned());
    }
    if identity.audience.trim().is_empty() {
        problems.push("auth.workload_identity.audience is empty".to_owned());
    }
    if !(256..=65536).contains(&identity.max_token_bytes) {
        problems.push("auth.workload_identity.max_token_bytes must be between 256 and 65536".to_owned());
    }
    if identity.leeway_seconds > 300 {
        problems.push("auth.workload_identity.leeway_seconds is at most 300".to_owned());
    }
    if identity.timeout_seconds == 0 || identity.refresh_interval_seconds == 0 {
        problems
            .push("auth.workload_identity.timeout_seconds and refresh_interval_seconds must be at least 1".to_owned());
    }
    for (what, path) in [
        ("ca_file", &identity.ca_file),
        ("issuer_token_file", &identity.issuer_token_file),
    ] {
        if let Some(path) = path {
            if !path.is_file() {
                problems.push(format!(
                    "auth.workload_identity.{what} `{}` is not a readable file",
                    path.display()
                ));
            }
        }
    }
}

fn check_grant(name: &str, roles: &[super::Role], tenants: &[String], problems: &mut Vec<String>) {
    if roles.is_empty() {
        problems.push(format!("auth: `{name}` has no roles"));
    }
    if tenants.is_empty() {
        problems.push(format!("auth: `{name}` has no tenants (use \"*\" for all)"));
    }
    if tenants.iter().any(|t| t.is_empty()) {
        problems.push(format!("auth: `{name}` lists an empty tenant"));
    }
}

/// Variables with the prefix that are not server configuration.
const CLIENT_VARIABLES: [&str; 3] = ["CONFIG", "ADDR", "API_KEY"];

/// `TOKENVAULT_SECTION__KEY=value` variables as a figment provider.
///
/// Values are parsed like TOML values (so lists work), but scalars stay
/// strings and are converted only where the field wants a number or a
/// boolean: a client id like `1234.5678` must stay text.
struct EnvOverrides {
    dict: Dict,
}

impl EnvOverrides {
    fn from_pairs(env: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // TOKENVAULT_CONFIG names the file; TOKENVAULT_ADDR and TOKENVAULT_API_KEY belong to clients (examples/).
            if key.is_empty() || CLIENT_VARIABLES.iter().any(|name| key.eq_ignore_ascii_case(name)) {
                continue;
            }
            let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            let value = match raw.parse::<Value>() {
                Ok(parsed @ (Value::Array(..) | Value::Dict(..))) => parsed,
                _ => Value::from(raw.clone()),
            };
            insert_nested(&mut dict, &path, value);
        }
        Self { dict }
    }
}

fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}*` environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = Map::new();
        map.insert(Profile::Default, self.dict.clone());
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_valid() {
        let config = load_from(None, &[]).unwrap();
        assert!(config.database_url.is_none());
        assert_eq!(config.server.grpc_listen.port(), 50051);
        assert_eq!(config.lifecycle.purge_after_days, 30);
    }

    #[test]
    fn environment_overrides_file() {
        let f = file("[server]\ngrpc_listen = \"127.0.0.1:1111\"\n[broker]\nmax_lease_seconds = 60\n");
        let config = load_from(
            Some(f.path()),
            &env(&[
                ("TOKENVAULT_SERVER__GRPC_LISTEN", "127.0.0.1:2222"),
                ("TOKENVAULT_DATABASE_URL", "postgres://u:pw@db/x"),
                ("TOKENVAULT_PROVIDERS__SLACK__CLIENT_ID", "1234.5678"),
                (
                    "TOKENVAULT_CONSENT__ALLOWED_RETURN_ORIGINS",
                    "[\"https://app.example.com\"]",
                ),
                ("TOKENVAULT_CONFIG", "/ignored.toml"),
                ("TOKENVAULT_API_KEY", "a client's key"),
                ("TOKENVAULT_ADDR", "http://127.0.0.1:50051"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.grpc_listen.port(), 2222);
        assert_eq!(config.broker.max_lease_seconds, 60);
        assert_eq!(config.providers.clients["slack"].client_id, "1234.5678");
        assert_eq!(config.consent.allowed_return_origins, vec!["https://app.example.com"]);
        assert!(!format!("{config:?}").contains("pw@"), "database URL must be redacted");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let f = file("[server]\ngrpc_lisen = \"127.0.0.1:1\"\n");
        let error = load_from(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(error.contains("grpc_lisen"), "{error}");
        let error = load_from(None, &env(&[("TOKENVAULT_BROKR__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("brokr"), "{error}");
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_reported_at_once() {
        let f = file("[server]\ngrpc_lisen = \"127.0.0.1:1\"\n[broker]\nmax_lease_secs = 5\nrefresh_attempts = \"three\"\n[consent]\nttl_seconds = 600\n");
        let error = load_from(Some(f.path()), &env(&[("TOKENVAULT_BROKR__X", "1")]))
            .unwrap_err()
            .to_string();
        for expected in ["grpc_lisen", "max_lease_secs", "broker.refresh_attempts", "brokr"] {
            assert!(error.contains(expected), "missing `{expected}` in: {error}");
        }
        assert!(error.contains("4 problems"), "{error}");
        assert!(!error.contains("default."), "{error}");
    }

    #[test]
    fn a_parse_problem_names_its_key_as_written() {
        let f = file("[consent]\nfoo = 1\n");
        let error = load_from(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(error.contains("for key \"consent.foo\""), "{error}");
        assert!(!error.contains("default."), "{error}");
    }

    #[test]
    fn every_problem_is_listed() {
        let f = file(
            "database_url = \"mysql://x\"\n[log]\nlevel = \"[[[\"\n[[auth.api_keys]]\nname = \"a\"\nsha256 = \"zz\"\nroles = []\ntenants = []\n",
        );
        let error = load_from(Some(f.path()), &[]).unwrap_err().to_string();
        for expected in ["database_url", "log.level", "64 hex digits", "no roles", "no tenants"] {
            assert!(error.contains(expected), "missing `{expected}` in: {error}");
        }
    }

    #[test]
    fn client_certificate_subjects_must_be_typed_and_mapped_once() {
        let entry = |name: &str, subject: &str| {
            format!("[[auth.client_certs]]\nname = \"{name}\"\nsubject = \"{subject}\"\nroles = [\"agent\"]\ntenants = [\"*\"]\n")
        };
        let tls = "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n";
        let f = file(&format!(
            "{tls}{}{}{}{}",
            entry("untyped", "spiffe://x/agent"),
            entry("first", "uri:spiffe://x/agent"),
            entry("again", "uri:spiffe://x/agent"),
            entry("by-cn", "cn:spiffe://x/agent"),
        ));
        let error = load_from(Some(f.path()), &[]).unwrap_err().to_string();
        for expected in [
            "auth.client_certs `untyped`: subject `spiffe://x/agent` has no type",
            "`uri:<URI SAN>`",
            "auth.client_certs `again`: subject `uri:spiffe://x/agent` is already mapped by `first`",
        ] {
            assert!(error.contains(expected), "missing `{expected}` in: {error}");
        }
        assert!(
            !error.contains("by-cn"),
            "the same value of another type is another subject: {error}"
        );

        let f = file(&format!(
            "{tls}{}{}",
            entry("a", "dns:a.example"),
            entry("b", "cn:a.example")
        ));
        load_from(Some(f.path()), &[]).unwrap();
    }

    #[test]
    fn files_are_read() {
        let keys = file(&format!(
            "[[api_keys]]\nname = \"agents\"\nsha256 = \"{}\"\nroles = [\"agent\"]\ntenants = [\"acme\"]\n",
            "ab".repeat(32)
        ));
        let secret = file("shh-from-file\n");
        let f = file(&format!(
            "[auth]\napi_keys_file = \"{}\"\n[providers.google]\nclient_id = \"g\"\nclient_secret_file = \"{}\"\n",
            keys.path().display(),
            secret.path().display()
        ));
        let config = load_from(Some(f.path()), &[]).unwrap();
        assert_eq!(config.auth.api_keys.len(), 1);
        assert_eq!(config.auth.api_keys[0].name, "agents");
        let secret = config.providers.clients["google"].client_secret.as_ref().unwrap();
        assert_eq!(secret.expose_secret(), "shh-from-file");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let error = load_from(Some(Path::new("/nonexistent/tokenvault.toml")), &[]).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/tokenvault.toml"), "{error}");
    }
}
