//! An agent worker: gets a user's access token from tokenvault before each
//! task it does in the user's account.
//!
//! ```sh
//! TOKENVAULT_API_KEY=<agent key> CONNECTION_ID=<id> cargo run --example agent
//! # in Kubernetes, with a projected service-account token (workload identity):
//! TOKENVAULT_TOKEN_FILE=/var/run/secrets/tokenvault/token CONNECTION_ID=<id> cargo run --example agent
//! ```
//!
//! Environment:
//!
//! - `TOKENVAULT_ADDR`: tokenvault's gRPC address (default `http://127.0.0.1:50051`, plain text);
//! - `TOKENVAULT_API_KEY`: an API key with the `agent` role; or
//! - `TOKENVAULT_TOKEN_FILE`: a file holding the bearer credential instead, such
//!   as a projected service-account token for audience `tokenvault` (see
//!   helm/tokenvault/examples/agent-workload-identity.yaml). It is read at start
//!   and again for every call, since the kubelet replaces the token before it
//!   expires. Exactly one of the two is required;
//! - `CONNECTION_ID`: the connection to act through (required);
//! - `SCOPES`: comma-separated subset of the granted scopes (default: all granted scopes);
//! - `CAPABILITIES`: comma-separated capability names of the provider (as in
//!   `StartConsent`); the token carries their scopes (with `SCOPES`);
//! - `MIN_TTL`: seconds the token must stay valid (default 0: whatever tokenvault holds);
//! - `TIMEOUT`: deadline of one call in seconds, sent as `grpc-timeout` (default 10);
//! - `ITERATIONS`, `INTERVAL`: how many tasks to run and the seconds between them (default 1 and 5).
//!
//! What a real worker should copy:
//!
//! - the API key (or the token file's current content) goes in
//!   `authorization: Bearer …` metadata, added by an interceptor;
//! - a token file is never cached by the worker: it is read for each call, so
//!   a rotated token is used as soon as the kubelet writes it;
//! - every call has a deadline (`grpc-timeout`): tokenvault fits its upstream
//!   refresh attempts into it;
//! - the token is kept in a small local cache until shortly before its
//!   `expires_at`, so most tasks make no call at all;
//! - `UNAVAILABLE` (tokenvault or the provider down, nothing valid cached) is
//!   retried with exponential backoff and jitter;
//! - `FAILED_PRECONDITION` means the connection is revoked, needs re-consent or
//!   the user was deleted: retrying cannot help, so the worker stops and reports
//!   tokenvault's message;
//! - `PERMISSION_DENIED` with a `google.rpc.ErrorInfo` of reason
//!   `CONSENT_REQUIRED` means the user has not granted a capability (or scope)
//!   the task needs: the worker hands the platform what to ask for (the
//!   connection, its provider, the missing capabilities) so that it can start a
//!   step-up consent, and retries once the user has confirmed;
//! - the token itself is never logged (only its first 8 characters here).
//!
//! Exit status: 0 on success, 2 when the connection cannot be used
//! (`FAILED_PRECONDITION`), 3 when the user must consent to more
//! (`CONSENT_REQUIRED`), 1 on any other failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng as _;
use tokenvault::proto::token_service_client::TokenServiceClient;
use tokenvault::proto::{GetAccessTokenRequest, GetAccessTokenResponse};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

/// A cached token is used until this long before its `expires_at` (or `MIN_TTL`, if longer).
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Attempts for one token when tokenvault answers `UNAVAILABLE`.
const MAX_ATTEMPTS: u32 = 5;
/// First backoff delay; it doubles after each attempt, up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("agent: {message}");
            return ExitCode::FAILURE;
        }
    };
    match run(&settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) if consent_required(&status).is_some() => {
            let info = consent_required(&status).unwrap_or_default();
            let get = |key: &str| info.get(key).map_or("", String::as_str);
            eprintln!("agent: {}", status.message());
            println!(
                "consent_required: connection {} at {}",
                get("connection_id"),
                get("provider")
            );
            println!("  missing_capabilities: {}", get("missing_capabilities"));
            println!("  missing_scopes: {}", get("missing_scopes"));
            // What the platform does with it: a step-up consent for this connection.
            println!(
                "  ask the user: StartConsent{{connection_id: {}, capabilities: [{}]}}, e.g. CONNECTION_ID={} CAPABILITIES={} cargo run --example platform",
                get("connection_id"),
                get("missing_capabilities").replace(' ', ", "),
                get("connection_id"),
                get("missing_capabilities").replace(' ', ","),
            );
            ExitCode::from(3)
        }
        Err(status) if status.code() == Code::FailedPrecondition => {
            eprintln!(
                "agent: connection {} cannot be used: {}",
                settings.connection_id,
                status.message()
            );
            eprintln!("agent: the user must connect again (re-consent); stopping");
            ExitCode::from(2)
        }
        Err(status) => {
            eprintln!(
                "agent: GetAccessToken failed: {:?}: {}",
                status.code(),
                status.message()
            );
            ExitCode::FAILURE
        }
    }
}

/// The `ErrorInfo` metadata of a `CONSENT_REQUIRED` refusal (what the user
/// must grant), or `None` for any other status.
fn consent_required(status: &Status) -> Option<HashMap<String, String>> {
    if status.code() != Code::PermissionDenied {
        return None;
    }
    let details = status.get_error_details();
    let info = details.error_info()?;
    (info.reason == "CONSENT_REQUIRED" && info.domain == "tokenvault").then(|| info.metadata.clone())
}

/// What the worker is configured with.
struct Settings {
    addr: String,
    credential: Credential,
    connection_id: String,
    scopes: Vec<String>,
    capabilities: Vec<String>,
    min_ttl: u32,
    timeout: Duration,
    iterations: u32,
    interval: Duration,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let required = |name: &str| optional(name).ok_or_else(|| format!("{name} is not set"));
        let list = |name: &str| {
            let mut values: Vec<String> = optional(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            values.sort();
            values.dedup();
            values
        };
        let scopes = list("SCOPES");
        let capabilities = list("CAPABILITIES");
        Ok(Self {
            addr: optional("TOKENVAULT_ADDR").unwrap_or_else(|| "http://127.0.0.1:50051".to_owned()),
            credential: {
                let credential = Credential::from_env()?;
                // Fails early on a key that cannot be sent or a token file that cannot be read.
                credential.header()?;
                credential
            },
            connection_id: required("CONNECTION_ID")?,
            scopes,
            capabilities,
            min_ttl: number("MIN_TTL", 0)?,
            timeout: Duration::from_secs(number("TIMEOUT", 10)?.max(1).into()),
            iterations: number("ITERATIONS", 1)?.max(1),
            interval: Duration::from_secs(number("INTERVAL", 5)?.into()),
        })
    }
}

fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &str, default: u32) -> Result<u32, String> {
    optional(name).map_or(Ok(default), |v| {
        v.trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, not `{v}`"))
    })
}

/// Where the bearer credential comes from.
#[derive(Clone)]
enum Credential {
    /// `TOKENVAULT_API_KEY`: fixed for the life of the process.
    ApiKey(String),
    /// `TOKENVAULT_TOKEN_FILE`: read again for every call (the kubelet rotates
    /// a projected token in place).
    File(PathBuf),
}

impl Credential {
    fn from_env() -> Result<Self, String> {
        match (optional("TOKENVAULT_API_KEY"), optional("TOKENVAULT_TOKEN_FILE")) {
            (Some(_), Some(_)) => Err("set TOKENVAULT_API_KEY or TOKENVAULT_TOKEN_FILE, not both".to_owned()),
            (Some(key), None) => Ok(Self::ApiKey(key)),
            (None, Some(path)) => Ok(Self::File(PathBuf::from(path))),
            (None, None) => Err(
                "TOKENVAULT_API_KEY (an agent API key) or TOKENVAULT_TOKEN_FILE (a file \
                 holding the token, e.g. a projected service-account token) must be set"
                    .to_owned(),
            ),
        }
    }

    /// The `authorization` value for the credential as it is now.
    fn header(&self) -> Result<MetadataValue<Ascii>, String> {
        let (credential, what) = match self {
            Self::ApiKey(key) => (key.clone(), "TOKENVAULT_API_KEY".to_owned()),
            Self::File(path) => {
                let what = format!("TOKENVAULT_TOKEN_FILE `{}`", path.display());
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {what}: {e}"))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(format!("{what} is empty"));
                }
                (token.to_owned(), what)
            }
        };
        let mut value: MetadataValue<Ascii> = format!("Bearer {credential}")
            .parse()
            .map_err(|_| format!("{what} must hold printable ASCII"))?;
        // Keeps the credential out of debug output of the request.
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Adds `authorization: Bearer <api key or token>` to every call.
#[derive(Clone)]
struct BearerAuth {
    credential: Credential,
    /// An API key's header, built once; a token file's is built for each call.
    fixed: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Checks the credential once (a token file must be readable at start).
    fn new(credential: Credential) -> Result<Self, String> {
        let header = credential.header()?;
        let fixed = matches!(credential, Credential::ApiKey(_)).then_some(header);
        Ok(Self { credential, fixed })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = match &self.fixed {
            Some(value) => value.clone(),
            // A file that cannot be read now (being replaced, say) is UNAVAILABLE: retried with backoff.
            None => self.credential.header().map_err(Status::unavailable)?,
        };
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Client = TokenServiceClient<InterceptedService<Channel, BearerAuth>>;

/// A token kept until shortly before it expires.
struct Cached {
    token: GetAccessTokenResponse,
    expires_at: SystemTime,
}

/// Tokens by connection and requested scopes.
#[derive(Default)]
struct TokenCache {
    entries: HashMap<(String, Vec<String>), Cached>,
}

impl TokenCache {
    /// A cached token still valid for `REFRESH_MARGIN` (or `min_ttl`, if longer).
    fn get(&self, key: &(String, Vec<String>), min_ttl: Duration) -> Option<&GetAccessTokenResponse> {
        let needed = SystemTime::now() + REFRESH_MARGIN.max(min_ttl);
        self.entries
            .get(key)
            .filter(|cached| cached.expires_at > needed)
            .map(|cached| &cached.token)
    }

    fn put(&mut self, key: (String, Vec<String>), token: GetAccessTokenResponse) -> Result<(), Status> {
        let expires_at = token
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .ok_or_else(|| Status::internal("tokenvault sent a token without a valid expires_at"))?;
        self.entries.insert(key, Cached { token, expires_at });
        Ok(())
    }

    fn forget(&mut self, key: &(String, Vec<String>)) {
        self.entries.remove(key);
    }
}

async fn run(settings: &Settings) -> Result<(), Status> {
    let auth = BearerAuth::new(settings.credential.clone()).map_err(Status::invalid_argument)?;
    let channel = Endpoint::from_shared(settings.addr.clone())
        .map_err(|e| Status::invalid_argument(format!("TOKENVAULT_ADDR `{}`: {e}", settings.addr)))?
        .connect_timeout(Duration::from_secs(5))
        // Connects on first use: a server that is not up yet is an UNAVAILABLE, retried below.
        .connect_lazy();
    let mut client = TokenServiceClient::with_interceptor(channel, auth);
    let mut cache = TokenCache::default();
    // Cached per connection and what was asked (scopes and capabilities).
    let asked = settings
        .scopes
        .iter()
        .cloned()
        .chain(settings.capabilities.iter().map(|c| format!("capability:{c}")))
        .collect();
    let key = (settings.connection_id.clone(), asked);
    let min_ttl = Duration::from_secs(settings.min_ttl.into());

    for task in 1..=settings.iterations {
        if task > 1 {
            tokio::time::sleep(settings.interval).await;
        }
        let (token, source) = match cache.get(&key, min_ttl) {
            Some(token) => (token.clone(), "from the local cache"),
            None => match fetch(&mut client, settings).await {
                Ok(token) => {
                    cache.put(key.clone(), token.clone())?;
                    (token, "from tokenvault")
                }
                Err(status) => {
                    cache.forget(&key);
                    return Err(status);
                }
            },
        };
        println!("task {task}/{}: token {source}", settings.iterations);
        describe(&token);
        // A real worker would now call the provider's API with
        // `authorization: {token_type} {access_token}`.
    }
    Ok(())
}

/// One `GetAccessToken`, retried with backoff while tokenvault is unavailable.
async fn fetch(client: &mut Client, settings: &Settings) -> Result<GetAccessTokenResponse, Status> {
    let mut backoff = INITIAL_BACKOFF;
    let mut attempt = 1;
    loop {
        let mut request = Request::new(GetAccessTokenRequest {
            connection_id: settings.connection_id.clone(),
            scopes: settings.scopes.clone(),
            capabilities: settings.capabilities.clone(),
            min_ttl_seconds: settings.min_ttl,
            ..Default::default()
        });
        request.set_timeout(settings.timeout);
        match client.get_access_token(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == Code::Unavailable && attempt < MAX_ATTEMPTS => {
                // Full jitter in [backoff/2, backoff): replicas of a worker do not retry in step.
                let delay = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                eprintln!(
                    "agent: tokenvault unavailable ({}); attempt {attempt}/{MAX_ATTEMPTS}, retrying in {} ms",
                    status.message(),
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Prints what the worker got, without the secret: only the token's first 8 characters.
fn describe(token: &GetAccessTokenResponse) {
    let prefix: String = token.access_token.chars().take(8).collect();
    println!("  connection_id: {}", token.connection_id);
    println!("  token_type: {}", token.token_type);
    println!("  scopes: {}", token.scopes.join(" "));
    if let Some(expires_at) = token.expires_at.and_then(|t| SystemTime::try_from(t).ok()) {
        let remaining = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let expires_at: DateTime<Utc> = expires_at.into();
        println!(
            "  expires_at: {} (in {remaining} s)",
            expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
    }
    println!("  access_token: {prefix}… ({} characters)", token.access_token.len());
}
