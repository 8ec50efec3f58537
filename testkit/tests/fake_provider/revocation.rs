//! The RFC 7009 endpoints: at `POST /revoke` a refresh token ends its grant,
//! an access token only itself; at `POST /revoke-grant` either ends the
//! token's grant. Every request is recorded.

use crate::support::*;

#[tokio::test]
async fn revocation_ends_the_grant() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;

    let answer = post(
        p.revocation_url(),
        &[("token", refresh_token.as_str()), ("token_type_hint", "refresh_token")],
        BASIC,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(p.introspect(&access_token), None);
    assert!(!p.is_refresh_token_active(&refresh_token));
    assert_eq!(refresh_with(&p, &refresh_token, None).await.error(), "invalid_grant");

    // Unknown (or already revoked) tokens get 200 as well.
    let unknown = post(p.revocation_url(), &[("token", "fake_rt_unknown")], BASIC).await;
    assert_eq!(unknown.status, 200);

    let stats = p.stats();
    assert_eq!(
        stats.revocations,
        vec![
            RevocationRecord {
                path: "/revoke",
                token: refresh_token.clone(),
                token_type_hint: Some("refresh_token".to_owned()),
                client_authenticated: true,
                was_active: true,
                ended_grant: true,
            },
            RevocationRecord {
                path: "/revoke",
                token: "fake_rt_unknown".to_owned(),
                token_type_hint: None,
                client_authenticated: true,
                was_active: false,
                ended_grant: false,
            },
        ]
    );
}

#[tokio::test]
async fn revoking_an_access_token_keeps_the_grant() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;
    let answer = post(
        p.revocation_url(),
        &[("token", access_token.as_str())],
        Some(("test-client", "wrong")),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(p.introspect(&access_token).is_some());

    let answer = post(p.revocation_url(), &[("token", access_token.as_str())], BASIC).await;
    assert_eq!(answer.status, 200);
    assert_eq!(p.introspect(&access_token), None);
    assert!(p.is_refresh_token_active(&refresh_token));
    let records = p.stats().revocations;
    assert_eq!(records.len(), 2);
    assert!(!records[0].client_authenticated);
    assert!(records[0].was_active);
    assert!(records[1].client_authenticated);
    assert!(!records[1].ended_grant);
}

#[tokio::test]
async fn revoking_an_access_token_at_revoke_grant_ends_its_grant() {
    let p = start().await;
    let (access_token, refresh_token) = tokens(&p, "a").await;
    // A second access token of the same grant, and another grant of the same user.
    let refreshed = refresh_with(&p, &refresh_token, None).await;
    let (second_access, rotated) = (refreshed.str("access_token"), refreshed.str("refresh_token"));
    let (other_access, other_refresh) = tokens(&p, "b").await;
    assert_eq!(p.grant_revocation_url().path(), "/revoke-grant");

    // Without client authentication nothing is revoked.
    let answer = post(p.grant_revocation_url(), &[("token", access_token.as_str())], None).await;
    assert_eq!(answer.status, 401);
    assert!(p.is_refresh_token_active(&rotated));

    let answer = post(
        p.grant_revocation_url(),
        &[("token", second_access.as_str()), ("token_type_hint", "access_token")],
        BASIC,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(p.introspect(&second_access), None);
    assert_eq!(p.introspect(&access_token), None);
    assert!(!p.is_refresh_token_active(&rotated));
    assert_eq!(refresh_with(&p, &rotated, None).await.error(), "invalid_grant");
    // Only that grant: the user's other one stays.
    assert!(p.introspect(&other_access).is_some());
    assert!(p.is_refresh_token_active(&other_refresh));

    // A dead token changes nothing and is answered 200 (RFC 7009 §2.2).
    let again = post(p.grant_revocation_url(), &[("token", second_access.as_str())], BASIC).await;
    assert_eq!(again.status, 200);
    assert!(p.introspect(&other_access).is_some());

    let stats = p.stats();
    assert_eq!(stats.revoke_endpoint_requests, 3);
    assert_eq!(
        stats.revocations[1],
        RevocationRecord {
            path: "/revoke-grant",
            token: second_access.clone(),
            token_type_hint: Some("access_token".to_owned()),
            client_authenticated: true,
            was_active: true,
            ended_grant: true,
        }
    );
    assert!(!stats.revocations[0].client_authenticated && !stats.revocations[0].ended_grant);
    assert!(!stats.revocations[2].was_active && !stats.revocations[2].ended_grant);
}
