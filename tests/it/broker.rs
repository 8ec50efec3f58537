//! GetAccessToken through the real server and the fake provider.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection, stored_refresh_token};
use crate::support::provider::{connect, CatalogOptions};
use crate::support::{keys, Backend, TestServer};
use std::collections::HashSet;
use tokenvault::clock::Clock;
use tokenvault::proto::{GetAccessTokenRequest, GetAccessTokenResponse};
use tokenvault::store::ConnectionStatus;
use tokenvault_testkit::fake_provider::{Endpoint, FakeProviderConfig, Fault};
use tonic::Code;

fn request(connection_id: &str, scopes: &[&str], min_ttl: u32) -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        connection_id: connection_id.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        min_ttl_seconds: min_ttl,
        ..Default::default()
    }
}

async fn get(
    server: &TestServer,
    connection_id: &str,
    scopes: &[&str],
    min_ttl: u32,
) -> Result<GetAccessTokenResponse, tonic::Status> {
    server
        .tokens(keys::AGENT)
        .get_access_token(request(connection_id, scopes, min_ttl))
        .await
        .map(|r| r.into_inner())
}

/// `calls` concurrent `GetAccessToken` calls for `connection_id`, spread
/// over `servers` in turn; the distinct tokens they got.
async fn concurrent_tokens(servers: &[&TestServer], connection_id: &str, calls: usize) -> HashSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let server = servers[i % servers.len()];
        let mut client = server.tokens(keys::AGENT);
        let id = connection_id.to_owned();
        tasks.spawn(async move {
            client
                .get_access_token(request(&id, &[], 0))
                .await
                .map(|r| r.into_inner().access_token)
        });
    }
    let mut tokens = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        tokens.insert(result.unwrap().expect("every caller gets a token"));
    }
    tokens
}

async fn cached_then_refreshed(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "alice", &["calendar.read", "mail.send"]).await;
    let first = get(&with.server, &connection, &[], 0).await.unwrap();
    assert_eq!(first.token_type, "Bearer");
    assert_eq!(first.connection_id, connection);
    assert_eq!(first.scopes, vec!["calendar.read", "mail.send"]);
    let info = with
        .fake
        .introspect(&first.access_token)
        .expect("a live token from the provider");
    assert_eq!(info.scopes, vec!["calendar.read", "mail.send"]);
    let second = get(&with.server, &connection, &[], 0).await.unwrap();
    assert_eq!(second.access_token, first.access_token, "served from the cache");
    assert_eq!(with.fake.stats().refreshes, 0);
    let old_refresh = stored_refresh_token(&with.server, &connection).await;

    // An hour later the token has expired: one refresh, rotated refresh token stored.
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let third = get(&with.server, &connection, &[], 0).await.unwrap();
    assert_ne!(third.access_token, first.access_token);
    assert!(with.fake.introspect(&third.access_token).is_some());
    assert_eq!(with.fake.stats().refreshes, 1);
    let new_refresh = stored_refresh_token(&with.server, &connection).await;
    assert_ne!(new_refresh, old_refresh, "the rotated refresh token is stored");
    assert!(with.fake.is_refresh_token_active(&new_refresh));
    assert!(!with.fake.is_refresh_token_active(&old_refresh));
    assert_eq!(
        get(&with.server, &connection, &[], 0).await.unwrap().access_token,
        third.access_token
    );
    assert_eq!(with.fake.stats().refreshes, 1);

    let metrics = crate::support::inspect::metrics(&with.server).await;
    for outcome in ["store_hit", "cache_hit", "refreshed"] {
        assert!(
            metrics.contains(&format!("tokenvault_token_issuances_total{{outcome=\"{outcome}\"}}")),
            "{outcome}"
        );
    }
    // Issuances are audited in batches (and last_used_at kept), without the token.
    with.server.app().broker.flush_usage().await;
    let events = audit(&with.server, "token.issued").await;
    let issued: u64 = events.iter().map(|e| e.detail["count"].as_u64().unwrap()).sum();
    assert_eq!(issued, 4);
    assert!(events.iter().all(|e| e.actor == "agent-acme"));
    assert!(!events.iter().any(|e| e.detail.to_string().contains("fake_at_")));
    let stored = stored_connection(&with.server, &connection).await;
    assert!(stored.last_used_at.is_some());
    with.stop().await;
}
on_both!(tokens_are_cached_then_refreshed, cached_then_refreshed);

async fn min_ttl_and_lease(backend: Backend) {
    let fake = FakeProviderConfig {
        access_token_ttl: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let with = WithProvider::build(backend)
        .fake(fake)
        .config(|c| c.broker.max_lease_seconds = 120)
        .start()
        .await;
    let connection = connect(&with, "bob", &["mail.read"]).await;
    let now = with.server.clock.now();
    let first = get(&with.server, &connection, &[], 300).await.unwrap();
    let expires = tokenvault::clock::from_proto(first.expires_at.as_ref().unwrap()).unwrap();
    assert!(
        expires <= now + chrono::Duration::seconds(121),
        "the lease cap bounds expires_at"
    );
    assert!(expires >= now + chrono::Duration::seconds(110));
    // 400 s later 200 s remain: enough for min_ttl 60, not for 300.
    with.server.clock.advance(chrono::Duration::seconds(400));
    assert_eq!(
        get(&with.server, &connection, &[], 60).await.unwrap().access_token,
        first.access_token
    );
    assert_eq!(with.fake.stats().refreshes, 0);
    let fresh = get(&with.server, &connection, &[], 300).await.unwrap();
    assert_ne!(fresh.access_token, first.access_token);
    assert_eq!(with.fake.stats().refreshes, 1);
    let error = get(&with.server, &connection, &[], 86_401).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    with.stop().await;
}
on_both!(min_ttl_and_lease_cap_apply, min_ttl_and_lease);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_cause_one_refresh() {
    let with = WithProvider::start(Backend::Postgres).await;
    let connection = connect(&with, "carol", &["calendar.read"]).await;
    with.server.clock.advance(chrono::Duration::seconds(3600));
    // A slow provider keeps the refresh in flight while the callers pile up.
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::Delay(std::time::Duration::from_millis(300)));
    let tokens = concurrent_tokens(&[&with.server], &connection, 1000).await;
    assert_eq!(tokens.len(), 1, "everyone got the one refreshed token");
    assert_eq!(with.fake.stats().refreshes, 1, "exactly one upstream refresh");
    with.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_cause_one_refresh() {
    let with = WithProvider::start(Backend::Postgres).await;
    let connection = connect(&with, "dan", &["calendar.read"]).await;
    // A second replica: same database, same keys and catalog, its own cache.
    let replica = with.replica().await;
    with.server.clock.advance(chrono::Duration::seconds(3600));
    replica.clock.advance(chrono::Duration::seconds(3600));
    // A slow provider: the second replica's callers arrive while the first replica's refresh is in flight.
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::Delay(std::time::Duration::from_millis(300)));
    let tokens = concurrent_tokens(&[&with.server, &replica], &connection, 1000).await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(with.fake.stats().refreshes, 1, "one refresh across both replicas");
    replica.stop().await;
    with.stop().await;
}

async fn invalid_grant(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "erin", &["mail.read"]).await;
    with.fake.revoke_all_grants();
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let error = get(&with.server, &connection, &[], 0).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("re-consent") && error.message().contains("invalid_grant"),
        "{}",
        error.message()
    );
    let stored = stored_connection(&with.server, &connection).await;
    assert_eq!(stored.status(), ConnectionStatus::NeedsReauth);
    assert!(stored.refresh_token.is_some(), "nothing is deleted");
    let events = audit(&with.server, "connection.needs_reauth").await;
    assert_eq!(events.len(), 1);
    // Later calls fail at once without calling the provider again.
    let refreshes = with.fake.stats().refreshes;
    assert_eq!(
        get(&with.server, &connection, &[], 0).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(with.fake.stats().refreshes, refreshes);
    // A new consent brings the connection back.
    assert_eq!(connect(&with, "erin", &["mail.read"]).await, connection);
    assert!(get(&with.server, &connection, &[], 0).await.is_ok());
    with.stop().await;
}
on_both!(invalid_grant_needs_reauth, invalid_grant);

async fn provider_down_or_slow(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "fred", &["mail.read"]).await;
    let original = get(&with.server, &connection, &[], 0).await.unwrap();
    with.fake
        .faults()
        .set_persistent(Endpoint::Token, Some(Fault::Status(503)));
    // Still valid but shorter than asked: the stored token is served rather than nothing.
    with.server.clock.advance(chrono::Duration::seconds(3500));
    let stale = get(&with.server, &connection, &[], 300).await.unwrap();
    assert_eq!(stale.access_token, original.access_token);
    assert!(with.fake.stats().refreshes >= 1);
    // Expired and the provider down: UNAVAILABLE, after bounded retries.
    with.server.clock.advance(chrono::Duration::seconds(200));
    let before = with.fake.stats().refreshes;
    let error = get(&with.server, &connection, &[], 0).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.message().contains("503"), "{}", error.message());
    assert_eq!(
        with.fake.stats().refreshes - before,
        3,
        "three attempts (the configured default)"
    );
    // Slow: the caller's deadline bounds the wait.
    with.fake
        .faults()
        .set_persistent(Endpoint::Token, Some(Fault::Delay(std::time::Duration::from_secs(3))));
    let started = std::time::Instant::now();
    let mut call = tonic::Request::new(request(&connection, &[], 0));
    call.set_timeout(std::time::Duration::from_millis(800));
    let error = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(call)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
        ),
        "{error:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Recovery: the refresh token survived all of it. The refresh the slow call
    // started goes on after the caller left; a call that joins it before it has
    // failed shares its failure, the next one starts afresh.
    with.fake.faults().clear();
    let mut recovered = get(&with.server, &connection, &[], 0).await;
    for _ in 0..2 {
        if recovered.is_ok() {
            break;
        }
        recovered = get(&with.server, &connection, &[], 0).await;
    }
    let recovered = recovered.unwrap();
    assert!(with.fake.introspect(&recovered.access_token).is_some());
    with.stop().await;
}
on_both!(provider_outages_are_bounded, provider_down_or_slow);

async fn scope_narrowing(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "gina", &["calendar.read", "mail.send"]).await;
    let narrow = get(&with.server, &connection, &["calendar.read"], 0).await.unwrap();
    assert_eq!(narrow.scopes, vec!["calendar.read"]);
    assert_eq!(
        with.fake.introspect(&narrow.access_token).unwrap().scopes,
        vec!["calendar.read"]
    );
    assert_eq!(with.fake.stats().refreshes, 1, "narrowed with a refresh (RFC 6749 §6)");
    assert_eq!(
        get(&with.server, &connection, &["calendar.read"], 0)
            .await
            .unwrap()
            .access_token,
        narrow.access_token
    );
    let full = get(&with.server, &connection, &[], 0).await.unwrap();
    assert_ne!(full.access_token, narrow.access_token);
    let same_as_full = get(&with.server, &connection, &["calendar.read", "mail.send"], 0)
        .await
        .unwrap();
    assert_eq!(
        same_as_full.access_token, full.access_token,
        "asking for everything is the full grant"
    );
    let error = get(&with.server, &connection, &["files.read"], 0).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains("files.read"));
    with.stop().await;

    // A provider that cannot narrow hands out the full token.
    let options = CatalogOptions {
        narrowing: false,
        ..Default::default()
    };
    let with = WithProvider::build(backend).catalog(options).start().await;
    let connection = connect(&with, "gina", &["calendar.read", "mail.send"]).await;
    let subset = get(&with.server, &connection, &["calendar.read"], 0).await.unwrap();
    assert_eq!(subset.scopes, vec!["calendar.read", "mail.send"]);
    assert_eq!(with.fake.stats().refreshes, 0);
    with.stop().await;
}
on_both!(scope_subsets_are_narrowed, scope_narrowing);

async fn refusals(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "hal", &["mail.read"]).await;
    get(&with.server, &connection, &[], 0).await.unwrap();
    // Another tenant's agent: refused whether the token is cached or not.
    let error = with
        .server
        .tokens(keys::OTHER_AGENT)
        .get_access_token(request(&connection, &[], 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    with.server.app().broker.cache().invalidate_all();
    let error = with
        .server
        .tokens(keys::OTHER_AGENT)
        .get_access_token(request(&connection, &[], 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    // Wrong role.
    let error = with
        .server
        .tokens(keys::PLATFORM)
        .get_access_token(request(&connection, &[], 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    // Unknown and malformed ids.
    let error = get(&with.server, &uuid::Uuid::new_v4().to_string(), &[], 0)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = get(&with.server, "../../etc/passwd", &[], 0).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        get(&with.server, &connection, &refs, 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    with.stop().await;
}
on_both!(unauthorized_callers_get_nothing, refusals);
