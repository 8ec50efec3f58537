//! A development OAuth provider for trying tokenvault end to end without a
//! real Google or Slack account.
//!
//! Starts the test kit's fake OAuth 2.0 provider
//! (`tokenvault_testkit::fake_provider`, from the workspace's `testkit/`
//! crate) on 127.0.0.1 and writes two files into a directory:
//!
//! - `catalog.toml`: an operator catalog with one provider, `demo`, pointing
//!   at the fake (authorization code + PKCE, refresh, RFC 7009 revocation);
//! - `tokenvault.toml`: a tokenvault configuration that loads that catalog,
//!   gives tokenvault the fake's client credentials and allows the examples'
//!   return URL origin (`http://localhost:3000`).
//!
//! Then it keeps running until Ctrl-C (or SIGTERM). The fake keeps its grants
//! in memory: after a restart, connections made before it need a new consent.
//!
//! ```sh
//! cargo run --example dev_provider -- tokenvault-data/dev-provider
//! cargo run -- serve --config tokenvault-data/dev-provider/tokenvault.toml
//! ```
//!
//! Arguments and environment:
//!
//! - the directory: first argument, else `DEV_PROVIDER_DIR`, else
//!   `tokenvault-data/dev-provider`;
//! - `RETURN_ORIGIN`: the origin allowed for `return_url`
//!   (default `http://localhost:3000`);
//! - `ACCESS_TOKEN_TTL`: lifetime of the access tokens the fake issues, in
//!   seconds (default 3600); make it short to watch tokenvault refresh.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokenvault_testkit::fake_provider::{FakeProvider, FakeProviderConfig};

/// The provider name in the catalog and configuration.
const PROVIDER: &str = "demo";

/// Scopes the demo provider allows; each is also a capability of the same name.
const SCOPES: [&str; 5] = [
    "calendar.read",
    "calendar.write",
    "mail.read",
    "mail.send",
    "files.read",
];

/// The incremental-authorization switch, the same in the catalog and the fake.
const INCREMENTAL_PARAM: (&str, &str) = ("include_granted_scopes", "true");

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("dev_provider: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("DEV_PROVIDER_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("tokenvault-data/dev-provider"));
    let return_origin = env_or("RETURN_ORIGIN", "http://localhost:3000");
    let ttl: u64 = env_or("ACCESS_TOKEN_TTL", "3600")
        .parse()
        .map_err(|_| "ACCESS_TOKEN_TTL must be a number of seconds".to_owned())?;

    let config = FakeProviderConfig {
        access_token_ttl: Duration::from_secs(ttl),
        incremental_param: Some((INCREMENTAL_PARAM.0.to_owned(), INCREMENTAL_PARAM.1.to_owned())),
        ..FakeProviderConfig::default()
    };
    let fake = FakeProvider::start(config)
        .await
        .map_err(|e| format!("cannot start the fake provider: {e}"))?;

    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let catalog_path = dir.join("catalog.toml");
    let config_path = dir.join("tokenvault.toml");
    write(&catalog_path, &catalog_toml(&fake))?;
    write(&config_path, &tokenvault_toml(&fake, &catalog_path, &return_origin))?;

    println!("fake OAuth provider `{PROVIDER}` listening on {}", fake.base_url());
    println!("catalog: {}", catalog_path.display());
    println!("config: {}", config_path.display());
    println!();
    println!("Start tokenvault with it:");
    println!("  cargo run -- serve --config {}", config_path.display());
    println!("Consents started with provider \"{PROVIDER}\" are approved at once (as user-1).");
    // Scripts wait for this line: the files above are complete.
    println!("ready; press Ctrl-C to stop");

    wait_for_shutdown().await;
    println!("stopping");
    fake.shutdown().await;
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Writes `text` to a temporary file beside `path`, then renames it, so a
/// reader never sees half a file.
fn write(path: &Path, text: &str) -> Result<(), String> {
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A TOML basic string (quotes and backslashes escaped).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The operator catalog: one provider, `demo`, whose endpoints are the fake's.
fn catalog_toml(fake: &FakeProvider) -> String {
    let allowed = SCOPES.map(quoted).join(", ");
    let mut text = format!(
        "# Written by `cargo run --example dev_provider`: the fake OAuth provider at {base}.\n\
         [providers.{PROVIDER}]\n\
         display_name = \"Demo (fake OAuth provider)\"\n\
         authorization_url = {authorize}\n\
         token_url = {token}\n\
         revocation_url = {revoke}\n\
         client_auth = \"client_secret_basic\"\n\
         scope_separator = \" \"\n\
         authorization_params = {{ access_type = \"offline\" }}\n\
         refresh_scope_narrowing = true\n\
         issues_refresh_tokens = true\n\
         allowed_scopes = [{allowed}]\n\
         incremental_authorization = {{ param = {param}, value = {value} }}\n\
         \n\
         # Which account a grant is for: the fake's userinfo endpoint.\n\
         [providers.{PROVIDER}.account]\n\
         source = \"endpoint\"\n\
         url = {userinfo}\n\
         subject = [\"/sub\"]\n\
         display = \"/email\"\n\
         \n\
         [providers.{PROVIDER}.capabilities]\n",
        base = fake.base_url(),
        authorize = quoted(fake.authorization_url().as_str()),
        token = quoted(fake.token_url().as_str()),
        revoke = quoted(fake.revocation_url().as_str()),
        userinfo = quoted(fake.userinfo_url().as_str()),
        param = quoted(INCREMENTAL_PARAM.0),
        value = quoted(INCREMENTAL_PARAM.1),
    );
    for scope in SCOPES {
        text.push_str(&format!("{} = [{}]\n", quoted(scope), quoted(scope)));
    }
    text
}

/// A tokenvault configuration that uses the catalog and the fake's client.
fn tokenvault_toml(fake: &FakeProvider, catalog: &Path, return_origin: &str) -> String {
    let client = fake.config();
    format!(
        "# Written by `cargo run --example dev_provider`. Development only: the client\n\
         # secret is the fake provider's and everything else is tokenvault's\n\
         # development defaults (SQLite, generated keys and API keys in data_dir).\n\
         [providers]\n\
         catalog_file = {catalog}\n\
         \n\
         [providers.{PROVIDER}]\n\
         client_id = {id}\n\
         client_secret = {secret}\n\
         \n\
         [consent]\n\
         allowed_return_origins = [{origin}]\n",
        catalog = quoted(&catalog.display().to_string()),
        id = quoted(&client.client_id),
        secret = quoted(&client.client_secret),
        origin = quoted(return_origin),
    )
}

/// Ctrl-C, or SIGTERM on Unix (what scripts and process managers send).
async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
