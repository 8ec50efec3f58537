//! Event latency and webhook delivery throughput, through real servers on a
//! fresh PostgreSQL database (in this process, over real sockets):
//!
//! - **latency**: `DeleteUser` calls one at a time; each `user.deleted`
//!   event's time from the change (its `occurred_at`, taken just before the
//!   change's transaction commits) to its arrival at a `WatchEvents` watcher
//!   and at a webhook receiver on 127.0.0.1 (p50, p99, max);
//! - **throughput**: 1,000 events queued for a webhook endpoint while no
//!   replica delivers (`events.webhooks.workers = 0`), then a replica with
//!   the default 4 workers delivers them all: deliveries per second; and a
//!   watcher replaying the same 1,000 events from cursor 0: events per second.
//!
//! ```text
//! cargo bench --bench events -- [--events 200]
//! ```
//!
//! Stops by itself; drops its database at the end.

mod common;

use anyhow::{Context as _, Result};
use axum::extract::State;
use axum::routing::post;
use chrono::{DateTime, Utc};
use clap::Parser;
use secrecy::SecretString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokenvault::app::App;
use tokenvault::clock::SystemClock;
use tokenvault::config::{ApiKeyConfig, Config, Role};
use tokenvault::proto::admin_service_client::AdminServiceClient;
use tokenvault::proto::event_service_client::EventServiceClient;
use tokenvault::proto::watch_events_response::Kind;
use tokenvault::proto::*;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const TENANT: &str = "acme";
const KEY: &str = "bench-admin-and-platform-key";
/// Events queued for the throughput run.
const QUEUED: usize = 1_000;

#[derive(Parser, Debug)]
#[command(about = "tokenvault event latency and webhook throughput")]
struct Args {
    /// Changes timed one at a time for the latency figures.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What the webhook receiver saw: per delivery, the event's id and the latency from its change.
#[derive(Default)]
struct Received {
    latencies: Vec<(String, f64)>,
}

/// The receiver: records each delivery (no verification: the tests do that) and answers 204.
async fn hook(State(received): State<Arc<Mutex<Received>>>, body: String) -> axum::http::StatusCode {
    let now = Utc::now();
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let at = value
        .get("timestamp")
        .and_then(|t| t.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let id = value
        .get("data")
        .and_then(|d| d.get("id"))
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_owned();
    if let Some(at) = at {
        let seconds = (now - at.with_timezone(&Utc)).num_microseconds().unwrap_or(0) as f64 / 1e6;
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latencies
            .push((id, seconds));
    }
    axum::http::StatusCode::NO_CONTENT
}

fn config(db_url: &str, kek: &str, workers: usize) -> Config {
    let mut config = Config {
        database_url: Some(SecretString::from(db_url.to_owned())),
        ..Config::default()
    };
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
    config.server.http_listen = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
    config.keys.inline = Some(SecretString::from(kek.to_owned()));
    config.keys.allow_shared_database = true;
    config.keys.rotate_every_days = Some(0);
    config.lifecycle.sweep_interval_seconds = 0;
    config.log.level = "warn".to_owned();
    config.auth.api_keys = vec![ApiKeyConfig {
        name: "bench".to_owned(),
        sha256: tokenvault::auth::hash_api_key(KEY),
        roles: vec![Role::Admin, Role::Platform],
        tenants: vec![TENANT.to_owned()],
    }];
    config.events.webhooks.workers = workers;
    config.events.webhooks.allowed_networks = vec!["127.0.0.0/8".to_owned()];
    config.events.webhooks.allow_http_loopback = true;
    config
}

async fn serve(config: Config) -> Result<(tokenvault::api::ServerHandle, Channel)> {
    let app = App::build(config, Arc::new(SystemClock), true).await.context("app")?;
    let handle = tokenvault::api::start(Arc::new(app)).await.context("server")?;
    let channel = Channel::from_shared(format!("http://{}", handle.grpc_addr))?
        .connect()
        .await?;
    Ok((handle, channel))
}

type Authed = tonic::service::interceptor::InterceptedService<
    Channel,
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
>;

fn authed(channel: &Channel) -> Authed {
    let value: MetadataValue<_> = format!("Bearer {KEY}").parse().unwrap_or_else(|_| unreachable!());
    tonic::service::interceptor::InterceptedService::new(
        channel.clone(),
        Box::new(move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", value.clone());
            Ok(request)
        }),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).or(sorted.last()).copied().unwrap_or(f64::NAN)
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} |",
        values.len(),
        percentile(&values, 0.5) * 1e3,
        percentile(&values, 0.99) * 1e3,
        values.last().copied().unwrap_or(f64::NAN) * 1e3
    );
}

async fn run(args: &Args, db_url: String) -> Result<()> {
    let kek = format!(
        "bench-1:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, rand::random::<[u8; 32]>())
    );
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    // Latency: one change at a time, a watcher and an endpoint listening.
    let (server, channel) = serve(config(&db_url, &kek, 4)).await?;
    let store = server.app.store.clone();
    let users = args.events.max(QUEUED);
    for i in 0..users {
        store.ensure_user(TENANT, &format!("user-{i}"), Utc::now()).await?;
    }
    let mut admin = AdminServiceClient::new(authed(&channel));
    admin
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            tenant_id: TENANT.into(),
            url: hook_url.clone(),
            description: "bench".into(),
            types: vec![],
        })
        .await?;
    let mut stream = EventServiceClient::new(authed(&channel))
        .watch_events(WatchEventsRequest {
            tenant_id: TENANT.into(),
            start_at_latest: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut watcher = Vec::with_capacity(args.events);
    for i in 0..args.events {
        admin
            .delete_user(DeleteUserRequest {
                tenant_id: TENANT.into(),
                user_id: format!("user-{i}"),
            })
            .await?;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("the watcher waited 10 s")??
                .context("the stream ended")?;
            if let Some(Kind::Event(event)) = item.kind {
                let at = event.occurred_at.context("occurred_at")?;
                let occurred = DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0))
                    .context("occurred_at")?;
                watcher.push((Utc::now() - occurred).num_microseconds().unwrap_or(0) as f64 / 1e6);
                break;
            }
        }
        // Unloaded latency: let the webhook delivery finish before the next change.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap_or_else(|p| p.into_inner()).latencies.len() < args.events && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hooks: Vec<f64> = received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latencies
        .iter()
        .map(|(_, s)| *s)
        .collect();
    drop(stream);
    server.shutdown().await;
    println!(
        "\n## Event latency (change → received), {} changes one at a time\n",
        args.events
    );
    println!("| path | events | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    summary("commit → `WatchEvents` watcher", watcher);
    summary("commit → webhook receiver (2xx)", hooks);

    // Throughput: 1,000 deliveries queued while no replica delivers, then one replica delivers them.
    received.lock().unwrap_or_else(|p| p.into_inner()).latencies.clear();
    let (quiet, channel) = serve(config(&db_url, &kek, 0)).await?;
    let mut admin = AdminServiceClient::new(authed(&channel));
    let mut queued = 0;
    let restores = users.min(QUEUED);
    for i in 0..restores {
        if i < args.events {
            admin
                .restore_user(RestoreUserRequest {
                    tenant_id: TENANT.into(),
                    user_id: format!("user-{i}"),
                })
                .await?;
        } else {
            admin
                .delete_user(DeleteUserRequest {
                    tenant_id: TENANT.into(),
                    user_id: format!("user-{i}"),
                })
                .await?;
        }
        queued += 1;
    }
    quiet.shutdown().await;
    let started = Instant::now();
    let (server, channel) = serve(config(&db_url, &kek, 4)).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.lock().unwrap_or_else(|p| p.into_inner()).latencies.len() < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = received.lock().unwrap_or_else(|p| p.into_inner()).latencies.len();
    let delivery_seconds = started.elapsed().as_secs_f64();
    // Replay: every event from cursor 0.
    let total = args.events + queued;
    let started = Instant::now();
    let mut stream = EventServiceClient::new(authed(&channel))
        .watch_events(WatchEventsRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut replayed = 0;
    while replayed < total {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("replay stalled")??
            .context("the stream ended")?;
        if matches!(item.kind, Some(Kind::Event(_))) {
            replayed += 1;
        }
    }
    let replay_seconds = started.elapsed().as_secs_f64();
    drop(stream);
    server.shutdown().await;
    println!("\n## Throughput\n");
    println!("| what | events | seconds | per second |\n|---|---|---|---|");
    println!(
        "| webhook deliveries, {queued} queued, one replica (4 workers, start-up included) | {delivered} | {delivery_seconds:.2} | {:.0} |",
        delivered as f64 / delivery_seconds
    );
    println!(
        "| `WatchEvents` replay from cursor 0 | {replayed} | {replay_seconds:.2} | {:.0} |",
        replayed as f64 / replay_seconds
    );
    anyhow::ensure!(delivered == queued, "only {delivered} of {queued} deliveries arrived");
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    common::run_on_fresh_database("tokenvault event benchmark", "in this process", move |url| async move {
        run(&args, url).await
    })
}
