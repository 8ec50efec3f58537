//! `DELETE /applications/{client_id}/grant` (GitHub style): HTTP Basic and a
//! JSON body; deleting ends every grant of the client for the token's user;
//! every request is recorded.

use crate::support::*;

async fn delete(p: &FakeProvider, client_id: &str, basic: Option<(&str, &str)>, body: Option<&str>) -> u16 {
    let url = p.grant_deletion_url_template().replace("{client_id}", client_id);
    let mut request = reqwest::Client::new()
        .delete(url)
        .header("accept", "application/vnd.github+json");
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn deleting_the_grant_ends_every_token_of_the_user() {
    let p = start().await;
    let (first_access, first_refresh) = tokens(&p, "a").await;
    // A second consent of the same user: another grant of the same app.
    let (second_access, second_refresh) = tokens(&p, "b").await;
    // Another user's grant stays.
    let other = p.mint_grant("user-2", &["a"]);

    let body = format!(r#"{{"access_token":"{first_access}"}}"#);
    assert_eq!(delete(&p, "test-client", BASIC, Some(&body)).await, 204);
    for token in [&first_access, &second_access] {
        assert_eq!(p.introspect(token), None);
    }
    for token in [&first_refresh, &second_refresh] {
        assert!(!p.is_refresh_token_active(token));
    }
    assert_eq!(refresh_with(&p, &second_refresh, None).await.error(), "invalid_grant");
    assert!(p.introspect(&other.access_token).is_some());
    assert!(p.is_refresh_token_active(&other.refresh_token));

    // The token is dead now: 404, nothing more deleted.
    assert_eq!(delete(&p, "test-client", BASIC, Some(&body)).await, 404);

    let stats = p.stats();
    assert_eq!(stats.grant_endpoint_requests, 2);
    assert_eq!(
        stats.grant_deletions[0],
        GrantDeletionRecord {
            client_id: "test-client".to_owned(),
            access_token: Some(first_access.clone()),
            client_authenticated: true,
            json_body: true,
            accept: Some("application/vnd.github+json".to_owned()),
            was_active: true,
            grants_deleted: 2,
        }
    );
    assert!(!stats.grant_deletions[1].was_active);
    assert_eq!(stats.grant_deletions[1].grants_deleted, 0);
}

#[tokio::test]
async fn unauthenticated_or_malformed_deletions_change_nothing() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;
    let body = format!(r#"{{"access_token":"{access_token}"}}"#);
    // Wrong secret, wrong client in the path, no credentials: 404, as GitHub answers unauthenticated requests.
    assert_eq!(
        delete(&p, "test-client", Some(("test-client", "wrong")), Some(&body)).await,
        404
    );
    assert_eq!(delete(&p, "other-client", BASIC, Some(&body)).await, 404);
    assert_eq!(delete(&p, "test-client", None, Some(&body)).await, 404);
    // No access_token: 422.
    assert_eq!(delete(&p, "test-client", BASIC, Some("{}")).await, 422);
    assert_eq!(delete(&p, "test-client", BASIC, None).await, 422);

    assert!(p.introspect(&access_token).is_some());
    assert!(p.is_refresh_token_active(&refresh_token));
    let records = p.stats().grant_deletions;
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.grants_deleted == 0));
    assert!(records[..3].iter().all(|r| !r.client_authenticated && r.was_active));
    assert_eq!(records[3].access_token, None);
    assert!(!records[4].json_body);

    // Faults apply as on the other endpoints.
    p.faults().push(Endpoint::GrantDeletion, Fault::Status(503));
    assert_eq!(delete(&p, "test-client", BASIC, Some(&body)).await, 503);
    assert_eq!(p.stats().grant_endpoint_requests, 6);
    assert_eq!(p.stats().grant_deletions.len(), 5);
}
