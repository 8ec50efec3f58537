//! Workload identity: Kubernetes projected service-account tokens and SPIFFE
//! JWT-SVIDs, verified against a real issuer on 127.0.0.1 (discovery + JWKS).

use crate::support::fixture::WithProvider;
use crate::support::jwt_issuer::{Issuer, AUDIENCE};
use crate::support::provider::connect;
use crate::support::{keys, Backend, TestServer};
use serde_json::json;
use tokenvault::config::{Config, Role, WorkloadConfig, WorkloadIdentityConfig};
use tokenvault::proto::GetAccessTokenRequest;
use tonic::Code;

const WORKER: &str = "system:serviceaccount:agents:worker";
const SVID: &str = "spiffe://example.org/ns/agents/sa/svid-worker";

fn configure(config: &mut Config, issuer: &Issuer, refresh_interval_seconds: u64) {
    config.auth.workload_identity = Some(WorkloadIdentityConfig {
        issuer: url::Url::parse(&issuer.url).unwrap(),
        audience: AUDIENCE.to_owned(),
        ca_file: None,
        issuer_token_file: None,
        leeway_seconds: 5,
        max_token_bytes: 8192,
        refresh_interval_seconds,
        keys_max_age_seconds: 3600,
        timeout_seconds: 5,
    });
    config.auth.workloads = vec![
        WorkloadConfig {
            name: Some("agent-worker".into()),
            subject: WORKER.into(),
            roles: vec![Role::Agent],
            tenants: vec![keys::TENANT.into()],
        },
        WorkloadConfig {
            name: None,
            subject: SVID.into(),
            roles: vec![Role::Agent],
            tenants: vec![keys::TENANT.into()],
        },
    ];
}

async fn get_token(server: &TestServer, token: &str, connection_id: &str) -> Result<String, tonic::Status> {
    server
        .tokens(token)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().access_token)
}

/// Authentication passes (the connection does not exist) or the status it ended with.
async fn authenticate(server: &TestServer, token: &str) -> Result<(), tonic::Status> {
    match get_token(server, token, &uuid::Uuid::new_v4().to_string()).await {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
        Ok(_) => panic!("a token for a connection that does not exist"),
    }
}

fn assert_refused(result: Result<(), tonic::Status>, code: Code, words: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(words),
        "`{}` lacks `{words}`",
        status.message()
    );
}

#[tokio::test]
async fn workload_tokens_are_verified_against_the_issuer() {
    let issuer = Issuer::start().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| configure(c, &issuer, 30)).await;

    // Valid: ES256 and RS256 Kubernetes service-account tokens, and a SPIFFE JWT-SVID.
    authenticate(&server, &issuer.token(WORKER)).await.unwrap();
    authenticate(&server, &issuer.sign("rsa-1", &issuer.claims(WORKER)))
        .await
        .unwrap();
    authenticate(&server, &issuer.token(SVID)).await.unwrap();
    // API keys still work beside them.
    authenticate(&server, keys::AGENT).await.unwrap();

    let now = chrono::Utc::now().timestamp();
    let with = |change: serde_json::Value| {
        let mut claims = issuer.claims(WORKER);
        for (k, v) in change.as_object().unwrap() {
            claims[k] = v.clone();
        }
        issuer.sign("ec-1", &claims)
    };
    let unauthenticated = Code::Unauthenticated;
    assert_refused(
        authenticate(&server, &with(json!({"exp": now - 3600, "nbf": now - 4000}))).await,
        unauthenticated,
        "expired",
    );
    assert_refused(
        authenticate(&server, &with(json!({"nbf": now + 3600, "exp": now + 7200}))).await,
        unauthenticated,
        "not valid yet",
    );
    assert_refused(
        authenticate(&server, &with(json!({"aud": ["someone-else"]}))).await,
        unauthenticated,
        "audience",
    );
    assert_refused(
        authenticate(&server, &with(json!({"iss": "https://issuer.example"}))).await,
        unauthenticated,
        "issuer",
    );
    let fetches = issuer.jwks_fetches();
    let unknown = issuer.unpublished_key();
    for _ in 0..10 {
        assert_refused(
            authenticate(&server, &issuer.sign(&unknown, &issuer.claims(WORKER))).await,
            unauthenticated,
            "key id",
        );
    }
    assert!(
        issuer.jwks_fetches() <= fetches + 1,
        "unknown key ids refresh the keys at most once per interval: {} fetches",
        issuer.jwks_fetches() - fetches
    );
    assert_refused(
        authenticate(&server, &issuer.unsigned(WORKER)).await,
        unauthenticated,
        "`none` is not allowed",
    );
    assert_refused(
        authenticate(&server, &issuer.hmac_with_public_key(WORKER)).await,
        unauthenticated,
        "`HS256` is not allowed",
    );
    // A signature from another key under a published key id.
    let forged = {
        let real = issuer.token(WORKER);
        let other = issuer.sign(&unknown, &issuer.claims(WORKER));
        let (head, _) = real.rsplit_once('.').unwrap();
        let (_, signature) = other.rsplit_once('.').unwrap();
        format!("{head}.{signature}")
    };
    assert_refused(authenticate(&server, &forged).await, unauthenticated, "signature");
    assert_refused(
        authenticate(&server, &with(json!({"padding": "x".repeat(7000)}))).await,
        unauthenticated,
        "larger than 8192 bytes",
    );
    // Verified but not mapped: the subject seen is named.
    assert_refused(
        authenticate(&server, &issuer.token("system:serviceaccount:agents:stranger")).await,
        Code::PermissionDenied,
        "system:serviceaccount:agents:stranger",
    );
    // Mapped, but without the role.
    let error = server
        .admin(&issuer.token(WORKER))
        .rotate_keys(tokenvault::proto::RotateKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains("agent-worker"), "{error:?}");

    // Refusals are audited with their reason, never the token.
    server.app().audit.flush().await;
    let events = server
        .admin(keys::ADMIN)
        .list_audit_events(tokenvault::proto::ListAuditEventsRequest {
            action: "auth.failure".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let text = format!("{events:?}");
    for reason in [
        "expired",
        "wrong_audience",
        "wrong_issuer",
        "unknown_key_id",
        "algorithm_not_allowed",
    ] {
        assert!(text.contains(reason), "{reason} not audited: {text}");
    }
    assert!(text.contains("system:serviceaccount:agents:stranger"));
    assert!(!text.contains("eyJ"), "a token reached the audit trail: {text}");
    server.stop().await;
}

#[tokio::test]
async fn a_key_rotated_at_the_issuer_is_picked_up() {
    let issuer = Issuer::start().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| configure(c, &issuer, 1)).await;
    authenticate(&server, &issuer.token(WORKER)).await.unwrap();
    let fetches = issuer.jwks_fetches();
    let new_kid = issuer.rotate();
    // The next refresh is allowed a second after the last one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    authenticate(&server, &issuer.sign(&new_kid, &issuer.claims(WORKER)))
        .await
        .unwrap();
    assert_eq!(issuer.jwks_fetches(), fetches + 1, "one refresh for the new key id");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_issuer_is_unavailable_and_api_keys_still_work() {
    let issuer = Issuer::start().await;
    let mut unreachable = issuer.clone();
    // Nothing listens on port 9 of loopback.
    unreachable.url = "http://127.0.0.1:9".to_owned();
    let server = TestServer::start_with(Backend::Sqlite, |c| configure(c, &unreachable, 30)).await;
    let mut claims = issuer.claims(WORKER);
    claims["iss"] = json!(unreachable.url);
    assert_refused(
        authenticate(&server, &issuer.sign("ec-1", &claims)).await,
        Code::Unavailable,
        "issuer",
    );
    authenticate(&server, keys::AGENT).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_token_gets_an_access_token_end_to_end() {
    let issuer = Issuer::start().await;
    let config_issuer = issuer.clone();
    let with = WithProvider::build(Backend::Sqlite)
        .config(move |c| configure(c, &config_issuer, 30))
        .start()
        .await;
    let connection = connect(&with, "alice", &["mail.read"]).await;
    let token = get_token(&with.server, &issuer.token(WORKER), &connection)
        .await
        .unwrap();
    assert!(!token.is_empty());
    // Through the SPIFFE identity too, and the issuance is audited under the workload's name.
    get_token(&with.server, &issuer.token(SVID), &connection).await.unwrap();
    with.stop().await;
}
