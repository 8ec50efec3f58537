//! The `Store` suite, run against PostgreSQL and SQLite alike.

use crate::on_both;
use crate::support::{Backend, TestDb};
use chrono::{Duration, Utc};
use std::collections::BTreeSet;
use tokenvault::store::*;
use uuid::Uuid;

async fn store(backend: Backend) -> (TestDb, SqlStore) {
    let db = TestDb::new(backend).await;
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    (db, store)
}

fn scopes(items: &[&str]) -> ScopeSet {
    items.iter().map(|s| s.to_string()).collect()
}

fn access_token(connection_id: Uuid, scope_key: &str, bytes: &[u8], expires_in: i64) -> AccessTokenRecord {
    AccessTokenRecord {
        connection_id,
        scope_key: scope_key.to_owned(),
        token: Sealed(bytes.to_vec()),
        token_type: "Bearer".to_owned(),
        scopes: scopes(&["a", "b"]),
        expires_at: Utc::now() + Duration::seconds(expires_in),
        token_version: 0,
        issued_at: Utc::now(),
    }
}

async fn connected(store: &SqlStore, tenant: &str, user: &str) -> Connection {
    let now = Utc::now();
    let connection = store
        .get_or_create_connection(tenant, user, "google", None, now)
        .await
        .unwrap();
    let grant = ConsentGrant {
        connection_id: connection.id,
        expected_version: connection.token_version,
        expected_status: connection.stored_status,
        dek_id: Uuid::new_v4(),
        refresh_token: Some(Sealed(b"sealed-refresh".to_vec())),
        granted_scopes: scopes(&["a", "b"]),
        access_token: access_token(connection.id, "", b"sealed-access", 3600),
        consent_id: None,
        replaced: None,
        account_subject: Some(format!("{user}-account")),
        account_display: Some(format!("{user}@example.com")),
    };
    assert!(store.store_consent_grant(&grant, &Trail::none(), now).await.unwrap());
    let stored = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.account_subject, Some(format!("{user}-account")));
    assert_eq!(stored.account_display, Some(format!("{user}@example.com")));
    stored
}

async fn users_and_deletion(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    store.ensure_user("acme", "u1", now).await.unwrap();
    store.ensure_user("acme", "u1", now).await.unwrap();
    let user = store.user("acme", "u1").await.unwrap().unwrap();
    assert_eq!(user.deleted_at, None);
    assert!(store
        .delete_user("acme", "nobody", now, now, &Trail::none())
        .await
        .unwrap()
        .is_none());

    let purge_at = now + Duration::days(30);
    let deleted = store
        .delete_user("acme", "u1", now, purge_at, &Trail::none())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        deleted.purge_at.map(|t| t.timestamp_millis()),
        Some(purge_at.timestamp_millis())
    );
    // A second delete keeps the first purge_at.
    let again = store
        .delete_user(
            "acme",
            "u1",
            now + Duration::days(1),
            purge_at + Duration::days(1),
            &Trail::none(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.purge_at, deleted.purge_at);

    assert_eq!(store.users_due_for_purge(now, None, 10).await.unwrap().len(), 0);
    assert_eq!(
        store
            .users_due_for_purge(purge_at + Duration::seconds(1), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .restore_user("acme", "u1", purge_at + Duration::seconds(1), &Trail::none())
            .await
            .unwrap(),
        RestoreOutcome::PurgeDue(deleted.purge_at.unwrap())
    );
    assert_eq!(
        store.restore_user("acme", "u1", now, &Trail::none()).await.unwrap(),
        RestoreOutcome::Restored
    );
    assert_eq!(
        store.restore_user("acme", "u1", now, &Trail::none()).await.unwrap(),
        RestoreOutcome::NotDeleted
    );
    assert_eq!(
        store.restore_user("acme", "ghost", now, &Trail::none()).await.unwrap(),
        RestoreOutcome::NotFound
    );
}
on_both!(users_and_deletion_work, users_and_deletion);

async fn connections(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let shell = store
        .get_or_create_connection("acme", "u1", "google", None, now)
        .await
        .unwrap();
    let same = store
        .get_or_create_connection("acme", "u1", "google", None, now)
        .await
        .unwrap();
    assert_eq!(shell.id, same.id, "one connection per tenant, user and provider");

    let connection = connected(&store, "acme", "u1").await;
    assert_eq!(connection.id, shell.id);
    assert_eq!(connection.status(), ConnectionStatus::Active);
    assert_eq!(connection.granted_scopes, scopes(&["a", "b"]));
    assert_eq!(connection.refresh_token, Some(Sealed(b"sealed-refresh".to_vec())));
    // One connection per upstream account: the first one's account finds it, another makes a second.
    let by_account = store
        .get_or_create_connection("acme", "u1", "google", Some("u1-account"), now)
        .await
        .unwrap();
    assert_eq!(by_account.id, shell.id);
    let second = store
        .get_or_create_connection("acme", "u1", "google", Some("another-account"), now)
        .await
        .unwrap();
    assert_ne!(second.id, shell.id);
    assert_eq!(second.account_subject.as_deref(), Some("another-account"));
    let both: Vec<_> = store
        .connections_at("acme", "u1", "google")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(both, vec![shell.id, second.id]);
    assert_eq!(
        store.connection_for("acme", "u1", "google").await.unwrap().unwrap().id,
        shell.id,
        "the first"
    );
    assert_eq!(connection.token_version, 1);

    // A stale version is refused.
    let stale = ConsentGrant {
        connection_id: connection.id,
        expected_version: 0,
        expected_status: ConnectionStatus::Active,
        dek_id: Uuid::new_v4(),
        refresh_token: None,
        granted_scopes: scopes(&["x"]),
        access_token: access_token(connection.id, "", b"x", 10),
        consent_id: None,
        replaced: None,
        account_subject: None,
        account_display: None,
    };
    assert!(!store.store_consent_grant(&stale, &Trail::none(), now).await.unwrap());

    let (read, token) = store
        .connection_with_token(&TenantScope::All, connection.id, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.id, connection.id);
    let token = token.unwrap();
    assert_eq!(token.token, Sealed(b"sealed-access".to_vec()));
    assert_eq!(token.token_version, 1);
    let (_, none) = store
        .connection_with_token(&TenantScope::All, connection.id, "narrow")
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_none());

    // Tenant scope is enforced inside the store.
    let globex = TenantScope::Only(BTreeSet::from(["globex".to_owned()]));
    assert!(store.connection(&globex, connection.id).await.unwrap().is_none());
    assert!(store
        .connection_with_token(&globex, connection.id, "")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .connection(&TenantScope::All, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());

    // Listing pages through by id.
    for user in ["u2", "u3", "u4"] {
        connected(&store, "acme", user).await;
    }
    connected(&store, "globex", "g1").await;
    let mut filter = ConnectionFilter {
        tenant_id: "acme".into(),
        limit: 3,
        ..Default::default()
    };
    let first = store.list_connections(&filter).await.unwrap();
    assert_eq!(first.len(), 3);
    filter.after_id = first.last().map(|c| c.id);
    let second = store.list_connections(&filter).await.unwrap();
    assert_eq!(second.len(), 2, "u1's two accounts, u2, u3, u4");
    assert!(second[0].id > first[2].id);
    filter.after_id = None;
    filter.user_id = Some("u3".into());
    assert_eq!(store.list_connections(&filter).await.unwrap().len(), 1);

    // last_used_at moves forward only.
    let later = now + Duration::minutes(5);
    store.touch_connections(&[(connection.id, later)]).await.unwrap();
    store.touch_connections(&[(connection.id, now)]).await.unwrap();
    let touched = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        touched.last_used_at.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    // A batch larger than one statement's chunk, ids that do not exist among it.
    let latest = now + Duration::minutes(9);
    let mut batch: Vec<_> = (0..2_500).map(|_| (Uuid::new_v4(), now)).collect();
    batch.push((connection.id, latest));
    store.touch_connections(&batch).await.unwrap();
    let touched = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        touched.last_used_at.map(|t| t.timestamp_millis()),
        Some(latest.timestamp_millis())
    );

    // A deleted user's connection reads as pending deletion; purge removes it.
    store
        .delete_user("acme", "u1", now, now + Duration::days(30), &Trail::none())
        .await
        .unwrap();
    let pending = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status(), ConnectionStatus::PendingDeletion);
    store.purge_user_rows("acme", "u1", &Trail::none()).await.unwrap();
    assert!(store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .is_none());
    assert!(store.user("acme", "u1").await.unwrap().is_none());
}
on_both!(connections_work, connections);

async fn batched_reads(backend: Backend) {
    let (_db, store) = store(backend).await;
    let mut ids = Vec::new();
    for user in ["b1", "b2", "b3"] {
        ids.push(connected(&store, "acme", user).await.id);
    }
    let globex = connected(&store, "globex", "g1").await.id;
    let unknown = Uuid::new_v4();

    // One query for several ids, any tenant; unknown ids are absent, and a
    // batch whose size is not a power of two (padded inside) reads the same.
    let asked = [ids[0], ids[1], ids[2], globex, unknown];
    let rows = store.connections_with_token(&asked, "").await.unwrap();
    let mut found: Vec<Uuid> = rows.iter().map(|(c, _)| c.id).collect();
    found.sort();
    let mut expected = vec![ids[0], ids[1], ids[2], globex];
    expected.sort();
    assert_eq!(found, expected);
    assert!(rows
        .iter()
        .all(|(_, t)| t.as_ref().unwrap().token == Sealed(b"sealed-access".to_vec())));
    let narrow = store.connections_with_token(&ids, "narrow").await.unwrap();
    assert_eq!(narrow.len(), 3);
    assert!(
        narrow.iter().all(|(_, t)| t.is_none()),
        "no token stored under that scope key"
    );
    assert!(store.connections_with_token(&[], "").await.unwrap().is_empty());

    // The coalescing reader gives every caller its own answer, whatever shares a query.
    let shared: std::sync::Arc<dyn Store> = std::sync::Arc::new(store.clone());
    let reader = tokenvault::broker::ConnectionReader::start(shared, 2);
    let mut calls = Vec::new();
    for i in 0..200 {
        let reader = reader.clone();
        let id = match i % 5 {
            0 => unknown,
            n => asked[n - 1],
        };
        let scope_key = if i % 7 == 0 { "narrow" } else { "" };
        calls.push(tokio::spawn(async move {
            (id, scope_key, reader.read(id, scope_key).await)
        }));
    }
    for call in calls {
        let (id, scope_key, answer) = call.await.unwrap();
        match answer.unwrap() {
            None => assert_eq!(id, unknown),
            Some((connection, token)) => {
                assert_eq!(connection.id, id);
                assert_eq!(token.is_some(), scope_key.is_empty(), "{id} {scope_key}");
            }
        }
    }
}

on_both!(batched_reads_work, batched_reads);

async fn refresh_leases(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let lease = now + Duration::seconds(30);
    let connection = connected(&store, "acme", "u1").await;
    assert_eq!(connection.token_version, 1);

    // One refresher at a time, across replicas; no row lock is held meanwhile.
    let claim = store.claim_refresh(connection.id, 1, "a", now, lease).await.unwrap();
    assert_eq!(claim, RefreshClaim::Claimed { interrupted: None });
    let busy = store.claim_refresh(connection.id, 1, "b", now, lease).await.unwrap();
    assert!(matches!(busy, RefreshClaim::Busy { until } if until.timestamp_millis() == lease.timestamp_millis()));
    let write = RefreshWrite {
        new_refresh_token: Some(Sealed(b"rotated".to_vec())),
        access_token: access_token(connection.id, "", b"fresh", 3600),
        granted_scopes: None,
    };
    assert_eq!(
        store
            .commit_refresh(connection.id, 1, &write, &Trail::none(), now)
            .await
            .unwrap(),
        RefreshCommit::Stored
    );
    let after = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.token_version, 2);
    assert_eq!(after.refresh_token, Some(Sealed(b"rotated".to_vec())));
    let (_, token) = store
        .connection_with_token(&TenantScope::All, connection.id, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.unwrap().token, Sealed(b"fresh".to_vec()));
    // The commit fenced by the old version is refused; a claim at it too.
    assert_eq!(
        store
            .commit_refresh(connection.id, 1, &write, &Trail::none(), now)
            .await
            .unwrap(),
        RefreshCommit::Superseded
    );
    assert_eq!(
        store.claim_refresh(connection.id, 1, "b", now, lease).await.unwrap(),
        RefreshClaim::Moved
    );

    // Without rotation the version stays; a narrowed token is stored under its own key.
    // The commit ended the lease, so a new claim succeeds at once.
    assert_eq!(
        store.claim_refresh(connection.id, 2, "b", now, lease).await.unwrap(),
        RefreshClaim::Claimed { interrupted: None }
    );
    let narrow = RefreshWrite {
        new_refresh_token: None,
        access_token: access_token(connection.id, "a", b"narrow", 3600),
        granted_scopes: None,
    };
    assert_eq!(
        store
            .commit_refresh(connection.id, 2, &narrow, &Trail::none(), now)
            .await
            .unwrap(),
        RefreshCommit::Stored
    );
    let (c, token) = store
        .connection_with_token(&TenantScope::All, connection.id, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.token_version, 2);
    assert_eq!(token.unwrap().token, Sealed(b"narrow".to_vec()));

    // A released lease leaves no trace; an abandoned one is reported to the next claimer.
    store.claim_refresh(connection.id, 2, "c", now, lease).await.unwrap();
    store.release_refresh(connection.id, "c", true, now).await.unwrap();
    assert_eq!(
        store.claim_refresh(connection.id, 2, "d", now, lease).await.unwrap(),
        RefreshClaim::Claimed { interrupted: None }
    );
    // A release that may have left the provider rotated keeps the journal entry, lease ended.
    store.release_refresh(connection.id, "d", false, now).await.unwrap();
    let later = now + Duration::seconds(1);
    match store
        .claim_refresh(connection.id, 2, "e", later, later + Duration::seconds(30))
        .await
        .unwrap()
    {
        RefreshClaim::Claimed {
            interrupted: Some(earlier),
        } => {
            assert_eq!(earlier.owner, "d");
            assert_eq!(earlier.started_at.timestamp_millis(), now.timestamp_millis());
        }
        other => panic!("expected an interrupted attempt, got {other:?}"),
    }

    // The provider refused the token: NEEDS_REAUTH, nothing deleted, the lease ended.
    assert_eq!(
        store
            .fail_refresh(connection.id, 2, "invalid_grant", &Trail::none(), now)
            .await
            .unwrap(),
        RefreshCommit::Stored
    );
    let c = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status(), ConnectionStatus::NeedsReauth);
    assert_eq!(c.status_reason.as_deref(), Some("invalid_grant"));
    assert!(c.refresh_token.is_some(), "needs-reauth deletes nothing");
    assert_eq!(
        store.claim_refresh(connection.id, 2, "f", now, lease).await.unwrap(),
        RefreshClaim::Moved
    );

    // A revocation never waits for a refresh holding the lease, and the late result is refused.
    let other = connected(&store, "acme", "u2").await;
    store
        .claim_refresh(other.id, other.token_version, "a", now, lease)
        .await
        .unwrap();
    store
        .revoke_connection(
            other.id,
            "test",
            now,
            now + Duration::hours(1),
            &RevocationPlan::Queue,
            &|_| Trail::none(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .commit_refresh(other.id, other.token_version, &write, &Trail::none(), now)
            .await
            .unwrap(),
        RefreshCommit::Superseded
    );
    assert_eq!(
        store.claim_refresh(Uuid::new_v4(), 1, "a", now, lease).await.unwrap(),
        RefreshClaim::Moved
    );
}
on_both!(refresh_leases_work, refresh_leases);

async fn revocation_outbox(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let connection = connected(&store, "acme", "u1").await;
    let give_up = now + Duration::hours(72);
    let result = store
        .revoke_connection(
            connection.id,
            "user disconnected",
            now,
            give_up,
            &RevocationPlan::Queue,
            &|_| Trail::none(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(result.changed);
    assert_eq!(result.connection.status(), ConnectionStatus::Revoked);
    let entry = result.outbox.clone().expect("an outbox entry");
    assert_eq!(entry.token, Some(Sealed(b"sealed-refresh".to_vec())));
    assert_eq!(entry.token_type_hint, "refresh_token");
    assert_eq!(entry.dek_id, connection.dek_id.unwrap());
    assert_eq!(
        result.dek_to_destroy, None,
        "the key stays until the provider revocation ends"
    );

    let stored = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.stored_status, ConnectionStatus::Revoked);
    assert!(stored.refresh_token.is_none() && stored.dek_id.is_none());
    let (_, token) = store
        .connection_with_token(&TenantScope::All, connection.id, "")
        .await
        .unwrap()
        .unwrap();
    assert!(token.is_none(), "access tokens are destroyed at once");
    assert_eq!(
        store.referenced_data_keys(&[entry.dek_id]).await.unwrap(),
        vec![entry.dek_id]
    );

    let again = store
        .revoke_connection(connection.id, "again", now, give_up, &RevocationPlan::Queue, &|_| {
            Trail::none()
        })
        .await
        .unwrap()
        .unwrap();
    assert!(!again.changed && again.outbox.is_none());

    assert_eq!(
        stored.provider_revocation.as_ref().map(|p| p.state),
        Some(RevocationState::Pending),
        "reported pending while queued"
    );

    // Claiming hides an entry from other workers until the lease ends.
    let lease = now + Duration::seconds(60);
    let first = Uuid::new_v4();
    let claimed = store.claim_next_outbox(now, lease, first).await.unwrap().expect("due");
    assert_eq!((claimed.id, claimed.claim_token), (entry.id, Some(first)));
    assert!(store
        .claim_next_outbox(now, lease, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .claim_outbox_entry(entry.id, now, lease, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
    let attempt =
        |claim: Uuid, attempts: i64, finished: Option<&'static str>, at: chrono::DateTime<Utc>| OutboxOutcome {
            id: entry.id,
            claim,
            attempts,
            finished,
            next_attempt_at: at + Duration::seconds(30),
            error: Some("provider answered 503"),
            error_kind: Some("unavailable"),
            report: None,
            now: at,
        };
    assert!(store
        .record_outbox_attempt(&attempt(first, 1, None, now), &Trail::none())
        .await
        .unwrap());
    // The lease runs out: a second worker claims the entry; the first can no longer record anything.
    let second = Uuid::new_v4();
    let retried = store
        .claim_next_outbox(now + Duration::seconds(31), lease + Duration::seconds(31), second)
        .await
        .unwrap()
        .expect("due again");
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("provider answered 503"));
    assert_eq!(retried.error_kind.as_deref(), Some("unavailable"));
    assert!(!store
        .record_outbox_attempt(&attempt(first, 2, Some("gave_up"), now), &Trail::none())
        .await
        .unwrap());
    let done = ProviderRevocation {
        state: RevocationState::Done,
        at: now,
        detail: Some("revoked at the provider".to_owned()),
        user_page: None,
        error_kind: None,
    };
    assert!(store
        .record_outbox_attempt(
            &OutboxOutcome {
                report: Some(&done),
                ..attempt(second, 2, Some("done"), now)
            },
            &Trail::none()
        )
        .await
        .unwrap());
    // Ended once: no later write (even by the holder of the claim) changes it.
    assert!(!store
        .record_outbox_attempt(&attempt(second, 3, Some("gave_up"), now), &Trail::none())
        .await
        .unwrap());
    let reported = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap()
        .provider_revocation
        .unwrap();
    assert_eq!(
        (reported.state, reported.detail, reported.at.timestamp_millis()),
        (done.state, done.detail, now.timestamp_millis()),
        "the outcome is reported on the connection"
    );

    let finished = store.outbox_for_connection(connection.id).await.unwrap();
    assert_eq!(finished[0].status, "done");
    assert!(finished[0].token.is_none(), "the token copy is dropped");
    assert!(store.referenced_data_keys(&[entry.dek_id]).await.unwrap().is_empty());
    assert_eq!(store.purge_outbox(now + Duration::seconds(1), true).await.unwrap(), 1);
    assert_eq!(
        store.outbox_for_connection(connection.id).await.unwrap().len(),
        1,
        "dry run"
    );
    assert_eq!(store.purge_outbox(now + Duration::seconds(1), false).await.unwrap(), 1);
    assert!(store.outbox_for_connection(connection.id).await.unwrap().is_empty());

    assert_eq!(
        store
            .purge_revoked_connections(now + Duration::seconds(1), false)
            .await
            .unwrap(),
        1
    );
    assert!(store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .is_none());
}
on_both!(revocation_outbox_works, revocation_outbox);

async fn audit(backend: Backend) {
    let (_db, store) = store(backend).await;
    let base = Utc::now() - Duration::days(100);
    let connection = Uuid::new_v4();
    let mut events = Vec::new();
    for i in 0..120 {
        let mut builder = tokenvault::audit::EventBuilder::new(
            if i % 2 == 0 {
                "token.issued"
            } else {
                "connection.revoked"
            },
            "success",
            "tester",
            base + Duration::days(i),
        )
        .user(if i % 3 == 0 { "globex" } else { "acme" }, "u1")
        .detail("scopes", "a b")
        .request_id(Some("req-1"));
        if i == 7 {
            builder = builder.connection(connection);
        }
        events.push(builder.build());
    }
    store.append_audit(&events).await.unwrap();

    let all = store
        .list_audit(&AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 120);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all.last().unwrap(), &events[0]);

    let page = store
        .list_audit(&AuditFilter {
            tenant_id: Some("acme".into()),
            action: Some("token.issued".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert!(page
        .iter()
        .all(|e| e.tenant_id.as_deref() == Some("acme") && e.action == "token.issued"));
    let next = store
        .list_audit(&AuditFilter {
            tenant_id: Some("acme".into()),
            action: Some("token.issued".into()),
            before_id: page.last().map(|e| e.id),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(next.iter().all(|e| e.id < page.last().unwrap().id));
    assert_eq!(
        page.len() + next.len(),
        events
            .iter()
            .filter(|e| e.tenant_id.as_deref() == Some("acme") && e.action == "token.issued")
            .count()
    );

    let by_connection = store
        .list_audit(&AuditFilter {
            connection_id: Some(connection),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_connection.len(), 1);
    let window = store
        .list_audit(&AuditFilter {
            since: Some(base + Duration::days(10)),
            until: Some(base + Duration::days(20)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 10);

    let cutoff = base + Duration::days(30);
    assert_eq!(store.purge_audit(cutoff, true).await.unwrap(), 30);
    assert_eq!(store.purge_audit(cutoff, false).await.unwrap(), 30);
    assert_eq!(
        store
            .list_audit(&AuditFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        90
    );
}
on_both!(audit_works, audit);

async fn consents(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let record = ConsentRecord {
        id: Uuid::now_v7(),
        state_hash: "ab".repeat(32),
        start_hash: Some("cd".repeat(32)),
        binding_hash: None,
        completion_hash: None,
        pending_grant: None,
        account_subject: None,
        account_display: None,
        target_connection_id: None,
        account_hint: None,
        tenant_id: "acme".into(),
        user_id: "u1".into(),
        provider: "google".into(),
        capabilities: vec!["calendar.read".into()],
        requested_scopes: scopes(&["a"]),
        asked_scopes: scopes(&["a"]),
        incremental: true,
        return_url: Some("https://app.example.com/done".into()),
        redirect_uri: "http://127.0.0.1/oauth/callback".into(),
        dek_id: Uuid::new_v4(),
        pkce_verifier: Some(Sealed(b"sealed-verifier".to_vec())),
        state: ConsentState::Pending,
        connection_id: None,
        error: None,
        created_at: now,
        expires_at: now + Duration::minutes(10),
        completed_at: None,
        actor: "platform".into(),
    };
    store.insert_consent(&record, &Trail::none()).await.unwrap();
    let read = store.consent_by_state(&record.state_hash).await.unwrap().unwrap();
    assert_eq!(read.id, record.id);
    assert!(read.incremental);
    assert_eq!(read.capabilities, vec!["calendar.read".to_owned()]);
    assert!(store
        .consent(&TenantScope::Only(BTreeSet::from(["globex".to_owned()])), record.id)
        .await
        .unwrap()
        .is_none());

    // Single use, and not after expiry.
    assert!(!store
        .claim_consent(record.id, now + Duration::minutes(11))
        .await
        .unwrap());
    assert!(store.claim_consent(record.id, now).await.unwrap());
    assert!(!store.claim_consent(record.id, now).await.unwrap());
    let connection = Uuid::new_v4();
    store
        .finish_consent(
            record.id,
            ConsentState::Completed,
            Some(connection),
            None,
            now,
            &Trail::none(),
        )
        .await
        .unwrap();
    let done = store.consent(&TenantScope::All, record.id).await.unwrap().unwrap();
    assert_eq!(done.state, ConsentState::Completed);
    assert_eq!(done.connection_id, Some(connection));
    assert!(
        done.pkce_verifier.is_none(),
        "the verifier is dropped when consent ends"
    );
    assert_eq!(store.consents_of_user("acme", "u1", None, 10).await.unwrap().len(), 1);

    let (would, deks) = store.purge_consents(now + Duration::minutes(11), true).await.unwrap();
    assert_eq!(
        (would, deks),
        (1, vec![]),
        "a dry run counts and hands back no key to destroy"
    );
    assert_eq!(
        store.purge_consents(now + Duration::minutes(11), false).await.unwrap(),
        (1, vec![record.dek_id])
    );
    assert!(store.consent(&TenantScope::All, record.id).await.unwrap().is_none());
}
on_both!(consents_work, consents);

async fn key_table(backend: Backend) {
    let (_db, store) = store(backend).await;
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let key = WrappedDataKey {
            id: Uuid::new_v4(),
            kek_id: if i < 3 { "old".into() } else { "new".into() },
            wrapped: vec![i; 60],
            created_at: now,
        };
        store.insert_data_key(&key).await.unwrap();
        ids.push(key.id);
    }
    assert_eq!(
        store.kek_usage().await.unwrap(),
        vec![("new".to_owned(), 2), ("old".to_owned(), 3)]
    );
    let first = store.data_keys_page(None, 2).await.unwrap();
    let rest = store.data_keys_page(first.last().map(|k| k.id), 10).await.unwrap();
    assert_eq!(first.len() + rest.len(), 5);
    let mut moved = store.data_key(ids[0]).await.unwrap().unwrap();
    moved.kek_id = "new".into();
    moved.wrapped = vec![9; 60];
    assert_eq!(
        store
            .rewrap_data_keys(&[(moved.clone(), "wrong".to_owned())])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .rewrap_data_keys(&[(moved.clone(), "old".to_owned())])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.data_key(ids[0]).await.unwrap().unwrap().wrapped, vec![9; 60]);
    // A batch in one transaction: only the keys still under their expected KEK change.
    let mut batch = Vec::new();
    for (id, expected) in [(ids[1], "old"), (ids[2], "stale"), (ids[3], "new")] {
        let mut key = store.data_key(id).await.unwrap().unwrap();
        key.kek_id = "newer".into();
        key.wrapped = vec![7; 60];
        batch.push((key, expected.to_owned()));
    }
    assert_eq!(store.rewrap_data_keys(&batch).await.unwrap(), 2);
    assert_eq!(store.rewrap_data_keys(&[]).await.unwrap(), 0);
    assert_eq!(store.data_key(ids[1]).await.unwrap().unwrap().kek_id, "newer");
    assert_eq!(store.data_key(ids[2]).await.unwrap().unwrap().kek_id, "old");
    assert_eq!(store.data_key(ids[3]).await.unwrap().unwrap().wrapped, vec![7; 60]);
    assert_eq!(store.delete_data_keys(&ids[..2]).await.unwrap(), 2);
    assert!(store.data_key(ids[0]).await.unwrap().is_none());
    assert_eq!(store.delete_data_keys(&ids[..2]).await.unwrap(), 0);
}
on_both!(key_table_works, key_table);

async fn leadership(backend: Backend) {
    let (_db, store) = store(backend).await;
    let first = store.try_lead().await.unwrap();
    assert!(first.is_some());
    if backend == Backend::Postgres {
        assert!(store.try_lead().await.unwrap().is_none(), "one sweeper at a time");
        drop(first);
        let mut again = None;
        for _ in 0..50 {
            again = store.try_lead().await.unwrap();
            if again.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "the lock is released with its connection");
    }
}
on_both!(leadership_works, leadership);

#[tokio::test]
async fn notifications_reach_other_replicas() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    a.migrate().await.unwrap();
    let b = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    let mut events = b.subscribe().await.unwrap().expect("PostgreSQL has notifications");
    let id = Uuid::new_v4();
    a.notify(&Invalidation::Connection { id }).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(Invalidation::Connection { id }));
}

#[tokio::test]
async fn postgres_sessions_are_bounded() {
    let db = TestDb::new(Backend::Postgres).await;
    let options = StoreOptions {
        lock_timeout: std::time::Duration::from_millis(300),
        statement_timeout: std::time::Duration::from_secs(7),
        idle_in_transaction_timeout: std::time::Duration::from_secs(9),
        ..StoreOptions::default()
    };
    let store = SqlStore::connect(&db.url, &options).await.unwrap();
    store.migrate().await.unwrap();
    for (setting, expected) in [
        ("lock_timeout", "300ms"),
        ("statement_timeout", "7s"),
        ("idle_in_transaction_session_timeout", "9s"),
    ] {
        let row = sqlx::query(&format!("SHOW {setting}"))
            .fetch_one(store.pool())
            .await
            .unwrap();
        let value: String = sqlx::Row::get(&row, 0);
        assert_eq!(value, expected, "{setting}");
    }
    // A statement that waits on a row lock held elsewhere fails instead of waiting without end.
    let connection = connected(&store, "acme", "u1").await;
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT id FROM connections WHERE id = $1 FOR UPDATE")
        .bind(connection.id.to_string())
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let now = Utc::now();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        store.revoke_connection(
            connection.id,
            "test",
            now,
            now + Duration::days(1),
            &RevocationPlan::Queue,
            &|_| Trail::none(),
        ),
    )
    .await
    .expect("the lock wait is bounded by lock_timeout");
    assert!(waited.is_err(), "the revocation gave up on the lock: {waited:?}");
    holder.rollback().await.unwrap();
    let unchanged = store
        .connection(&TenantScope::All, connection.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged.status(), ConnectionStatus::Active);
}
