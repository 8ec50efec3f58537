//! Audit events are written in the same transaction as the change they
//! record: with the database refusing every audit insert (a trigger on
//! `audit_events`), a revocation, a deletion, a consent start, a consent
//! completion and a confirmation fail and change nothing; once it accepts them again, a retry
//! makes the change with exactly one event.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection};
use crate::support::provider::{confirm, connect, start_request, UserBrowser};
use crate::support::{keys, Backend, TestServer};
use tokenvault::proto::*;
use tonic::Code;

/// Makes every insert into `audit_events` fail inside the database.
async fn refuse_audit(server: &TestServer) {
    let pool = server.app().sql.pool();
    let statements: &[&str] = match server.db.backend {
        Backend::Postgres => &[
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
             FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ],
        Backend::Sqlite => &["CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'audit refused'); END"],
    };
    for sql in statements {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

/// Lets audit inserts through again.
async fn accept_audit(server: &TestServer) {
    let pool = server.app().sql.pool();
    let statement = match server.db.backend {
        Backend::Postgres => "DROP TRIGGER refuse_audit ON audit_events",
        Backend::Sqlite => "DROP TRIGGER refuse_audit",
    };
    sqlx::query(statement).execute(pool).await.unwrap();
}

async fn count(server: &TestServer, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(server.app().sql.pool())
        .await
        .unwrap()
}

async fn consent_state(server: &TestServer, consent_id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM consent_requests WHERE id = $1")
        .bind(consent_id.to_owned())
        .fetch_one(server.app().sql.pool())
        .await
        .unwrap()
}

async fn disconnect(server: &TestServer, connection_id: &str) -> Result<Connection, tonic::Status> {
    server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().connection.expect("connection"))
}

async fn delete_user(server: &TestServer, user_id: &str) -> Result<DeleteUserResponse, tonic::Status> {
    server
        .admin(keys::ADMIN)
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: user_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The provider's redirect for a consent of `user`, approved at the fake in
/// the returned browser, not yet followed.
async fn approved_callback(with: &WithProvider, user: &str) -> (String, url::Url, UserBrowser) {
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, &["mail.read"]))
        .await
        .expect("StartConsent")
        .into_inner();
    let user_browser = UserBrowser::new();
    let callback = user_browser.approve(&with.fake, &started.authorization_url).await;
    (started.consent_id, callback, user_browser)
}

async fn an_action_whose_audit_fails_does_not_happen(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let server = &with.server;
    let connection_id = connect(&with, "alice", &["mail.read"]).await;
    let before = stored_connection(server, &connection_id).await;
    // A re-consent started while audit still works, completed while it does not.
    let (consent_id, callback, user_browser) = approved_callback(&with, "alice").await;
    // Another, approved while audit works and confirmed while it does not.
    let (approved_id, approved, second_browser) = approved_callback(&with, "alice").await;
    let approved = second_browser.follow_callback(&approved).await;
    let completed_before = audit(server, "consent.completed").await.len();
    let consents_before = count(server, "consent_requests").await;
    let events_before = count(server, "audit_events").await;

    refuse_audit(server).await;

    // Disconnect: refused, the connection still active and served, nothing queued for the provider.
    let error = disconnect(server, &connection_id).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    let after = stored_connection(server, &connection_id).await;
    assert_eq!(after.stored_status, before.stored_status);
    assert_eq!(after.token_version, before.token_version);
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(after.dek_id, before.dek_id);
    assert!(server
        .app()
        .store
        .outbox_for_connection(connection_id.parse().unwrap())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(count(server, "revocation_outbox").await, 0);
    server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.clone(),
            ..Default::default()
        })
        .await
        .expect("still served: the revocation did not happen");

    // DeleteUser: refused, the user not deleted.
    let error = delete_user(server, "alice").await.unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    let user = server.app().store.user(keys::TENANT, "alice").await.unwrap().unwrap();
    assert_eq!(user.deleted_at, None);
    assert_eq!(user.purge_at, None);

    // Consent completion: the callback fails, the connection keeps its old grant.
    let response = user_browser.get(callback.as_str()).await;
    assert_eq!(response.status(), 503);
    let after = stored_connection(server, &connection_id).await;
    assert_eq!(after.token_version, before.token_version);
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(consent_state(server, &consent_id).await, "exchanging");

    // Confirmation: refused, the connection keeps its old grant, the approval is given back.
    let error = confirm(server, "alice", &approved).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    let after = stored_connection(server, &connection_id).await;
    assert_eq!(after.token_version, before.token_version);
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(consent_state(server, &approved_id).await, "approved");
    assert_eq!(
        count(server, "revocation_outbox").await,
        0,
        "the replaced refresh token is queued with the grant or not at all"
    );

    // StartConsent: refused, no request stored.
    let error = server
        .consent(keys::PLATFORM)
        .start_consent(start_request("alice", &["mail.read"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Internal, "{error:?}");
    assert_eq!(count(server, "consent_requests").await, consents_before);
    assert_eq!(count(server, "audit_events").await, events_before);
    assert!(with.fake.stats().revocations.is_empty());

    accept_audit(server).await;

    // Retries: each change lands with exactly one event. (The refused
    // callback's state and code were single use; the refused confirmation
    // may be retried while its window is open.)
    let confirmed = confirm(server, "alice", &approved).await.expect("ConfirmConsent");
    assert_eq!(confirmed.connection_id, connection_id);
    assert_eq!(audit(server, "consent.completed").await.len(), completed_before + 1);
    let reconsented = stored_connection(server, &connection_id).await;
    assert_eq!(reconsented.token_version, before.token_version + 1);

    let revoked = disconnect(server, &connection_id).await.expect("Disconnect");
    assert_eq!(revoked.status, ConnectionStatus::Revoked as i32);
    let events = audit(server, "connection.revoked").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].connection_id, Some(connection_id.parse().unwrap()));
    // The refresh token the re-consent replaced, and the one the revocation removed.
    let entries = server
        .app()
        .store
        .outbox_for_connection(connection_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        entries
            .iter()
            .filter(|e| tokenvault::lifecycle::is_handed_over(e))
            .count(),
        1,
        "{entries:?}"
    );

    let deleted = delete_user(server, "alice").await.expect("DeleteUser");
    assert!(deleted.purge_at.is_some());
    assert_eq!(audit(server, "user.deleted").await.len(), 1);
    let user = server.app().store.user(keys::TENANT, "alice").await.unwrap().unwrap();
    assert!(user.deleted_at.is_some());
    // A repeat changes nothing and records nothing.
    delete_user(server, "alice").await.expect("DeleteUser again");
    assert_eq!(audit(server, "user.deleted").await.len(), 1);
    with.stop().await;
}
on_both!(
    audit_failure_fails_the_action,
    an_action_whose_audit_fails_does_not_happen
);
