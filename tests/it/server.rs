//! The real server over a socket: health, reflection, authentication.

use crate::support::{keys, Backend, TestServer};
use tokenvault::proto::GetAccessTokenRequest;
use tonic::Code;

#[tokio::test]
async fn health_and_reflection_answer_without_credentials() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    for service in ["", "tokenvault.v1.TokenService", "tokenvault.v1.AdminService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "tokenvault.v1.ConsentService",
        "tokenvault.v1.TokenService",
        "tokenvault.v1.ConnectionService",
        "tokenvault.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    let body = reqwest::get(server.http_url("/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ok\n");
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    server.stop().await;
}

fn token_request() -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        connection_id: uuid::Uuid::new_v4().to_string(),
        scopes: vec![],
        min_ttl_seconds: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_authentication_failure_has_its_status() {
    let server = TestServer::start(Backend::Postgres).await;
    use tokenvault::proto::token_service_client::TokenServiceClient;

    // No credentials.
    let error = TokenServiceClient::new(server.authed(None))
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(error.message().contains("missing credentials"), "{}", error.message());

    // Not a bearer header.
    let mut request = tonic::Request::new(token_request());
    request
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let error = TokenServiceClient::new(server.channel.clone())
        .get_access_token(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(error.message().contains("malformed"), "{}", error.message());

    // Unknown key.
    let error = server
        .tokens("not-a-key")
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(!error.message().contains("not-a-key"), "the key must not be echoed");

    // Right key, wrong role.
    let error = server
        .tokens(keys::PLATFORM)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains("`agent` role"), "{}", error.message());
    let error = server
        .admin(keys::AGENT)
        .rotate_keys(tokenvault::proto::RotateKeysRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);

    // The request id comes back, and metrics count the failures.
    let response = server
        .tokens("not-a-key")
        .get_access_token(tonic::Request::new(token_request()))
        .await
        .unwrap_err();
    assert!(response.metadata().get("x-request-id").is_some());
    let metrics = crate::support::inspect::metrics(&server).await;
    assert!(
        metrics.contains("tokenvault_auth_failures_total{outcome=\"unknown\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokenvault_auth_failures_total{outcome=\"wrong_role\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn repeated_failures_from_one_peer_are_refused_but_valid_keys_are_served() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.auth.max_failures_per_minute = 3).await;
    for _ in 0..3 {
        let error = server
            .tokens("wrong")
            .get_access_token(token_request())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    // Past the allowance this peer's failures are refused outright...
    let error = server
        .tokens("wrong")
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    // ...but a valid key from the same peer is served (authentication passes:
    // the connection simply does not exist).
    let error = server
        .tokens(keys::AGENT)
        .get_access_token(token_request())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    // Health stays reachable.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok());
    server.stop().await;
}
