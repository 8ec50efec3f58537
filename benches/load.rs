//! Load generator: the real `tokenvault serve` binary in its own process on a
//! fresh PostgreSQL database, driven by a tonic client from this process.
//!
//! In one run it measures, at each concurrency:
//! - `grpc.health.v1.Health/Check` (the ceiling),
//! - `GetAccessToken` on a cached token,
//! - `GetAccessToken` on a cache miss (a server with the in-memory token cache
//!   off: one database read plus AES-GCM open, no upstream call),
//!
//! then a refresh storm (1,000 concurrent calls for one expired token, on one
//! server and on two servers sharing the database) and the resident memory of
//! a server holding 100,000 connections with cached tokens. It prints Markdown
//! tables with the ratios to the ceiling, and stops by itself.
//!
//! ```text
//! cargo bench --bench load -- [--seconds 5] [--concurrency 1,16,64] [--memory-connections 100000]
//! ```
//!
//! PostgreSQL: `TOKENVAULT_TEST_PG` (an admin URL ending in `/<database>`), else
//! `postgres://postgres@127.0.0.1:5432/postgres`. The benchmark creates its own
//! database and drops it at the end.

mod common;

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvault::clock::{SharedClock, SystemClock};
use tokenvault::proto::token_service_client::TokenServiceClient;
use tokenvault::proto::GetAccessTokenRequest;
use tokenvault::store::{
    access_token_record, next_token_version, AccessTokenRecord, ConnectionStore, ConsentGrant, RefreshClaim,
    RefreshStore, Sealed, SqlStore, Store, StoreOptions, TenantScope, Trail,
};
use tokenvault::vault::{Binding, Field, LocalKeyring, Vault};
use tokenvault_testkit::fake_provider::{CatalogOptions, FakeProvider, FakeProviderConfig};
use tokenvault_testkit::server_process::{ProcessConfig, ServerProcess};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

const TENANT: &str = "acme";
const AGENT_KEY: &str = "bench-agent-key";
/// The `authorization` value of the bench's calls: `Bearer {AGENT_KEY}`.
const AGENT_AUTHORIZATION: &str = "Bearer bench-agent-key";
/// The fake provider's name in the catalog (`CatalogOptions::default()`).
const PROVIDER: &str = "fake";
const SCOPE: &str = "mail.read";
/// Concurrent calls in the refresh storm.
const STORM_CALLS: usize = 1_000;

#[derive(Parser, Debug)]
#[command(about = "tokenvault load benchmark")]
struct Args {
    /// Measured seconds per workload and concurrency, taken in one-second turns.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Connections with cached tokens for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    memory_connections: usize,
    /// Connections the throughput workloads cycle through.
    #[arg(long, default_value_t = 1_000)]
    working_set: usize,
    /// HTTP/2 connections the client spreads its calls over.
    #[arg(long, default_value_t = 2)]
    channels: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// PostgreSQL admin URL the benchmark creates its database through.
/// Everything a server process needs to be started.
struct ServerSetup {
    dir: tempfile::TempDir,
    db_url: String,
    kek: SecretString,
    fake: FakeProvider,
}

impl ServerSetup {
    /// Starts a server named `name` whose `[broker]` section is `broker`.
    async fn spawn(&self, name: &str, broker: &str) -> Result<ServerProcess> {
        let catalog = self.dir.path().join("catalog.toml");
        if !catalog.exists() {
            std::fs::write(&catalog, self.fake.catalog_toml(&CatalogOptions::default())).context("write catalog")?;
        }
        let extra = format!(
            r#"[[auth.api_keys]]
name = "bench-agent"
sha256 = "{agent}"
roles = ["agent"]
tenants = ["{TENANT}"]
[broker]
{broker}
[lifecycle]
sweep_interval_seconds = 0
"#,
            agent = tokenvault::auth::hash_api_key(AGENT_KEY),
        );
        let config = ProcessConfig {
            database_url: &self.db_url,
            kek: self.kek.expose_secret(),
            log_level: "info",
            catalog: &catalog,
            fake: &self.fake,
            keys_extra: "",
            extra: &extra,
        };
        let server = ServerProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_tokenvault")),
            self.dir.path(),
            name,
            |grpc, http| config.render(grpc, http),
        )
        .await?;
        Ok(server)
    }
}

/// `count` HTTP/2 connections to `server`.
async fn connect_channels(server: &ServerProcess, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        channels.push(server.channel().await.context("connect to tokenvault")?);
    }
    Ok(channels)
}

/// The item for turn `i` of a round robin over `items` (`None` when empty).
fn turn<T>(items: &[T], i: usize) -> Option<&T> {
    items.get(i.checked_rem(items.len())?)
}

/// Stores connections directly through the library (what a completed consent
/// stores), each with its own data key, a refresh token the fake provider
/// knows, and a sealed access token expiring at `expires_at`.
struct Seeder {
    store: SqlStore,
    vault: Vault,
    fake: FakeProvider,
}

impl Seeder {
    async fn new(setup: &ServerSetup) -> Result<Self> {
        let store = SqlStore::connect(
            &SecretString::from(setup.db_url.clone()),
            &StoreOptions {
                max_connections: 32,
                acquire_timeout: Duration::from_secs(30),
                ..StoreOptions::default()
            },
        )
        .await
        .context("connect to the benchmark database")?;
        store.migrate().await.context("migrate")?;
        let keyring = LocalKeyring::from_inline(&setup.kek, None).context("keyring")?;
        let clock: SharedClock = Arc::new(SystemClock);
        let vault = Vault::new(
            Arc::new(keyring),
            Arc::new(store.clone()),
            clock,
            1_000,
            Duration::from_secs(60),
        );
        Ok(Self {
            store,
            vault,
            fake: setup.fake.clone(),
        })
    }

    async fn seed(&self, prefix: &str, count: usize, expires_at: chrono::DateTime<chrono::Utc>) -> Result<Vec<Uuid>> {
        stream::iter(0..count)
            .map(|i| self.seed_one(format!("{prefix}-{i}"), expires_at))
            .buffer_unordered(32)
            .try_collect()
            .await
    }

    async fn seed_one(&self, user: String, expires_at: chrono::DateTime<chrono::Utc>) -> Result<Uuid> {
        let now = chrono::Utc::now();
        let grant = self.fake.mint_grant(&user, &[SCOPE]);
        let connection = self
            .store
            .get_or_create_connection(TENANT, &user, PROVIDER, None, now)
            .await
            .context("create connection")?;
        let key = self.vault.create_data_key().await.context("data key")?;
        let record = connection.id.to_string();
        let access_record = access_token_record(connection.id, "");
        // The version the grant gives the connection: what its tokens are sealed for.
        let version = next_token_version(connection.token_version);
        let refresh = key
            .seal_str(
                &Binding {
                    tenant_id: TENANT,
                    user_id: &user,
                    record: &record,
                    field: Field::RefreshToken,
                    version,
                },
                &SecretString::from(grant.refresh_token),
            )
            .context("seal")?;
        let access = key
            .seal_str(
                &Binding {
                    tenant_id: TENANT,
                    user_id: &user,
                    record: &access_record,
                    field: Field::AccessToken,
                    version,
                },
                &SecretString::from(grant.access_token),
            )
            .context("seal")?;
        let scopes: BTreeSet<String> = [SCOPE.to_owned()].into();
        let stored = self
            .store
            .store_consent_grant(
                &ConsentGrant {
                    connection_id: connection.id,
                    expected_version: connection.token_version,
                    expected_status: connection.stored_status,
                    dek_id: key.id(),
                    refresh_token: Some(Sealed(refresh)),
                    granted_scopes: scopes.clone(),
                    access_token: AccessTokenRecord {
                        connection_id: connection.id,
                        scope_key: String::new(),
                        token: Sealed(access),
                        token_type: "Bearer".to_owned(),
                        scopes,
                        expires_at,
                        token_version: version,
                        issued_at: now,
                    },
                    consent_id: None,
                    replaced: None,
                    account_subject: None,
                    account_display: None,
                },
                &Trail::none(),
                now,
            )
            .await
            .context("store grant")?;
        ensure!(stored, "a fresh connection's version cannot have moved");
        Ok(connection.id)
    }
}

/// One workload the client can run.
#[derive(Clone, Copy, Debug)]
enum Workload {
    Health,
    Token,
}

/// Results of one measured cell.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Latencies (µs) and failures gathered over one or more measured slices.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<u32>,
    errors: u64,
    measured: Duration,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.measured += other.measured;
    }

    /// One sequential call that took `elapsed` (counted as an error unless `ok`).
    fn record(&mut self, elapsed: Duration, ok: bool) {
        if ok {
            self.latencies
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        } else {
            self.errors += 1;
        }
        self.measured += elapsed;
    }

    fn summarize(mut self) -> Measured {
        self.latencies.sort_unstable();
        Measured {
            rps: self.latencies.len() as f64 / self.measured.as_secs_f64().max(f64::EPSILON),
            p50_us: percentile(&self.latencies, 0.50),
            p99_us: percentile(&self.latencies, 0.99),
            errors: self.errors,
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).or(sorted.last()).copied().map_or(0, u64::from)
}

fn bearer() -> MetadataValue<tonic::metadata::Ascii> {
    MetadataValue::from_static(AGENT_AUTHORIZATION)
}

/// `GetAccessToken` for the full grant of `connection`, authenticated with `auth`.
fn token_request(
    connection: Uuid,
    min_ttl_seconds: u32,
    auth: &MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<GetAccessTokenRequest> {
    let mut request = tonic::Request::new(GetAccessTokenRequest {
        connection_id: connection.to_string(),
        scopes: Vec::new(),
        min_ttl_seconds,
        ..Default::default()
    });
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// Runs `workload` at `concurrency` for `warmup` then `duration`; measures the second part.
async fn run_cell(
    channels: &[Channel],
    workload: Workload,
    connections: Arc<Vec<Uuid>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Samples> {
    ensure!(
        matches!(workload, Workload::Health) || !connections.is_empty(),
        "no connections to call GetAccessToken for"
    );
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let channel = turn(channels, worker).context("no channel to the server")?.clone();
        let connections = connections.clone();
        tasks.push(tokio::spawn(async move {
            let auth = bearer();
            let mut health = HealthClient::new(channel.clone());
            let mut tokens = TokenServiceClient::new(channel);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut i = worker;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let ok = match workload {
                    Workload::Health => {
                        let mut request = tonic::Request::new(HealthCheckRequest::default());
                        request.metadata_mut().insert("authorization", auth.clone());
                        health.check(request).await.is_ok()
                    }
                    Workload::Token => match turn(&connections, i) {
                        Some(&connection) => {
                            let request = token_request(connection, 0, &auth);
                            tokens.get_access_token(request).await.is_ok()
                        }
                        None => false,
                    },
                };
                i += concurrency;
                if sent >= start {
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    if !ok {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut samples = Samples {
        measured: duration,
        ..Samples::default()
    };
    for task in tasks {
        let (latencies, errors) = task.await.context("a load worker failed")?;
        samples.latencies.extend(latencies);
        samples.errors += errors;
    }
    Ok(samples)
}

/// 1,000 concurrent calls for one expired token spread over `servers`;
/// returns (upstream refreshes, seconds until all answered, successes).
async fn refresh_storm(servers: &[&ServerProcess], fake: &FakeProvider, connection: Uuid) -> Result<(u64, f64, usize)> {
    let mut channels = Vec::new();
    for server in servers {
        channels.extend(connect_channels(server, 4).await?);
    }
    let mut calls = Vec::with_capacity(STORM_CALLS);
    for i in 0..STORM_CALLS {
        let mut client = TokenServiceClient::new(turn(&channels, i).context("no channel to the servers")?.clone());
        calls.push(async move {
            client
                .get_access_token(token_request(connection, 60, &bearer()))
                .await
                .is_ok()
        });
    }
    let before = fake.stats().refreshes;
    let started = Instant::now();
    let answered = futures::future::join_all(calls).await;
    let elapsed = started.elapsed().as_secs_f64();
    let successes = answered.into_iter().filter(|ok| *ok).count();
    Ok((fake.stats().refreshes - before, elapsed, successes))
}

/// Refreshes one after the other, three ways: through the server (each
/// connection's token expired: read, journal and lease, provider call, fenced
/// commit), directly at the fake (the provider's own time, same HTTP stack),
/// and the journal alone (claiming and releasing the refresh lease in the
/// store: what the journal adds to a refresh).
async fn refresh_latency(server: &ServerProcess, seeder: &Seeder, fake: &FakeProvider) -> Result<[Measured; 3]> {
    const REFRESHES: usize = 200;
    let expired = chrono::Utc::now() - chrono::Duration::minutes(5);
    let ids = seeder.seed("latency", REFRESHES, expired).await?;
    let mut client = TokenServiceClient::new(connect_channels(server, 1).await?.remove(0));
    let mut through = Samples::default();
    for &id in &ids {
        let started = Instant::now();
        let ok = client.get_access_token(token_request(id, 60, &bearer())).await.is_ok();
        through.record(started.elapsed(), ok);
    }
    let http = reqwest::Client::new();
    let config = fake.config();
    let mut direct = Samples::default();
    for i in 0..REFRESHES {
        let grant = fake.mint_grant(&format!("direct-{i}"), &[SCOPE]);
        let started = Instant::now();
        let answer = http
            .post(fake.token_url())
            .basic_auth(&config.client_id, Some(&config.client_secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", grant.refresh_token.as_str()),
            ])
            .send()
            .await;
        direct.record(started.elapsed(), answer.is_ok_and(|a| a.status().is_success()));
    }
    let mut journal = Samples::default();
    for &id in &ids {
        let connection = seeder
            .store
            .connection(&TenantScope::All, id)
            .await?
            .context("seeded connection")?;
        let now = chrono::Utc::now();
        let started = Instant::now();
        let claim = seeder
            .store
            .claim_refresh(
                id,
                connection.token_version,
                "bench",
                now,
                now + chrono::Duration::seconds(6),
            )
            .await?;
        seeder.store.release_refresh(id, "bench", true, now).await?;
        journal.record(started.elapsed(), matches!(claim, RefreshClaim::Claimed { .. }));
    }
    Ok([through.summarize(), direct.summarize(), journal.summarize()])
}

/// The CPU time (user + system) process `pid` has used, from `/proc`.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    // Fields after the command name in parentheses; utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .context("short /proc/<pid>/stat")?
            .parse()
            .context("a CPU time field")
    };
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Pins every thread of process `pid` to `core` (`taskset`).
fn pin(pid: u32, core: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-cp", core, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("run taskset (util-linux)")?;
    ensure!(status.success(), "taskset failed for {pid}");
    Ok(())
}

/// Server CPU per call, cached `GetAccessToken` against `Health/Check`, with
/// the server on core 0 and this process on core 1, in alternating one-second
/// turns at concurrency 16: (calls, server CPU) for Health, then for tokens.
async fn cpu_per_call(
    server: &ServerProcess,
    working_set: &Arc<Vec<Uuid>>,
    seconds: u64,
) -> Result<((usize, Duration), (usize, Duration))> {
    pin(server.pid(), "0")?;
    pin(std::process::id(), "1")?;
    let channels = connect_channels(server, 4).await?;
    warm(server, working_set).await?;
    let mut totals = [(0usize, Duration::ZERO); 2];
    for round in 0..seconds.max(2) {
        for (total, workload) in totals.iter_mut().zip([Workload::Health, Workload::Token]) {
            let warmup = Duration::from_millis(if round == 0 { 500 } else { 100 });
            let cell = run_cell(&channels, workload, working_set.clone(), 16, warmup, Duration::ZERO);
            // Warm up first (not measured), then measure one second of server CPU.
            cell.await?;
            let before = cpu_time(server.pid())?;
            let measured = run_cell(
                &channels,
                workload,
                working_set.clone(),
                16,
                Duration::ZERO,
                Duration::from_secs(1),
            )
            .await?;
            let used = cpu_time(server.pid())?.saturating_sub(before);
            total.0 += measured.latencies.len();
            total.1 += used;
        }
    }
    Ok((totals[0], totals[1]))
}

/// Calls `GetAccessToken` once for each connection, at concurrency 64.
async fn warm(server: &ServerProcess, connections: &[Uuid]) -> Result<usize> {
    let channels = connect_channels(server, 2).await?;
    let mut calls = Vec::with_capacity(connections.len());
    for (i, &id) in connections.iter().enumerate() {
        let mut client = TokenServiceClient::new(turn(&channels, i).context("no channel to the server")?.clone());
        calls.push(async move { client.get_access_token(token_request(id, 0, &bearer())).await.is_ok() });
    }
    let answered: Vec<bool> = stream::iter(calls).buffer_unordered(64).collect().await;
    Ok(answered.into_iter().filter(|ok| *ok).count())
}

fn print_row(name: &str, concurrency: usize, m: &Measured, ceiling: &Measured) {
    println!(
        "| {name} | {concurrency} | {:.0} | {} | {} | {:.2} | {} |",
        m.rps,
        m.p50_us,
        m.p99_us,
        m.rps / ceiling.rps.max(1.0),
        m.errors
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run(args: &Args, db_url: String) -> Result<()> {
    let fake = FakeProvider::start(FakeProviderConfig {
        access_token_ttl: Duration::from_secs(3600),
        ..FakeProviderConfig::default()
    })
    .await
    .context("fake provider")?;
    let kek_bytes: [u8; 32] = rand::random();
    let kek = SecretString::from(format!(
        "bench:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, kek_bytes)
    ));
    let setup = ServerSetup {
        dir: tempfile::tempdir().context("temp dir")?,
        db_url,
        kek,
        fake: fake.clone(),
    };
    let seeder = Seeder::new(&setup).await?;
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let working_set = Arc::new(seeder.seed("load", args.working_set, later).await?);

    let cached = setup.spawn("cached", "").await?;
    let uncached = setup.spawn("uncached", "cache_capacity = 0").await?;

    println!(
        "\n## Throughput ({}s per cell in 1s turns, {} client HTTP/2 connections, {} connections cycled)\n",
        args.seconds, args.channels, args.working_set
    );
    println!("| workload | concurrency | req/s | p50 µs | p99 µs | ratio to Health/Check | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for &concurrency in &args.concurrency {
        let channels = connect_channels(&cached, args.channels).await?;
        let miss_channels = connect_channels(&uncached, args.channels).await?;
        // Every connection of the working set in memory first: the cached row measures hits.
        warm(&cached, &working_set).await?;
        // The four workloads take turns, one second each, so that whatever
        // else the machine does falls on all of them alike.
        let cells = [
            (&channels, Workload::Health),
            (&channels, Workload::Token),
            (&miss_channels, Workload::Health),
            (&miss_channels, Workload::Token),
        ];
        let mut totals: [Samples; 4] = Default::default();
        for round in 0..args.seconds {
            let warmup = if round == 0 {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            };
            for (total, (channels, workload)) in totals.iter_mut().zip(cells) {
                let slice = run_cell(
                    channels,
                    workload,
                    working_set.clone(),
                    concurrency,
                    warmup,
                    Duration::from_secs(1),
                );
                total.add(slice.await?);
            }
        }
        let [health, hit, miss_health, miss] = totals.map(Samples::summarize);
        print_row("Health/Check", concurrency, &health, &health);
        print_row("GetAccessToken, cached", concurrency, &hit, &health);
        print_row(
            "Health/Check (cache-off server)",
            concurrency,
            &miss_health,
            &miss_health,
        );
        print_row("GetAccessToken, cache miss", concurrency, &miss, &miss_health);
        summary.push((
            concurrency,
            hit.rps / health.rps.max(1.0),
            miss.rps / miss_health.rps.max(1.0),
        ));
    }
    println!("\n| concurrency | cached / ceiling (target ≥ 0.80) | miss / ceiling (target ≥ 0.30) |");
    println!("|---:|---:|---:|");
    for (concurrency, hit, miss) in &summary {
        println!(
            "| {concurrency} | {hit:.2} {} | {miss:.2} {} |",
            if *hit >= 0.8 { "met" } else { "MISSED" },
            if *miss >= 0.3 { "met" } else { "MISSED" }
        );
    }
    drop(uncached);

    println!("\n## Refresh storm ({STORM_CALLS} concurrent calls for one expired token)\n");
    println!("| servers | upstream refreshes (target 1) | seconds until all answered | calls answered OK |");
    println!("|---:|---:|---:|---:|");
    let expired = chrono::Utc::now() - chrono::Duration::minutes(5);
    let storm = seeder.seed("storm", 2, expired).await?;
    let [one_server, two_servers] = storm[..] else {
        anyhow::bail!("seeded {} storm connections, not 2", storm.len());
    };
    let (refreshes, seconds, ok) = refresh_storm(&[&cached], &fake, one_server).await?;
    println!("| 1 | {refreshes} | {seconds:.3} | {ok} |");
    let replica = setup.spawn("replica", "").await?;
    let (refreshes, seconds, ok) = refresh_storm(&[&cached, &replica], &fake, two_servers).await?;
    println!("| 2 | {refreshes} | {seconds:.3} | {ok} |");
    drop(replica);

    println!("\n## Refresh latency (sequential, one connection each; the journal alone in the last row)\n");
    println!("| path | p50 µs | p99 µs | errors |");
    println!("|---|---:|---:|---:|");
    let [through, direct, journal] = refresh_latency(&cached, &seeder, &fake).await?;
    for (name, m) in [
        ("GetAccessToken, token expired (refresh through the server)", &through),
        ("the same refresh grant sent directly to the provider", &direct),
        ("the journal: claim and release the refresh lease", &journal),
    ] {
        println!("| {name} | {} | {} | {} |", m.p50_us, m.p99_us, m.errors);
    }
    drop(cached);

    if args.memory_connections > 0 {
        let count = args.memory_connections;
        let seeding = Instant::now();
        let many = seeder.seed("mem", count, later).await?;
        let seeded_in = seeding.elapsed().as_secs_f64();
        let server = setup.spawn("memory", "cache_max_age_seconds = 3600").await?;
        warm(&server, working_set.get(..10).unwrap_or(&working_set)).await?;
        let before = server.rss_bytes().unwrap_or(0);
        let warming = Instant::now();
        let served = warm(&server, &many).await?;
        let warmed_in = warming.elapsed().as_secs_f64();
        // Calls across all of them afterwards show the entries stayed in memory.
        let channels = connect_channels(&server, args.channels).await?;
        let hits = run_cell(
            &channels,
            Workload::Token,
            Arc::new(many.clone()),
            16,
            Duration::ZERO,
            Duration::from_secs(2),
        )
        .await?
        .summarize();
        let after = server.rss_bytes().unwrap_or(0);
        println!("\n## Memory ({count} connections with cached tokens)\n");
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| RSS after start-up and a few calls | {:.1} MiB |", mib(before));
        println!(
            "| RSS holding {count} cached tokens (and their data keys) | {:.1} MiB |",
            mib(after)
        );
        println!(
            "| per connection | {:.0} bytes |",
            after.saturating_sub(before) as f64 / count as f64
        );
        println!("| first calls (cache misses) served | {served} of {count} in {warmed_in:.1} s |");
        println!(
            "| then 2 s at concurrency 16 across all of them | {:.0} req/s, p99 {} µs |",
            hits.rps, hits.p99_us
        );
        println!("| seeding {count} connections through the library | {seeded_in:.1} s |");
    }

    // Last, because it pins this process to one core for the rest of the run.
    let server = setup.spawn("cpu", "").await?;
    let ratio = cpu_per_call(&server, &working_set, args.seconds).await?;
    println!("\n## Server CPU per call (server pinned to core 0, client to core 1, concurrency 16)\n");
    println!("| workload | calls | server CPU s | µs of server CPU per call |");
    println!("|---|---:|---:|---:|");
    for (name, (calls, cpu)) in [("Health/Check", ratio.0), ("GetAccessToken, cached", ratio.1)] {
        println!(
            "| {name} | {calls} | {:.2} | {:.1} |",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / calls.max(1) as f64
        );
    }
    let per = |(calls, cpu): (usize, Duration)| cpu.as_secs_f64() / calls.max(1) as f64;
    let times = per(ratio.1) / per(ratio.0).max(f64::EPSILON);
    println!(
        "\ncached / Health/Check server CPU per call: {times:.2}× (target ≤ 1.3×: {})",
        if times <= 1.3 { "met" } else { "MISSED" }
    );
    drop(server);
    println!();
    drop(setup);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    common::run_on_fresh_database(
        "tokenvault load benchmark",
        "`tokenvault serve`",
        move |url| async move { run(&args, url).await },
    )
}
