//! Fault injection: one-shot and persistent faults on each endpoint, and what each fault answers.

use crate::support::*;

#[tokio::test]
async fn fault_status_is_one_shot() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    p.faults().push(Endpoint::Token, Fault::Status(503));
    assert_eq!(p.faults().pending(Endpoint::Token), 1);
    let answer = refresh_with(&p, &minted.refresh_token, None).await;
    assert_eq!(answer.status, 503);
    assert!(serde_json::from_slice::<serde_json::Value>(&answer.body).is_err());
    assert!(answer.header(CONTENT_TYPE).starts_with("text/plain"));
    assert_eq!(p.faults().pending(Endpoint::Token), 0);
    // Nothing was processed: the refresh token is still the live one.
    assert!(p.is_refresh_token_active(&minted.refresh_token));

    let answer = refresh_with(&p, &minted.refresh_token, None).await;
    assert_eq!(answer.status, 200);
    let stats = p.stats();
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.successful_refreshes, 1);
    assert_eq!(stats.token_endpoint_requests, 2);
}

#[tokio::test]
async fn faults_are_fifo_and_persistent_until_cleared() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    p.faults().push(Endpoint::Token, Fault::Status(500));
    p.faults().push(Endpoint::Token, Fault::Status(502));
    assert_eq!(refresh_with(&p, "x", None).await.status, 500);
    assert_eq!(refresh_with(&p, "x", None).await.status, 502);
    assert_eq!(refresh_with(&p, "x", None).await.status, 400);

    p.faults().set_persistent(Endpoint::Token, Some(Fault::Status(429)));
    for _ in 0..3 {
        assert_eq!(refresh_with(&p, &minted.refresh_token, None).await.status, 429);
    }
    p.faults().set_persistent(Endpoint::Token, None);
    p.faults().set_persistent(Endpoint::Token, Some(Fault::InvalidGrant));
    p.faults().clear();
    assert_eq!(refresh_with(&p, &minted.refresh_token, None).await.status, 200);
}

#[tokio::test]
async fn fault_delay_then_normal_answer() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    p.faults()
        .push(Endpoint::Token, Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let answer = refresh_with(&p, &minted.refresh_token, None).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.status, 200);
    assert!(answer.str("access_token").starts_with(ACCESS_TOKEN_PREFIX));
}

#[tokio::test]
async fn fault_invalid_grant_garbage_and_huge_body() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    let rt = minted.refresh_token.as_str();

    p.faults().push(Endpoint::Token, Fault::InvalidGrant);
    let answer = refresh_with(&p, rt, None).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json(), serde_json::json!({ "error": "invalid_grant" }));

    p.faults().push(Endpoint::Token, Fault::GarbageJson);
    let answer = refresh_with(&p, rt, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"{not json");

    let size = 3 * 64 * 1024 + 17;
    p.faults().push(Endpoint::Token, Fault::HugeBody(size));
    let answer = refresh_with(&p, rt, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), size);
    assert_eq!(answer.header(CONTENT_LENGTH), size.to_string());

    // None of those touched the grant.
    assert!(p.is_refresh_token_active(rt));
    assert_eq!(p.stats().successful_refreshes, 0);
}

#[tokio::test]
async fn fault_reduce_scopes() {
    let p = start().await;
    p.faults().push(Endpoint::Token, Fault::ReduceScopes(scopes(&["a"])));
    let code = get_code(&p, "a b").await;
    let answer = exchange(&p, &code, VERIFIER).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.str("scope"), "a");
    assert_eq!(
        p.introspect(&answer.str("access_token")).unwrap().scopes,
        scopes(&["a"])
    );
    // The grant itself was reduced.
    let rt = answer.str("refresh_token");
    assert_eq!(refresh_with(&p, &rt, Some("b")).await.error(), "invalid_scope");

    // On refresh too.
    let minted = p.mint_grant("u", &["x", "y"]);
    p.faults().push(Endpoint::Token, Fault::ReduceScopes(scopes(&["y"])));
    let answer = refresh_with(&p, &minted.refresh_token, None).await;
    assert_eq!(answer.str("scope"), "y");
    let rt = answer.str("refresh_token");
    assert_eq!(refresh_with(&p, &rt, None).await.str("scope"), "y");

    // And on authorize.
    p.faults()
        .push(Endpoint::Authorize, Fault::ReduceScopes(scopes(&["b"])));
    let code = get_code(&p, "a b").await;
    assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "b");
}

#[tokio::test]
async fn faults_on_revoke_and_authorize() {
    let p = start().await;
    let minted = p.mint_grant("u", &["a"]);
    let pairs = [("token", minted.refresh_token.as_str())];

    p.faults().push(Endpoint::Revoke, Fault::Status(503));
    let answer = post(p.revocation_url(), &pairs, BASIC).await;
    assert_eq!(answer.status, 503);
    assert!(p.is_refresh_token_active(&minted.refresh_token));
    assert!(p.stats().revocations.is_empty());

    p.faults()
        .push(Endpoint::Revoke, Fault::Delay(Duration::from_millis(100)));
    let answer = post(p.revocation_url(), &pairs, BASIC).await;
    assert_eq!(answer.status, 200);
    assert!(!p.is_refresh_token_active(&minted.refresh_token));
    let stats = p.stats();
    assert_eq!(stats.revocations.len(), 1);
    assert_eq!(stats.revoke_endpoint_requests, 2);

    p.faults().push(Endpoint::Authorize, Fault::Status(500));
    match p.approve(&auth_url(&p, "a", &[])).await {
        Err(FakeError::NoRedirect { status: 500, .. }) => {}
        other => panic!("expected a 500, got {other:?}"),
    }
    assert!(p.approve(&auth_url(&p, "a", &[])).await.is_ok());
}
