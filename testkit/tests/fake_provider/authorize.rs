//! `GET /authorize`: the code flow end to end, denial, request validation, and how the granted scopes are chosen.

use crate::support::*;

#[tokio::test]
async fn full_code_flow_with_pkce() {
    let p = start().await;
    assert_eq!(p.base_url().host_str(), Some("127.0.0.1"));
    assert_eq!(p.token_url().path(), "/token");
    assert_eq!(p.revocation_url().path(), "/revoke");

    let location = p.approve(&auth_url(&p, "calendar.read mail.send", &[])).await.unwrap();
    assert_eq!(location.path(), "/oauth/callback");
    assert_eq!(query(&location, "tenant").as_deref(), Some("t1"));
    assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
    let code = query(&location, "code").unwrap();
    assert!(code.starts_with(CODE_PREFIX));
    assert!(code.len() >= CODE_PREFIX.len() + 43);

    let answer = exchange(&p, &code, VERIFIER).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header(CACHE_CONTROL), "no-store");
    assert_eq!(answer.header(CONTENT_TYPE), "application/json");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "calendar.read mail.send");
    let access_token = answer.str("access_token");
    let refresh_token = answer.str("refresh_token");
    assert!(access_token.starts_with(ACCESS_TOKEN_PREFIX));
    assert!(access_token.len() >= ACCESS_TOKEN_PREFIX.len() + 43);
    assert!(refresh_token.starts_with(REFRESH_TOKEN_PREFIX));

    let info = p.introspect(&access_token).unwrap();
    assert_eq!(info.subject, "user-1");
    assert_eq!(info.client_id, "test-client");
    assert_eq!(info.scopes, scopes(&["calendar.read", "mail.send"]));
    let ttl = info.expires_at - Utc::now();
    assert!(ttl > TimeDelta::seconds(3590) && ttl <= TimeDelta::seconds(3600));
    assert!(p.is_refresh_token_active(&refresh_token));
    assert_eq!(p.introspect("fake_at_nope"), None);

    let stats = p.stats();
    assert_eq!(stats.authorize_requests, 1);
    assert_eq!(stats.code_exchanges, 1);
    assert_eq!(stats.token_endpoint_requests, 1);
    assert_eq!(stats.refreshes, 0);
}

#[tokio::test]
async fn denied_authorization_redirects_with_access_denied() {
    let p = FakeProvider::start(FakeProviderConfig {
        auto_approve: false,
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let location = p.approve(&auth_url(&p, "a", &[])).await.unwrap();
    assert_eq!(query(&location, "error").as_deref(), Some("access_denied"));
    assert!(query(&location, "error_description").is_some());
    assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
    assert_eq!(query(&location, "tenant").as_deref(), Some("t1"));
    assert_eq!(query(&location, "code"), None);
}

#[tokio::test]
async fn authorize_validation() {
    let p = start().await;
    let with = |key: &str, value: Option<&str>| {
        let mut url = Url::parse(&auth_url(&p, "a", &[])).unwrap();
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != key)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(value) = value {
            pairs.push((key.to_owned(), value.to_owned()));
        }
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.to_string()
    };

    for url in [
        with("code_challenge_method", Some("plain")),
        with("code_challenge_method", None),
        with("code_challenge", None),
        with("code_challenge", Some("too-short")),
        with("response_type", None),
    ] {
        let location = p.approve(&url).await.unwrap();
        assert_eq!(query(&location, "error").as_deref(), Some("invalid_request"), "{url}");
        assert_eq!(query(&location, "state").as_deref(), Some("st-123"));
        assert_eq!(query(&location, "code"), None);
    }
    let location = p.approve(&with("response_type", Some("token"))).await.unwrap();
    assert_eq!(query(&location, "error").as_deref(), Some("unsupported_response_type"));

    for url in [
        with("client_id", Some("someone-else")),
        with("client_id", None),
        with("redirect_uri", None),
        with("redirect_uri", Some("not a url")),
    ] {
        match p.approve(&url).await {
            Err(FakeError::NoRedirect { status: 400, body }) => {
                assert!(body.contains("Authorization error"), "{body}")
            }
            other => panic!("expected a 400 page for {url}, got {other:?}"),
        }
    }
    assert!(matches!(
        p.approve("http://example.com/authorize").await,
        Err(FakeError::ForeignUrl { .. })
    ));
    assert_eq!(p.stats().authorize_requests, 10);
}

#[tokio::test]
async fn grant_only_and_incremental_authorization() {
    let p = FakeProvider::start(FakeProviderConfig {
        incremental_param: Some(("include_granted_scopes".into(), "true".into())),
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    p.grant_only(Some(scopes(&["a", "z"])));
    let code = get_code(&p, "a b").await;
    assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "a");
    p.grant_only(None);

    // Without the parameter: only what was asked.
    let code = get_code(&p, "c").await;
    assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "c");

    // With it: everything granted before plus the new scope.
    let url = auth_url(&p, "d", &[("include_granted_scopes", "true")]);
    let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
    let answer = exchange(&p, &code, VERIFIER).await;
    assert_eq!(answer.str("scope"), "a c d");
    assert_eq!(
        p.introspect(&answer.str("access_token")).unwrap().scopes,
        scopes(&["a", "c", "d"])
    );

    // Another user has nothing granted before.
    p.set_subject("user-2");
    let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
    assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "d");
    assert_eq!(p.granted_scopes("user-1"), scopes(&["a", "c", "d"]));

    // Once revoked, nothing is "previously granted".
    p.revoke_all_grants();
    p.set_subject("user-1");
    let code = query(&p.approve(&url).await.unwrap(), "code").unwrap();
    assert_eq!(exchange(&p, &code, VERIFIER).await.str("scope"), "d");
}

#[tokio::test]
async fn comma_separated_scopes() {
    let p = FakeProvider::start(FakeProviderConfig {
        scope_separator: ",".to_owned(),
        ..FakeProviderConfig::default()
    })
    .await
    .unwrap();
    let code = get_code(&p, "repo,read:user").await;
    let answer = exchange(&p, &code, VERIFIER).await;
    assert_eq!(answer.str("scope"), "repo,read:user");
    let rt = answer.str("refresh_token");
    assert_eq!(refresh_with(&p, &rt, Some("repo")).await.str("scope"), "repo");
}
