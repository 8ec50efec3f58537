//! The provider-revocation outbox under the conditions that made it give up
//! too early or record success wrongly: a client secret missing for a while,
//! a failure after the refresh that a revocation by access token needs, a
//! refresh whose answer was lost, and two replicas working one outbox. Each
//! asserts on what the provider saw, what the database holds and what the
//! platform is told.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::provider::connect;
use crate::support::revocation::*;
use crate::support::Backend;
use std::time::Duration;
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::{Endpoint, FakeProviderConfig, Fault};

async fn configuration_errors_wait(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    assert!(!with.fake.granted_scopes("user-1").is_empty());
    // A deploy ships a wrong client secret.
    let with = with
        .restart(|config| {
            for client in config.providers.clients.values_mut() {
                client.client_secret = Some("not-the-secret".to_owned().into());
            }
        })
        .await;
    let revoked = disconnect(&with.server, &connection).await;
    assert_eq!(reported_state(&revoked), ProviderRevocationState::Pending);
    let waiting = attempted(&with.server, &connection, 1).await;
    assert_eq!(waiting.status, "pending");
    assert_eq!(waiting.error_kind.as_deref(), Some("client_rejected"));
    // Far past the give-up time it still waits: a configuration error says nothing about the grant.
    with.server.clock.advance(chrono::Duration::days(30));
    with.server.app().lifecycle.outbox().process_due().await.unwrap();
    let still = outbox_entry(&with.server, &connection).await;
    assert_eq!((still.status.as_str(), still.attempts), ("pending", 2));
    assert!(still.token.is_some() && key_exists(&with.server, still.dek_id).await);
    let shown = read(&with.server, &connection).await;
    assert_eq!(reported_state(&shown), ProviderRevocationState::Pending);
    assert_eq!(
        shown.provider_revocation.as_ref().unwrap().last_error_kind,
        "client_rejected"
    );
    let metrics = crate::support::inspect::metrics(&with.server).await;
    assert!(
        metrics.contains("outcome=\"waiting_for_configuration\""),
        "an alertable metric"
    );
    assert!(!with.fake.granted_scopes("user-1").is_empty(), "not revoked yet");

    // The secret is fixed: the next attempt revokes.
    let secret = with.fake.config().client_secret.clone();
    let with = with
        .restart(move |config| {
            for client in config.providers.clients.values_mut() {
                client.client_secret = Some(secret.clone().into());
            }
        })
        .await;
    with.server.clock.advance(chrono::Duration::days(31));
    with.server.app().lifecycle.outbox().process_due().await.unwrap();
    let done = outbox_entry(&with.server, &connection).await;
    assert_eq!(done.status, "done");
    assert!(with.fake.granted_scopes("user-1").is_empty(), "revoked at the provider");
    assert!(
        !key_exists(&with.server, done.dek_id).await,
        "the key goes at the final outcome"
    );
    assert_eq!(
        reported_state(&read(&with.server, &connection).await),
        ProviderRevocationState::Done
    );
    with.stop().await;
}
on_both!(
    a_missing_client_secret_delays_revocation_but_never_abandons_it,
    configuration_errors_wait
);

async fn rotation_kept(backend: Backend) {
    let with = WithProvider::build(backend).catalog(github_style()).start().await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    // The refresh that yields an access token succeeds (and rotates); the grant deletion then fails.
    with.fake.faults().push(Endpoint::GrantDeletion, Fault::Status(503));
    disconnect(&with.server, &connection).await;
    let first = attempted(&with.server, &connection, 1).await;
    assert_eq!(first.status, "pending");
    assert_eq!(with.fake.stats().refreshes, 1);
    assert!(!first.rotation_uncertain);
    let shown = read(&with.server, &connection).await;
    assert_eq!(reported_state(&shown), ProviderRevocationState::Pending);
    assert_eq!(shown.provider_revocation.unwrap().last_error_kind, "unavailable");

    with.server.clock.advance(chrono::Duration::minutes(10));
    with.server.app().lifecycle.outbox().process_due().await.unwrap();
    let done = outbox_entry(&with.server, &connection).await;
    assert_eq!(done.status, "done");
    let stats = with.fake.stats();
    // The second attempt presented the rotated refresh token, not the retired one.
    assert_eq!(stats.retired_refresh_tokens_presented, 0);
    assert_eq!(stats.refreshes, 2);
    // The failed deletion was refused before the fake processed it; the second one ended the grant.
    let deletions = &stats.grant_deletions;
    assert_eq!(deletions.len(), 1);
    assert!(deletions[0].was_active && deletions[0].client_authenticated);
    assert!(with.fake.granted_scopes("user-1").is_empty(), "the grant really ended");
    assert_eq!(
        reported_state(&read(&with.server, &connection).await),
        ProviderRevocationState::Done
    );
    with.stop().await;
}
on_both!(a_refresh_token_rotated_while_revoking_is_kept, rotation_kept);

async fn lost_refresh(backend: Backend) {
    let with = WithProvider::build(backend)
        .catalog(github_style())
        .config(|config| config.provider_http.timeout_seconds = 1)
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    // The provider rotates, then its answer arrives after tokenvault gave up waiting.
    with.fake
        .faults()
        .push(Endpoint::Token, Fault::DelayAnswer(Duration::from_secs(3)));
    disconnect(&with.server, &connection).await;
    let first = attempted(&with.server, &connection, 1).await;
    assert_eq!(first.status, "pending");
    assert!(first.rotation_uncertain, "the lost answer may have rotated the token");

    with.server.clock.advance(chrono::Duration::minutes(10));
    with.server.app().lifecycle.outbox().process_due().await.unwrap();
    let ended = outbox_entry(&with.server, &connection).await;
    // The stored token was retired by the lost rotation: invalid_grant now is
    // no proof that the grant is gone, since the rotated token lives on.
    assert_eq!(with.fake.stats().retired_refresh_tokens_presented, 1);
    assert!(
        !with.fake.granted_scopes("user-1").is_empty(),
        "the grant is still live"
    );
    assert_eq!(ended.status, "gave_up", "{ended:?}");
    let shown = read(&with.server, &connection).await;
    assert_eq!(reported_state(&shown), ProviderRevocationState::Failed);
    assert_eq!(shown.provider_revocation.unwrap().last_error_kind, "rotation_uncertain");
    with.stop().await;
}
on_both!(invalid_grant_after_a_lost_rotation_is_not_counted_revoked, lost_refresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_revoke_each_entry_once() {
    let with = WithProvider::build(Backend::Postgres)
        .fake(FakeProviderConfig::default())
        .start()
        .await;
    let replica = with.replica().await;
    let mut connections = Vec::new();
    for i in 0..20 {
        connections.push(connect(&with, &format!("user-{i}"), &["mail.read"]).await);
    }
    // Every first attempt fails, so all twenty wait in the outbox.
    with.fake
        .faults()
        .set_persistent(Endpoint::Revoke, Some(Fault::Status(503)));
    for connection in &connections {
        disconnect(&with.server, connection).await;
    }
    for connection in &connections {
        attempted(&with.server, connection, 1).await;
    }
    // The provider answers again, slowly; both replicas work the outbox at once.
    with.fake
        .faults()
        .set_persistent(Endpoint::Revoke, Some(Fault::Delay(Duration::from_millis(100))));
    let before = with.fake.stats().revocations.len();
    with.server.clock.advance(chrono::Duration::minutes(10));
    replica.clock.advance(chrono::Duration::minutes(10));
    let (one, two) = tokio::join!(
        with.server.app().lifecycle.outbox().process_due(),
        replica.app().lifecycle.outbox().process_due()
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(one > 0 && two > 0, "both replicas took part: {one} + {two}");
    let seen = with.fake.stats().revocations;
    let second_round: Vec<_> = seen.iter().skip(before).collect();
    assert_eq!(second_round.len(), 20, "each entry revoked once");
    let mut tokens: Vec<_> = second_round.iter().map(|r| r.token.clone()).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 20);
    for connection in &connections {
        let done = outbox_entry(&with.server, connection).await;
        assert_eq!((done.status.as_str(), done.attempts), ("done", 2), "{done:?}");
    }
    let events = crate::support::inspect::audit(&with.server, "provider.revocation").await;
    assert_eq!(events.iter().filter(|e| e.outcome == "success").count(), 20);
    drop(replica);
    with.stop().await;
}
