//! The platform side: connects a user's account through tokenvault, and lists
//! or ends the user's connections.
//!
//! ```sh
//! TOKENVAULT_API_KEY=<platform key> USER=alice cargo run --example platform
//! TOKENVAULT_API_KEY=<platform key> USER=alice cargo run --example platform -- --list
//! TOKENVAULT_API_KEY=<platform key> cargo run --example platform -- --disconnect <connection id>
//! TOKENVAULT_API_KEY=<platform key> cargo run --example platform -- --events [CURSOR]
//! ```
//!
//! With no argument it calls `StartConsent`, prints the authorization URL the
//! user's browser must open, and serves the `return_url` page itself: when the
//! browser comes back with `status=approved` and a one-time `completion_code`,
//! it calls `ConfirmConsent` for the same user (the step that binds the grant
//! to the user signed in at the platform) and prints the connection id.
//! `--list` shows `ListConnections` for the tenant and user, `--disconnect ID`
//! calls `Disconnect` (revoked at once, and at the provider too).
//! `--events` watches the tenant's event log (`WatchEvents`) after `CURSOR`
//! (default 0: everything kept), one line per event
//! (`event <cursor> <type> user=… connection=… …`), until interrupted; run it
//! again with the last cursor printed and nothing is missed or repeated.
//!
//! Environment:
//!
//! - `TOKENVAULT_ADDR`: tokenvault's gRPC address (default `http://127.0.0.1:50051`, plain text);
//! - `TOKENVAULT_API_KEY`: an API key with the `platform` role (required);
//! - `TENANT` (default `acme`), `USER` (the user id; shells set it to the login name);
//! - `PROVIDER` (default `demo`, the provider of `cargo run --example dev_provider`);
//! - `CAPABILITIES`: comma-separated capability names (default `calendar.read`);
//! - `RETURN_URL`: where tokenvault sends the browser afterwards; its origin must be in
//!   `consent.allowed_return_origins` (default `http://localhost:3000/connected`); this
//!   example listens on its host and port;
//! - `CONNECTION_ID`: re-consent (or add capabilities to) that connection instead of a new one.
//!
//! Output lines `authorization_url: …` and `connection_id: …` are meant to be
//! read by scripts too. Exit status: 0 when connected, 1 otherwise.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tokenvault::proto::connection_service_client::ConnectionServiceClient;
use tokenvault::proto::consent_service_client::ConsentServiceClient;
use tokenvault::proto::event_service_client::EventServiceClient;
use tokenvault::proto::watch_events_response::Kind;
use tokenvault::proto::{
    ConfirmConsentRequest, Connection, ConnectionStatus, DisconnectRequest, Event, ListConnectionsRequest,
    StartConsentRequest, WatchEventsRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Deadline of each call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the command line asks for.
enum Action {
    Connect,
    List,
    Disconnect(String),
    Events(u64),
}

const USAGE: &str = "usage: platform [--list | --disconnect CONNECTION_ID | --events [CURSOR]]";

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
        ["--events"] => Action::Events(0),
        ["--events", cursor] => Action::Events(
            cursor
                .parse()
                .map_err(|_| format!("CURSOR `{cursor}` is not a number"))?,
        ),
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
    let mut events = EventServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut connections = ConnectionServiceClient::with_interceptor(channel, auth);

    match action {
        Action::Events(cursor) => watch(&mut events, cursor).await,
        Action::Connect => connect(&mut consent).await,
        Action::List => list(&mut connections).await,
        Action::Disconnect(id) => disconnect(&mut connections, id).await,
    }
}

/// Prints the tenant's events after `cursor` as they come, until the stream ends.
async fn watch(events: &mut EventServiceClient<Authed>, cursor: u64) -> Result<(), String> {
    let mut stream = events
        .watch_events(WatchEventsRequest {
            tenant_id: tenant(),
            after_cursor: cursor,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("WatchEvents failed: {}: {}", s.code(), s.message()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(item)) => match item.kind {
                Some(Kind::Event(event)) => println!("{}", describe(&event)),
                Some(Kind::Heartbeat(beat)) => eprintln!("(heartbeat at cursor {})", beat.cursor),
                None => {}
            },
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(format!(
                    "the event stream ended: {}: {}",
                    status.code(),
                    status.message()
                ))
            }
        }
    }
}

/// One line per event: cursor, type, and what it is about.
fn describe(event: &Event) -> String {
    let mut line = format!("event {} {} user={}", event.cursor, event.r#type, event.user_id);
    if !event.connection_id.is_empty() {
        line.push_str(&format!(" connection={}", event.connection_id));
    }
    if let Some(data) = &event.data {
        for (name, value) in [
            ("provider", &data.provider),
            ("status", &data.status),
            ("provider_revocation", &data.provider_revocation),
            ("reason", &data.reason),
        ] {
            if !value.is_empty() {
                line.push_str(&format!(" {name}={value:?}"));
            }
        }
    }
    line
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
    let capabilities = env("CAPABILITIES")
        .unwrap_or_else(|| "calendar.read".to_owned())
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let return_url = env("RETURN_URL").unwrap_or_else(|| "http://localhost:3000/connected".to_owned());
    // The platform's own page that the browser comes back to; listening before
    // StartConsent so that no redirect can arrive before it is served.
    let landing = ReturnPage::listen(&return_url).await?;
    let user_id = user()?;
    let started = client
        .start_consent(request(StartConsentRequest {
            tenant_id: tenant(),
            user_id: user_id.clone(),
            provider: env("PROVIDER").unwrap_or_else(|| "demo".to_owned()),
            capabilities,
            return_url,
            connection_id: env("CONNECTION_ID").unwrap_or_default(),
            ..Default::default()
        }))
        .await
        .map_err(|status| failed("StartConsent", &status))?
        .into_inner();
    println!("consent_id: {}", started.consent_id);
    println!("scopes: {}", started.scopes.join(" "));
    println!("Open this URL in the user's browser:");
    println!("authorization_url: {}", started.authorization_url);

    let expires_at = started
        .expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(600));
    let wait = expires_at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(5);
    println!("waiting for the browser to come back to the return URL…");
    let back = tokio::time::timeout(wait, landing.arrival)
        .await
        .map_err(|_| "consent expired before the user came back".to_owned())?
        .map_err(|_| "the return page stopped".to_owned())?;
    if back.get("consent_id").map(String::as_str) != Some(started.consent_id.as_str()) {
        return Err("the browser came back for another consent".to_owned());
    }
    match back.get("status").map(String::as_str) {
        // The user approved at the provider; this platform, which knows the
        // browser is its signed-in user, now confirms (in a web application this
        // runs in the request handler of the return page, inside the user's session).
        Some("approved") => {
            let code = back
                .get("completion_code")
                .ok_or("approved without a completion_code")?;
            let confirmed = client
                .confirm_consent(request(ConfirmConsentRequest {
                    consent_id: started.consent_id.clone(),
                    completion_code: code.clone(),
                    user_id,
                }))
                .await
                .map_err(|status| failed("ConfirmConsent", &status))?
                .into_inner();
            println!("confirmed");
            println!("connected");
            println!("connection_id: {}", confirmed.connection_id);
            Ok(())
        }
        // A tenant without confirmation (`consent.tenants_without_confirmation`).
        Some("connected") => {
            println!("connected");
            println!(
                "connection_id: {}",
                back.get("connection_id").map_or("", String::as_str)
            );
            Ok(())
        }
        status => Err(format!(
            "consent {}: {}",
            status.unwrap_or("ended"),
            back.get("error").map_or("", String::as_str)
        )),
    }
}

/// The platform page named by `return_url`, served once on its own port.
struct ReturnPage {
    /// The query the browser came back with.
    arrival: tokio::sync::oneshot::Receiver<HashMap<String, String>>,
}

impl ReturnPage {
    /// Listens on the host and port of `return_url` (a loopback URL in this example).
    async fn listen(return_url: &str) -> Result<Self, String> {
        let url = url::Url::parse(return_url).map_err(|e| format!("RETURN_URL `{return_url}`: {e}"))?;
        let port = url.port_or_known_default().ok_or("RETURN_URL has no port")?;
        let host = match url.host_str() {
            Some("localhost") | None => "127.0.0.1".to_owned(),
            Some(host) => host.trim_matches(['[', ']']).to_owned(),
        };
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .map_err(|e| format!("listening on {host}:{port} for RETURN_URL: {e}"))?;
        let (send, arrival) = tokio::sync::oneshot::channel();
        let send = std::sync::Arc::new(std::sync::Mutex::new(Some(send)));
        let page = axum::Router::new().route(
            url.path(),
            axum::routing::get(
                move |axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>| {
                    let send = send.clone();
                    async move {
                        if let Some(send) = send.lock().ok().and_then(|mut s| s.take()) {
                            let _ = send.send(query);
                        }
                        "Thank you, you can close this window."
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, page).await });
        Ok(Self { arrival })
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
    if let Some(account) = &connection.account {
        let shown = if account.display.is_empty() {
            &account.subject
        } else {
            &account.display
        };
        print!("  as {shown}");
    }
    if !connection.status_reason.is_empty() {
        print!("  ({})", connection.status_reason);
    }
    println!();
}
