//! A lockout that cannot lock out: failed authentications are throttled per
//! address and globally, but a valid credential is always served; every
//! refusal is audited (rate-limited, never with the presented key); and
//! `StartConsent` is limited per tenant.

use crate::support::fixture::WithProvider;
use crate::support::provider::start_request;
use crate::support::{contains, dump_database, keys, Backend, TestServer};
use tokenvault::proto::{AuditEvent, GetAccessTokenRequest, ListAuditEventsRequest};
use tonic::Code;

fn token_request() -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        connection_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

/// A bad key that is easy to search for.
fn bad_key(n: usize) -> String {
    format!("presented-secret-{n}-xyzzy")
}

/// A valid agent key gets past authentication (the connection does not exist).
async fn valid_key_is_served(server: &TestServer) {
    let error = server
        .tokens(keys::AGENT)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
}

async fn auth_failures(server: &TestServer) -> Vec<(AuditEvent, serde_json::Value)> {
    server.app().audit.flush().await;
    let events = server
        .admin(keys::ADMIN)
        .list_audit_events(ListAuditEventsRequest {
            action: "auth.failure".into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .into_iter()
        .map(|e| {
            let detail = serde_json::from_str(&e.detail_json).unwrap();
            (e, detail)
        })
        .collect()
}

#[tokio::test]
async fn many_bad_keys_from_one_address_never_block_a_valid_key() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth.max_failures_per_minute = 3;
        c.auth.failure_audit_per_second = 1000;
    })
    .await;
    let mut codes = Vec::new();
    for n in 0..10 {
        let error = server
            .tokens(&bad_key(n))
            .get_access_token(token_request())
            .await
            .unwrap_err();
        codes.push(error.code());
        if error.code() == Code::ResourceExhausted {
            assert!(error.message().contains("from this address"), "{error:?}");
        }
        // Every caller behind this address (one sidecar) keeps working.
        valid_key_is_served(&server).await;
    }
    assert_eq!(&codes[..3], &[Code::Unauthenticated; 3], "{codes:?}");
    assert_eq!(&codes[3..], &[Code::ResourceExhausted; 7], "{codes:?}");

    // One audit event per refusal, with the peer and the reason, without a tenant.
    let events = auth_failures(&server).await;
    assert_eq!(events.len(), 10, "{events:?}");
    let mut reasons: Vec<&str> = events.iter().map(|(_, d)| d["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(reasons, [["peer_limit"; 7].as_slice(), &["unknown"; 3]].concat());
    for (event, detail) in &events {
        assert_eq!(event.actor, "unauthenticated");
        assert_eq!(event.outcome, "denied");
        assert!(event.tenant_id.is_empty());
        assert_eq!(detail["peer"], "127.0.0.1");
        assert_eq!(detail["credential"], "api_key");
        assert_eq!(detail["rpc"], "/tokenvault.v1.TokenService/GetAccessToken");
        assert!(!event.request_id.is_empty());
        if detail["reason"] == "peer_limit" {
            assert_eq!(detail["cause"], "unknown");
        }
    }
    // The presented keys appear nowhere: not in the events, not in any table.
    let dump = dump_database(server.app().sql.pool()).await;
    for n in 0..10 {
        assert!(!contains(&dump, &bad_key(n)), "key {n} stored");
        assert!(!contains(&dump, "xyzzy"));
    }
    assert!(!format!("{events:?}").contains("xyzzy"));
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_role_is_audited_with_the_callers_name() {
    let server = TestServer::start(Backend::Sqlite).await;
    let error = server
        .admin(keys::AGENT)
        .rotate_keys(tokenvault::proto::RotateKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let events = auth_failures(&server).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (event, detail) = &events[0];
    assert_eq!(event.actor, "agent-acme");
    assert_eq!(detail["reason"], "wrong_role");
    assert_eq!(detail["rpc"], "/tokenvault.v1.AdminService/RotateKeys");
    server.stop().await;
}

#[tokio::test]
async fn the_global_ceiling_refuses_failures_at_once_and_still_serves_valid_keys() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth.max_failures_per_minute = 0;
        c.auth.max_failures_per_second = 3;
        c.auth.failure_audit_per_second = 1000;
    })
    .await;
    // A distributed guesser: many failures at once (from many addresses, in
    // production; the per-address limit is off here, so only the ceiling acts).
    let attempts = (0..30).map(|n| {
        let mut client = server.tokens(&bad_key(n));
        async move { client.get_access_token(token_request()).await.unwrap_err() }
    });
    let errors = futures::future::join_all(attempts).await;
    let refused: Vec<_> = errors.iter().filter(|e| e.code() == Code::ResourceExhausted).collect();
    let unauthenticated = errors.iter().filter(|e| e.code() == Code::Unauthenticated).count();
    assert_eq!(refused.len() + unauthenticated, 30);
    assert!(
        (3..=6).contains(&unauthenticated),
        "about the ceiling's burst answered normally: {unauthenticated}"
    );
    assert!(
        refused.iter().all(|e| e.message().contains("at this server")),
        "{refused:?}"
    );
    // The ceiling is spent, yet a valid key is served.
    valid_key_is_served(&server).await;
    let events = auth_failures(&server).await;
    assert_eq!(
        events.iter().filter(|(_, d)| d["reason"] == "global_limit").count(),
        refused.len()
    );
    server.stop().await;
}

#[tokio::test]
async fn auth_failure_events_are_rate_limited_and_count_what_they_suppressed() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.auth.max_failures_per_minute = 0;
        c.auth.max_failures_per_second = 0;
        c.auth.failure_audit_per_second = 2;
    })
    .await;
    for n in 0..20 {
        let error = server
            .tokens(&bad_key(n))
            .get_access_token(token_request())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    // After a quiet second the allowance is back: this event reports the suppressed ones.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let error = server
        .tokens(&bad_key(99))
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    let events = auth_failures(&server).await;
    let written = events.len() as u64;
    let suppressed: u64 = events.iter().map(|(_, d)| d["suppressed"].as_u64().unwrap()).sum();
    assert!((3..21).contains(&written), "{written} written");
    assert_eq!(written + suppressed, 21, "every refusal is written or counted");
    let metrics = crate::support::inspect::metrics(&server).await;
    assert!(
        metrics.contains(&format!("tokenvault_auth_failure_audit_suppressed_total {suppressed}")),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn start_consent_is_limited_per_tenant() {
    let with = WithProvider::build(Backend::Sqlite)
        .config(|c| c.consent.max_starts_per_minute = 3)
        .start()
        .await;
    let other_tenant = |user: &str| {
        let mut request = start_request(user, &["mail.read"]);
        request.tenant_id = keys::OTHER_TENANT.into();
        request
    };
    // A caller refused for a tenant spends none of its allowance.
    for n in 0..5 {
        let error = with
            .server
            .consent(keys::PLATFORM)
            .start_consent(other_tenant(&format!("intruder-{n}")))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied);
    }
    let mut acme = with.server.consent(keys::PLATFORM);
    for n in 0..3 {
        acme.start_consent(start_request(&format!("user-{n}"), &["mail.read"]))
            .await
            .unwrap();
    }
    let error = acme
        .start_consent(start_request("user-3", &["mail.read"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(error.message().contains("tenant `acme`"), "{error:?}");
    assert!(error.message().contains("consent.max_starts_per_minute"), "{error:?}");
    // The other tenant is unaffected.
    let mut globex = with.server.consent(keys::OTHER_PLATFORM);
    for n in 0..3 {
        globex.start_consent(other_tenant(&format!("user-{n}"))).await.unwrap();
    }
    with.stop().await;
}
