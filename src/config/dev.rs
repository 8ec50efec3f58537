//! The zero-configuration development setup: an embedded SQLite file, a
//! generated key-encryption key file and generated API keys, all in
//! `data_dir` with owner-only permissions. `serve` logs loudly when any of
//! it is in use.

use super::{ApiKeyConfig, Config, Role};
use crate::auth::api_key::{generate_api_key, hash_api_key};
use crate::vault::LocalKeyring;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the development defaults filled in (for the start-up warning).
#[derive(Debug, Default)]
pub struct DevSetup {
    /// One line per default that was applied.
    pub notes: Vec<String>,
}

impl DevSetup {
    /// Whether anything was defaulted.
    pub fn is_active(&self) -> bool {
        !self.notes.is_empty()
    }
}

#[derive(Deserialize)]
struct DevKeyFile {
    dev_api_keys: Vec<DevKey>,
}

#[derive(Deserialize)]
struct DevKey {
    name: String,
    role: Role,
    key: SecretString,
}

/// Fills in what is missing for a development run: the SQLite database, a
/// key file and (when `with_api_keys`) API keys for each role.
pub fn prepare_development_defaults(config: &mut Config, with_api_keys: bool) -> std::io::Result<DevSetup> {
    let mut setup = DevSetup::default();
    // No KEK epochs in development unless asked for (the generated key file would support them).
    config.keys.rotate_every_days.get_or_insert(0);
    let needs_dir = config.database_url.is_none()
        || !config.keys.is_configured()
        || (with_api_keys && config.auth.api_keys.is_empty() && config.auth.client_certs.is_empty());
    if !needs_dir {
        return Ok(setup);
    }
    create_private_dir(&config.data_dir)?;
    // The browser may come back to a page on this machine, any port, unless origins are configured.
    if config.consent.allowed_return_origins.is_empty() {
        config.consent.allowed_return_origins = crate::consent::return_url::DEVELOPMENT_ORIGINS
            .iter()
            .map(|origin| (*origin).to_owned())
            .collect();
        setup.notes.push(format!(
            "return URLs: {} (consent.allowed_return_origins)",
            crate::consent::return_url::DEVELOPMENT_ORIGINS.join(", ")
        ));
    }
    // Webhooks may go to a receiver on this machine, over plain http, unless networks are configured.
    if config.events.webhooks.allowed_networks.is_empty() {
        config.events.webhooks.allowed_networks = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()];
        config.events.webhooks.allow_http_loopback = true;
        setup
            .notes
            .push("webhooks: loopback endpoints allowed, plain http too (events.webhooks.allowed_networks)".to_owned());
    }
    if config.database_url.is_none() {
        let path = config.data_dir.join("tokenvault.db");
        config.database_url = Some(SecretString::from(format!("sqlite://{}", path.display())));
        setup
            .notes
            .push(format!("database: embedded SQLite file {}", path.display()));
    }
    if !config.keys.is_configured() {
        let path = config.data_dir.join("keys.toml");
        if !path.exists() {
            write_private(&path, LocalKeyring::generate_file_text("dev-1").as_bytes())?;
            setup
                .notes
                .push(format!("key-encryption key: generated {} (mode 0600)", path.display()));
        } else {
            setup
                .notes
                .push(format!("key-encryption key: local file {}", path.display()));
        }
        config.keys.file = Some(path);
    }
    if with_api_keys && config.auth.api_keys.is_empty() && config.auth.client_certs.is_empty() {
        let path = config.data_dir.join("dev-api-keys.toml");
        let file = load_or_create_dev_keys(&path)?;
        for key in &file.dev_api_keys {
            config.auth.api_keys.push(ApiKeyConfig {
                name: key.name.clone(),
                sha256: hash_api_key(key.key.expose_secret()),
                roles: vec![key.role],
                tenants: vec!["*".to_owned()],
            });
        }
        setup.notes.push(format!(
            "API keys: development keys for every role and tenant in {} (mode 0600)",
            path.display()
        ));
    }
    Ok(setup)
}

fn load_or_create_dev_keys(path: &Path) -> std::io::Result<DevKeyFile> {
    if path.exists() {
        let text = std::fs::read_to_string(path)?;
        return toml::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {}", path.display(), e.message()),
            )
        });
    }
    let keys: Vec<DevKey> = [Role::Agent, Role::Platform, Role::Admin]
        .into_iter()
        .map(|role| DevKey {
            name: format!("dev-{}", role.as_str()),
            role,
            key: generate_api_key(),
        })
        .collect();
    let mut text = String::from(
        "# Development API keys, generated by `tokenvault serve` with no configuration.\n\
         # Send one as `authorization: Bearer <key>`. Never use these in production.\n\n",
    );
    for key in &keys {
        text.push_str(&format!(
            "[[dev_api_keys]]\nname = \"{}\"\nrole = \"{}\"\nkey = \"{}\"\n\n",
            key.name,
            key.role.as_str(),
            key.key.expose_secret()
        ));
    }
    write_private(path, text.as_bytes())?;
    Ok(DevKeyFile { dev_api_keys: keys })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a new file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The development key file path for a data directory (documented in the README).
pub fn dev_api_keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-api-keys.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let setup = prepare_development_defaults(&mut config, true).unwrap();
        assert!(setup.is_active());
        assert_eq!(config.auth.api_keys.len(), 3);
        assert_eq!(
            config.consent.allowed_return_origins,
            ["http://localhost:*", "http://127.0.0.1:*"],
            "the browser may come back to this machine"
        );
        assert!(config
            .database_url
            .as_ref()
            .unwrap()
            .expose_secret()
            .starts_with("sqlite://"));
        let keys_path = config.keys.file.clone().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in [keys_path.clone(), dev_api_keys_path(&config.data_dir)] {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
        let hashes: Vec<String> = config.auth.api_keys.iter().map(|k| k.sha256.clone()).collect();
        let mut again = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        prepare_development_defaults(&mut again, true).unwrap();
        let again_hashes: Vec<String> = again.auth.api_keys.iter().map(|k| k.sha256.clone()).collect();
        assert_eq!(hashes, again_hashes, "a second start reuses the same keys");
        assert!(LocalKeyring::from_file(&keys_path, None).is_ok());
    }

    #[test]
    fn configured_setups_are_left_alone() {
        let mut config = Config {
            database_url: Some(SecretString::from("postgres://db/x".to_owned())),
            keys: super::super::KeysConfig {
                inline: Some(SecretString::from("k:AAAA".to_owned())),
                ..Default::default()
            },
            ..Config::default()
        };
        config.auth.api_keys.push(ApiKeyConfig {
            name: "a".into(),
            sha256: "00".repeat(32),
            roles: vec![Role::Agent],
            tenants: vec!["t".into()],
        });
        let setup = prepare_development_defaults(&mut config, true).unwrap();
        assert!(!setup.is_active());
    }
}
