//! Refresh under the conditions that lose tokens elsewhere: callers that give
//! up while the provider is answering, revocations during a slow refresh,
//! `min_ttl_seconds` beyond what the provider issues, and a re-consent read
//! back at once. Each asserts on what the provider saw, not only on what the
//! caller got.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::stored_connection;
use crate::support::provider::connect;
use crate::support::{eventually, keys, Backend, TestServer};
use std::time::{Duration, Instant};
use tokenvault::proto::{DisconnectRequest, GetAccessTokenRequest, GetAccessTokenResponse};
use tokenvault::store::ConnectionStatus;
use tokenvault_testkit::fake_provider::{Endpoint, FakeProviderConfig, Fault};
use tonic::Code;

/// `GetAccessToken` for `connection_id`, given up after `timeout` when set.
async fn get(
    server: &TestServer,
    connection_id: &str,
    min_ttl: u32,
    timeout: Option<Duration>,
) -> Result<GetAccessTokenResponse, tonic::Status> {
    let mut call = tonic::Request::new(GetAccessTokenRequest {
        connection_id: connection_id.to_owned(),
        scopes: vec![],
        min_ttl_seconds: min_ttl,
    });
    if let Some(timeout) = timeout {
        call.set_timeout(timeout);
    }
    server
        .tokens(keys::AGENT)
        .get_access_token(call)
        .await
        .map(|r| r.into_inner())
}

/// Waits (real time, at most 20 s) until `done` holds, and fails the test otherwise.
async fn until(mut done: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(20), || std::future::ready(done())).await,
        "condition not reached within 20 s"
    );
}

async fn caller_gives_up_while_the_provider_rotates(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "ada", &["mail.read"]).await;
    let first = get(&with.server, &connection, 0, None).await.unwrap();
    let version = stored_connection(&with.server, &connection).await.token_version;
    // The token is due; the provider rotates at once and answers two seconds later.
    with.server.clock.advance(chrono::Duration::seconds(3600));
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::DelayAnswer(Duration::from_secs(2)));
    let before = with.fake.stats();
    let error = get(&with.server, &connection, 0, Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{error:?}"
    );
    // The refresh finishes without its caller: the rotated refresh token is stored.
    until(|| with.fake.stats().successful_refreshes == before.successful_refreshes + 1).await;
    // ...and is committed (the fake rotates, so the token version moves).
    for _ in 0..200 {
        if stored_connection(&with.server, &connection).await.token_version > version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = get(&with.server, &connection, 0, None).await.unwrap();
    assert_ne!(next.access_token, first.access_token, "the refreshed token is served");
    assert!(with.fake.introspect(&next.access_token).is_some());
    assert_eq!(
        with.fake.stats().refreshes,
        before.refreshes + 1,
        "served from the finished refresh, not a second one"
    );
    // And the next refresh presents the rotated token, never the retired one.
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let later = get(&with.server, &connection, 0, None).await.unwrap();
    assert!(with.fake.introspect(&later.access_token).is_some());
    let stats = with.fake.stats();
    assert_eq!(stats.retired_refresh_tokens_presented, 0, "{stats:?}");
    assert_eq!(stats.successful_refreshes, before.successful_refreshes + 2);
    let stored = stored_connection(&with.server, &connection).await;
    assert_eq!(stored.status(), ConnectionStatus::Active);
    with.stop().await;
}
on_both!(
    a_caller_that_gives_up_loses_no_rotated_token,
    caller_gives_up_while_the_provider_rotates
);

async fn disconnect_during_a_slow_refresh(backend: Backend) {
    let with = WithProvider::start(backend).await;
    with.fake.set_subject("slow-user");
    let connection = connect(&with, "bea", &["mail.read"]).await;
    get(&with.server, &connection, 0, None).await.unwrap();
    with.server.clock.advance(chrono::Duration::seconds(3600));
    // The provider rotates and mints at once, and answers eight seconds later.
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::DelayAnswer(Duration::from_secs(8)));
    let waiting = {
        let server_tokens = with.server.tokens(keys::AGENT);
        let id = connection.clone();
        tokio::spawn(async move {
            let mut client = server_tokens;
            client
                .get_access_token(GetAccessTokenRequest {
                    connection_id: id,
                    scopes: vec![],
                    min_ttl_seconds: 0,
                })
                .await
        })
    };
    until(|| with.fake.stats().successful_refreshes >= 1).await;
    let started = Instant::now();
    let revoked = with
        .server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let took = started.elapsed();
    assert_eq!(revoked.status, tokenvault::proto::ConnectionStatus::Revoked as i32);
    assert!(
        took < Duration::from_secs(5),
        "the revocation did not wait for the 8 s refresh ({took:?})"
    );
    // The late refresh's token is never served...
    let outcome = waiting.await.unwrap();
    let error = outcome.expect_err("the refresh lost to the revocation");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert_eq!(
        get(&with.server, &connection, 0, None).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // ...and the credentials it brought back are revoked at the provider too (the
    // outbox revokes the stored token, the refresh that lost revokes its own): no
    // live grant is left.
    until(|| with.fake.stats().revocations.len() >= 2).await;
    let revoked: std::collections::HashSet<String> =
        with.fake.stats().revocations.iter().map(|r| r.token.clone()).collect();
    assert_eq!(revoked.len(), 2, "the old and the rotated refresh token");
    assert!(with.fake.granted_scopes("slow-user").is_empty());
    with.stop().await;
}
on_both!(a_revocation_never_waits_for_a_refresh, disconnect_during_a_slow_refresh);

async fn min_ttl_beyond_the_lifetime(backend: Backend) {
    let with = WithProvider::build(backend)
        .fake(FakeProviderConfig {
            access_token_ttl: Duration::from_secs(3599),
            ..Default::default()
        })
        .start()
        .await;
    let connection = connect(&with, "cy", &["mail.read"]).await;
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let before = with.fake.stats().refreshes;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut client = with.server.tokens(keys::AGENT);
        let id = connection.clone();
        calls.spawn(async move {
            client
                .get_access_token(GetAccessTokenRequest {
                    connection_id: id,
                    scopes: vec![],
                    min_ttl_seconds: 3600,
                })
                .await
                .map(|r| r.into_inner())
        });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(result) = calls.join_next().await {
        let issued = result.unwrap().expect("every caller gets a token");
        tokens.insert(issued.access_token);
    }
    assert_eq!(
        with.fake.stats().refreshes - before,
        1,
        "one upstream refresh for 50 callers"
    );
    assert_eq!(tokens.len(), 1);
    // Asked again, the same token is served (no refresh per call), with its true expiry.
    let again = get(&with.server, &connection, 3600, None).await.unwrap();
    assert!(tokens.contains(&again.access_token));
    assert_eq!(with.fake.stats().refreshes - before, 1);
    with.stop().await;
}
on_both!(min_ttl_above_the_lifetime_refreshes_once, min_ttl_beyond_the_lifetime);

async fn reconsent_is_read_back_at_once(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "dee", &["mail.read"]).await;
    let old = get(&with.server, &connection, 0, None).await.unwrap();
    // A re-consent with more: the next call gets the new grant's token, not the cached one.
    assert_eq!(connect(&with, "dee", &["mail.read", "mail.send"]).await, connection);
    let new = get(&with.server, &connection, 0, None).await.unwrap();
    assert_ne!(new.access_token, old.access_token);
    let info = with.fake.introspect(&new.access_token).expect("a live token");
    assert!(info.scopes.iter().any(|s| s == "mail.send"), "{:?}", info.scopes);
    with.stop().await;
}
on_both!(a_reconsent_is_served_at_once, reconsent_is_read_back_at_once);

async fn keep_alive_refreshes_idle_connections(backend: Backend) {
    let with = WithProvider::build(backend)
        .catalog_toml(|fake| {
            fake.catalog_toml(&tokenvault_testkit::fake_provider::CatalogOptions::default())
                .replace(
                    "issues_refresh_tokens = true\n",
                    "issues_refresh_tokens = true\nrefresh_idle_expiry_days = 30\n",
                )
        })
        .start()
        .await;
    let idle = connect(&with, "eve", &["mail.read"]).await;
    let sweep = || async { with.server.app().sweeper.run_once(None, false).await.unwrap().unwrap() };
    let refreshes = || with.fake.stats().successful_refreshes;
    let before = refreshes();

    // Quiet for ten days: not yet (keep-alive starts at half the idle expiry).
    with.server.clock.advance(chrono::Duration::days(10));
    assert_eq!(sweep().await.idle_connections_refreshed, 0);
    assert_eq!(refreshes(), before);

    // Quiet for sixteen: refreshed once, in the background, and then not again.
    with.server.clock.advance(chrono::Duration::days(6));
    let dry = with.server.app().sweeper.run_once(None, true).await.unwrap().unwrap();
    assert_eq!(dry.idle_connections_refreshed, 1);
    assert_eq!(refreshes(), before, "a dry run refreshes nothing");
    assert_eq!(sweep().await.idle_connections_refreshed, 1);
    assert_eq!(refreshes(), before + 1);
    assert_eq!(sweep().await.idle_connections_refreshed, 0);
    assert_eq!(refreshes(), before + 1);
    let token = get(&with.server, &idle, 0, None).await.unwrap();
    assert!(with.fake.introspect(&token.access_token).is_some());

    // A revoked connection is left alone.
    with.server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: idle.clone(),
        })
        .await
        .unwrap();
    with.server.clock.advance(chrono::Duration::days(20));
    assert_eq!(sweep().await.idle_connections_refreshed, 0);
    assert_eq!(refreshes(), before + 1);
    with.stop().await;
}
on_both!(idle_connections_are_kept_alive, keep_alive_refreshes_idle_connections);

/// A provider that does not rotate (Google): the replica that waits for the
/// other's refresh sees it land by the stored token, not by a moved token
/// version (there is none), and is served as soon as it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_replica_is_served_when_a_non_rotating_refresh_lands() {
    let with = WithProvider::build(Backend::Postgres)
        .fake(FakeProviderConfig {
            rotate_refresh_tokens: false,
            ..Default::default()
        })
        .start()
        .await;
    let connection = connect(&with, "fay", &["mail.read"]).await;
    let replica = with.replica().await;
    with.server.clock.advance(chrono::Duration::seconds(3600));
    replica.clock.advance(chrono::Duration::seconds(3600));
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::Delay(Duration::from_secs(1)));
    let first = {
        let mut client = with.server.tokens(keys::AGENT);
        let id = connection.clone();
        tokio::spawn(async move {
            client
                .get_access_token(GetAccessTokenRequest {
                    connection_id: id,
                    scopes: vec![],
                    min_ttl_seconds: 0,
                })
                .await
        })
    };
    until(|| with.fake.stats().refreshes == 1).await;
    // The replica's caller allows 3 s: well inside the first refresh (1 s) plus a
    // poll, well short of the 6 s lease it would wait out if it looked only at
    // the token version.
    let second = get(&replica, &connection, 0, Some(Duration::from_secs(3)))
        .await
        .expect("served once the first replica's refresh is committed");
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(second.access_token, first.access_token);
    assert_eq!(with.fake.stats().refreshes, 1, "one refresh across both replicas");
    replica.stop().await;
    with.stop().await;
}
