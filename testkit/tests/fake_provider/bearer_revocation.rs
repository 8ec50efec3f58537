//! `POST /bearer-revoke` (Dropbox style): the access token as bearer, no
//! body, no client authentication; revoking ends the token's grant, not the
//! user's other grants; every request is recorded.

use crate::support::*;

async fn revoke(p: &FakeProvider, bearer: Option<&str>, body: Option<&str>) -> Answer {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.post(p.bearer_revocation_url());
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header(CONTENT_TYPE, "application/json").body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

#[tokio::test]
async fn the_bearer_token_ends_its_grant() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;
    let refreshed = refresh_with(&p, &refresh_token, None).await;
    let (second_access, rotated) = (refreshed.str("access_token"), refreshed.str("refresh_token"));
    let (other_access, other_refresh) = tokens(&p, "b").await;
    assert_eq!(p.bearer_revocation_url().path(), "/bearer-revoke");

    let answer = revoke(&p, Some(&second_access), None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), serde_json::Value::Null);
    // The refresh token and every access token of it stop working.
    assert_eq!(p.introspect(&second_access), None);
    assert_eq!(p.introspect(&access_token), None);
    assert!(!p.is_refresh_token_active(&rotated));
    assert_eq!(refresh_with(&p, &rotated, None).await.error(), "invalid_grant");
    // The user's other grant stays.
    assert!(p.introspect(&other_access).is_some());
    assert!(p.is_refresh_token_active(&other_refresh));

    let stats = p.stats();
    assert_eq!(stats.bearer_revoke_endpoint_requests, 1);
    assert_eq!(
        stats.bearer_revocations,
        vec![BearerRevocationRecord {
            bearer_token: Some(second_access.clone()),
            client_credentials_sent: false,
            body_empty: true,
            was_active: true,
            ended_grant: true,
        }]
    );
    assert!(stats.revocations.is_empty());
}

#[tokio::test]
async fn only_a_live_access_token_without_arguments_revokes() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;

    // No bearer, a refresh token as bearer, client credentials in the body:
    // nothing is revoked.
    assert_eq!(revoke(&p, None, None).await.status, 401);
    let as_refresh = revoke(&p, Some(&refresh_token), None).await;
    assert_eq!(as_refresh.status, 401);
    assert_eq!(as_refresh.json()["error"][".tag"], "invalid_access_token");
    let with_body = revoke(
        &p,
        Some(&access_token),
        Some(r#"{"client_id":"test-client","client_secret":"test-secret"}"#),
    )
    .await;
    assert_eq!(with_body.status, 400);
    assert!(p.introspect(&access_token).is_some());
    assert!(p.is_refresh_token_active(&refresh_token));

    // A JSON `null` is an argument-less call too.
    assert_eq!(revoke(&p, Some(&access_token), Some("null")).await.status, 200);
    assert_eq!(p.introspect(&access_token), None);
    // Once revoked, the token no longer authenticates the call.
    assert_eq!(revoke(&p, Some(&access_token), None).await.status, 401);

    let records = p.stats().bearer_revocations;
    assert_eq!(records.len(), 5);
    assert_eq!(records[0].bearer_token, None);
    assert!(!records[1].was_active && !records[1].ended_grant);
    assert!(!records[2].body_empty && records[2].was_active && !records[2].ended_grant);
    assert!(records[3].body_empty && records[3].ended_grant);
    assert!(!records[4].was_active && !records[4].ended_grant);
    let credentials: Vec<bool> = records.iter().map(|r| r.client_credentials_sent).collect();
    assert_eq!(credentials, [false, false, true, false, false]);
}
