//! `POST /revoke` (RFC 7009): a refresh token ends its grant, an access token only itself; every request is recorded.

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
                token: refresh_token.clone(),
                token_type_hint: Some("refresh_token".to_owned()),
                client_authenticated: true,
                was_active: true,
            },
            RevocationRecord {
                token: "fake_rt_unknown".to_owned(),
                token_type_hint: None,
                client_authenticated: true,
                was_active: false,
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
}
