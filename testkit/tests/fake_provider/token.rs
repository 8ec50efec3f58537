//! `POST /token`: the code exchange (PKCE, replay, expiry) and the refresh grant (rotation, reuse detection, narrowing), and malformed requests.

use crate::support::*;

#[tokio::test]
async fn wrong_verifier_is_invalid_grant() {
    let p = start().await;
    let code = get_code(&p, "a").await;
    let wrong = "x".repeat(43);
    let answer = exchange(&p, &code, &wrong).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header(CONTENT_TYPE), "application/json");
    assert_eq!(answer.error(), "invalid_grant");
    assert!(answer.json()["error_description"].is_string());

    // Too short a verifier fails too, even if its hash matched.
    let short = "abc";
    let p = start().await;
    let mut url = Url::parse(&auth_url(&p, "a", &[])).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "code_challenge" {
                challenge(short)
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let code = query(&p.approve(url.as_str()).await.unwrap(), "code").unwrap();
    assert_eq!(exchange(&p, &code, short).await.error(), "invalid_grant");

    // Wrong redirect_uri.
    let code = get_code(&p, "a").await;
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1:9/other"),
        ("code_verifier", VERIFIER),
    ];
    let answer = post(p.token_url(), &pairs, BASIC).await;
    assert_eq!(answer.error(), "invalid_grant");
}

#[tokio::test]
async fn reused_code_is_invalid_grant_and_revokes_its_tokens() {
    let p = start().await;
    let code = get_code(&p, "a").await;
    let first = exchange(&p, &code, VERIFIER).await;
    assert_eq!(first.status, 200);
    let (access_token, refresh_token) = (first.str("access_token"), first.str("refresh_token"));
    assert!(p.introspect(&access_token).is_some());

    let second = exchange(&p, &code, VERIFIER).await;
    assert_eq!(second.status, 400);
    assert_eq!(second.error(), "invalid_grant");
    assert_eq!(p.introspect(&access_token), None);
    assert!(!p.is_refresh_token_active(&refresh_token));
    assert_eq!(p.stats().code_exchanges, 2);
}

#[tokio::test]
async fn expired_code_is_invalid_grant() {
    let p = start().await;
    let code = get_code(&p, "a").await;
    p.expire_authorization_codes();
    assert_eq!(exchange(&p, &code, VERIFIER).await.error(), "invalid_grant");
}

#[tokio::test]
async fn refresh_rotates_refresh_tokens() {
    let p = start().await;
    let (access_token, rt1) = tokens(&p, "a b").await;

    let answer = refresh_with(&p, &rt1, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header(CACHE_CONTROL), "no-store");
    let rt2 = answer.str("refresh_token");
    let at2 = answer.str("access_token");
    assert_ne!(rt1, rt2);
    assert_ne!(access_token, at2);
    assert_eq!(answer.str("scope"), "a b");
    assert!(!p.is_refresh_token_active(&rt1));
    assert!(p.is_refresh_token_active(&rt2));
    // Older access tokens live on until they expire.
    assert!(p.introspect(&access_token).is_some());
    assert_eq!(p.introspect(&at2).unwrap().scopes, scopes(&["a", "b"]));

    let old = refresh_with(&p, &rt1, None).await;
    assert_eq!(old.status, 400);
    assert_eq!(old.error(), "invalid_grant");

    let again = refresh_with(&p, &rt2, None).await;
    assert_eq!(again.status, 200);
    let stats = p.stats();
    assert_eq!(stats.refreshes, 3);
    assert_eq!(stats.successful_refreshes, 2);
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let p = FakeProvider::start(FakeProviderConfig {
        rotate_refresh_tokens: false,
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let (_, rt) = tokens(&p, "a").await;
    for _ in 0..2 {
        let answer = refresh_with(&p, &rt, None).await;
        assert_eq!(answer.status, 200);
        assert!(answer.json().get("refresh_token").is_none());
    }
    assert!(p.is_refresh_token_active(&rt));
}

#[tokio::test]
async fn refresh_token_reuse_detection_revokes_the_grant() {
    let p = FakeProvider::start(FakeProviderConfig {
        revoke_grant_on_refresh_token_reuse: true,
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let (_, rt1) = tokens(&p, "a").await;
    let rt2 = refresh_with(&p, &rt1, None).await.str("refresh_token");
    assert_eq!(refresh_with(&p, &rt1, None).await.error(), "invalid_grant");
    assert!(!p.is_refresh_token_active(&rt2));
}

#[tokio::test]
async fn refresh_with_narrower_scope() {
    let p = start().await;
    let (_, rt) = tokens(&p, "a b c").await;

    let narrowed = refresh_with(&p, &rt, Some("b")).await;
    assert_eq!(narrowed.status, 200);
    assert_eq!(narrowed.str("scope"), "b");
    let info = p.introspect(&narrowed.str("access_token")).unwrap();
    assert_eq!(info.scopes, scopes(&["b"]));

    // The grant keeps its scopes: the new refresh token can get them all.
    let rt = narrowed.str("refresh_token");
    let full = refresh_with(&p, &rt, None).await;
    assert_eq!(full.str("scope"), "a b c");

    let rt = full.str("refresh_token");
    let wider = refresh_with(&p, &rt, Some("a d")).await;
    assert_eq!(wider.status, 400);
    assert_eq!(wider.error(), "invalid_scope");
    // A rejected request does not rotate the token.
    assert!(p.is_refresh_token_active(&rt));
}

#[tokio::test]
async fn malformed_token_requests() {
    let p = start().await;
    let unsupported = post(p.token_url(), &[("grant_type", "password")], BASIC).await;
    assert_eq!(unsupported.status, 400);
    assert_eq!(unsupported.error(), "unsupported_grant_type");

    let missing = post(p.token_url(), &[("grant_type", "authorization_code")], BASIC).await;
    assert_eq!(missing.error(), "invalid_request");
    let missing = post(p.token_url(), &[("grant_type", "refresh_token")], BASIC).await;
    assert_eq!(missing.error(), "invalid_request");
    let missing = post(p.token_url(), &[], BASIC).await;
    assert_eq!(missing.error(), "invalid_request");

    let repeated = post(
        p.token_url(),
        &[("grant_type", "refresh_token"), ("grant_type", "refresh_token")],
        BASIC,
    )
    .await;
    assert_eq!(repeated.error(), "invalid_request");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let json = client
        .post(p.token_url())
        .basic_auth("test-client", Some("test-secret"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"grant_type":"refresh_token"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
}

#[tokio::test]
async fn concurrent_refreshes_are_counted() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let p = p.clone();
        let rt = minted.refresh_token.clone();
        tasks.push(tokio::spawn(async move { refresh_with(&p, &rt, None).await.status }));
    }
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap() == 200 {
            ok += 1;
        }
    }
    // Rotation: exactly one of the racing refreshes wins.
    assert_eq!(ok, 1);
    assert_eq!(p.stats().refreshes, 20);
    assert_eq!(p.stats().successful_refreshes, 1);
}
