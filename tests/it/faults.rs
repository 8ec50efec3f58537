//! Faults: the database going away under load, the server killed mid-refresh,
//! a provider answering garbage, a tampered ciphertext.

use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection};
use crate::support::provider::{connect_on, install, start_fake, CatalogOptions};
use crate::support::proxy::TcpProxy;
use crate::support::{base_config, eventually, keys, Backend, TestDb, TestServer};
use std::time::{Duration, Instant};
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::{Endpoint, FakeProviderConfig, Fault};
use tonic::Code;

async fn token(server: &TestServer, connection_id: &str) -> Result<GetAccessTokenResponse, tonic::Status> {
    let mut request = tonic::Request::new(GetAccessTokenRequest {
        connection_id: connection_id.to_owned(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(5));
    server
        .tokens(keys::AGENT)
        .get_access_token(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_under_load_loses_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let options = CatalogOptions::default();
    let fake = start_fake(FakeProviderConfig::default(), &options).await;
    let upstream = crate::support::pg_host_port();
    let proxy = TcpProxy::start(upstream.parse().expect("TOKENVAULT_TEST_PG names host:port")).await;
    let mut config = base_config(&db);
    let url = secrecy::ExposeSecret::expose_secret(&db.url).replace(&upstream, &proxy.addr.to_string());
    assert!(
        url.contains(&proxy.addr.to_string()),
        "TOKENVAULT_TEST_PG must name the server as 127.0.0.1:<port>"
    );
    config.database_url = Some(url.into());
    config.database.acquire_timeout_seconds = 1;
    let _catalog = install(&mut config, &fake, &options);
    let server = TestServer::start_on(TestDb::attach(&db), config).await;
    let cached = connect_on(&server, &fake, "ann", &["mail.read"]).await;
    let stored = connect_on(&server, &fake, "ben", &["mail.read"]).await;
    let rotating = connect_on(&server, &fake, "cid", &["mail.read"]).await;
    token(&server, &cached).await.unwrap();

    // A refresh is in flight (the provider is slow) when the database goes away.
    server.clock.advance(chrono::Duration::seconds(3600));
    token(&server, &cached).await.unwrap();
    server
        .app()
        .broker
        .cache()
        .invalidate_connection(stored.parse().unwrap());
    fake.faults()
        .push(Endpoint::Token, Fault::Delay(Duration::from_millis(700)));
    let in_flight = {
        let mut client = server.tokens(keys::AGENT);
        let id = rotating.clone();
        tokio::spawn(async move {
            client
                .get_access_token(GetAccessTokenRequest {
                    connection_id: id,
                    ..Default::default()
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();

    // While it is down: cached tokens are served, the rest is UNAVAILABLE (never INTERNAL).
    let outcome = in_flight.await.unwrap();
    assert_eq!(
        outcome.unwrap_err().code(),
        Code::Unavailable,
        "the rotated token could not be stored yet"
    );
    for _ in 0..5 {
        assert!(
            token(&server, &cached).await.is_ok(),
            "cached tokens survive a database outage"
        );
        let error = token(&server, &stored).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    }
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);

    // Back: the server recovers by itself, and the rotated refresh token was kept.
    proxy.restore();
    assert!(
        eventually(Duration::from_secs(15), || async {
            token(&server, &stored).await.is_ok()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            token(&server, &rotating).await.is_ok()
        })
        .await,
        "the connection whose refresh was cut off still yields a token"
    );
    server.clock.advance(chrono::Duration::seconds(3600));
    for id in [&cached, &stored, &rotating] {
        let fresh = token(&server, id).await.expect("every refresh token survived");
        assert!(fake.introspect(&fresh.access_token).is_some());
    }
    server.stop().await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_provider_answers_are_bounded() {
    let with = WithProvider::build(Backend::Sqlite)
        .config(|c| {
            c.provider_http.max_response_bytes = 64 * 1024;
            c.broker.refresh_attempts = 1;
        })
        .start()
        .await;
    let connection = connect_on(&with.server, &with.fake, "dee", &["mail.read"]).await;
    with.server.clock.advance(chrono::Duration::seconds(3600));
    for fault in [
        Fault::GarbageJson,
        Fault::HugeBody(50 * 1024 * 1024),
        Fault::Status(500),
    ] {
        with.fake.faults().push(Endpoint::Token, fault);
        let started = Instant::now();
        let error = token(&with.server, &connection).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!error.message().contains("fake_"), "{}", error.message());
    }
    assert!(
        token(&with.server, &connection).await.is_ok(),
        "the connection is unharmed"
    );
    with.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ciphertext_is_reported_and_contained() {
    let with = WithProvider::start(Backend::Postgres).await;
    let victim = connect_on(&with.server, &with.fake, "eve", &["mail.read"]).await;
    let bystander = connect_on(&with.server, &with.fake, "fay", &["mail.read"]).await;
    // Flip one bit of the victim's stored access token.
    let pool = with.server.app().sql.pool();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token FROM access_tokens WHERE connection_id = $1")
        .bind(&victim)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut tampered = stored.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    sqlx::query("UPDATE access_tokens SET token = $1 WHERE connection_id = $2")
        .bind(tampered)
        .bind(&victim)
        .execute(pool)
        .await
        .unwrap();
    let error = token(&with.server, &victim).await.unwrap_err();
    assert_eq!(error.code(), Code::DataLoss);
    assert!(error.message().contains("integrity"), "{}", error.message());
    let events = audit(&with.server, "vault.integrity_failure").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].connection_id.map(|c| c.to_string()), Some(victim.clone()));
    assert!(
        token(&with.server, &bystander).await.is_ok(),
        "nothing else is affected"
    );
    // A ciphertext moved to another row does not open either.
    sqlx::query("UPDATE access_tokens SET token = $1 WHERE connection_id = $2")
        .bind(
            sqlx::query_scalar::<_, Vec<u8>>("SELECT token FROM access_tokens WHERE connection_id = $1")
                .bind(&bystander)
                .fetch_one(pool)
                .await
                .unwrap(),
        )
        .bind(&victim)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(token(&with.server, &victim).await.unwrap_err().code(), Code::DataLoss);
    let stored = stored_connection(&with.server, &victim).await;
    assert!(stored.refresh_token.is_some(), "nothing is deleted");
    with.stop().await;
}

/// PostgreSQL itself stopped for 15 s (the test's own cluster: the shared
/// server is never stopped) while agents keep calling: every call for a cached
/// token succeeds throughout the outage, and the server recovers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_for_15_s_cached_calls_all_succeed() {
    let cluster = crate::support::cluster::Cluster::start();
    let db = TestDb::external(cluster.admin_url());
    let options = CatalogOptions::default();
    let fake = start_fake(FakeProviderConfig::default(), &options).await;
    let mut config = base_config(&db);
    config.database.acquire_timeout_seconds = 1;
    let _catalog = install(&mut config, &fake, &options);
    let server = TestServer::start_on(TestDb::attach(&db), config).await;
    let mut ids = Vec::new();
    for user in ["ola", "pia", "quin"] {
        let id = connect_on(&server, &fake, user, &["mail.read"]).await;
        token(&server, &id).await.unwrap();
        ids.push(id);
    }

    // Agents call all the time; each call's outcome is kept with its time.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (mut client, ids, stop) = (server.tokens(keys::AGENT), ids.clone(), stop.clone());
        load.spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = worker;
            while !stop.is_cancelled() {
                let mut request = tonic::Request::new(GetAccessTokenRequest {
                    connection_id: ids[i % ids.len()].clone(),
                    ..Default::default()
                });
                request.set_timeout(Duration::from_secs(5));
                let result = client.get_access_token(request).await;
                outcomes.push((Instant::now(), result.map(|_| ()).map_err(|e| e.code())));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down_at = Instant::now();
    cluster.stop();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let up_at = Instant::now();
    cluster.start_again();
    // Back: calls that miss the cache are served again, by themselves.
    assert!(
        eventually(Duration::from_secs(20), || async {
            server.app().broker.cache().invalidate_all();
            token(&server, &ids[0]).await.is_ok()
        })
        .await,
        "the server recovers once the database is back"
    );
    stop.cancel();
    let mut during = Vec::new();
    while let Some(outcomes) = load.join_next().await {
        during.extend(
            outcomes
                .unwrap()
                .into_iter()
                .filter(|(at, _)| *at > down_at && *at < up_at),
        );
    }
    let failed: Vec<_> = during.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        during.len() > 100,
        "the load ran through the outage ({} calls)",
        during.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} cached calls failed while the database was down: {:?}",
        failed.len(),
        during.len(),
        failed.first()
    );
    // The notification listener is back too: another replica's invalidation
    // reaches this server's cache again.
    let id: uuid::Uuid = ids[1].parse().unwrap();
    let key = (id, String::new());
    let other = tokenvault::store::SqlStore::connect(&db.url, &Default::default())
        .await
        .unwrap();
    use tokenvault::store::NotifyStore;
    assert!(
        eventually(Duration::from_secs(30), || async {
            token(&server, &ids[1]).await.is_ok()
                && server.app().broker.cache().get(&key).is_some()
                && other
                    .notify(&tokenvault::store::Invalidation::Connection { id })
                    .await
                    .is_ok()
                && eventually(Duration::from_secs(2), || async {
                    server.app().broker.cache().get(&key).is_none()
                })
                .await
        })
        .await,
        "a notice sent after the outage reaches the server"
    );
    other.close().await;
    server.stop().await;
}
