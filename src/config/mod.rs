//! Service configuration: built-in defaults, then a TOML file, then
//! `TOKENVAULT_*` environment variables, validated once at start-up.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default).
//! Every value that is a secret (database URLs with passwords, inline keys,
//! client secrets) is held in a `secrecy` type, so the derived `Debug`
//! prints `[REDACTED]`.

mod dev;
mod events;
mod load;
mod providers;
mod setup;

pub use dev::{dev_api_keys_path, prepare_development_defaults, write_private, DevSetup};
pub use events::{EventsConfig, WebhooksConfig};
pub use load::{load, ConfigError};
pub use providers::{ProviderClientConfig, ProvidersConfig};
pub use setup::{check_production, key_table_is_shared, Needs, Setup, NO_EPOCHS_WARNING, SHARED_KEY_TABLE_WARNING};

use secrecy::SecretString;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole configuration of one tokenvault process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `postgres://…` or `sqlite://…`; unset means development: the embedded
    /// SQLite file in `data_dir`, generated keys and API keys.
    pub database_url: Option<SecretString>,
    /// Where the wrapped data keys live; unset means the main database (outside
    /// development only with `keys.allow_shared_database`).
    pub key_database_url: Option<SecretString>,
    /// Directory for the development defaults (SQLite file, generated key files).
    pub data_dir: PathBuf,
    /// Listeners.
    pub server: ServerConfig,
    /// TLS for both listeners; absent means plain text.
    pub tls: Option<TlsConfig>,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry trace export (needs the `otel` cargo feature).
    pub tracing: TracingConfig,
    /// Database pool and migrations.
    pub database: DatabaseConfig,
    /// Key-encryption keys.
    pub keys: KeysConfig,
    /// Callers: API keys and client certificates.
    pub auth: AuthConfig,
    /// Consent flow.
    pub consent: ConsentConfig,
    /// Provider catalog file and client credentials.
    pub providers: ProvidersConfig,
    /// Upstream HTTP calls to providers.
    pub provider_http: ProviderHttpConfig,
    /// Access-token broker.
    pub broker: BrokerConfig,
    /// Revocation, deletion and retention.
    pub lifecycle: LifecycleConfig,
    /// The event log, `WatchEvents` and webhooks.
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            key_database_url: None,
            data_dir: PathBuf::from("tokenvault-data"),
            server: ServerConfig::default(),
            tls: None,
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
            database: DatabaseConfig::default(),
            keys: KeysConfig::default(),
            auth: AuthConfig::default(),
            consent: ConsentConfig::default(),
            providers: ProvidersConfig::default(),
            provider_http: ProviderHttpConfig::default(),
            broker: BrokerConfig::default(),
            lifecycle: LifecycleConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

/// Listener addresses and request limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listener (port 0 picks a free port; the bound address is logged).
    pub grpc_listen: SocketAddr,
    /// HTTP listener for `/oauth/callback`, `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
    /// External base URL of the HTTP listener; the OAuth `redirect_uri` is this plus `/oauth/callback`.
    pub public_url: Option<url::Url>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// Largest gRPC request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Upper bound on any one RPC.
    pub request_timeout_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            shutdown_grace_seconds: 20,
            max_request_bytes: 64 * 1024,
            request_timeout_seconds: 30,
        }
    }
}

/// TLS on both listeners; the files are read again when they change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, gRPC clients may authenticate with a certificate (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// Certificate revocation lists for client certificates (PEM `X509 CRL`
    /// blocks, or one DER CRL), one per CA that issues them; needs
    /// `client_ca_file`. A revoked certificate, or one whose issuer has no CRL
    /// in the file, is refused at the handshake. Reloaded with the other files.
    pub client_crl_file: Option<PathBuf>,
    /// How often the files are checked for changes.
    #[serde(default = "default_tls_reload_seconds")]
    pub reload_interval_seconds: u64,
}

fn default_tls_reload_seconds() -> u64 {
    30
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `tokenvault=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// OpenTelemetry trace export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector endpoint, e.g. `http://otel-collector:4317`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of traces sampled (0.0–1.0), parent-based.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "tokenvault".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

/// Database pool and migrations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Pool size per database.
    pub max_connections: u32,
    /// How long to wait for a connection before answering `UNAVAILABLE`.
    pub acquire_timeout_seconds: u64,
    /// Apply pending migrations when `serve` starts.
    pub run_migrations: bool,
    /// PostgreSQL: the longest a statement waits for a row lock.
    pub lock_timeout_seconds: u64,
    /// PostgreSQL: the longest one statement may run.
    pub statement_timeout_seconds: u64,
    /// PostgreSQL: a transaction idle this long is ended by the server.
    pub idle_in_transaction_timeout_seconds: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 20,
            acquire_timeout_seconds: 5,
            run_migrations: true,
            lock_timeout_seconds: 5,
            statement_timeout_seconds: 30,
            idle_in_transaction_timeout_seconds: 30,
        }
    }
}

/// Where the key-encryption keys come from, and their epochs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Which keyring holds the KEKs: `file` (key file or inline keys, the default), `aws-kms` or `pkcs11`.
    pub backend: KeysBackend,
    /// A TOML key file: `active = "id"` and `[[keys]]` entries with `id` and base64 `key`.
    pub file: Option<PathBuf>,
    /// Keys given inline as `id:base64,id:base64` (for example from a Kubernetes Secret in the environment).
    pub inline: Option<SecretString>,
    /// Id of the key new data keys are wrapped with (overrides the file's `active`).
    pub active: Option<String>,
    /// AWS KMS keys (with `backend = "aws-kms"`).
    pub kms: Option<KmsConfig>,
    /// PKCS#11 (HSM) keys (with `backend = "pkcs11"`).
    pub pkcs11: Option<Pkcs11Config>,
    /// Accept the key table in the main database outside development (its
    /// backups then hold both the wrapped data keys and the ciphertexts).
    pub allow_shared_database: bool,
    /// Days each KEK epoch lasts before a new KEK takes over (0: no epochs).
    /// Unset: 7 outside development, 0 in development.
    pub rotate_every_days: Option<u32>,
    /// Days a retired KEK is kept (so recent backups still restore) before it is destroyed.
    pub destroy_retired_after_days: u32,
    /// The promise the epochs are checked against: no backup opens a token
    /// more than this many days after its data key was destroyed (rotate +
    /// destroy + the keyring's own destruction delay must fit in it).
    pub shred_within_days: u32,
    /// Seconds between epoch passes (each replica adopts new epochs; one re-wraps and destroys).
    pub epoch_check_seconds: u64,
    /// Most data keys re-wrapped per second in the background (0: no limit).
    pub rewrap_per_second: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            backend: KeysBackend::default(),
            file: None,
            inline: None,
            active: None,
            kms: None,
            pkcs11: None,
            allow_shared_database: false,
            rotate_every_days: None,
            destroy_retired_after_days: 14,
            shred_within_days: 30,
            epoch_check_seconds: 60,
            rewrap_per_second: 200,
        }
    }
}

impl KeysConfig {
    /// The epoch length in days for this setup (0: no epochs).
    pub fn rotation_days(&self, setup: setup::Setup) -> u32 {
        self.rotate_every_days.unwrap_or(match setup {
            setup::Setup::Development => 0,
            setup::Setup::Production => 7,
        })
    }

    /// Days after which a key the keyring was asked to destroy is gone (AWS KMS's pending window).
    pub fn destruction_delay_days(&self) -> u32 {
        match (self.backend, &self.kms) {
            (KeysBackend::AwsKms, Some(kms)) => kms.deletion_pending_days,
            _ => 0,
        }
    }

    /// Whether the configuration names its KEKs (else development generates a key file).
    pub fn is_configured(&self) -> bool {
        self.backend != KeysBackend::File || self.file.is_some() || self.inline.is_some()
    }
}

/// The keyring implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeysBackend {
    /// KEKs in process memory, from `keys.file` or `keys.inline`.
    #[default]
    File,
    /// KEKs in AWS KMS (`[keys.kms]`); they never leave it.
    AwsKms,
    /// KEKs in a PKCS#11 token, an HSM (`[keys.pkcs11]`); they never leave it.
    Pkcs11,
}

/// `[keys.pkcs11]`: AES-256 key objects in a PKCS#11 token, found by label.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Absolute path of the vendor's PKCS#11 library (`/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the initialised token holding the keys.
    pub token_label: String,
    /// File holding the token's user PIN (surrounding whitespace ignored).
    pub pin_file: PathBuf,
    /// Label of the active AES key (with KEK epochs: the first epoch's key).
    pub key_label: String,
    /// Labels of older keys still needed to unwrap data keys not yet re-wrapped.
    #[serde(default)]
    pub older_key_labels: Vec<String>,
}

/// `[keys.kms]`: the AWS KMS keys. Credentials come from the standard AWS
/// environment variables, profile files, or the web-identity/container/instance role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// The active key: a key id, key ARN, `alias/name` or alias ARN.
    pub key_id: String,
    /// Older keys still needed to unwrap data keys not yet re-wrapped (ids, ARNs or aliases).
    #[serde(default)]
    pub older_key_ids: Vec<String>,
    /// The AWS region of the keys (`eu-west-1`).
    pub region: String,
    /// Another KMS endpoint (a VPC endpoint, or a local test server); default: the region's.
    #[serde(default)]
    pub endpoint_url: Option<url::Url>,
    /// `PendingWindowInDays` when a retired epoch's key is scheduled for deletion (7–30).
    #[serde(default = "default_kms_deletion_pending_days")]
    pub deletion_pending_days: u32,
}

fn default_kms_deletion_pending_days() -> u32 {
    7
}

/// A caller role; a key may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Agent workers: `TokenService`.
    Agent,
    /// The AI-agent platform: `ConsentService`, `ConnectionService`.
    Platform,
    /// Operators: `AdminService`.
    Admin,
}

impl Role {
    /// The lowercase name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Platform => "platform",
            Role::Admin => "admin",
        }
    }
}

/// One API key, known only by the SHA-256 of its text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Name recorded in audit events as the actor.
    pub name: String,
    /// Hex SHA-256 of the key text.
    pub sha256: String,
    /// What the key may do.
    pub roles: Vec<Role>,
    /// Tenants the key may act for; `"*"` means all.
    pub tenants: Vec<String>,
}

/// One client-certificate identity for mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// Name recorded in audit events as the actor.
    pub name: String,
    /// The certificate name, typed: `uri:<URI SAN>` (e.g. `uri:spiffe://example.org/agent`),
    /// `dns:<DNS SAN>` or `cn:<subject common name>`; matched by type and exact value.
    /// Validation refuses a subject without one of these prefixes.
    pub subject: String,
    /// What the certificate may do.
    pub roles: Vec<Role>,
    /// Tenants it may act for; `"*"` means all.
    pub tenants: Vec<String>,
}

/// `[auth.workload_identity]`: the issuer whose JWTs (Kubernetes projected
/// service-account tokens, SPIFFE JWT-SVIDs) identify workloads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentityConfig {
    /// The issuer URL: the tokens' `iss`; its keys are found at
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    pub issuer: url::Url,
    /// The audience tokens must be issued for (`aud`), e.g. `tokenvault`.
    pub audience: String,
    /// PEM CA certificates trusted for the issuer's TLS (in Kubernetes:
    /// `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A bearer token file sent with the discovery and JWKS requests (in
    /// Kubernetes the API server serves them to service accounts), re-read at each fetch.
    #[serde(default)]
    pub issuer_token_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// Largest token accepted.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Least seconds between two fetches of the issuer's keys (an unknown `kid` refreshes them).
    #[serde(default = "default_refresh_interval_seconds")]
    pub refresh_interval_seconds: u64,
    /// Keys older than this are fetched again before use.
    #[serde(default = "default_keys_max_age_seconds")]
    pub keys_max_age_seconds: u64,
    /// Timeout of one request to the issuer.
    #[serde(default = "default_issuer_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_leeway_seconds() -> u64 {
    30
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_refresh_interval_seconds() -> u64 {
    30
}
fn default_keys_max_age_seconds() -> u64 {
    3600
}
fn default_issuer_timeout_seconds() -> u64 {
    5
}

/// One `[[auth.workloads]]` entry: a workload identity and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Name recorded in audit events as the actor (default: the subject).
    #[serde(default)]
    pub name: Option<String>,
    /// The token's `sub`: `system:serviceaccount:<namespace>:<name>` or a SPIFFE ID.
    pub subject: String,
    /// What the workload may do.
    pub roles: Vec<Role>,
    /// Tenants it may act for; `"*"` means all.
    pub tenants: Vec<String>,
}

/// Callers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API keys given inline.
    pub api_keys: Vec<ApiKeyConfig>,
    /// A TOML file with more `[[api_keys]]` (for example a mounted Secret).
    pub api_keys_file: Option<PathBuf>,
    /// Client-certificate identities (mutual TLS).
    pub client_certs: Vec<ClientCertConfig>,
    /// The issuer of workload identity tokens, if they are accepted.
    pub workload_identity: Option<WorkloadIdentityConfig>,
    /// Workload identities (subjects of tokens from `workload_identity`).
    pub workloads: Vec<WorkloadConfig>,
    /// Failed authentications one peer address (an IPv6 /64) may make per
    /// minute before its further failures are refused (a valid credential is
    /// always served); 0 turns the per-address limit off.
    pub max_failures_per_minute: u32,
    /// Failed authentications over all addresses per second before every
    /// further failure is refused at once; 0 turns the ceiling off.
    pub max_failures_per_second: u32,
    /// Addresses whose failures are tracked at once (the memory bound; the
    /// least useful are evicted first).
    pub failure_tracked_addresses: usize,
    /// `auth.failure` audit events written per second at most (the rest are counted as suppressed).
    pub failure_audit_per_second: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_file: None,
            client_certs: Vec::new(),
            workload_identity: None,
            workloads: Vec::new(),
            max_failures_per_minute: 20,
            max_failures_per_second: 100,
            failure_tracked_addresses: 100_000,
            failure_audit_per_second: 20,
        }
    }
}

/// Consent flow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsentConfig {
    /// Origins (`scheme://host[:port]`) a `return_url` may point to.
    pub allowed_return_origins: Vec<String>,
    /// How long a consent request stays usable.
    pub ttl_seconds: u64,
    /// `StartConsent` calls one tenant may make per minute (each creates a
    /// data key and a row); 0 turns the limit off.
    pub max_starts_per_minute: u32,
    /// Whether an approved grant waits for the platform's `ConfirmConsent`
    /// (from the user's own session) before it becomes a connection.
    pub require_confirmation: bool,
    /// Tenants whose platforms cannot confirm: their grants become
    /// connections at the callback (see the README for what that risks).
    pub tenants_without_confirmation: Vec<String>,
    /// How long after the callback the platform may confirm.
    pub confirmation_ttl_seconds: u64,
    /// What a re-consent of one connection (`StartConsent.connection_id`)
    /// does when the user signs in to another account than the connection's.
    pub other_account: OtherAccount,
}

/// What a re-consent that comes back with another account than its connection's does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherAccount {
    /// The consent fails, naming both accounts (the default).
    #[default]
    Refuse,
    /// The grant becomes (or updates) the other account's own connection.
    NewConnection,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        Self {
            allowed_return_origins: Vec::new(),
            ttl_seconds: 600,
            max_starts_per_minute: 600,
            require_confirmation: true,
            tenants_without_confirmation: Vec::new(),
            confirmation_ttl_seconds: 300,
            other_account: OtherAccount::Refuse,
        }
    }
}

/// Upstream HTTP calls to providers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderHttpConfig {
    /// Timeout of one upstream request.
    pub timeout_seconds: u64,
    /// Largest response body read from a provider.
    pub max_response_bytes: usize,
}

impl Default for ProviderHttpConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 10,
            max_response_bytes: 256 * 1024,
        }
    }
}

/// Access-token broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// A token is refreshed this long before it expires.
    pub refresh_skew_seconds: u64,
    /// Upper bound on the `expires_at` handed to agents.
    pub max_lease_seconds: u64,
    /// Access tokens kept in memory (0 turns the in-memory cache off).
    pub cache_capacity: u64,
    /// Longest an entry stays in memory, a backstop behind revocation notices.
    pub cache_max_age_seconds: u64,
    /// Upstream attempts for one refresh (5xx or timeout) inside the caller's deadline.
    pub refresh_attempts: u32,
    /// Deadline for a refresh when the caller gave none.
    pub refresh_deadline_seconds: u64,
    /// Seconds between writes of the issuance tally (`token.issued` audit
    /// events with counts, and `last_used_at`); also written at shutdown.
    pub usage_flush_seconds: u64,
    /// Concurrent database reads serving cache misses; calls that arrive
    /// while they are busy are answered together by the next read.
    pub store_readers: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            refresh_skew_seconds: 30,
            max_lease_seconds: 3600,
            cache_capacity: 100_000,
            cache_max_age_seconds: 60,
            refresh_attempts: 3,
            refresh_deadline_seconds: 20,
            usage_flush_seconds: 10,
            store_readers: 4,
        }
    }
}

/// Revocation, deletion and retention.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Days between `DeleteUser` and the purge.
    pub purge_after_days: u32,
    /// Days audit events are kept.
    pub audit_retention_days: u32,
    /// Seconds between retention sweeps inside `serve` (0 turns the sweeper off).
    pub sweep_interval_seconds: u64,
    /// Hours the outbox keeps retrying a provider revocation before it gives up.
    pub revocation_give_up_after_hours: u32,
    /// First retry delay of a failed provider revocation; it doubles each time.
    pub revocation_retry_base_seconds: u64,
    /// How often each replica looks for due provider revocations.
    pub outbox_poll_seconds: u64,
    /// Most rows one retention purge statement deletes (each batch is its own short transaction).
    pub retention_batch_size: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            purge_after_days: 30,
            audit_retention_days: 90,
            sweep_interval_seconds: 300,
            revocation_give_up_after_hours: 72,
            revocation_retry_base_seconds: 30,
            outbox_poll_seconds: 5,
            retention_batch_size: 1000,
        }
    }
}

impl Config {
    /// The base of tokenvault's OAuth routes: `public_url` (or the bound
    /// HTTP address) plus `oauth/`. Browsers start consent at
    /// `start/{handle}` under it, and providers redirect to
    /// `callback/{provider}`.
    pub fn oauth_base_url(&self, bound_http: SocketAddr) -> Result<url::Url, url::ParseError> {
        let base = match &self.server.public_url {
            Some(url) => url.clone(),
            None => url::Url::parse(&format!("http://{bound_http}/"))?,
        };
        base.join("oauth/")
    }
}
