//! Revocation at the provider by the catalog's method, through the real
//! server: GitHub-style grant deletion (with and without refresh tokens) and a
//! provider whose revocation is unsupported. What the fake saw is asserted,
//! and what the audit log says happened.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::audit;
use crate::support::provider::{connect, CatalogOptions};
use crate::support::{eventually, keys, Backend, TestServer};
use std::time::Duration;
use tokenvault::proto::*;
use tokenvault::store::AuditEvent;
use tokenvault_testkit::fake_provider::{
    CatalogRevocation, FakeProvider, FakeProviderConfig, GrantDeletionRecord, UNSUPPORTED_REASON,
};

const WAIT: Duration = Duration::from_secs(10);

async fn token(server: &TestServer, connection_id: &str) -> GetAccessTokenResponse {
    server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn disconnect(server: &TestServer, connection_id: &str) -> Connection {
    let revoked = server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(revoked.status, ConnectionStatus::Revoked as i32);
    revoked
}

/// The `provider.revocation` events of one connection, once there is one.
async fn revocation_events(server: &TestServer, connection_id: &str) -> Vec<AuditEvent> {
    let id: uuid::Uuid = connection_id.parse().unwrap();
    let found = eventually(WAIT, || async {
        audit(server, "provider.revocation")
            .await
            .iter()
            .any(|e| e.connection_id == Some(id))
    })
    .await;
    assert!(found, "no provider.revocation event for {connection_id}");
    audit(server, "provider.revocation")
        .await
        .into_iter()
        .filter(|e| e.connection_id == Some(id))
        .collect()
}

async fn grant_deletions(fake: &FakeProvider, n: usize) -> Vec<GrantDeletionRecord> {
    eventually(WAIT, || async { fake.stats().grant_deletions.len() >= n }).await;
    fake.stats().grant_deletions
}

fn github_style() -> CatalogOptions {
    CatalogOptions {
        revocation: CatalogRevocation::GithubGrant,
        ..Default::default()
    }
}

async fn github_grant(backend: Backend) {
    let with = WithProvider::build(backend).catalog(github_style()).start().await;
    // A consent and a re-consent of the same upstream user: the fake holds
    // two grants of the one app for that user.
    let first = connect(&with, "alice", &["mail.read"]).await;
    connect(&with, "alice", &["calendar.read"]).await;
    let handed_out = token(&with.server, &first).await;
    assert!(!handed_out.never_expires, "the fake's tokens expire");
    assert!(with.fake.introspect(&handed_out.access_token).is_some());
    let refreshes_before = with.fake.stats().refreshes;

    disconnect(&with.server, &first).await;

    // One DELETE, with the client's Basic credentials and a fresh access token
    // of the grant (the refresh token was exchanged for it first).
    let seen = grant_deletions(&with.fake, 1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let deletion = &seen[0];
    assert_eq!(deletion.client_id, "test-client");
    assert!(deletion.client_authenticated && deletion.json_body && deletion.was_active);
    assert_eq!(deletion.accept.as_deref(), Some("application/vnd.github+json"));
    let used = deletion.access_token.clone().unwrap();
    assert!(used.starts_with("fake_at_") && used != handed_out.access_token);
    assert_eq!(with.fake.stats().refreshes, refreshes_before + 1);
    // Grant-wide: every grant of the app for that user ended, as GitHub's does.
    assert_eq!(deletion.grants_deleted, 2);
    assert!(with.fake.stats().revocations.is_empty(), "no RFC 7009 call");

    // The grant's tokens stop working at the provider.
    assert!(with.fake.introspect(&handed_out.access_token).is_none());
    assert!(with.fake.introspect(&used).is_none());
    assert!(with.fake.granted_scopes("user-1").is_empty());

    let events = revocation_events(&with.server, &first).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, "success");
    with.stop().await;
}
on_both!(github_grant_deletion_ends_the_grant, github_grant);

async fn github_oauth_app(backend: Backend) {
    // A GitHub OAuth app: one access token that never expires, no refresh token.
    let options = CatalogOptions {
        narrowing: false,
        ..github_style()
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
    let handed_out = token(&with.server, &connection).await;
    // Honest about it: the token does not expire; expires_at is only the lease cap.
    assert!(handed_out.never_expires);
    let max_lease = with.server.app().config.broker.max_lease_seconds;
    let expires_at = handed_out.expires_at.unwrap().seconds;
    assert!(expires_at <= chrono::Utc::now().timestamp() + i64::try_from(max_lease).unwrap() + 1);

    disconnect(&with.server, &connection).await;
    let seen = grant_deletions(&with.fake, 1).await;
    assert_eq!(seen.len(), 1);
    // The stored access token itself names the grant; no refresh happened.
    assert_eq!(seen[0].access_token.as_deref(), Some(handed_out.access_token.as_str()));
    assert!(seen[0].client_authenticated && seen[0].was_active);
    assert_eq!(with.fake.stats().refreshes, 0);
    assert!(with.fake.introspect(&handed_out.access_token).is_none());
    assert_eq!(revocation_events(&with.server, &connection).await[0].outcome, "success");

    // A token already dead at the provider gets 404, which GitHub also answers
    // to a request with wrong client credentials: never counted as revoked.
    with.fake.set_subject("user-2");
    let other = connect(&with, "bob", &["mail.read"]).await;
    let bob_token = token(&with.server, &other).await;
    with.fake.revoke_all_grants();
    disconnect(&with.server, &other).await;
    let seen = grant_deletions(&with.fake, 2).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].access_token.as_deref(), Some(bob_token.access_token.as_str()));
    assert!(!seen[1].was_active);
    let events = revocation_events(&with.server, &other).await;
    assert_eq!(events.len(), 1);
    assert_ne!(events[0].outcome, "success", "{:?}", events[0]);
    let error = events[0].detail["error"].as_str().unwrap_or_default();
    assert!(error.contains("404"), "{error}");
    with.stop().await;
}
on_both!(github_oauth_app_grant_deletion, github_oauth_app);

async fn unsupported(backend: Backend) {
    let with = WithProvider::build(backend)
        .catalog(CatalogOptions {
            revocation: CatalogRevocation::Unsupported,
            ..Default::default()
        })
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let handed_out = token(&with.server, &connection).await;

    let dek = crate::support::inspect::stored_connection(&with.server, &connection)
        .await
        .dek_id
        .unwrap();

    // Disconnect says at once that the provider cannot revoke, why, and where the user can.
    let revoked = disconnect(&with.server, &connection).await;
    let reported = revoked.provider_revocation.expect("reported");
    assert_eq!(reported.state, ProviderRevocationState::Unsupported as i32);
    assert_eq!(reported.reason, UNSUPPORTED_REASON);
    assert!(reported.user_page.ends_with("/apps"), "{reported:?}");
    // Audited as unsupported, never as a success at the provider.
    let revocations = audit(&with.server, "connection.revoked").await;
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].detail["provider_revocation"], "unsupported");
    assert!(audit(&with.server, "provider.revocation")
        .await
        .iter()
        .all(|e| e.outcome != "success"));
    // The outcome is final: the key is destroyed now, and nothing was queued.
    assert!(matches!(
        with.server.app().vault.data_key(dek).await,
        Err(tokenvault::vault::VaultError::MissingDataKey(_))
    ));
    assert!(with
        .server
        .app()
        .store
        .outbox_for_connection(connection.parse().unwrap())
        .await
        .unwrap()
        .is_empty());
    // Nothing reached the provider: no revocation, no grant deletion, no refresh.
    let stats = with.fake.stats();
    assert_eq!(
        (
            stats.revoke_endpoint_requests,
            stats.grant_endpoint_requests,
            stats.refreshes
        ),
        (0, 0, 0)
    );
    // And the provider still honours the grant: the user must remove the app there.
    assert!(with.fake.introspect(&handed_out.access_token).is_some());
    // tokenvault itself serves nothing more.
    let refused = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    with.stop().await;
}
on_both!(unsupported_revocation_calls_nothing, unsupported);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_supplies_the_revocation_endpoint_next_to_explicit_ones() {
    // Explicit authorization and token endpoints, no revocation_url: the
    // revocation endpoint still comes from the issuer's metadata.
    let with = WithProvider::build(Backend::Sqlite)
        .catalog(CatalogOptions {
            incremental: false,
            ..Default::default()
        })
        .catalog_toml(|fake| {
            let issuer = fake.base_url().as_str().trim_end_matches('/').to_owned();
            format!(
                "[providers.fake]\ndisplay_name = \"Partly discovered\"\nissuer = \"{issuer}\"\n\
                 authorization_url = \"{}\"\ntoken_url = \"{}\"\nallowed_scopes = [\"mail.read\"]\n\
                 [providers.fake.capabilities]\n\"mail.read\" = [\"mail.read\"]\n",
                fake.authorization_url(),
                fake.token_url()
            )
        })
        .start()
        .await;
    let client = with.server.app().providers.client("fake").unwrap();
    assert_eq!(
        client.endpoints().revocation.as_ref(),
        Some(&with.fake.revocation_url())
    );
    let connection = connect(&with, "dana", &["mail.read"]).await;
    disconnect(&with.server, &connection).await;
    assert!(eventually(WAIT, || async { !with.fake.stats().revocations.is_empty() }).await);
    assert_eq!(revocation_events(&with.server, &connection).await[0].outcome, "success");
    with.stop().await;
}
