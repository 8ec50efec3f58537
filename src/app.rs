//! The assembled service: configuration, stores, vault, audit, metrics and
//! callers, built once and shared by the gRPC and HTTP listeners.

use crate::api::TenantRateLimit;
use crate::audit::AuditLog;
use crate::auth::{Authenticator, CallerRegistry, FailureAudit, FailureLimits, WorkloadVerifier};
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::{Config, KeysBackend};
use crate::consent::catalog::Catalog;
use crate::consent::return_url::ReturnUrlPolicy;
use crate::consent::ConsentFlow;
use crate::events::webhook::{AddressPolicy, DeliveryWorker, Webhooks};
use crate::events::{EventHub, WatchSettings};
use crate::lifecycle::{Handover, Lifecycle, OutboxWorker, Sweeper};
use crate::provider::{ProviderHttp, Providers};
use crate::store::{KeyStore, SqlStore, Store, StoreError, StoreOptions};
use crate::telemetry::Metrics;
use crate::vault::{EpochPolicy, Keyring, KmsKeyring, LocalKeyring, Pkcs11Keyring, Vault, VaultError};
use secrecy::SecretString;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use url::Url;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Configuration that cannot work.
    #[error("{0}")]
    Config(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keyring or key table.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Other I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Everything a running tokenvault holds.
pub struct App {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The clock.
    pub clock: SharedClock,
    /// The main database.
    pub sql: SqlStore,
    /// The main database as the `Store` trait.
    pub store: Arc<dyn Store>,
    /// The key table's database (the main one unless `key_database_url` is set).
    pub key_sql: SqlStore,
    /// Envelope encryption.
    pub vault: Vault,
    /// Audit writer.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Metrics,
    /// Caller authentication.
    pub authenticator: Arc<Authenticator>,
    /// `StartConsent` calls per tenant (`consent.max_starts_per_minute`).
    pub consent_starts: TenantRateLimit,
    /// Configured providers.
    pub providers: Arc<Providers>,
    /// The consent flow.
    pub consent: ConsentFlow,
    /// The base of the OAuth routes (`…/oauth/`), known once the HTTP listener is bound.
    pub oauth_base: Arc<OnceLock<Url>>,
    /// The access-token broker.
    pub broker: Arc<Broker>,
    /// Revocation, deletion, key rotation.
    pub lifecycle: Arc<Lifecycle>,
    /// The retention sweeper.
    pub sweeper: Arc<Sweeper>,
    /// The event log's hub: `WatchEvents` streams and the wake-up signal.
    pub events: Arc<EventHub>,
    /// Webhook endpoint management.
    pub webhooks: Arc<Webhooks>,
    /// Webhook delivery.
    pub deliveries: Arc<DeliveryWorker>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("backend", &self.sql.backend_name())
            .finish_non_exhaustive()
    }
}

/// Builds the keyring the configuration names (for AWS KMS, checks the keys
/// with `DescribeKey`). `epochs` are the live KEK epochs recorded in the key
/// database, newest last (empty before the database is read, as in `check-config`).
pub async fn keyring_from_config(config: &Config, epochs: &[String]) -> Result<Arc<dyn Keyring>, StartupError> {
    let rotating = config.keys.rotation_days(crate::config::Setup::Production) > 0;
    if config.keys.backend == KeysBackend::AwsKms {
        let kms = config
            .keys
            .kms
            .as_ref()
            .ok_or_else(|| StartupError::Config("keys.backend = \"aws-kms\" needs [keys.kms]".to_owned()))?;
        let keyring = KmsKeyring::connect(kms, epochs).await.map_err(|error| match error {
            VaultError::KmsUnavailable(reason) => StartupError::Config(format!(
                "cannot check the AWS KMS key `{}`: the key service is unavailable: {reason}",
                kms.key_id
            )),
            other => StartupError::Vault(other),
        })?;
        tracing::info!(
            active = %keyring.active_id(),
            keys = keyring.ids().len(),
            "key-encryption keys in AWS KMS"
        );
        return Ok(Arc::new(keyring));
    }
    if config.keys.backend == KeysBackend::Pkcs11 {
        let hsm = config
            .keys
            .pkcs11
            .as_ref()
            .ok_or_else(|| StartupError::Config("keys.backend = \"pkcs11\" needs [keys.pkcs11]".to_owned()))?;
        let keyring = Pkcs11Keyring::connect(hsm, epochs).await.map_err(|error| match error {
            VaultError::HsmUnavailable(reason) => StartupError::Config(format!(
                "cannot check the PKCS#11 key `{}` on token `{}`: the HSM is unavailable: {reason}",
                hsm.key_label, hsm.token_label
            )),
            other => StartupError::Vault(other),
        })?;
        tracing::info!(
            token = %hsm.token_label,
            active = %keyring.active_id(),
            keys = keyring.ids().len(),
            "key-encryption keys in a PKCS#11 token"
        );
        return Ok(Arc::new(keyring));
    }
    let active = config.keys.active.as_deref();
    let keyring = match (&config.keys.file, &config.keys.inline) {
        (Some(path), None) => LocalKeyring::from_file(path, active)?,
        (None, Some(inline)) => LocalKeyring::from_inline(inline, active)?,
        (Some(_), Some(_)) => {
            return Err(StartupError::Config(
                "set keys.file or keys.inline, not both".to_owned(),
            ));
        }
        (None, None) => {
            return Err(StartupError::Config(
                "no key-encryption keys: set keys.file or keys.inline (TOKENVAULT_KEYS__INLINE), or keys.backend = \"aws-kms\" or \"pkcs11\"".to_owned(),
            ));
        }
    };
    if rotating {
        keyring.check_manageable()?;
    }
    Ok(Arc::new(keyring))
}

/// The KEK ids of the epochs not yet destroyed, oldest first (the newest is the active key).
async fn live_epoch_keks(keys: &dyn KeyStore) -> Result<Vec<String>, StartupError> {
    Ok(keys
        .kek_epochs()
        .await?
        .into_iter()
        .filter(|epoch| epoch.destroyed_at.is_none())
        .map(|epoch| epoch.kek_id)
        .collect())
}

/// The live KEK epochs as `check-config` can see them (AWS KMS and PKCS#11
/// only): read from the key database when it answers and is migrated, else
/// none (the configured key is then checked alone) with the reason.
pub async fn epochs_for_check(config: &Config) -> (Vec<String>, Option<String>) {
    // Only the KMS and HSM keyrings take their active key from the epochs.
    if config.keys.backend == KeysBackend::File {
        return (Vec::new(), None);
    }
    let Some(url) = config.key_database_url.as_ref().or(config.database_url.as_ref()) else {
        return (Vec::new(), None);
    };
    let keys = match connect(url, config).await {
        Ok(keys) => keys,
        Err(error) => return (Vec::new(), Some(format!("the key database did not answer ({error})"))),
    };
    let found = live_epoch_keks(&keys).await;
    keys.close().await;
    match found {
        Ok(epochs) => (epochs, None),
        Err(error) => (Vec::new(), Some(format!("the KEK epochs could not be read ({error})"))),
    }
}

/// Applies pending migrations to the main database and, when it is separate,
/// the key database; touches no key (`tokenvault migrate` needs no keyring, so
/// the chart's migration Job needs no route to AWS KMS or the HSM).
pub async fn migrate_databases(config: &Config) -> Result<&'static str, StartupError> {
    let url = config
        .database_url
        .clone()
        .ok_or_else(|| StartupError::Config("database_url is not set".to_owned()))?;
    let sql = connect(&url, config).await?;
    sql.migrate().await?;
    if let Some(key_url) = &config.key_database_url {
        let keys = connect(key_url, config).await?;
        keys.migrate().await?;
        keys.close().await;
    }
    let backend = sql.backend_name();
    sql.close().await;
    Ok(backend)
}

async fn connect(url: &SecretString, config: &Config) -> Result<SqlStore, StartupError> {
    let options = StoreOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: Duration::from_secs(config.database.acquire_timeout_seconds),
        lock_timeout: Duration::from_secs(config.database.lock_timeout_seconds),
        statement_timeout: Duration::from_secs(config.database.statement_timeout_seconds),
        idle_in_transaction_timeout: Duration::from_secs(config.database.idle_in_transaction_timeout_seconds),
        purge_batch_size: config.lifecycle.retention_batch_size,
    };
    Ok(SqlStore::connect(url, &options).await?)
}

impl App {
    /// Connects, migrates (when asked), checks the keyring against the key
    /// table, and starts the background audit writer.
    pub async fn build(config: Config, clock: SharedClock, run_migrations: bool) -> Result<Self, StartupError> {
        let url = config
            .database_url
            .clone()
            .ok_or_else(|| StartupError::Config("database_url is not set".to_owned()))?;
        let sql = connect(&url, &config).await?;
        let key_sql = match &config.key_database_url {
            Some(key_url) => connect(key_url, &config).await?,
            None => sql.clone(),
        };
        if run_migrations {
            sql.migrate().await?;
            if config.key_database_url.is_some() {
                key_sql.migrate().await?;
            }
        }
        let key_store: Arc<dyn KeyStore> = Arc::new(key_sql.clone());
        let key_store_for_sweeper = key_store.clone();
        let live_epochs = live_epoch_keks(key_store.as_ref()).await?;
        let keyring = keyring_from_config(&config, &live_epochs).await?;
        let rotation_days = config.keys.rotation_days(crate::config::Setup::Production);
        let vault = Vault::new(
            keyring,
            key_store,
            clock.clone(),
            // Unwrapped data keys stay in memory even when the token cache is small or off.
            config.broker.cache_capacity.max(10_000),
            Duration::from_secs(300),
        )
        .with_epochs(EpochPolicy::from_config(&config.keys, rotation_days));
        vault.sync_epochs().await?;
        vault.check_keyring_covers_store().await?;
        let metrics = Metrics::new();
        let store: Arc<dyn Store> = Arc::new(sql.clone());
        let audit = AuditLog::start(store.clone(), metrics.clone(), 100_000);
        let registry = CallerRegistry::from_config(&config.auth).map_err(StartupError::Config)?;
        let limits = FailureLimits {
            per_peer_per_minute: config.auth.max_failures_per_minute,
            global_per_second: config.auth.max_failures_per_second,
            tracked_peers: config.auth.failure_tracked_addresses,
        };
        let failure_audit = FailureAudit::new(
            audit.clone(),
            clock.clone(),
            metrics.clone(),
            config.auth.failure_audit_per_second,
        );
        let mut authenticator = Authenticator::new(registry, limits, metrics.clone()).with_audit(failure_audit);
        if let Some(identity) = &config.auth.workload_identity {
            authenticator = authenticator
                .with_workload_identity(WorkloadVerifier::from_config(identity).map_err(StartupError::Config)?);
        }
        let authenticator = Arc::new(authenticator);
        let consent_starts = TenantRateLimit::new("StartConsent", config.consent.max_starts_per_minute);
        let providers = Arc::new(providers_from_config(&config, catalog_from_config(&config)?).await?);
        let policy = ReturnUrlPolicy::new(&config.consent.allowed_return_origins).map_err(StartupError::Config)?;
        let oauth_base = Arc::new(OnceLock::new());
        if let Some(public) = &config.server.public_url {
            let url = public
                .join("oauth/")
                .map_err(|e| StartupError::Config(format!("server.public_url: {e}")))?;
            let _ = oauth_base.set(url);
        }
        let outbox = Arc::new(OutboxWorker::new(
            store.clone(),
            vault.clone(),
            providers.clone(),
            clock.clone(),
            metrics.clone(),
            config.lifecycle.revocation_retry_base_seconds,
        ));
        // Credentials that re-consent or a lost refresh leave behind go to the outbox too.
        let handover = Handover::new(
            vault.clone(),
            outbox.clone(),
            config.lifecycle.revocation_give_up_after_hours,
        );
        let broker = Arc::new(Broker::new(
            &config.broker,
            store.clone(),
            vault.clone(),
            providers.clone(),
            audit.clone(),
            clock.clone(),
            metrics.clone(),
            (config.database.max_connections as usize / 2).max(1),
            handover.clone(),
        ));
        let consent = ConsentFlow::new(
            store.clone(),
            vault.clone(),
            providers.clone(),
            clock.clone(),
            metrics.clone(),
            policy,
            &config.consent,
            oauth_base.clone(),
            broker.shared_cache(),
            handover,
        );
        let lifecycle = Arc::new(Lifecycle::new(
            &config.lifecycle,
            store.clone(),
            vault.clone(),
            broker.clone(),
            audit.clone(),
            clock.clone(),
            metrics.clone(),
            outbox.clone(),
        ));
        let sweeper = Arc::new(
            Sweeper::new(
                &config.lifecycle,
                store.clone(),
                key_store_for_sweeper,
                vault.clone(),
                lifecycle.clone(),
                outbox,
                clock.clone(),
                metrics.clone(),
            )
            .with_event_retention(config.events.retention_days),
        );
        let events = EventHub::new(
            store.clone(),
            clock.clone(),
            WatchSettings {
                heartbeat: Duration::from_secs(config.events.heartbeat_seconds.max(1)),
                poll: Duration::from_millis(config.events.poll_interval_ms.max(10)),
                max_watchers: config.events.max_watchers,
            },
        );
        let hooks = &config.events.webhooks;
        let address_policy = Arc::new(
            AddressPolicy::new(&hooks.allowed_networks, hooks.allow_http_loopback).map_err(StartupError::Config)?,
        );
        let webhooks = Arc::new(Webhooks::new(
            store.clone(),
            vault.clone(),
            address_policy.clone(),
            clock.clone(),
            hooks.previous_secret_hours,
            hooks.max_endpoints_per_tenant,
        ));
        let deliveries = DeliveryWorker::new(
            store.clone(),
            vault.clone(),
            events.clone(),
            address_policy,
            clock.clone(),
            metrics.clone(),
            hooks,
        )
        .map_err(StartupError::Config)?;
        Ok(Self {
            lifecycle,
            sweeper,
            events,
            webhooks,
            deliveries,
            broker,
            providers,
            consent,
            oauth_base,
            config: Arc::new(config),
            clock,
            sql,
            store,
            key_sql,
            vault,
            audit,
            metrics,
            authenticator,
            consent_starts,
        })
    }
}

impl App {
    /// Starts the background work of a serving process: issuance
    /// bookkeeping and cross-replica invalidations. Ends when `stop` is cancelled.
    pub async fn start_background(&self, stop: tokio_util::sync::CancellationToken) -> Result<(), StartupError> {
        let broker = self.broker.clone();
        let usage_stop = stop.clone();
        let usage_every = Duration::from_secs(self.config.broker.usage_flush_seconds.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(usage_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = usage_stop.cancelled() => break,
                    _ = tick.tick() => broker.flush_usage().await,
                }
            }
        });
        let outbox = self.lifecycle.outbox().clone();
        let poll = Duration::from_secs(self.config.lifecycle.outbox_poll_seconds.max(1));
        tokio::spawn(outbox.run(stop.clone(), poll));
        let epoch_every = Duration::from_secs(self.config.keys.epoch_check_seconds.max(1));
        tokio::spawn(self.vault.clone().run_epochs(
            stop.clone(),
            epoch_every,
            self.clock.clone(),
            self.metrics.clone(),
        ));
        if self.config.lifecycle.sweep_interval_seconds > 0 {
            let interval = Duration::from_secs(self.config.lifecycle.sweep_interval_seconds);
            tokio::spawn(self.sweeper.clone().run(stop.clone(), interval));
        }
        self.events.start(stop.clone()).await?;
        self.deliveries.start(stop.clone());
        if let Some(mut notices) = self.store.subscribe().await? {
            let broker = self.broker.clone();
            let vault = self.vault.clone();
            tokio::spawn(async move {
                loop {
                    let notice = tokio::select! {
                        _ = stop.cancelled() => break,
                        notice = notices.recv() => notice,
                    };
                    let Some(notice) = notice else { break };
                    apply_invalidation(&broker, &vault, &notice);
                }
            });
        }
        Ok(())
    }
}

/// Applies a change another replica announced to this replica's caches.
pub fn apply_invalidation(broker: &Broker, vault: &Vault, notice: &crate::store::Invalidation) {
    use crate::store::Invalidation;
    match notice {
        Invalidation::Connection { id } => broker.cache().invalidate_connection(*id),
        Invalidation::User { tenant_id, user_id } => broker.cache().invalidate_user(tenant_id, user_id),
        Invalidation::DataKey { id } => vault.forget(*id),
        Invalidation::All => {
            broker.cache().invalidate_all();
            vault.forget_all();
        }
    }
}

/// The catalog start-up uses: the built-in one merged with `providers.catalog_file`.
pub fn catalog_from_config(config: &Config) -> Result<Catalog, StartupError> {
    let mut catalog = Catalog::builtin().map_err(|e| StartupError::Config(e.to_string()))?;
    if let Some(path) = &config.providers.catalog_file {
        catalog.merge(Catalog::from_file(path).map_err(|e| StartupError::Config(e.to_string()))?);
    }
    Ok(catalog)
}

/// A client for each configured provider of `catalog` (which discovery may
/// have to find), as start-up builds them. `check-config` runs the same.
pub async fn providers_from_config(config: &Config, catalog: Catalog) -> Result<Providers, StartupError> {
    let http = ProviderHttp::new(
        Duration::from_secs(config.provider_http.timeout_seconds),
        config.provider_http.max_response_bytes,
    )
    .map_err(StartupError::Config)?;
    Providers::build(catalog, &config.providers.clients, http)
        .await
        .map_err(|e| StartupError::Config(e.to_string()))
}
