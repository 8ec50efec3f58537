//! The test's controls (minted grants, revoking everything), the metadata document and shutdown.

use crate::support::*;

#[tokio::test]
async fn mint_grant_and_revoke_all() {
    let p = start().await;
    let minted = p.mint_grant("bench-user", &["a", "b"]);
    assert_eq!(minted.expires_in, 3600);
    let info = p.introspect(&minted.access_token).unwrap();
    assert_eq!(info.subject, "bench-user");
    assert_eq!(info.scopes, scopes(&["a", "b"]));
    let answer = refresh_with(&p, &minted.refresh_token, None).await;
    assert_eq!(answer.str("scope"), "a b");
    let rt = answer.str("refresh_token");

    p.expire_access_tokens();
    assert_eq!(p.introspect(&minted.access_token), None);

    p.revoke_all_grants();
    assert!(!p.is_refresh_token_active(&rt));
    assert_eq!(refresh_with(&p, &rt, None).await.error(), "invalid_grant");
}

#[tokio::test]
async fn metadata_and_shutdown() {
    let p = start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = p.base_url().join(".well-known/oauth-authorization-server").unwrap();
    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(meta["token_endpoint"], p.token_url().as_str());
    assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));

    let token_url = p.token_url();
    p.shutdown().await;
    assert!(client.post(token_url).send().await.is_err());
}
