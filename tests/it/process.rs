//! The real binary as a separate process: killed with SIGKILL mid-refresh and
//! started again, and its logs searched for secrets.

use crate::support::fixture::WithProvider;
use crate::support::process::ServerProcess;
use crate::support::provider::{connect, query, start_fake, CatalogOptions, UserBrowser};
use crate::support::webhooks::Receiver;
use crate::support::{keys, random_kek, Backend, TestDb};
use std::time::Duration;
use tokenvault::proto::token_service_client::TokenServiceClient;
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::{Endpoint, FakeProvider, FakeProviderConfig, Fault};
use tonic::transport::Channel;

/// A database seeded with connections through an in-process server, then handed to the binary.
async fn seeded(fake: &FakeProvider, users: &[&str]) -> (TestDb, String, Vec<String>) {
    seeded_on(Backend::Postgres, fake, users).await
}

/// As [`seeded`], on `backend`.
async fn seeded_on(backend: Backend, fake: &FakeProvider, users: &[&str]) -> (TestDb, String, Vec<String>) {
    let kek = random_kek("proc");
    let inline = kek.clone();
    let with = WithProvider::build(backend)
        .shared_fake(fake)
        .config(move |c| c.keys.inline = Some(inline.into()))
        .start()
        .await;
    let mut ids = Vec::new();
    for user in users {
        ids.push(connect(&with, user, &["mail.read"]).await);
    }
    (with.into_db().await, kek, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_refresh_then_restarted_every_connection_still_yields_a_token() {
    // Tokens live one second, so every request below refreshes.
    let fake = start_fake(
        FakeProviderConfig {
            access_token_ttl: Duration::from_secs(1),
            ..Default::default()
        },
        &CatalogOptions::default(),
    )
    .await;
    let users = ["u1", "u2", "u3", "u4", "u5", "u6"];
    let (db, kek, ids) = seeded(&fake, &users).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut server = ServerProcess::spawn(&db, &kek, &fake, "warn").await;
    // The provider is slow: the refreshes are in flight when the process dies.
    fake.faults()
        .set_persistent(Endpoint::Token, Some(Fault::Delay(Duration::from_millis(1500))));
    let client = server.tokens().await;
    let mut calls = Vec::new();
    for id in &ids {
        let mut client = client.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            client
                .get_access_token(GetAccessTokenRequest {
                    connection_id: id,
                    ..Default::default()
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill9();
    for call in calls {
        assert!(call.await.unwrap().is_err(), "no answer from a killed server");
    }
    fake.faults().clear();
    // Let any refresh the provider was still processing finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let server = ServerProcess::spawn(&db, &kek, &fake, "warn").await;
    let mut client = server.tokens().await;
    for id in &ids {
        let issued = client
            .get_access_token(GetAccessTokenRequest {
                connection_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("connection {id} lost its token: {e:?}"))
            .into_inner();
        assert!(fake.introspect(&issued.access_token).is_some());
    }
    server.stop();
}

/// The window no broker can close: the provider has rotated the refresh token
/// and its answer is still in flight when the process dies. The next refresh
/// knows (the journal) that an attempt was interrupted, presents the stored
/// token, and, when this strictly rotating provider refuses it, marks the
/// connection `NEEDS_REAUTH` with "refresh interrupted", audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_provider_rotated_the_loss_is_reported() {
    let fake = start_fake(
        FakeProviderConfig {
            access_token_ttl: Duration::from_secs(1),
            ..Default::default()
        },
        &CatalogOptions::default(),
    )
    .await;
    let (db, kek, ids) = seeded(&fake, &["u1"]).await;
    let id = ids[0].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut server = ServerProcess::spawn(&db, &kek, &fake, "warn").await;
    fake.faults()
        .push(Endpoint::Token, Fault::DelayAnswer(Duration::from_secs(5)));
    let before = fake.stats().successful_refreshes;
    let mut client = server.tokens().await;
    let call = tokio::spawn(async move {
        client
            .get_access_token(GetAccessTokenRequest {
                connection_id: id,
                ..Default::default()
            })
            .await
    });
    // The provider has committed the rotation; its answer waits.
    for _ in 0..200 {
        if fake.stats().successful_refreshes > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(fake.stats().successful_refreshes, before + 1);
    server.kill9();
    assert!(call.await.unwrap().is_err(), "no answer from a killed server");

    let server = ServerProcess::spawn(&db, &kek, &fake, "warn").await;
    let mut client = server.tokens().await;
    let error = client
        .get_access_token(GetAccessTokenRequest {
            connection_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .expect_err("the rotated refresh token died with the process");
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("refresh interrupted"), "{}", error.message());
    assert_eq!(
        fake.stats().retired_refresh_tokens_presented,
        1,
        "the stored token was presented once, not retried blindly"
    );
    server.stop();

    // What the database says: the status and its reason, and the audit trail.
    let store = tokenvault::store::SqlStore::connect(&db.url, &tokenvault::store::StoreOptions::default())
        .await
        .unwrap();
    use tokenvault::store::{AuditStore, ConnectionStore};
    let connection = store
        .connection(&tokenvault::store::TenantScope::All, ids[0].parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.status(), tokenvault::store::ConnectionStatus::NeedsReauth);
    assert!(connection
        .status_reason
        .as_deref()
        .is_some_and(|r| r.contains("refresh interrupted")));
    assert!(connection.refresh_token.is_some(), "nothing is deleted");
    let mut actions = Vec::new();
    for _ in 0..50 {
        actions = store
            .list_audit(&tokenvault::store::AuditFilter {
                connection_id: Some(ids[0].parse().unwrap()),
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect::<Vec<_>>();
        if actions.iter().any(|(a, _)| a == "connection.needs_reauth") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        actions.contains(&("connection.refresh_interrupted".to_owned(), "failure".to_owned())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("connection.needs_reauth".to_owned(), "failure".to_owned())),
        "{actions:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let fake = start_fake(FakeProviderConfig::default(), &CatalogOptions::default()).await;
    let db = TestDb::new(Backend::Postgres).await;
    let kek = random_kek("logs");
    let webhooks = "[events.webhooks]\nallowed_networks = [\"127.0.0.0/8\"]\nallow_http_loopback = true\n";
    let server = ServerProcess::spawn_with(&db, &kek, &fake, "trace", webhooks).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authed = |key: &str| {
        tonic::service::interceptor::InterceptedService::new(
            channel.clone(),
            crate::support::Bearer::with(format!("Bearer {key}").parse().unwrap()),
        )
    };
    // A webhook endpoint receives every event (verified by standardwebhooks).
    let receiver = Receiver::start();
    let endpoint = tokenvault::proto::admin_service_client::AdminServiceClient::new(authed(keys::ADMIN))
        .create_webhook_endpoint(CreateWebhookEndpointRequest {
            tenant_id: keys::TENANT.into(),
            url: receiver.url(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    receiver.set_secrets(&[&endpoint.secret]).await;
    let mut consent = tokenvault::proto::consent_service_client::ConsentServiceClient::new(authed(keys::PLATFORM));
    let started = consent
        .start_consent(StartConsentRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "logan".into(),
            provider: "fake".into(),
            capabilities: vec!["mail.read".into()],
            scopes: vec![],
            return_url: "https://app.example.com/done".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let user_browser = UserBrowser::new();
    let callback = user_browser.approve(&fake, &started.authorization_url).await;
    assert!(callback
        .as_str()
        .starts_with(&format!("http://{}/oauth/callback/fake?", server.http)));
    let params = query(&callback);
    let binding_cookie = {
        let values = user_browser.cookie_values();
        assert_eq!(values.len(), 1, "one binding cookie");
        values[0].clone()
    };
    let back = user_browser.follow_callback(&callback).await;
    let confirmed = consent
        .confirm_consent(ConfirmConsentRequest {
            consent_id: back["consent_id"].clone(),
            completion_code: back["completion_code"].clone(),
            user_id: "logan".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let connection_id = confirmed.connection_id;
    let mut tokens = TokenServiceClient::new(authed(keys::AGENT));
    let first = tokens
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let narrow = tokens
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.clone(),
            scopes: vec!["mail.read".into()],
            min_ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Failed authentication with a key-like value, and a revocation.
    let _ = TokenServiceClient::new(authed("tvk_this-key-must-not-be-logged"))
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.clone(),
            ..Default::default()
        })
        .await;
    tokenvault::proto::connection_service_client::ConnectionServiceClient::new(authed(keys::PLATFORM))
        .disconnect(DisconnectRequest { connection_id })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the outbox revokes at the provider
    assert!(!fake.stats().revocations.is_empty());
    let deliveries = receiver.received().await;
    assert!(
        deliveries.len() >= 4,
        "consent and revocation events were delivered: {deliveries:?}"
    );
    assert!(deliveries.iter().all(|d| d["verified"] == true));
    let delivered = serde_json::to_string(&deliveries).unwrap();
    let logs = server.stop();
    assert!(logs.contains("tokenvault is listening"), "the log was captured");
    // The webhook secret is in neither the log nor the database (only sealed), nor any delivery.
    let whsec = endpoint.secret.as_str();
    let whsec_bytes = whsec.trim_start_matches("whsec_");
    let store = crate::support::suite::migrated(&db).await;
    let dump = crate::support::dump_database(store.pool()).await;
    for secret in [whsec, whsec_bytes] {
        assert!(!logs.contains(secret), "the webhook secret reached the log");
        assert!(
            !crate::support::contains(&dump, secret),
            "the webhook secret is stored in clear"
        );
        assert!(!delivered.contains(secret), "the webhook secret was delivered");
    }
    // At debug, tokenvault says what it did, step by step, with ids and outcomes.
    for step in [
        "consent: started",
        "consent: start link opened",
        "consent: callback completed",
        "consent: confirmed",
        "token: issued",
        "outbox: attempt recorded",
    ] {
        assert!(logs.contains(step), "no `{step}` line at debug");
    }
    let revoked = fake.stats().revocations[0].token.clone();
    for secret in [
        first.access_token.as_str(),
        narrow.access_token.as_str(),
        revoked.as_str(),
        params["code"].as_str(),
        params["state"].as_str(),
        back["completion_code"].as_str(),
        binding_cookie.as_str(),
        started.authorization_url.rsplit('/').next().unwrap(),
        "fake_at_",
        "fake_rt_",
        "fake_code_",
        "tvk_this-key-must-not-be-logged",
        keys::AGENT,
        keys::PLATFORM,
        kek.split(':').nth(1).unwrap(),
        fake.config().client_secret.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the log: {secret}");
        assert!(!delivered.contains(secret), "a secret reached a webhook: {secret}");
        assert!(
            !crate::support::contains(&dump, secret),
            "a secret is in the database in clear: {secret}"
        );
    }
}

/// The sum of the counts of the `token.issued` events of `connection_id` in the database.
async fn issued_in_database(store: &tokenvault::store::SqlStore, connection_id: &str) -> u64 {
    use tokenvault::store::AuditStore;
    store
        .list_audit(&tokenvault::store::AuditFilter {
            connection_id: Some(connection_id.parse().unwrap()),
            action: Some("token.issued".to_owned()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| e.detail["count"].as_u64().expect("a count"))
        .sum()
}

/// SIGTERM (what an orchestrator sends): the `token.issued` tallies still in
/// memory are written to `audit_events` before the process exits. The
/// periodic flush is an hour away, so only the shutdown can have written them.
async fn sigterm_writes_the_issued_tallies(backend: Backend) {
    let fake = start_fake(FakeProviderConfig::default(), &CatalogOptions::default()).await;
    let (db, kek, ids) = seeded_on(backend, &fake, &["u1"]).await;
    let mut server =
        ServerProcess::spawn_with(&db, &kek, &fake, "warn", "[broker]\nusage_flush_seconds = 3600\n").await;
    const CALLS: u64 = 7;
    let mut client = server.tokens().await;
    for _ in 0..CALLS {
        client
            .get_access_token(GetAccessTokenRequest {
                connection_id: ids[0].clone(),
                ..Default::default()
            })
            .await
            .expect("GetAccessToken");
    }
    let store = tokenvault::store::SqlStore::connect(&db.url, &tokenvault::store::StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        issued_in_database(&store, &ids[0]).await,
        0,
        "the tallies are still in memory"
    );

    let status = server
        .process
        .terminate(Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(status.success(), "graceful exit: {status}");
    assert_eq!(issued_in_database(&store, &ids[0]).await, CALLS);
    store.close().await;
}
crate::on_both!(sigterm_flushes_issued_tallies, sigterm_writes_the_issued_tallies);
