//! Revocation, deletion, retention and key rotation through the real server.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, revocations, stored_connection};
use crate::support::provider::{connect, start_request};
use crate::support::{contains, dump_database, eventually, keys, random_kek, Backend, TestServer};
use secrecy::SecretString;
use std::time::Duration;
use tokenvault::config::Config;
use tokenvault::proto::*;
use tokenvault::store::AuditEvent;
use tokenvault::vault::VaultError;
use tokenvault_testkit::fake_provider::{Endpoint, Fault};
use tonic::Code;

async fn token(server: &TestServer, connection_id: &str) -> Result<GetAccessTokenResponse, tonic::Status> {
    server.token_for(connection_id).await
}

/// Waits (bounded) until `n` audit events of `action` exist.
async fn audit_eventually(server: &TestServer, action: &str, n: usize) -> Vec<AuditEvent> {
    for _ in 0..100 {
        let events = audit(server, action).await;
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit(server, action).await
}

async fn dek_of(server: &TestServer, connection_id: &str) -> uuid::Uuid {
    stored_connection(server, connection_id).await.dek_id.unwrap()
}

async fn disconnect(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    token(&with.server, &connection).await.unwrap();
    let dek = dek_of(&with.server, &connection).await;

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
    assert_eq!(revoked.status, ConnectionStatus::Revoked as i32);
    // Refused at once, although the token was cached.
    let error = token(&with.server, &connection).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("revoked"));

    // RFC 7009 at the provider: the refresh token, with the hint and client authentication.
    let seen = revocations(&with.fake, 1).await;

    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token_type_hint.as_deref(), Some("refresh_token"));
    assert!(seen[0].token.starts_with("fake_rt_"));
    assert!(seen[0].client_authenticated && seen[0].was_active);
    assert!(!with.fake.is_refresh_token_active(&seen[0].token));

    // Then the key and every copy are destroyed.
    for _ in 0..100 {
        if matches!(
            with.server.app().vault.data_key(dek).await,
            Err(VaultError::MissingDataKey(_))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        with.server.app().vault.data_key(dek).await,
        Err(VaultError::MissingDataKey(_))
    ));
    let outbox = with
        .server
        .app()
        .store
        .outbox_for_connection(connection.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(outbox[0].status, "done");
    assert!(outbox[0].token.is_none());
    assert_eq!(audit(&with.server, "connection.revoked").await.len(), 1);
    let attempts = audit_eventually(&with.server, "provider.revocation", 1).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "success");

    // Other tenants and unknown ids.
    let error = with
        .server
        .connections(keys::OTHER_PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = with
        .server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    with.stop().await;
}
on_both!(disconnect_revokes_everywhere, disconnect);

async fn provider_fails_then_recovers(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| {
            c.lifecycle.revocation_retry_base_seconds = 30;
            c.lifecycle.revocation_give_up_after_hours = 1;
        })
        .start()
        .await;
    let first = connect(&with, "bob", &["mail.read"]).await;
    let second = connect(&with, "carl", &["mail.read"]).await;
    let outbox = with.server.app().lifecycle.outbox().clone();
    let mut admin = with.server.admin(keys::ADMIN);
    let revoke = |id: String| {
        let mut admin = admin.clone();
        async move {
            admin
                .revoke_connection(RevokeConnectionRequest {
                    connection_id: id,
                    reason: "test".into(),
                })
                .await
                .unwrap();
        }
    };
    let attempts_of = |id: &str| {
        let id: uuid::Uuid = id.parse().unwrap();
        let store = with.server.app().store.clone();
        async move { store.outbox_for_connection(id).await.unwrap().remove(0) }
    };
    let wait_attempts = |id: String, n: i64| {
        let attempts_of = &attempts_of;
        async move {
            for _ in 0..100 {
                if attempts_of(&id).await.attempts >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            attempts_of(&id).await
        }
    };

    // The provider fails: the first attempt is audited and a retry scheduled.
    with.fake
        .faults()
        .set_persistent(Endpoint::Revoke, Some(Fault::Status(503)));
    revoke(first.clone()).await;
    let entry = wait_attempts(first.clone(), 1).await;
    assert_eq!(entry.status, "pending");
    assert!(entry.last_error.as_deref().unwrap().contains("503"));
    let retrying = audit_eventually(&with.server, "provider.revocation", 1).await;
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0].outcome, "retrying");

    // The provider recovers: the next attempt succeeds.
    with.fake.faults().clear();
    with.server.clock.advance(chrono::Duration::seconds(31));
    outbox.process_due().await.unwrap();
    let entry = attempts_of(&first).await;
    assert_eq!((entry.status.as_str(), entry.attempts), ("done", 2));
    assert!(with
        .fake
        .stats()
        .revocations
        .iter()
        .any(|r| r.was_active && r.client_authenticated));

    // Failing until the give-up time: it stops, audited, token and key destroyed.
    with.fake
        .faults()
        .set_persistent(Endpoint::Revoke, Some(Fault::Status(503)));
    revoke(second.clone()).await;
    wait_attempts(second.clone(), 1).await;
    with.server.clock.advance(chrono::Duration::hours(2));
    outbox.process_due().await.unwrap();
    let entry = attempts_of(&second).await;
    assert_eq!(entry.status, "gave_up");
    assert!(entry.token.is_none());
    assert!(matches!(
        with.server.app().vault.data_key(entry.dek_id).await,
        Err(VaultError::MissingDataKey(_))
    ));
    assert!(audit(&with.server, "provider.revocation")
        .await
        .iter()
        .any(|e| e.outcome == "gave_up"));
    let _ = &mut admin;
    with.stop().await;
}
on_both!(provider_revocation_retries_then_ends, provider_fails_then_recovers);

async fn delete_and_restore(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "dora", &["mail.read"]).await;
    token(&with.server, &connection).await.unwrap();
    let mut admin = with.server.admin(keys::ADMIN);
    let deleted = admin
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "dora".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let purge_at = tokenvault::clock::from_proto(&deleted.purge_at.unwrap()).unwrap();
    let expected = tokenvault::clock::Clock::now(&*with.server.clock) + chrono::Duration::days(30);
    assert!((purge_at - expected).num_seconds().abs() < 5);
    // Refused at once, although cached.
    let error = token(&with.server, &connection).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("deleted"));
    let shown = with
        .server
        .connections(keys::PLATFORM)
        .get_connection(GetConnectionRequest {
            connection_id: connection.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(shown.status, ConnectionStatus::PendingDeletion as i32);
    assert!(shown.purge_at.is_some());
    // Consent for a deleted user is refused too.
    let error = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request("dora", &["mail.read"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);

    let restored = admin
        .restore_user(RestoreUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "dora".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.connections.len(), 1);
    assert_eq!(restored.connections[0].status, ConnectionStatus::Active as i32);
    assert!(token(&with.server, &connection).await.is_ok());
    let error = admin
        .restore_user(RestoreUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "dora".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let error = admin
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    with.stop().await;
}
on_both!(delete_then_restore, delete_and_restore);

async fn purge_after_thirty_days(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "ed", &["mail.read", "calendar.read"]).await;
    let dek = dek_of(&with.server, &connection).await;
    let keep = connect(&with, "fay", &["mail.read"]).await;
    let mut admin = with.server.admin(keys::ADMIN);
    admin
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "ed".into(),
        })
        .await
        .unwrap();
    let sweeper = with.server.app().sweeper.clone();
    // Not yet: 29 days later nothing happens.
    with.server.clock.advance(chrono::Duration::days(29));
    let report = sweeper.run_once(None, false).await.unwrap().unwrap();
    assert_eq!(report.users_purged, 0);
    // 30 days: purged, revoked at the provider, key destroyed.
    with.server
        .clock
        .advance(chrono::Duration::days(1) + chrono::Duration::seconds(1));
    let report = sweeper.run_once(None, false).await.unwrap().unwrap();
    assert_eq!((report.users_purged, report.connections_purged), (1, 1));
    let seen = revocations(&with.fake, 1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token_type_hint.as_deref(), Some("refresh_token"));
    // Destroyed when the outbox entry ends, which the background worker may
    // finish just after the provider answered.
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(
                with.server.app().vault.data_key(dek).await,
                Err(VaultError::MissingDataKey(_))
            )
        })
        .await
    );
    let error = with
        .server
        .connections(keys::PLATFORM)
        .get_connection(GetConnectionRequest {
            connection_id: connection.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(with
        .server
        .app()
        .store
        .user(keys::TENANT, "ed")
        .await
        .unwrap()
        .is_none());
    let error = admin
        .restore_user(RestoreUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "ed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(audit(&with.server, "user.purged").await.len(), 1);
    // Another user is untouched.
    assert!(with
        .server
        .connections(keys::PLATFORM)
        .get_connection(GetConnectionRequest { connection_id: keep })
        .await
        .is_ok());
    with.stop().await;
}
on_both!(deleted_users_are_purged_after_thirty_days, purge_after_thirty_days);

async fn revoke_before_purge(backend: Backend) {
    let with = WithProvider::start(backend).await;
    connect(&with, "gus", &["mail.read"]).await;
    connect(&with, "gus", &["calendar.read"]).await;
    let mut admin = with.server.admin(keys::ADMIN);
    admin
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "gus".into(),
        })
        .await
        .unwrap();
    let revoked = admin
        .revoke_user(RevokeUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "gus".into(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.connections.len(), 1, "one connection per provider");
    assert!(revoked
        .connections
        .iter()
        .all(|c| c.status == ConnectionStatus::Revoked as i32));
    // The refresh token the re-consent replaced, and the one RevokeUser removed.
    assert_eq!(
        revocations(&with.fake, 2).await.len(),
        2,
        "revoked at the provider before purge_at"
    );
    with.server.clock.advance(chrono::Duration::days(31));
    let report = with.server.app().sweeper.run_once(None, false).await.unwrap().unwrap();
    assert_eq!(report.users_purged, 1);
    assert_eq!(with.fake.stats().revocations.len(), 2, "nothing left to revoke twice");
    with.stop().await;
}
on_both!(revocation_before_purge, revoke_before_purge);

async fn retention_passes(backend: Backend) {
    let with = WithProvider::start(backend).await;
    connect(&with, "hank", &["mail.read"]).await;
    let app = with.server.app();
    let now = tokenvault::clock::Clock::now(&*with.server.clock);
    let old: Vec<AuditEvent> = (0..5)
        .map(|i| {
            tokenvault::audit::EventBuilder::new("test.old", "success", "t", now - chrono::Duration::days(91 + i))
                .build()
        })
        .collect();
    app.store.append_audit(&old).await.unwrap();
    // An expired consent request.
    with.server
        .consent(keys::PLATFORM)
        .start_consent(start_request("hank", &["files.read"]))
        .await
        .unwrap();
    app.audit.flush().await;
    let before = dump_database(app.sql.pool()).await;
    let later = now + chrono::Duration::days(2);
    let dry = app.sweeper.run_once(Some(later), true).await.unwrap().unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.audit_events_purged, 5);
    assert_eq!(
        dry.consents_purged, 2,
        "the completed one and the pending one, both past expiry"
    );
    assert_eq!(dump_database(app.sql.pool()).await, before, "a dry run changes nothing");
    let text = dry.to_string();
    assert!(text.contains("would purge 5") && text.contains("dry run"), "{text}");

    let done = app.sweeper.run_once(Some(later), false).await.unwrap().unwrap();
    assert_eq!((done.audit_events_purged, done.consents_purged), (5, 2));
    assert!(audit(&with.server, "test.old").await.is_empty());
    let again = app.sweeper.run_once(Some(later), false).await.unwrap().unwrap();
    assert_eq!(
        (
            again.audit_events_purged,
            again.consents_purged,
            again.orphan_keys_destroyed
        ),
        (0, 0, 0)
    );
    with.stop().await;
}
on_both!(retention_dry_run_and_purge, retention_passes);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sweeper_at_a_time() {
    let with = WithProvider::start(Backend::Postgres).await;
    let lock = with.server.app().store.try_lead().await.unwrap();
    assert!(lock.is_some());
    assert!(with.server.app().sweeper.run_once(None, true).await.unwrap().is_none());
    drop(lock);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(with.server.app().sweeper.run_once(None, true).await.unwrap().is_some());
    with.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica_within_a_second() {
    let with = WithProvider::start(Backend::Postgres).await;
    let connection = connect(&with, "ivy", &["mail.read"]).await;
    let replica = with.replica().await;
    token(&replica, &connection).await.unwrap();
    token(&replica, &connection).await.unwrap();
    with.server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection.clone(),
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        match token(&replica, &connection).await {
            Err(error) if error.code() == Code::FailedPrecondition => break,
            _ if started.elapsed() > Duration::from_secs(1) => panic!("the replica still serves after a second"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    replica.stop().await;
    with.stop().await;
}

/// Sets the inline key-encryption keys and the active one.
fn with_keys(inline: String, active: &'static str) -> impl FnOnce(&mut Config) {
    move |config| {
        config.keys.inline = Some(SecretString::from(inline));
        config.keys.active = Some(active.to_owned());
    }
}

async fn rotation_then_removal(backend: Backend) {
    let old = random_kek("old");
    let new = random_kek("new");
    let with = WithProvider::build(backend)
        .config(with_keys(old.clone(), "old"))
        .start()
        .await;
    let connection = connect(&with, "jo", &["mail.read"]).await;

    let with = with.restart(with_keys(format!("{old},{new}"), "new")).await;
    let report = with
        .server
        .admin(keys::ADMIN)
        .rotate_keys(RotateKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.active_kek_id, "new");
    assert!(report.rewrapped >= 1);
    let error = with
        .server
        .admin(keys::OTHER_PLATFORM)
        .rotate_keys(RotateKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);

    // The old key removed: everything still opens.
    let with = with.restart(with_keys(new, "new")).await;
    let issued = token(&with.server, &connection).await.unwrap();
    assert!(with.fake.introspect(&issued.access_token).is_some());
    with.stop().await;
}

on_both!(key_rotation_then_old_key_removed, rotation_then_removal);

async fn listings_and_export(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let a = connect(&with, "kim", &["mail.read"]).await;
    token(&with.server, &a).await.unwrap();
    connect(&with, "lee", &["mail.read"]).await;
    with.server.app().broker.flush_usage().await;
    let mut platform = with.server.connections(keys::PLATFORM);
    let page = platform
        .list_connections(ListConnectionsRequest {
            tenant_id: keys::TENANT.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.connections.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let rest = platform
        .list_connections(ListConnectionsRequest {
            tenant_id: keys::TENANT.into(),
            page_size: 10,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.connections.len(), 1);
    assert!(rest.next_page_token.is_empty());
    let error = platform
        .list_connections(ListConnectionsRequest {
            tenant_id: keys::OTHER_TENANT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let shown = platform
        .get_connection(GetConnectionRequest {
            connection_id: a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(shown.last_used_at.is_some());
    assert_eq!(shown.granted_scopes, vec!["mail.read"]);

    let export = platform
        .export_user_data(ExportUserDataRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "kim".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.connections.len(), 1);
    assert_eq!(export.consents.len(), 1);
    assert!(export.audit_events.iter().any(|e| e.action == "consent.completed"));
    let text = format!("{export:?}");
    for secret in ["fake_at_", "fake_rt_", "fake_code_"] {
        assert!(!text.contains(secret), "export leaks {secret}");
    }

    let mut admin = with.server.admin(keys::ADMIN);
    let events = admin
        .list_audit_events(ListAuditEventsRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "kim".into(),
            action: "consent.completed".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 1);
    assert_eq!(events.events[0].connection_id, a);
    let all = admin
        .list_audit_events(ListAuditEventsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.events.len(), 2);
    let next = admin
        .list_audit_events(ListAuditEventsRequest {
            page_size: 1000,
            page_token: all.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.events.iter().all(|e| e.id < all.events[1].id));
    let error = admin
        .list_audit_events(ListAuditEventsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    with.stop().await;
}
on_both!(listing_export_and_audit_queries, listings_and_export);

async fn nothing_in_clear(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "max", &["mail.read", "calendar.read"]).await;
    let first = token(&with.server, &connection).await.unwrap();
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let second = token(&with.server, &connection).await.unwrap();
    let narrow = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.clone(),
            scopes: vec!["mail.read".into()],
            min_ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    with.server.app().broker.flush_usage().await;
    with.server.app().audit.flush().await;
    let dump = dump_database(with.server.app().sql.pool()).await;
    for secret in [&first.access_token, &second.access_token, &narrow.access_token] {
        assert!(!contains(&dump, secret), "an access token is stored in clear");
    }
    for prefix in ["fake_at_", "fake_rt_", "fake_code_"] {
        assert!(!contains(&dump, prefix), "`{prefix}` found in clear");
    }
    with.stop().await;
}
on_both!(no_token_in_clear_in_any_table, nothing_in_clear);
