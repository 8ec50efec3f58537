//! The platform side: connects a user's account through tokenvault, and lists
//! or ends the user's connections.
//!
//! ```sh
//! TOKENVAULT_API_KEY=<platform key> USER=alice cargo run --example platform
//! TOKENVAULT_API_KEY=<platform key> USER=alice cargo run --example platform -- --list
//! TOKENVAULT_API_KEY=<platform key> cargo run --example platform -- --disconnect <connection id>
//! ```
//!
//! With no argument it calls `StartConsent`, prints the authorization URL the
//! user's browser must open, then polls `GetConsent` until the consent is
//! completed, failed or expired, and prints the connection id (a platform that
//! receives the `return_url` redirect gets it from there instead of polling).
//! `--list` shows `ListConnections` for the tenant and user, `--disconnect ID`
//! calls `Disconnect` (revoked at once, and at the provider too).
//!
//! Environment:
//!
//! - `TOKENVAULT_ADDR`: tokenvault's gRPC address (default `http://127.0.0.1:50051`, plain text);
//! - `TOKENVAULT_API_KEY`: an API key with the `platform` role (required);
//! - `TENANT` (default `acme`), `USER` (the user id; shells set it to the login name);
//! - `PROVIDER` (default `demo`, the provider of `cargo run --example dev_provider`);
//! - `CAPABILITIES`: comma-separated capability names (default `calendar.read`);
//! - `RETURN_URL`: where tokenvault sends the browser afterwards; its origin must be in
//!   `consent.allowed_return_origins` (default `http://localhost:3000/connected`);
//! - `POLL_INTERVAL`: seconds between `GetConsent` calls (default 1).
//!
//! Output lines `authorization_url: …` and `connection_id: …` are meant to be
//! read by scripts too. Exit status: 0 when connected, 1 otherwise.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tokenvault::proto::connection_service_client::ConnectionServiceClient;
use tokenvault::proto::consent_service_client::ConsentServiceClient;
use tokenvault::proto::{
    Connection, ConnectionStatus, ConsentStatus, DisconnectRequest, GetConsentRequest, ListConnectionsRequest,
    StartConsentRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Deadline of each call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the command line asks for.
enum Action {
    Connect,
    List,
    Disconnect(String),
}

const USAGE: &str = "usage: platform [--list | --disconnect CONNECTION_ID]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("platform: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Action::Connect,
        ["--list"] => Action::List,
        ["--disconnect", id] => Action::Disconnect((*id).to_owned()),
        _ => return Err(USAGE.to_owned()),
    };

    let addr = env("TOKENVAULT_ADDR").unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let api_key = env("TOKENVAULT_API_KEY").ok_or("TOKENVAULT_API_KEY is not set (a platform key)")?;
    let channel = Endpoint::from_shared(addr.clone())
        .map_err(|e| format!("TOKENVAULT_ADDR `{addr}`: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let auth = BearerAuth::new(&api_key)?;
    let mut consent = ConsentServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut connections = ConnectionServiceClient::with_interceptor(channel, auth);

    match action {
        Action::Connect => connect(&mut consent).await,
        Action::List => list(&mut connections).await,
        Action::Disconnect(id) => disconnect(&mut connections, id).await,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn tenant() -> String {
    env("TENANT").unwrap_or_else(|| "acme".to_owned())
}

fn user() -> Result<String, String> {
    env("USER").ok_or_else(|| "USER is not set (the user id at the platform)".to_owned())
}

/// Adds `authorization: Bearer <api key>` to every call.
#[derive(Clone)]
struct BearerAuth(MetadataValue<Ascii>);

impl BearerAuth {
    fn new(api_key: &str) -> Result<Self, String> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {api_key}")
            .parse()
            .map_err(|_| "TOKENVAULT_API_KEY must be printable ASCII".to_owned())?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, BearerAuth>;

/// A request with the call deadline set (sent as `grpc-timeout`).
fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn failed(rpc: &str, status: &Status) -> String {
    format!("{rpc} failed: {:?}: {}", status.code(), status.message())
}

async fn connect(client: &mut ConsentServiceClient<Authed>) -> Result<(), String> {
    let poll = Duration::from_secs(
        env("POLL_INTERVAL")
            .map_or(Ok(1), |v| v.parse::<u64>())
            .map_err(|_| "POLL_INTERVAL must be a whole number of seconds")?
            .max(1),
    );
    let capabilities = env("CAPABILITIES")
        .unwrap_or_else(|| "calendar.read".to_owned())
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let started = client
        .start_consent(request(StartConsentRequest {
            tenant_id: tenant(),
            user_id: user()?,
            provider: env("PROVIDER").unwrap_or_else(|| "demo".to_owned()),
            capabilities,
            scopes: Vec::new(),
            return_url: env("RETURN_URL").unwrap_or_else(|| "http://localhost:3000/connected".to_owned()),
        }))
        .await
        .map_err(|status| failed("StartConsent", &status))?
        .into_inner();
    println!("consent_id: {}", started.consent_id);
    println!("scopes: {}", started.scopes.join(" "));
    println!("Open this URL in the user's browser:");
    println!("authorization_url: {}", started.authorization_url);

    // tokenvault marks the consent expired itself; this is only a backstop.
    let give_up = started
        .expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(600))
        + Duration::from_secs(30);
    println!("waiting for the user (polling GetConsent every {} s)…", poll.as_secs());
    loop {
        tokio::time::sleep(poll).await;
        let consent = match client
            .get_consent(request(GetConsentRequest {
                consent_id: started.consent_id.clone(),
            }))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                eprintln!("platform: tokenvault unavailable ({}); still polling", status.message());
                continue;
            }
            Err(status) => return Err(failed("GetConsent", &status)),
        };
        match ConsentStatus::try_from(consent.status).unwrap_or(ConsentStatus::Unspecified) {
            ConsentStatus::ConsentCompleted => {
                println!("connected");
                println!("connection_id: {}", consent.connection_id);
                return Ok(());
            }
            ConsentStatus::ConsentFailed => return Err(format!("consent failed: {}", consent.error)),
            ConsentStatus::ConsentExpired => return Err("consent expired before the user finished".to_owned()),
            ConsentStatus::ConsentPending | ConsentStatus::Unspecified => {
                if SystemTime::now() > give_up {
                    return Err("gave up waiting for the consent".to_owned());
                }
            }
        }
    }
}

async fn list(client: &mut ConnectionServiceClient<Authed>) -> Result<(), String> {
    let tenant = tenant();
    let user = user()?;
    let mut page_token = String::new();
    let mut count = 0;
    loop {
        let page = client
            .list_connections(request(ListConnectionsRequest {
                tenant_id: tenant.clone(),
                user_id: user.clone(),
                provider: String::new(),
                page_size: 100,
                page_token,
            }))
            .await
            .map_err(|status| failed("ListConnections", &status))?
            .into_inner();
        for connection in &page.connections {
            print_connection(connection);
            count += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!("{count} connection(s) for tenant {tenant}, user {user}");
    Ok(())
}

async fn disconnect(client: &mut ConnectionServiceClient<Authed>, connection_id: String) -> Result<(), String> {
    let response = client
        .disconnect(request(DisconnectRequest { connection_id }))
        .await
        .map_err(|status| failed("Disconnect", &status))?
        .into_inner();
    println!("disconnected (revoked at the provider too, in the background)");
    if let Some(connection) = &response.connection {
        print_connection(connection);
    }
    Ok(())
}

fn print_connection(connection: &Connection) {
    let status = ConnectionStatus::try_from(connection.status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN");
    print!(
        "{}  {}  {}  [{}]",
        connection.id,
        connection.provider,
        status,
        connection.granted_scopes.join(" ")
    );
    if !connection.status_reason.is_empty() {
        print!("  ({})", connection.status_reason);
    }
    println!();
}
