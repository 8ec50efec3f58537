//! The `tokenvault` command line. Everything else lives in the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tokenvault", version, about = "OAuth integration broker with a token vault")]
struct Cli {
    /// Configuration file (TOML). Environment variables TOKENVAULT_* override it.
    #[arg(long, global = true, env = "TOKENVAULT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gRPC and HTTP listeners (with no configuration: embedded SQLite and generated dev keys).
    Serve {
        /// Do not apply pending database migrations at start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Applies pending database migrations, then exits.
    Migrate,
    /// Runs one retention pass (purges due users, old audit events, expired consents, finished outbox entries), then exits; exit status 2 when parts of it failed (they are retried next pass).
    Retention {
        /// Treat this RFC 3339 time as now (for example to preview a future pass).
        #[arg(long)]
        now: Option<String>,
        /// Count what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Accept a --now in the future without --dry-run (it purges before purge_at).
        #[arg(long)]
        force: bool,
    },
    /// Key-encryption key operations.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// API key operations.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Loads and validates the configuration, then exits.
    CheckConfig,
    /// The provider catalog: check it, list it, show what registering an app needs.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Checks a catalog for completeness and consistency and prints every problem; exit status 1 on any.
    Check {
        /// An operator catalog file (default: the built-in catalog).
        file: Option<PathBuf>,
    },
    /// Lists the providers of the catalog the server runs with (built-in plus providers.catalog_file).
    List,
    /// Shows what registering an app with a provider needs: redirect URI, scopes, registration page.
    Show {
        /// The provider's catalog name (see `catalog list`).
        name: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Starts a new KEK epoch now (when epochs are on and the keyring can create keys), then re-wraps every data key under the active key-encryption key.
    Rotate,
    /// Runs one KEK epoch pass: starts an epoch if one is due, re-wraps, destroys retired keys that are due; exit status 2 when a step failed.
    Run {
        /// Treat this RFC 3339 time as now; a time in the future needs --force (it destroys keys early).
        #[arg(long)]
        now: Option<String>,
        /// Accept a --now in the future.
        #[arg(long)]
        force: bool,
    },
    /// Prints a new key file entry (a fresh random 256-bit key) to standard output.
    Generate {
        /// Id of the new key.
        #[arg(long)]
        id: String,
    },
    /// Shows the KEK epochs, what each still wraps, and when backups taken now stop opening tokens.
    Status,
    /// Creates the AES key keys.pkcs11.key_label on the PKCS#11 token unless it is there (backend pkcs11).
    InitHsm,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Creates an API key: prints the key once, and the configuration entry holding only its hash.
    Create {
        /// Caller name (the actor in audit events).
        #[arg(long)]
        name: String,
        /// Role: agent, platform or admin (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Tenant the key may act for, or "*" (repeat for several).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
    },
    /// Reads a key from standard input and prints its SHA-256 (the configured form).
    Hash,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokenvault::cli::run(cli.config.as_deref(), into_action(cli.command)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokenvault: {error}");
            ExitCode::from(error.exit_status())
        }
    }
}

fn into_action(command: Command) -> tokenvault::cli::Action {
    use tokenvault::cli::Action;
    match command {
        Command::Serve { no_migrate } => Action::Serve { migrate: !no_migrate },
        Command::Migrate => Action::Migrate,
        Command::Retention { now, dry_run, force } => Action::Retention { now, dry_run, force },
        Command::Keys { command } => match command {
            KeysCommand::Rotate => Action::KeysRotate,
            KeysCommand::Generate { id } => Action::KeysGenerate { id },
            KeysCommand::Status => Action::KeysStatus,
            KeysCommand::InitHsm => Action::KeysInitHsm,
            KeysCommand::Run { now, force } => Action::KeysRun { now, force },
        },
        Command::ApiKey { command } => match command {
            ApiKeyCommand::Create { name, roles, tenants } => Action::ApiKeyCreate { name, roles, tenants },
            ApiKeyCommand::Hash => Action::ApiKeyHash,
        },
        Command::CheckConfig => Action::CheckConfig,
        Command::Catalog { command } => match command {
            CatalogCommand::Check { file } => Action::CatalogCheck { file },
            CatalogCommand::List => Action::CatalogList,
            CatalogCommand::Show { name } => Action::CatalogShow { name },
        },
    }
}
