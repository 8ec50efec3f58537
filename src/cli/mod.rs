//! What each `tokenvault` subcommand does (argument parsing is in `main.rs`).

use crate::app::{App, StartupError};
use crate::clock::{SharedClock, SystemClock};
use crate::config;
use secrecy::ExposeSecret;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

mod catalog;
mod keys;

/// A parsed subcommand.
#[derive(Debug)]
pub enum Action {
    /// `serve`.
    Serve {
        /// Apply migrations at start.
        migrate: bool,
    },
    /// `migrate`.
    Migrate,
    /// `retention`.
    Retention {
        /// RFC 3339 time to use as now.
        now: Option<String>,
        /// Count only.
        dry_run: bool,
        /// Accept a future `now` without `dry_run`.
        force: bool,
    },
    /// `keys rotate`.
    KeysRotate,
    /// `keys generate --id`.
    KeysGenerate {
        /// New key id.
        id: String,
    },
    /// `keys status`.
    KeysStatus,
    /// `keys init-hsm`.
    KeysInitHsm,
    /// `keys run`.
    KeysRun {
        /// RFC 3339 time to use as now.
        now: Option<String>,
        /// Accept a future `now`.
        force: bool,
    },
    /// `api-key create`.
    ApiKeyCreate {
        /// Caller name.
        name: String,
        /// Roles.
        roles: Vec<String>,
        /// Tenants.
        tenants: Vec<String>,
    },
    /// `api-key hash`.
    ApiKeyHash,
    /// `check-config`.
    CheckConfig,
    /// `catalog check [FILE]`.
    CatalogCheck {
        /// An operator catalog file; the built-in catalog when absent.
        file: Option<std::path::PathBuf>,
    },
    /// `catalog list`.
    CatalogList,
    /// `catalog show NAME`.
    CatalogShow {
        /// The provider's catalog name.
        name: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Start-up.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
    /// The command ran to its end but parts of it failed (a retention pass
    /// with failures); `tokenvault` exits with status 2.
    #[error("{0}")]
    Incomplete(String),
}

impl CliError {
    /// The process exit status: 2 for [`CliError::Incomplete`], otherwise 1.
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::Incomplete(_) => 2,
            _ => 1,
        }
    }
}

/// Runs one subcommand.
pub async fn run(config_path: Option<&Path>, action: Action) -> Result<(), CliError> {
    match action {
        Action::KeysGenerate { id } => return keys_generate(&id),
        Action::ApiKeyCreate { name, roles, tenants } => return api_key_create(&name, &roles, &tenants),
        Action::ApiKeyHash => return api_key_hash(),
        Action::CatalogCheck { file } => return catalog::check(file.as_deref()),
        Action::CatalogList => return catalog::list(config_path),
        Action::CatalogShow { name } => return catalog::show(config_path, &name),
        _ => {}
    }
    let mut config = config::load(config_path)?;
    let serving = matches!(action, Action::Serve { .. });
    let setup = config::Setup::of(&config);
    let dev = match setup {
        config::Setup::Development => config::prepare_development_defaults(&mut config, serving)
            .map_err(|e| CliError::Other(format!("development setup in {}: {e}", config.data_dir.display())))?,
        config::Setup::Production => {
            let needs = if serving || matches!(action, Action::CheckConfig) {
                config::Needs::Callers
            } else {
                config::Needs::Storage
            };
            config::check_production(&config, needs)?;
            config::DevSetup::default()
        }
    };
    if serving
        || matches!(
            action,
            Action::Migrate | Action::KeysRotate | Action::KeysRun { .. } | Action::Retention { .. }
        )
    {
        crate::telemetry::logging::init(&config).map_err(CliError::Other)?;
    }
    if setup == config::Setup::Production && config::key_table_is_shared(&config) {
        tracing::warn!("{}", config::SHARED_KEY_TABLE_WARNING);
    }
    if setup == config::Setup::Production && config.keys.rotation_days(setup) == 0 {
        tracing::warn!("{}", config::NO_EPOCHS_WARNING);
    }
    let clock: SharedClock = Arc::new(SystemClock);
    match action {
        Action::Serve { migrate } => {
            if dev.is_active() {
                for note in &dev.notes {
                    tracing::warn!("DEVELOPMENT SETUP: {note}");
                }
                tracing::warn!(
                    "DEVELOPMENT SETUP: do not use this for real users; configure database_url, keys and auth (see README)"
                );
            }
            let migrate = migrate && config.database.run_migrations;
            let app = Arc::new(App::build(config, clock, migrate).await?);
            let server = crate::api::start(app).await?;
            wait_for_shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            server.shutdown().await;
            crate::telemetry::logging::shutdown();
            Ok(())
        }
        Action::Migrate => {
            let backend = crate::app::migrate_databases(&config).await?;
            tracing::info!(backend, "migrations applied");
            println!("migrations applied ({backend})");
            Ok(())
        }
        Action::Retention { now, dry_run, force } => {
            let now = parse_now(now.as_deref())?;
            if !dry_run {
                keys::check_future_now(
                    now,
                    force,
                    "purges users, connections and data keys before they are due",
                )?;
            }
            let app = App::build(config, clock, false).await?;
            let result = app.sweeper.run_once(now, dry_run).await;
            app.audit.shutdown().await;
            match result {
                Ok(Some(report)) => {
                    tracing::info!(
                        dry_run,
                        users = report.users_purged,
                        audit = report.audit_events_purged,
                        failures = report.failure_count(),
                        "retention pass done"
                    );
                    println!("{report}");
                    if report.is_complete() {
                        Ok(())
                    } else {
                        Err(CliError::Incomplete(format!(
                            "retention pass finished with {} failures ({}); the rest was done, the next pass retries them",
                            report.failure_count(),
                            report
                                .failures
                                .iter()
                                .map(|f| format!("{}: {}", f.category, f.count))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )))
                    }
                }
                Ok(None) => Err(CliError::Other(
                    "another process holds the sweeper lock (a replica's sweeper is running); try again shortly"
                        .to_owned(),
                )),
                Err(error) => Err(CliError::Other(format!("retention failed: {error}"))),
            }
        }
        Action::KeysRotate => {
            let app = App::build(config, clock, false).await?;
            let actor = crate::lifecycle::Actor {
                name: "tokenvault keys rotate",
                tenants: &crate::store::TenantScope::All,
                request_id: None,
            };
            let result = app.lifecycle.rotate_keys(&actor).await;
            app.audit.shutdown().await;
            let report = result.map_err(|e| CliError::Other(format!("key rotation failed: {e}")))?;
            println!(
                "re-wrapped {} data keys under `{}` ({} already were)",
                report.rewrapped, report.active_kek, report.unchanged
            );
            Ok(())
        }
        Action::KeysStatus => {
            let app = App::build(config, clock, false).await?;
            let status = app
                .vault
                .key_status(app.clock.now())
                .await
                .map_err(StartupError::from)?;
            print!("{}", keys::render_status(&status, app.clock.now()));
            Ok(())
        }
        Action::KeysRun { now, force } => {
            let now = parse_now(now.as_deref())?;
            keys::check_future_now(
                now,
                force,
                "destroys retired keys before they are due (backups taken since become unreadable early)",
            )?;
            let app = App::build(config, clock, false).await?;
            let at = now.unwrap_or_else(|| app.clock.now());
            let result = app.vault.epoch_pass(at).await;
            app.audit.shutdown().await;
            keys::report_pass(result)
        }
        Action::KeysInitHsm => {
            let hsm = match (config.keys.backend, &config.keys.pkcs11) {
                (config::KeysBackend::Pkcs11, Some(hsm)) => hsm,
                _ => {
                    return Err(CliError::Other(
                        "keys init-hsm needs keys.backend = \"pkcs11\" with [keys.pkcs11]".to_owned(),
                    ))
                }
            };
            let created = crate::vault::Pkcs11Keyring::create_configured_key(hsm)
                .await
                .map_err(|e| CliError::Other(format!("keys init-hsm: {e}")))?;
            if created {
                println!(
                    "created AES-256 key `{}` on token `{}` (sensitive, not extractable)",
                    hsm.key_label, hsm.token_label
                );
            } else {
                println!("key `{}` is already on token `{}`", hsm.key_label, hsm.token_label);
            }
            Ok(())
        }
        Action::CheckConfig => {
            // With KEK epochs the active key is the newest epoch's, not always the configured one.
            let (epochs, unread) = crate::app::epochs_for_check(&config).await;
            if let Some(reason) = unread {
                eprintln!("note: {reason}; checking the configured key-encryption key alone");
            }
            // Every check start-up makes, each problem reported (not only the first).
            let mut problems = Vec::new();
            if let Err(error) = crate::app::keyring_from_config(&config, &epochs).await {
                problems.push(error.to_string());
            }
            // A broken catalog file is one problem; the providers are still checked against the built-in catalog.
            let catalog = match crate::app::catalog_from_config(&config) {
                Ok(catalog) => Some(catalog),
                Err(error) => {
                    problems.push(error.to_string());
                    crate::consent::catalog::Catalog::builtin().ok()
                }
            };
            if let Some(catalog) = catalog {
                if let Err(error) = crate::app::providers_from_config(&config, catalog).await {
                    problems.push(error.to_string());
                }
            }
            if let Err(error) = crate::consent::return_url::ReturnUrlPolicy::new(&config.consent.allowed_return_origins)
            {
                problems.push(error);
            }
            if let Some(identity) = &config.auth.workload_identity {
                if let Err(error) = crate::auth::WorkloadVerifier::from_config(identity) {
                    problems.push(error);
                }
            }
            // The TLS files as the listeners load them: certificate, key, client CA and CRLs.
            if let Some(tls) = &config.tls {
                if let Err(error) = crate::transport::TlsAcceptor::load(tls) {
                    problems.push(error.to_string());
                }
            }
            if !problems.is_empty() {
                return Err(CliError::Other(format!(
                    "configuration is invalid:\n  - {}",
                    problems.join("\n  - ")
                )));
            }
            if setup == config::Setup::Production && config::key_table_is_shared(&config) {
                eprintln!("warning: {}", config::SHARED_KEY_TABLE_WARNING);
            }
            println!("configuration is valid");
            Ok(())
        }
        Action::KeysGenerate { .. }
        | Action::ApiKeyCreate { .. }
        | Action::ApiKeyHash
        | Action::CatalogCheck { .. }
        | Action::CatalogList
        | Action::CatalogShow { .. } => Ok(()),
    }
}

/// Parses `--now` (RFC 3339).
fn parse_now(text: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, CliError> {
    text.map(|text| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| CliError::Other(format!("--now `{text}` is not an RFC 3339 time: {e}")))
    })
    .transpose()
}

fn keys_generate(id: &str) -> Result<(), CliError> {
    if !crate::vault::is_valid_key_id(id) {
        return Err(CliError::Other(
            "--id must be 1-64 characters of A-Z a-z 0-9 . _ -".to_owned(),
        ));
    }
    let text = crate::vault::LocalKeyring::generate_file_text(id);
    // Only the [[keys]] entry: the operator appends it to the key file and moves `active` when ready.
    let entry = text.split("[[keys]]").nth(1).unwrap_or_default();
    println!("[[keys]]{entry}");
    Ok(())
}

fn api_key_create(name: &str, roles: &[String], tenants: &[String]) -> Result<(), CliError> {
    for role in roles {
        if !matches!(role.as_str(), "agent" | "platform" | "admin") {
            return Err(CliError::Other(format!(
                "unknown role `{role}` (agent, platform or admin)"
            )));
        }
    }
    let key = crate::auth::generate_api_key();
    let hash = crate::auth::hash_api_key(key.expose_secret());
    let quote = |items: &[String]| items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    let fields = format!(
        "name = \"{name}\"\nsha256 = \"{hash}\"\nroles = [{}]\ntenants = [{}]",
        quote(roles),
        quote(tenants)
    );
    eprintln!("# The key is shown once. Give it to the caller; store only one of the entries below.");
    println!("{}", key.expose_secret());
    eprintln!();
    eprintln!("# In the API keys file (auth.api_keys_file):\n[[api_keys]]\n{fields}\n");
    eprintln!("# Or in the main configuration file:\n[[auth.api_keys]]\n{fields}");
    Ok(())
}

fn api_key_hash() -> Result<(), CliError> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::Other(format!("reading standard input: {e}")))?;
    println!("{}", crate::auth::hash_api_key(text.trim()));
    Ok(())
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
