//! Revocation at the provider by the catalog's method, through the real
//! server: GitHub-style grant deletion (with and without refresh tokens), RFC
//! 7009 with an access token (Notion-style), the access token as bearer
//! (Dropbox-style), the stored refresh token itself as bearer (Slack-style),
//! each also after a transient failure, and a provider
//! whose revocation is unsupported. What the fake saw is asserted, what the
//! platform is told, when the data key goes, and what the audit log says
//! happened.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, stored_connection};
use crate::support::provider::{connect, CatalogOptions};
use crate::support::revocation::*;
use crate::support::{eventually, keys, Backend, TestServer};
use tokenvault::proto::*;
use tokenvault::store::AuditEvent;
use tokenvault_testkit::fake_provider::{
    CatalogRevocation, Endpoint, FakeProvider, FakeProviderConfig, Fault, GrantDeletionRecord, SlackRevocationRecord,
    SlackTokenKind, Stats, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX, UNSUPPORTED_REASON,
};

async fn token(server: &TestServer, connection_id: &str) -> GetAccessTokenResponse {
    server.token_for(connection_id).await.unwrap()
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

/// Waits until GetConnection reports `state`.
async fn reported(server: &TestServer, connection_id: &str, state: ProviderRevocationState) -> Connection {
    let reached = eventually(WAIT, || async {
        read(server, connection_id)
            .await
            .provider_revocation
            .is_some_and(|r| r.state == state as i32)
    })
    .await;
    let shown = read(server, connection_id).await;
    assert!(reached, "never reported {state:?}: {:?}", shown.provider_revocation);
    shown
}

/// The revocation styles that present an access token the catalog's way,
/// the refresh token being exchanged for a fresh access token first.
#[derive(Debug, Clone, Copy)]
enum AccessTokenStyle {
    /// `rfc7009_access_token` (Notion): RFC 7009, `token` = the access token, client authentication.
    Rfc7009,
    /// `bearer_access_token` (Dropbox): `Authorization: Bearer`, no body, no client authentication.
    Bearer,
}

/// What the one processed revocation call presented, and what it ended.
struct SeenCall {
    access_token: String,
    ended_grant: bool,
}

impl AccessTokenStyle {
    fn catalog(self) -> CatalogOptions {
        CatalogOptions {
            revocation: match self {
                AccessTokenStyle::Rfc7009 => CatalogRevocation::Rfc7009AccessToken,
                AccessTokenStyle::Bearer => CatalogRevocation::BearerAccessToken,
            },
            ..Default::default()
        }
    }

    /// The fake's endpoint for this style, for fault injection.
    fn endpoint(self) -> Endpoint {
        match self {
            AccessTokenStyle::Rfc7009 => Endpoint::Revoke,
            AccessTokenStyle::Bearer => Endpoint::BearerRevoke,
        }
    }

    /// Requests that reached this style's endpoint, faults included.
    fn endpoint_requests(self, stats: &Stats) -> u64 {
        match self {
            AccessTokenStyle::Rfc7009 => stats.revoke_endpoint_requests,
            AccessTokenStyle::Bearer => stats.bearer_revoke_endpoint_requests,
        }
    }

    /// Revocation calls the fake processed (past fault injection), of any style.
    fn processed_calls(stats: &Stats) -> usize {
        stats.revocations.len() + stats.bearer_revocations.len() + stats.grant_deletions.len()
    }

    /// The one processed revocation call, checked to have this style's form.
    fn the_call(self, stats: &Stats) -> SeenCall {
        assert_eq!(Self::processed_calls(stats), 1, "{stats:?}");
        match self {
            AccessTokenStyle::Rfc7009 => {
                let call = stats.revocations.first().expect("an RFC 7009 call");
                // RFC 7009 at the catalog's URL, with an access token and the client's authentication.
                assert_eq!(call.path, "/revoke-grant");
                assert!(call.token.starts_with(ACCESS_TOKEN_PREFIX), "{call:?}");
                assert_eq!(call.token_type_hint.as_deref(), Some("access_token"));
                assert!(call.client_authenticated && call.was_active, "{call:?}");
                SeenCall {
                    access_token: call.token.clone(),
                    ended_grant: call.ended_grant,
                }
            }
            AccessTokenStyle::Bearer => {
                assert_eq!(stats.revoke_endpoint_requests, 0, "no RFC 7009 call");
                let call = stats.bearer_revocations.first().expect("a bearer call");
                // The access token as bearer, nothing else: no body, no client credentials.
                let token = call.bearer_token.clone().expect("an Authorization: Bearer header");
                assert!(token.starts_with(ACCESS_TOKEN_PREFIX), "{call:?}");
                assert!(!call.client_credentials_sent, "no client authentication: {call:?}");
                assert!(call.body_empty && call.was_active, "{call:?}");
                SeenCall {
                    access_token: token,
                    ended_grant: call.ended_grant,
                }
            }
        }
    }
}

async fn revoked_with_an_access_token(backend: Backend, style: AccessTokenStyle) {
    let with = WithProvider::build(backend).catalog(style.catalog()).start().await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let handed_out = token(&with.server, &connection).await;
    // Another user of the same app, whose grant the revocation must leave alone.
    with.fake.set_subject("user-2");
    let other = connect(&with, "bob", &["mail.read"]).await;
    let bobs = token(&with.server, &other).await;
    let dek = stored_connection(&with.server, &connection).await.dek_id.unwrap();
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 1);
    let refreshes_before = with.fake.stats().refreshes;

    let revoked = disconnect(&with.server, &connection).await;
    assert_eq!(reported_state(&revoked), ProviderRevocationState::Pending);
    let done = reported(&with.server, &connection, ProviderRevocationState::Done).await;
    assert!(done.provider_revocation.unwrap().at.is_some());

    // Exactly one call of the style's form, with a fresh access token: the
    // refresh token was exchanged for it, once, and the rotated one never presented again.
    let stats = with.fake.stats();
    let call = style.the_call(&stats);
    assert_ne!(call.access_token, handed_out.access_token);
    assert_eq!(stats.refreshes, refreshes_before + 1);
    assert_eq!(stats.retired_refresh_tokens_presented, 0);
    // The call ended the grant the token belongs to: its refresh token and
    // both access tokens stop working at the provider.
    assert!(call.ended_grant);
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 0);
    assert!(with.fake.granted_scopes("user-1").is_empty());
    assert!(with.fake.introspect(&handed_out.access_token).is_none());
    assert!(with.fake.introspect(&call.access_token).is_none());
    // Bob's grant lives on.
    assert!(with.fake.introspect(&bobs.access_token).is_some());
    assert_eq!(with.fake.live_refresh_tokens("user-2"), 1);

    // At the final outcome the key goes, and the outbox keeps no copy.
    assert!(
        eventually(WAIT, || async { !key_exists(&with.server, dek).await }).await,
        "the data key is destroyed"
    );
    let entry = outbox_entry(&with.server, &connection).await;
    assert_eq!((entry.status.as_str(), entry.attempts), ("done", 1));
    assert!(entry.token.is_none());
    let events = revocation_events(&with.server, &connection).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, "success");
    with.stop().await;
}

async fn rfc7009_access_token(backend: Backend) {
    revoked_with_an_access_token(backend, AccessTokenStyle::Rfc7009).await;
}
on_both!(rfc7009_access_token_revocation_ends_the_grant, rfc7009_access_token);

async fn bearer_access_token(backend: Backend) {
    revoked_with_an_access_token(backend, AccessTokenStyle::Bearer).await;
}
on_both!(bearer_access_token_revocation_ends_the_grant, bearer_access_token);

async fn retried_after_a_transient_failure(backend: Backend, style: AccessTokenStyle) {
    let with = WithProvider::build(backend)
        .catalog(style.catalog())
        // Only the test's process_due retries: the worker's poll does not race it.
        .config(|config| config.lifecycle.outbox_poll_seconds = 3600)
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let dek = stored_connection(&with.server, &connection).await.dek_id.unwrap();
    // The refresh that yields an access token succeeds (and rotates the
    // refresh token); the revocation call then gets a 503.
    with.fake.faults().push(style.endpoint(), Fault::Status(503));

    let revoked = disconnect(&with.server, &connection).await;
    assert_eq!(reported_state(&revoked), ProviderRevocationState::Pending);
    let first = attempted(&with.server, &connection, 1).await;
    assert_eq!(first.status, "pending");
    assert!(!first.rotation_uncertain && first.token.is_some());
    let stats = with.fake.stats();
    assert_eq!((stats.refreshes, stats.successful_refreshes), (1, 1));
    assert_eq!(style.endpoint_requests(&stats), 1);
    assert_eq!(AccessTokenStyle::processed_calls(&stats), 0, "the fault answered first");
    // Pending: the key still exists, the platform reads PENDING with the
    // error kind, and the grant (with its rotated refresh token) is live.
    assert!(key_exists(&with.server, dek).await);
    let shown = read(&with.server, &connection).await;
    assert_eq!(reported_state(&shown), ProviderRevocationState::Pending);
    assert_eq!(shown.provider_revocation.unwrap().last_error_kind, "unavailable");
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 1);

    with.server.clock.advance(chrono::Duration::minutes(10));
    let retried = with.server.app().lifecycle.outbox().process_due().await.unwrap();
    assert_eq!(retried, 1);
    let done = outbox_entry(&with.server, &connection).await;
    assert_eq!((done.status.as_str(), done.attempts), ("done", 2), "{done:?}");
    let stats = with.fake.stats();
    // The retry refreshed with the rotated refresh token the entry kept, never the retired one.
    assert_eq!(stats.retired_refresh_tokens_presented, 0);
    assert_eq!((stats.refreshes, stats.successful_refreshes), (2, 2));
    assert_eq!(style.endpoint_requests(&stats), 2);
    let call = style.the_call(&stats);
    assert!(call.ended_grant, "the grant really ended");
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 0);
    assert!(with.fake.introspect(&call.access_token).is_none());
    assert_eq!(
        reported_state(&read(&with.server, &connection).await),
        ProviderRevocationState::Done
    );
    assert!(
        !key_exists(&with.server, dek).await,
        "the key goes at the final outcome"
    );
    with.stop().await;
}

async fn rfc7009_access_token_retried(backend: Backend) {
    retried_after_a_transient_failure(backend, AccessTokenStyle::Rfc7009).await;
}
on_both!(
    rfc7009_access_token_revocation_is_retried_after_a_transient_failure,
    rfc7009_access_token_retried
);

async fn bearer_access_token_retried(backend: Backend) {
    retried_after_a_transient_failure(backend, AccessTokenStyle::Bearer).await;
}
on_both!(
    bearer_access_token_revocation_is_retried_after_a_transient_failure,
    bearer_access_token_retried
);

fn slack_style() -> CatalogOptions {
    CatalogOptions {
        revocation: CatalogRevocation::BearerToken,
        ..Default::default()
    }
}

/// The one Slack-style call the fake processed, checked to have the form of
/// `bearer_token`: the stored refresh token as bearer, nothing else.
fn the_slack_call(stats: &Stats) -> SlackRevocationRecord {
    assert_eq!(AccessTokenStyle::processed_calls(stats), 0, "no call of another style");
    assert_eq!(stats.slack_revocations.len(), 1, "{stats:?}");
    let call = stats.slack_revocations[0].clone();
    let token = call.bearer_token.as_deref().expect("an Authorization: Bearer header");
    assert!(token.starts_with(REFRESH_TOKEN_PREFIX), "{call:?}");
    assert_eq!(call.kind, SlackTokenKind::Refresh, "a live refresh token: {call:?}");
    assert!(!call.client_credentials_sent, "no client authentication: {call:?}");
    assert!(call.body_empty && call.was_active && call.revoked, "{call:?}");
    call
}

async fn bearer_token(backend: Backend) {
    let with = WithProvider::build(backend).catalog(slack_style()).start().await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let handed_out = token(&with.server, &connection).await;
    let dek = stored_connection(&with.server, &connection).await.dek_id.unwrap();
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 1);
    let refreshes_before = with.fake.stats().refreshes;

    let revoked = disconnect(&with.server, &connection).await;
    assert_eq!(reported_state(&revoked), ProviderRevocationState::Pending);
    let done = reported(&with.server, &connection, ProviderRevocationState::Done).await;
    assert!(done.provider_revocation.unwrap().at.is_some());

    // Exactly one call, presenting the stored refresh token itself: nothing
    // was refreshed first, so no rotated refresh token was ever minted.
    let stats = with.fake.stats();
    let call = the_slack_call(&stats);
    assert_eq!(stats.refreshes, refreshes_before, "no refresh before revoking");
    assert_eq!(stats.slack_revoke_endpoint_requests, 1);
    // That refresh token no longer works at the provider, and the user has no
    // live refresh token left.
    let presented = call.bearer_token.unwrap();
    assert!(!with.fake.is_refresh_token_active(&presented));
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 0);
    // Slack-style: only the token given is revoked. An access token already
    // handed out lives until it expires (docs/providers.md, Slack).
    assert!(with.fake.introspect(&handed_out.access_token).is_some());

    assert!(
        eventually(WAIT, || async { !key_exists(&with.server, dek).await }).await,
        "the data key is destroyed"
    );
    let entry = outbox_entry(&with.server, &connection).await;
    assert_eq!((entry.status.as_str(), entry.attempts), ("done", 1));
    assert!(entry.token.is_none());
    let events = revocation_events(&with.server, &connection).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, "success");
    with.stop().await;
}
on_both!(bearer_token_revocation_revokes_the_refresh_token_itself, bearer_token);

async fn bearer_token_retried(backend: Backend) {
    let with = WithProvider::build(backend)
        .catalog(slack_style())
        // Only the test's process_due retries: the worker's poll does not race it.
        .config(|config| config.lifecycle.outbox_poll_seconds = 3600)
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let dek = stored_connection(&with.server, &connection).await.dek_id.unwrap();
    with.fake.faults().push(Endpoint::SlackRevoke, Fault::Status(503));

    disconnect(&with.server, &connection).await;
    let first = attempted(&with.server, &connection, 1).await;
    assert_eq!(first.status, "pending");
    assert!(!first.rotation_uncertain && first.token.is_some());
    let stats = with.fake.stats();
    assert_eq!(stats.refreshes, 0, "nothing refreshed");
    assert_eq!(stats.slack_revoke_endpoint_requests, 1);
    assert!(stats.slack_revocations.is_empty(), "the fault answered first");
    assert!(key_exists(&with.server, dek).await);
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 1);

    with.server.clock.advance(chrono::Duration::minutes(10));
    let retried = with.server.app().lifecycle.outbox().process_due().await.unwrap();
    assert_eq!(retried, 1);
    let done = outbox_entry(&with.server, &connection).await;
    assert_eq!((done.status.as_str(), done.attempts), ("done", 2), "{done:?}");
    let stats = with.fake.stats();
    assert_eq!(stats.refreshes, 0, "still nothing refreshed");
    let call = the_slack_call(&stats);
    assert!(!with.fake.is_refresh_token_active(&call.bearer_token.unwrap()));
    assert_eq!(with.fake.live_refresh_tokens("user-1"), 0);
    assert_eq!(
        reported_state(&read(&with.server, &connection).await),
        ProviderRevocationState::Done
    );
    assert!(
        !key_exists(&with.server, dek).await,
        "the key goes at the final outcome"
    );
    with.stop().await;
}
on_both!(
    bearer_token_revocation_is_retried_after_a_transient_failure,
    bearer_token_retried
);
