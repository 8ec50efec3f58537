//! Abuse: oversized and malformed requests get a clear status and change nothing.

use crate::support::fixture::WithProvider;
use crate::support::provider::{browser, connect};
use crate::support::{dump_database, keys, Backend};
use tokenvault::proto::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_change_nothing() {
    let with = WithProvider::start(Backend::Postgres).await;
    let connection = connect(&with, "mallory", &["mail.read"]).await;
    with.server.app().audit.flush().await;
    let before = dump_database(with.server.app().sql.pool()).await;

    // A request larger than server.max_request_bytes.
    let huge = GetAccessTokenRequest {
        connection_id: connection.clone(),
        scopes: vec!["x".repeat(1024); 200],
        min_ttl_seconds: 0,
        ..Default::default()
    };
    let error = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(huge)
        .await
        .unwrap_err();
    assert!(
        matches!(error.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{error:?}"
    );

    // Long and strange ids.
    for id in [
        "x".repeat(10_000),
        "'; DROP TABLE connections; --".to_owned(),
        "\u{0}".to_owned(),
        String::new(),
    ] {
        let error = with
            .server
            .tokens(keys::AGENT)
            .get_access_token(GetAccessTokenRequest {
                connection_id: id,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
    }
    let mut consent = with.server.consent(keys::PLATFORM);
    for request in [
        StartConsentRequest {
            tenant_id: "t".repeat(500),
            user_id: "u".into(),
            provider: "fake".into(),
            capabilities: vec!["mail.read".into()],
            ..Default::default()
        },
        StartConsentRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "u\u{7}".into(),
            provider: "fake".into(),
            capabilities: vec!["mail.read".into()],
            ..Default::default()
        },
        StartConsentRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "u".into(),
            provider: "fake".into(),
            capabilities: vec!["a".into(); 51],
            ..Default::default()
        },
        StartConsentRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "u".into(),
            provider: "fake".into(),
            capabilities: vec!["Mail Read".into()],
            ..Default::default()
        },
    ] {
        assert_eq!(
            consent.start_consent(request).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let mut admin = with.server.admin(keys::ADMIN);
    let error = admin
        .revoke_connection(RevokeConnectionRequest {
            connection_id: connection.clone(),
            reason: "r".repeat(10_000),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = admin
        .list_audit_events(ListAuditEventsRequest {
            since: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    // Callback abuse: a huge query, repeated and garbled parameters.
    let base = with.server.http_url("/oauth/callback/fake");
    let long = format!("{base}?state={}&code=x", "a".repeat(10_000));
    assert!(browser().get(&long).send().await.unwrap().status().is_client_error());
    let garbled = format!("{base}?state=%ZZ&state=%00&code=%FF");
    assert_eq!(browser().get(&garbled).send().await.unwrap().status(), 400);

    with.server.app().audit.flush().await;
    assert_eq!(
        dump_database(with.server.app().sql.pool()).await,
        before,
        "nothing changed"
    );
    // And the server still serves.
    assert!(with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection,
            ..Default::default()
        })
        .await
        .is_ok());
    with.stop().await;
}

#[tokio::test]
async fn unknown_and_wrong_keys_are_indistinguishable() {
    // Keys are known only by their SHA-256: there is no "known id, wrong secret"
    // path, so a guess and a near miss take the same code path and get the same answer.
    let with = WithProvider::start(Backend::Sqlite).await;
    let near_miss = format!("{}x", keys::AGENT);
    let mut answers = Vec::new();
    for key in ["completely-unknown", near_miss.as_str()] {
        let error = with
            .server
            .tokens(key)
            .get_access_token(GetAccessTokenRequest {
                connection_id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        answers.push((error.code(), error.message().to_owned()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, Code::Unauthenticated);
    with.stop().await;
}
