//! Client authentication (RFC 6749 §2.3.1): Basic, the request body, each alone, and their failures.

use crate::support::*;

#[tokio::test]
async fn client_secret_post_and_subject() {
    let p = start().await;
    p.set_subject("alice");
    let code = get_code(&p, "a").await;
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", "test-client"),
        ("client_secret", "test-secret"),
    ];
    let answer = post(p.token_url(), &pairs, None).await;
    assert_eq!(answer.status, 200);
    let info = p.introspect(&answer.str("access_token")).unwrap();
    assert_eq!(info.subject, "alice");
}

#[tokio::test]
async fn bad_client_authentication_is_401() {
    let p = start().await;
    let (_, rt) = tokens(&p, "a").await;
    let pairs = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];

    let wrong = post(p.token_url(), &pairs, Some(("test-client", "nope"))).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error(), "invalid_client");
    assert!(wrong.header(WWW_AUTHENTICATE).starts_with("Basic"));

    let none = post(p.token_url(), &pairs, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error(), "invalid_client");

    let unknown = post(p.token_url(), &pairs, Some(("other", "test-secret"))).await;
    assert_eq!(unknown.status, 401);

    let mut both = pairs.to_vec();
    both.push(("client_secret", "test-secret"));
    let both = post(p.token_url(), &both, BASIC).await;
    assert_eq!(both.status, 400);
    assert_eq!(both.error(), "invalid_request");

    // The token survived all that.
    assert!(p.is_refresh_token_active(&rt));

    // A provider that only takes client_secret_post refuses Basic.
    let post_only = FakeProvider::start(FakeProviderConfig {
        client_auth: ClientAuthMethod::Post,
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let minted = post_only.mint_grant("u", &["a"]);
    let pairs = [
        ("grant_type", "refresh_token"),
        ("refresh_token", minted.refresh_token.as_str()),
    ];
    let answer = post(post_only.token_url(), &pairs, BASIC).await;
    assert_eq!(answer.status, 401);
    let mut with_body = pairs.to_vec();
    with_body.extend([("client_id", "test-client"), ("client_secret", "test-secret")]);
    assert_eq!(post(post_only.token_url(), &with_body, None).await.status, 200);

    // And one that only takes Basic refuses the body.
    let basic_only = FakeProvider::start(FakeProviderConfig {
        client_auth: ClientAuthMethod::Basic,
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let minted = basic_only.mint_grant("u", &["a"]);
    let mut with_body = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", minted.refresh_token.as_str()),
    ];
    with_body.extend([("client_id", "test-client"), ("client_secret", "test-secret")]);
    assert_eq!(post(basic_only.token_url(), &with_body, None).await.status, 401);
}

#[tokio::test]
async fn basic_credentials_are_form_urlencoded() {
    let p = FakeProvider::start(FakeProviderConfig {
        client_id: "my client".to_owned(),
        client_secret: "s3cr:t+%".to_owned(),
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let minted = p.mint_grant("u", &["a"]);
    let pairs = [
        ("grant_type", "refresh_token"),
        ("refresh_token", minted.refresh_token.as_str()),
    ];
    let encoded = Some(("my+client", "s3cr%3At%2B%25"));
    assert_eq!(post(p.token_url(), &pairs, encoded).await.status, 200);
}
