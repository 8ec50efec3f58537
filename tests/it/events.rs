//! The event log through the real server: every lifecycle path records its
//! event exactly once, in the change's transaction; `WatchEvents` replays
//! then streams, resumes across a restart with no gap and no duplicate,
//! serves any replica's events on every replica, and keeps tenants apart.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::provider::{connect, query, start_request, UserBrowser};
use crate::support::revocation::disconnect;
use crate::support::watch::{types, Watch};
use crate::support::{keys, Backend, TestServer};
use std::collections::BTreeMap;
use std::time::Duration;
use tokenvault::events::EventType;
use tokenvault::proto::*;
use tonic::Code;

/// Every event of `tenant` in the database, oldest first.
pub async fn stored_events(server: &TestServer, tenant: &str) -> Vec<tokenvault::events::Event> {
    server.app().store.events_after(tenant, 0, &[], 10_000).await.unwrap()
}

/// How many events of each type the database holds for `tenant`.
async fn stored_counts(server: &TestServer, tenant: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in stored_events(server, tenant).await {
        *counts.entry(event.event_type.as_str().to_owned()).or_default() += 1;
    }
    counts
}

/// Starts a consent for `user` and has the provider's redirect come back
/// to the platform with `error=access_denied`, which it passes on.
async fn deny_consent(server: &TestServer, user: &str) -> String {
    let started = server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    let at_provider = UserBrowser::new().start(&started.authorization_url).await;
    let state = query(&at_provider)["state"].clone();
    server
        .consent(keys::PLATFORM)
        .complete_consent(CompleteConsentRequest {
            state,
            error: "access_denied".into(),
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    started.consent_id
}

async fn run_sweeper(server: &TestServer) {
    server.app().sweeper.run_once(None, false).await.unwrap().unwrap();
}

async fn every_lifecycle_path(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| c.events.retention_days = 365)
        .start()
        .await;
    let server = &with.server;
    let mut watch = Watch::open(server, keys::PLATFORM, keys::TENANT, 0).await.unwrap();
    let quiet = Duration::from_millis(300);

    // Consent: a new connection.
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let got = watch.take(2).await;
    assert_eq!(types(&got), ["connection.created", "consent.completed"]);
    let created = &got[0];
    assert_eq!(created.connection_id, connection);
    assert_eq!(created.user_id, "alice");
    let data = created.data.as_ref().unwrap();
    assert_eq!((data.provider.as_str(), data.status.as_str()), ("fake", "active"));
    assert!(!data.granted_scopes.is_empty());
    assert!(!data.consent_id.is_empty());
    assert!(got[0].cursor < got[1].cursor);

    // Re-consent for more: the scopes changed.
    assert_eq!(
        connect(&with, "alice", &["mail.read", "calendar.read"]).await,
        connection
    );
    let got = watch.take(2).await;
    assert_eq!(types(&got), ["connection.updated", "consent.completed"]);
    assert_eq!(got[0].data.as_ref().unwrap().changed, ["scopes"]);

    // The provider refuses the refresh token: needs re-consent, with the reason.
    with.fake.revoke_all_grants();
    server.clock.advance(chrono::Duration::seconds(3600));
    assert_eq!(
        server.token_for(&connection).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let got = watch.take(1).await;
    assert_eq!(types(&got), ["connection.needs_reauth"]);
    let data = got[0].data.as_ref().unwrap();
    assert_eq!(data.status, "needs_reauth");
    assert!(data.reason.contains("invalid_grant"), "{}", data.reason);
    // Another refusal changes nothing and records nothing.
    assert_eq!(
        server.token_for(&connection).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    watch.stays_quiet(quiet).await.unwrap();

    // Re-consent brings it back.
    assert_eq!(
        connect(&with, "alice", &["mail.read", "calendar.read"]).await,
        connection
    );
    let got = watch.take(2).await;
    assert_eq!(types(&got), ["connection.recovered", "consent.completed"]);
    assert_eq!(got[0].data.as_ref().unwrap().status, "active");

    // A refused consent, and one left to expire.
    let denied = deny_consent(server, "alice").await;
    let got = watch.take(1).await;
    assert_eq!(types(&got), ["consent.denied"]);
    assert_eq!(got[0].data.as_ref().unwrap().consent_id, denied);
    let waiting = server
        .consent(keys::PLATFORM)
        .start_consent(start_request("bob", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    server.clock.advance(chrono::Duration::minutes(11));
    run_sweeper(server).await;
    run_sweeper(server).await;
    let got = watch.take(1).await;
    assert_eq!(types(&got), ["consent.expired"]);
    assert_eq!(got[0].data.as_ref().unwrap().consent_id, waiting.consent_id);
    let status = server
        .consent(keys::PLATFORM)
        .get_consent(GetConsentRequest {
            consent_id: waiting.consent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ConsentStatus::ConsentExpired as i32);

    // Disconnect: revoked at once (who and why), then the provider's outcome.
    disconnect(server, &connection).await;
    let got = watch.take(2).await;
    assert_eq!(types(&got), ["connection.revoked", "connection.provider_revocation"]);
    let revoked = got[0].data.as_ref().unwrap();
    assert_eq!(revoked.actor, "platform-acme");
    assert_eq!(revoked.provider_revocation, "pending");
    assert_eq!(got[1].data.as_ref().unwrap().provider_revocation, "done");

    // Delete, restore, delete, purge.
    let carol = connect(&with, "carol", &["mail.read"]).await;
    assert_eq!(types(&watch.take(2).await), ["connection.created", "consent.completed"]);
    let admin = || server.admin(keys::ADMIN);
    let user = |user: &str| DeleteUserRequest {
        tenant_id: keys::TENANT.into(),
        user_id: user.into(),
    };
    admin().delete_user(user("carol")).await.unwrap();
    let got = watch.take(1).await;
    assert_eq!(types(&got), ["user.deleted"]);
    assert!(got[0].data.as_ref().unwrap().purge_at.is_some());
    admin().delete_user(user("carol")).await.unwrap();
    watch.stays_quiet(quiet).await.unwrap();
    admin()
        .restore_user(RestoreUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "carol".into(),
        })
        .await
        .unwrap();
    assert_eq!(types(&watch.take(1).await), ["user.restored"]);
    admin().delete_user(user("carol")).await.unwrap();
    assert_eq!(types(&watch.take(1).await), ["user.deleted"]);
    server.clock.advance(chrono::Duration::days(31));
    run_sweeper(server).await;
    let mut purge: Vec<String> = watch.take(3).await.iter().map(|e| e.r#type.clone()).collect();
    purge.sort();
    assert_eq!(
        purge,
        ["connection.provider_revocation", "connection.revoked", "user.purged"]
    );
    run_sweeper(server).await;
    watch.stays_quiet(quiet).await.unwrap();

    // The database holds each event once, as the stream delivered them.
    let counts = stored_counts(server, keys::TENANT).await;
    let expected: BTreeMap<String, usize> = [
        ("connection.created", 2),
        ("connection.updated", 1),
        ("connection.needs_reauth", 1),
        ("connection.recovered", 1),
        ("connection.revoked", 2),
        ("connection.provider_revocation", 2),
        ("consent.completed", 4),
        ("consent.denied", 1),
        ("consent.expired", 1),
        ("user.deleted", 2),
        ("user.restored", 1),
        ("user.purged", 1),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    assert_eq!(counts, expected);
    let stored = stored_events(server, keys::TENANT).await;
    assert!(stored.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert!(stored
        .iter()
        .any(|e| e.connection_id.map(|c| c.to_string()) == Some(carol.clone())));
    with.stop().await;
}
on_both!(every_lifecycle_path_records_its_event_once, every_lifecycle_path);

async fn resume_across_restart(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let mut watch = Watch::open(&with.server, keys::PLATFORM, keys::TENANT, 0)
        .await
        .unwrap();
    connect(&with, "alice", &["mail.read"]).await;
    connect(&with, "bob", &["mail.read"]).await;
    let first = watch.take(4).await;
    let resume_at = first[1].cursor;
    drop(watch);
    // Events the watcher misses while away, across a restart of the server.
    connect(&with, "carol", &["mail.read"]).await;
    let with = with.restart(|_| {}).await;
    connect(&with, "dave", &["mail.read"]).await;
    let mut watch = Watch::open(&with.server, keys::PLATFORM, keys::TENANT, resume_at)
        .await
        .unwrap();
    let rest = watch.take(6).await;
    watch.stays_quiet(Duration::from_millis(300)).await.unwrap();
    // Live events after the replay arrive on the same stream.
    connect(&with, "erin", &["mail.read"]).await;
    let live = watch.take(2).await;
    let mut seen: Vec<_> = first[..2].iter().chain(&rest).chain(&live).cloned().collect();
    assert!(
        seen.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "no duplicate, in order"
    );
    let stored: Vec<String> = stored_events(&with.server, keys::TENANT)
        .await
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    let ids: Vec<String> = seen.drain(..).map(|e| e.id).collect();
    assert_eq!(ids, stored, "no gap: every stored event, each once");
    with.stop().await;
}
on_both!(watch_resumes_across_a_restart, resume_across_restart);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_streams_every_replicas_events() {
    let with = WithProvider::start(Backend::Postgres).await;
    let replica = with.replica().await;
    let mut on_first = Watch::open(&with.server, keys::PLATFORM, keys::TENANT, 0)
        .await
        .unwrap();
    let mut on_second = Watch::open(&replica, keys::PLATFORM, keys::TENANT, 0).await.unwrap();
    // Changes made through either replica.
    connect(&with, "alice", &["mail.read"]).await;
    let bob = crate::support::provider::connect_on(&replica, &with.fake, "bob", &["mail.read"]).await;
    disconnect(&replica, &bob).await;
    let a = on_first.until("connection.provider_revocation").await;
    let b = on_second.until("connection.provider_revocation").await;
    let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.len(), 6, "{:?}", types(&a));
    replica.stop().await;
    with.stop().await;
}

async fn tenants_apart(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| c.events.heartbeat_seconds = 1)
        .start()
        .await;
    let server = &with.server;
    // Another tenant's platform key may not watch acme, whatever the cursor.
    let refused = Watch::open(server, keys::OTHER_PLATFORM, keys::TENANT, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Agents may not watch at all.
    let refused = Watch::open(server, keys::AGENT, keys::TENANT, 0).await.err().unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut globex = Watch::open(server, keys::OTHER_PLATFORM, keys::OTHER_TENANT, 0)
        .await
        .unwrap();
    let mut acme = Watch::open(server, keys::PLATFORM, keys::TENANT, 0).await.unwrap();
    connect(&with, "alice", &["mail.read"]).await;
    assert_eq!(acme.take(2).await.len(), 2);
    // globex sees nothing but heartbeats, at the start of its stream.
    globex.stays_quiet(Duration::from_millis(2500)).await.unwrap();
    assert!(!globex.heartbeats.is_empty(), "an idle stream sends heartbeats");
    assert!(globex.heartbeats.iter().all(|c| *c == 0));
    with.stop().await;
}
on_both!(watch_keeps_tenants_apart, tenants_apart);

async fn cursors_and_filters(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| c.events.retention_days = 30)
        .start()
        .await;
    let server = &with.server;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    disconnect(server, &connection).await;
    // A filter: only the types asked for.
    let mut only = Watch::open_with(
        server,
        keys::PLATFORM,
        WatchEventsRequest {
            tenant_id: keys::TENANT.into(),
            types: vec!["connection.revoked".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(types(&only.take(1).await), ["connection.revoked"]);
    only.stays_quiet(Duration::from_millis(300)).await.unwrap();
    let unknown = Watch::open_with(
        server,
        keys::PLATFORM,
        WatchEventsRequest {
            tenant_id: keys::TENANT.into(),
            types: vec!["connection.nosuch".into()],
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().contains("connection.created"),
        "{}",
        unknown.message()
    );
    // From now on only.
    let mut latest = Watch::open_with(
        server,
        keys::PLATFORM,
        WatchEventsRequest {
            tenant_id: keys::TENANT.into(),
            start_at_latest: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    latest.stays_quiet(Duration::from_millis(300)).await.unwrap();
    // A cursor beyond the log.
    let ahead = Watch::open(server, keys::PLATFORM, keys::TENANT, 1_000_000)
        .await
        .err()
        .unwrap();
    assert_eq!(ahead.code(), Code::OutOfRange);
    // Past retention, the purge says how far it went; an older cursor is refused with the oldest to resume from.
    let last = stored_events(server, keys::TENANT).await.last().unwrap().cursor;
    server.clock.advance(chrono::Duration::days(31));
    let report = server.app().sweeper.run_once(None, false).await.unwrap().unwrap();
    assert!(report.events_purged >= 4, "{report}");
    assert!(stored_events(server, keys::TENANT).await.is_empty());
    let expired = Watch::open(server, keys::PLATFORM, keys::TENANT, 1)
        .await
        .err()
        .unwrap();
    assert_eq!(expired.code(), Code::OutOfRange);
    assert!(
        expired.message().contains(&format!("after cursor {last}")),
        "{}",
        expired.message()
    );
    // Cursor 0 means "from the oldest event kept", however much was purged.
    let mut from_oldest = Watch::open(server, keys::PLATFORM, keys::TENANT, 0).await.unwrap();
    from_oldest.stays_quiet(Duration::from_millis(300)).await.unwrap();
    // Resuming from the last cursor seen is fine, and new events follow it.
    let mut resumed = Watch::open(server, keys::PLATFORM, keys::TENANT, last as u64)
        .await
        .unwrap();
    connect(&with, "bob", &["mail.read"]).await;
    let next = resumed.take(2).await;
    assert!(next[0].cursor as i64 > last);
    let event_types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert!(types(&next).iter().all(|t| event_types.contains(t)));
    with.stop().await;
}
on_both!(watch_cursors_filters_and_retention, cursors_and_filters);
