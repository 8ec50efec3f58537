//! Development or production: which one a start is, and what a
//! production-shaped configuration must name itself, because no development
//! default fills a gap outside development.

use super::{Config, ConfigError};
use secrecy::ExposeSecret;

/// How a process is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// No configuration file and no `database_url`: the embedded SQLite file
    /// and generated key files under `data_dir` fill what is missing.
    Development,
    /// Anything else: every part must be configured, nothing is generated.
    Production,
}

impl Setup {
    /// Development is a start whose configuration (file and `TOKENVAULT_*`
    /// variables together) names no database: only then is the embedded
    /// SQLite file used, and only then are keys and API keys generated. A
    /// configuration naming a database (`database_url`,
    /// `TOKENVAULT_DATABASE_URL`) is production-shaped.
    pub fn of(config: &Config) -> Self {
        if config.database_url.is_none() {
            Setup::Development
        } else {
            Setup::Production
        }
    }
}

/// The message when a production-shaped configuration names no key-encryption keys.
pub const NO_KEYS: &str = "no key-encryption keys are configured: set keys.file (a key file; `tokenvault keys \
     generate --id ID` prints an entry), keys.inline (TOKENVAULT_KEYS__INLINE=\"id:base64\"), or \
     keys.backend = \"aws-kms\" with [keys.kms] or \"pkcs11\" with [keys.pkcs11]; a key is generated only in development (no database_url)";

/// The message when a production-shaped `serve` configuration names no caller.
pub const NO_CALLERS: &str = "no callers are configured: set auth.api_keys_file (a file of [[api_keys]]; \
     `tokenvault api-key create` prints an entry), auth.api_keys, auth.client_certs with \
     tls.client_ca_file, or auth.workloads with [auth.workload_identity]; API keys are generated only in development (no database_url)";

/// The message when the key table would share the main database without `keys.allow_shared_database`.
pub const SHARED_KEY_TABLE: &str = "the key table is in the main database (key_database_url is not set, or \
     names the main database): every backup of that database then holds both the wrapped data keys and the \
     ciphertexts they open, so a deleted user's tokens stay readable from any backup while the key-encryption \
     key lives; set key_database_url (TOKENVAULT_KEY_DATABASE_URL) to a separate database whose backups \
     expire within the deletion window, or accept the risk with keys.allow_shared_database = true";

/// The warning logged at every start that accepts a shared key table.
pub const SHARED_KEY_TABLE_WARNING: &str = "keys.allow_shared_database = true: the key table is in the main \
     database, so every backup of it holds both the wrapped data keys and the ciphertexts; a deleted user's \
     tokens stay readable from those backups until the backups expire";

/// The message when a production-shaped configuration has KEK epochs on (the
/// default) with keys tokenvault cannot create or destroy.
pub const EPOCHS_NEED_MANAGED_KEYS: &str = "KEK epochs (keys.rotate_every_days, 7 unless set outside \
     development) need a keyring that can create and destroy keys, and inline keys (keys.inline) cannot be: \
     use keys.file (a key file tokenvault can rewrite), keys.backend = \"aws-kms\" or \"pkcs11\"; or set \
     keys.rotate_every_days = 0, accepting that every backup keeps a deleted user's tokens readable for as long \
     as the key-encryption key lives";

/// The warning logged at every start with KEK epochs turned off outside development.
pub const NO_EPOCHS_WARNING: &str = "keys.rotate_every_days = 0: KEK epochs are off, so a backup of any age \
     opens a deleted user's tokens for as long as the key-encryption key lives";

/// What a command needs besides a database and its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Database and keys (`migrate`, `keys`, `retention`).
    Storage,
    /// Also callers (`serve`, `check-config`).
    Callers,
}

/// Whether the key table shares the main database.
pub fn key_table_is_shared(config: &Config) -> bool {
    match (&config.database_url, &config.key_database_url) {
        (_, None) => true,
        (Some(main), Some(keys)) => main.expose_secret() == keys.expose_secret(),
        (None, Some(_)) => false,
    }
}

/// Checks that a production-shaped configuration names everything
/// development would otherwise fill in; lists every gap at once.
pub fn check_production(config: &Config, needs: Needs) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if !config.keys.is_configured() {
        problems.push(NO_KEYS.to_owned());
    }
    if needs == Needs::Callers
        && config.auth.api_keys.is_empty()
        && config.auth.client_certs.is_empty()
        && config.auth.workloads.is_empty()
    {
        problems.push(NO_CALLERS.to_owned());
    }
    if key_table_is_shared(config) && !config.keys.allow_shared_database {
        problems.push(SHARED_KEY_TABLE.to_owned());
    }
    if config.keys.rotation_days(Setup::Production) > 0
        && config.keys.backend == super::KeysBackend::File
        && config.keys.inline.is_some()
    {
        problems.push(EPOCHS_NEED_MANAGED_KEYS.to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, Role};
    use secrecy::SecretString;

    fn complete() -> Config {
        let mut config = Config {
            database_url: Some(SecretString::from("postgres://db/main".to_owned())),
            key_database_url: Some(SecretString::from("postgres://db/keys".to_owned())),
            ..Config::default()
        };
        config.keys.inline = Some(SecretString::from("k:AAAA".to_owned()));
        config.keys.rotate_every_days = Some(0);
        config.auth.api_keys.push(ApiKeyConfig {
            name: "a".into(),
            sha256: "00".repeat(32),
            roles: vec![Role::Agent],
            tenants: vec!["t".into()],
        });
        config
    }

    fn problems(config: &Config, needs: Needs) -> Vec<String> {
        match check_production(config, needs) {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn development_is_no_database_url() {
        let mut config = Config::default();
        assert_eq!(Setup::of(&config), Setup::Development);
        config.database_url = Some(SecretString::from("sqlite://x.db".to_owned()));
        assert_eq!(Setup::of(&config), Setup::Production);
    }

    #[test]
    fn a_complete_configuration_passes() {
        assert!(problems(&complete(), Needs::Callers).is_empty());
    }

    #[test]
    fn every_gap_is_named() {
        let config = Config {
            database_url: Some(SecretString::from("postgres://db/main".to_owned())),
            ..Config::default()
        };
        assert_eq!(
            problems(&config, Needs::Callers),
            vec![NO_KEYS, NO_CALLERS, SHARED_KEY_TABLE]
        );
        assert_eq!(problems(&config, Needs::Storage), vec![NO_KEYS, SHARED_KEY_TABLE]);
    }

    #[test]
    fn a_shared_key_table_needs_the_flag() {
        let mut config = complete();
        config.key_database_url = None;
        assert_eq!(problems(&config, Needs::Storage), vec![SHARED_KEY_TABLE]);
        config.key_database_url = config.database_url.clone();
        assert_eq!(problems(&config, Needs::Storage), vec![SHARED_KEY_TABLE]);
        config.keys.allow_shared_database = true;
        assert!(problems(&config, Needs::Storage).is_empty());
    }

    #[test]
    fn client_certificates_are_callers() {
        let mut config = complete();
        config.auth.api_keys.clear();
        assert_eq!(problems(&config, Needs::Callers), vec![NO_CALLERS]);
        assert!(problems(&config, Needs::Storage).is_empty());
        config.auth.client_certs.push(crate::config::ClientCertConfig {
            name: "c".into(),
            subject: "dns:agent.example".into(),
            roles: vec![Role::Agent],
            tenants: vec!["t".into()],
        });
        assert!(problems(&config, Needs::Callers).is_empty());
    }

    #[test]
    fn epochs_by_default_need_keys_tokenvault_can_manage() {
        let mut config = complete();
        config.keys.rotate_every_days = None;
        assert_eq!(problems(&config, Needs::Storage), vec![EPOCHS_NEED_MANAGED_KEYS]);
        config.keys.inline = None;
        config.keys.file = Some("/etc/tokenvault/keys.toml".into());
        assert!(problems(&config, Needs::Storage).is_empty());
    }
}
