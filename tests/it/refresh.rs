//! Refresh under the conditions that lose tokens elsewhere: callers that give
//! up while the provider is answering, revocations during a slow refresh,
//! `min_ttl_seconds` beyond what the provider issues, and a re-consent read
//! back at once. Each asserts on what the provider saw, not only on what the
//! caller got.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection, stored_refresh_token};
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
        ..Default::default()
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
    let stored_refresh = stored_refresh_token(&with.server, &connection).await;
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
                    ..Default::default()
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
    // ...and the credentials it brought back are revoked at the provider too,
    // both through the outbox: the revocation's entry holds the stored refresh
    // token, the refresh that lost queued the rotated one under a key of its own.
    // No live grant is left.
    let id: uuid::Uuid = connection.parse().unwrap();
    let store = &with.server.app().store;
    let ended = eventually(Duration::from_secs(20), || async {
        let entries = store.outbox_for_connection(id).await.unwrap();
        entries.len() == 2 && entries.iter().all(|e| e.status != "pending")
    })
    .await;
    let entries = store.outbox_for_connection(id).await.unwrap();
    assert!(ended, "two outbox entries, both finished: {entries:?}");
    assert!(entries.iter().all(|e| e.status == "done"), "{entries:?}");
    let handed_over: Vec<_> = entries
        .iter()
        .filter(|e| e.binding_record == e.id.to_string())
        .collect();
    assert_eq!(handed_over.len(), 1, "{entries:?}");
    assert_eq!(handed_over[0].token_type_hint, "refresh_token");
    let discarded = audit(&with.server, "connection.refresh_discarded").await;
    assert_eq!(discarded.len(), 1, "{discarded:?}");
    assert_eq!(discarded[0].outcome, "queued");
    assert_eq!(
        discarded[0].detail["revocation_outbox_id"],
        handed_over[0].id.to_string()
    );
    let revocations = with.fake.stats().revocations;
    assert_eq!(revocations.len(), 2, "{revocations:?}");
    assert!(revocations.iter().all(|r| r.client_authenticated));
    // The stored one (already rotated away at the provider) and the rotated one
    // (whose grant may already have ended with the first revocation).
    assert!(revocations.iter().any(|r| r.token == stored_refresh));
    let rotated = revocations.iter().find(|r| r.token != stored_refresh);
    assert!(
        rotated.is_some_and(|r| r.token.starts_with("fake_rt_")),
        "the rotated refresh token: {revocations:?}"
    );
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
                    ..Default::default()
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

    // A caller that insists gets a clear OUT_OF_RANGE, no refresh, and is not counted as served.
    let issued_before = issued_events(&with).await;
    let refused = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.clone(),
            min_ttl_seconds: 3600,
            require_min_ttl: true,
            ..Default::default()
        })
        .await
        .expect_err("3600 s cannot be met by a 3599 s token");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("3600 s required"), "{}", refused.message());
    assert_eq!(with.fake.stats().refreshes - before, 1, "insisting does not refresh");
    assert_eq!(
        issued_events(&with).await,
        issued_before,
        "a refusal is not an issuance"
    );
    // What it can meet is served.
    let met = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.clone(),
            min_ttl_seconds: 600,
            require_min_ttl: true,
            ..Default::default()
        })
        .await
        .expect("600 s is within the token's life");
    assert!(tokens.contains(&met.into_inner().access_token));
    with.stop().await;
}
on_both!(min_ttl_above_the_lifetime_refreshes_once, min_ttl_beyond_the_lifetime);

/// How many issuances the audit log holds for the fixture's server, after a usage flush.
async fn issued_events(with: &WithProvider) -> u64 {
    with.server.app().broker.flush_usage().await;
    audit(&with.server, "token.issued")
        .await
        .iter()
        .map(|e| e.detail.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
        .sum()
}
