//! What a re-consent does with the credential it replaces: on a provider
//! whose grants are separate, the old refresh token (or, without refresh
//! tokens, the old access token) goes to the provider-revocation outbox under
//! a data key of its own and is revoked there, while the new grant keeps
//! working; on a provider whose revocation is grant-wide and shared with the
//! new token (Google), nothing is revoked. Asserted on what the fake saw and
//! on what the store holds.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection, stored_refresh_token};
use crate::support::provider::{connect, CatalogOptions};
use crate::support::{eventually, Backend, TestServer};
use std::time::Duration;
use tokenvault::proto::GetAccessTokenResponse;
use tokenvault::store::{AuditEvent, ConnectionStatus, OutboxEntry};
use tokenvault::vault::VaultError;
use tokenvault_testkit::fake_provider::{FakeProvider, FakeProviderConfig};

const WAIT: Duration = Duration::from_secs(20);

async fn token(server: &TestServer, connection_id: &str) -> GetAccessTokenResponse {
    server.token_for(connection_id).await.unwrap()
}

async fn outbox(server: &TestServer, connection_id: &str) -> Vec<OutboxEntry> {
    server
        .app()
        .store
        .outbox_for_connection(connection_id.parse().unwrap())
        .await
        .unwrap()
}

/// Waits until every outbox entry of the connection has ended, and returns them.
async fn finished_outbox(server: &TestServer, connection_id: &str) -> Vec<OutboxEntry> {
    let ended = eventually(WAIT, || async {
        outbox(server, connection_id)
            .await
            .iter()
            .all(|e| e.status != "pending")
    })
    .await;
    assert!(ended, "the outbox entries did not finish");
    outbox(server, connection_id).await
}

/// The `consent.completed` events of a connection, oldest first.
async fn completions(server: &TestServer, connection_id: &str) -> Vec<AuditEvent> {
    let id: uuid::Uuid = connection_id.parse().unwrap();
    let mut events: Vec<_> = audit(server, "consent.completed")
        .await
        .into_iter()
        .filter(|e| e.connection_id == Some(id))
        .collect();
    events.sort_by_key(|e| e.occurred_at);
    events
}

/// An hour on: the next `GetAccessToken` refreshes at the fake with the
/// stored refresh token, and the token it hands out is live there.
async fn refreshes_and_works(with: &WithProvider, connection_id: &str) {
    let before = with.fake.stats();
    with.server.clock.advance(chrono::Duration::seconds(3600));
    let refreshed = token(&with.server, connection_id).await;
    let after = with.fake.stats();
    assert_eq!(after.successful_refreshes, before.successful_refreshes + 1, "{after:?}");
    assert_eq!(after.retired_refresh_tokens_presented, 0, "{after:?}");
    assert!(with.fake.introspect(&refreshed.access_token).is_some());
    assert_eq!(
        stored_connection(&with.server, connection_id).await.status(),
        ConnectionStatus::Active
    );
}

async fn separate_grants(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let old_refresh = stored_refresh_token(&with.server, &connection).await;
    let old_access = token(&with.server, &connection).await.access_token;

    // Re-consent (asking for more): a new grant with its own refresh token.
    let again = connect(&with, "alice", &["mail.read", "calendar.read"]).await;
    assert_eq!(again, connection, "the one connection of the user and provider");
    let new_refresh = stored_refresh_token(&with.server, &connection).await;
    assert_ne!(new_refresh, old_refresh);
    let stored = stored_connection(&with.server, &connection).await;

    // The replaced refresh token went to the outbox, under a key of its own.
    let entries = finished_outbox(&with.server, &connection).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry.status, "done", "{entry:?}");
    assert_eq!(entry.token_type_hint, "refresh_token");
    assert_eq!(entry.binding_record, entry.id.to_string());
    assert_ne!(Some(entry.dek_id), stored.dek_id, "not the connection's live key");
    assert!(entry.token.is_none(), "the copy is dropped when the entry ends");
    assert!(
        matches!(
            with.server.app().vault.data_key(entry.dek_id).await,
            Err(VaultError::MissingDataKey(_))
        ),
        "the entry's own key is destroyed with it"
    );

    // The fake saw exactly the old refresh token revoked, while it was live.
    let revoked = with.fake.stats().revocations;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].token, old_refresh);
    assert_eq!(revoked[0].token_type_hint.as_deref(), Some("refresh_token"));
    assert!(revoked[0].client_authenticated && revoked[0].was_active);
    assert!(with.fake.introspect(&old_access).is_none(), "the old grant ended");

    // Audited with the consent: queued, naming the entry.
    let events = completions(&with.server, &connection).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].detail["replaced_credential"], "none");
    assert_eq!(events[1].detail["replaced_credential"], "queued");
    assert_eq!(events[1].detail["replaced_token_type_hint"], "refresh_token");
    assert_eq!(events[1].detail["revocation_outbox_id"], entry.id.to_string());
    let attempts = audit(&with.server, "provider.revocation").await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "success");

    // The new grant keeps working: served now, and refreshed with the new refresh token.
    let served = token(&with.server, &connection).await;
    assert_ne!(served.access_token, old_access);
    assert!(with.fake.introspect(&served.access_token).is_some());
    assert_eq!(served.scopes, vec!["calendar.read", "mail.read"]);
    refreshes_and_works(&with, &connection).await;
    assert_eq!(with.fake.stats().revocations.len(), 1, "nothing else was revoked");
    with.stop().await;
}
on_both!(reconsent_revokes_the_replaced_refresh_token, separate_grants);

/// The fake's catalog entry with RFC 7009 revocation described as Google's:
/// grant-wide, and a re-consent shares the grant.
fn grant_wide(fake: &FakeProvider) -> String {
    fake.catalog_toml(&CatalogOptions::default()).replacen(
        "[providers.fake]\n",
        "[providers.fake]\nrevocation_scope = \"grant\"\nreconsent_same_grant = true\n",
        1,
    )
}

async fn shared_grant(backend: Backend) {
    let with = WithProvider::build(backend).catalog_toml(grant_wide).start().await;
    let client = with.server.app().providers.client("fake").unwrap();
    assert!(
        !client.spec().revoke_replaced_on_reconsent(),
        "the catalog entry says grant-wide"
    );
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let old_refresh = stored_refresh_token(&with.server, &connection).await;
    connect(&with, "alice", &["mail.read", "calendar.read"]).await;
    assert_ne!(stored_refresh_token(&with.server, &connection).await, old_refresh);

    // Nothing queued, so nothing to revoke even when the worker runs.
    assert!(outbox(&with.server, &connection).await.is_empty());
    with.server.app().lifecycle.outbox().process_due().await.unwrap();
    assert!(with.fake.stats().revocations.is_empty());
    let events = completions(&with.server, &connection).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].detail["replaced_credential"], "grant_shared");

    let served = token(&with.server, &connection).await;
    assert!(with.fake.introspect(&served.access_token).is_some());
    refreshes_and_works(&with, &connection).await;
    assert!(with.fake.stats().revocations.is_empty());
    with.stop().await;
}
on_both!(reconsent_on_a_grant_wide_provider_revokes_nothing, shared_grant);

async fn access_tokens_only(backend: Backend) {
    // A provider without refresh tokens whose access tokens never expire: the
    // replaced credential is the old access token.
    let options = CatalogOptions {
        narrowing: false,
        ..Default::default()
    };
    let with = WithProvider::build(backend)
        .fake(FakeProviderConfig {
            non_expiring_access_tokens: true,
            ..Default::default()
        })
        .catalog(options.clone())
        .catalog_toml(move |fake| {
            fake.catalog_toml(&options).replace(
                "issues_refresh_tokens = true\n",
                "issues_refresh_tokens = false\naccess_token_expires = false\n",
            )
        })
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let old = token(&with.server, &connection).await.access_token;
    connect(&with, "alice", &["mail.read", "calendar.read"]).await;
    let new = token(&with.server, &connection).await.access_token;
    assert_ne!(new, old);

    let entries = finished_outbox(&with.server, &connection).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].status, "done");
    assert_eq!(entries[0].token_type_hint, "access_token");
    let revoked = with.fake.stats().revocations;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].token, old);
    assert!(revoked[0].was_active);
    assert!(with.fake.introspect(&old).is_none());
    assert!(with.fake.introspect(&new).is_some(), "the new token keeps working");
    assert_eq!(token(&with.server, &connection).await.access_token, new);
    with.stop().await;
}
on_both!(reconsent_revokes_the_replaced_access_token, access_tokens_only);
