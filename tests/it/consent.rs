//! Consent through the real server and the fake provider.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{revocations, stored_connection};
use crate::support::provider::{browser, confirm_on, connect, query, start_request, CatalogOptions, UserBrowser};
use crate::support::{contains, dump_database, keys, Backend};
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::FakeProviderConfig;
use tonic::Code;

async fn successful_consent(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let mut consent = with.server.consent(keys::PLATFORM);
    let started = consent
        .start_consent(start_request("alice", &["calendar.read", "mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        started.scopes,
        vec!["calendar.read", "mail.send"],
        "exactly the capabilities' scopes"
    );
    // The link is tokenvault's own start handle: no state, scopes or challenge in it.
    let link = url::Url::parse(&started.authorization_url).unwrap();
    assert!(link.path().starts_with("/oauth/start/"), "{link}");
    assert!(link.query().is_none(), "{link}");
    let user = UserBrowser::new();
    let provider_url = user.start(&started.authorization_url).await;
    let params = query(&provider_url);
    assert_eq!(params["scope"], "calendar.read mail.send");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["access_type"], "offline");
    assert!(
        params["redirect_uri"].ends_with("/oauth/callback/fake"),
        "its own redirect path"
    );
    assert!(params["state"].len() >= 43);

    let pending = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.status, ConsentStatus::ConsentPending as i32);

    let callback = with.fake.approve(provider_url.as_str()).await.unwrap();
    let response = user.get(callback.as_str()).await;
    assert_eq!(response.status(), 303);
    let cleared = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.contains("Max-Age=0"),
        "the binding cookie is cleared: {cleared}"
    );
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with("https://app.example.com/connected?"));
    let back = query(&location);
    assert_eq!(back["status"], "approved");
    assert_eq!(back["consent_id"], started.consent_id);
    assert!(!back.contains_key("connection_id"), "no connection before confirmation");

    // Approved, not yet connected: nothing is stored on a connection until the platform confirms.
    let approved = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.status, ConsentStatus::ConsentApproved as i32);
    assert!(with
        .server
        .app()
        .store
        .connection_for(keys::TENANT, "alice", "fake")
        .await
        .unwrap()
        .is_none());
    let connection_id = confirm_on(&with.server, "alice", &back).await;

    let done = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, ConsentStatus::ConsentCompleted as i32);
    assert_eq!(done.connection_id, connection_id);
    let stored = stored_connection(&with.server, &connection_id).await;
    assert_eq!(
        stored.granted_scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["calendar.read", "mail.send"]
    );
    assert!(stored.refresh_token.is_some() && stored.dek_id.is_some());

    // The provider's tokens, the code and the verifier are nowhere in clear.
    with.server.app().audit.flush().await;
    let dump = dump_database(with.server.app().sql.pool()).await;
    for secret in ["fake_rt_", "fake_at_", "fake_code_", back["completion_code"].as_str()] {
        assert!(!contains(&dump, secret), "`{secret}` found in the database");
    }
    let code = query(&callback)["code"].clone();
    assert!(!contains(&dump, &code));
    let state = query(&callback)["state"].clone();
    assert!(!contains(&dump, &state), "the state is stored only hashed");

    // The audit trail names the consent, without secrets.
    let events = with
        .server
        .app()
        .store
        .list_audit(&tokenvault::store::AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(events
        .iter()
        .any(|e| e.action == "consent.completed"
            && e.connection_id.map(|c| c.to_string()) == Some(connection_id.clone())));
    with.stop().await;
}
on_both!(consent_succeeds, successful_consent);

async fn denied_consent(backend: Backend) {
    let config = FakeProviderConfig {
        auto_approve: false,
        ..Default::default()
    };
    let with = WithProvider::build(backend).fake(config).start().await;
    let mut consent = with.server.consent(keys::PLATFORM);
    let started = consent
        .start_consent(start_request("bob", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    let user = UserBrowser::new();
    let callback = user.approve(&with.fake, &started.authorization_url).await;
    assert_eq!(query(&callback)["error"], "access_denied");
    let back = user.follow_callback(&callback).await;
    assert_eq!(back["status"], "denied");
    assert!(!back.contains_key("completion_code"));
    assert!(!back.contains_key("connection_id"));
    let got = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, ConsentStatus::ConsentFailed as i32);
    assert!(got.error.starts_with("access_denied"), "{}", got.error);
    let store = &with.server.app().store;
    assert!(store
        .connection_for(keys::TENANT, "bob", "fake")
        .await
        .unwrap()
        .is_none());
    with.stop().await;
}
on_both!(denied_consent_is_clean, denied_consent);

async fn replayed_and_expired_state(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let mut consent = with.server.consent(keys::PLATFORM);
    let started = consent
        .start_consent(start_request("carol", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    let user = UserBrowser::new();
    let callback = user.approve(&with.fake, &started.authorization_url).await;
    assert_eq!(user.get(callback.as_str()).await.status(), 303);
    let exchanges = with.fake.stats().code_exchanges;
    let replay = user.get(callback.as_str()).await;
    assert_eq!(replay.status(), 410);
    assert!(replay.text().await.unwrap().contains("already used"));
    assert_eq!(
        with.fake.stats().code_exchanges,
        exchanges,
        "a replay never reaches the provider"
    );

    // Expiry after 10 minutes.
    let started = consent
        .start_consent(start_request("carol", &["files.read"]))
        .await
        .unwrap()
        .into_inner();
    let user = UserBrowser::new();
    let callback = user.approve(&with.fake, &started.authorization_url).await;
    with.server.clock.advance(chrono::Duration::minutes(11));
    let expired = user.get(callback.as_str()).await;
    assert_eq!(expired.status(), 410);
    assert!(expired.text().await.unwrap().contains("expired"));
    let got = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, ConsentStatus::ConsentExpired as i32);

    // Unknown state, missing state, and invalid UTF-8 in the query.
    let base = with.server.http_url("/oauth/callback/fake");
    for bad in ["?state=nope&code=x", "?code=x", "?state=%FF%FE&code=%C3%28"] {
        let response = browser().get(format!("{base}{bad}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    // The shared callback path of earlier versions is gone: each provider has its own.
    let old = browser()
        .get(with.server.http_url("/oauth/callback?state=nope&code=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);
    with.stop().await;
}
on_both!(replayed_or_expired_state_is_refused, replayed_and_expired_state);

async fn wrong_verifier(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let mut consent = with.server.consent(keys::PLATFORM);
    let first = consent
        .start_consent(start_request("dave", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    let second = consent
        .start_consent(start_request("dave", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    // The code of the first request, presented with the state (and so the verifier) of the second.
    let code = query(&UserBrowser::new().approve(&with.fake, &first.authorization_url).await)["code"].clone();
    let state = query(&UserBrowser::new().start(&second.authorization_url).await)["state"].clone();
    let completed = consent
        .complete_consent(CompleteConsentRequest {
            state,
            code,
            user_id: "dave".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completed.status, ConsentStatus::ConsentFailed as i32);
    assert!(completed.error.contains("invalid_grant"), "{}", completed.error);
    assert!(!completed.redirect_url.is_empty() && completed.redirect_url.contains("status=failed"));
    assert!(with
        .server
        .app()
        .store
        .connection_for(keys::TENANT, "dave", "fake")
        .await
        .unwrap()
        .is_none());
    with.stop().await;
}
on_both!(wrong_verifier_fails_cleanly, wrong_verifier);

async fn fewer_scopes_granted(backend: Backend) {
    let with = WithProvider::start(backend).await;
    with.fake.grant_only(Some(vec!["calendar.read".into()]));
    let connection_id = connect(&with, "erin", &["calendar.read", "mail.send"]).await;
    let stored = stored_connection(&with.server, &connection_id).await;
    assert_eq!(
        stored.granted_scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["calendar.read"]
    );
    with.stop().await;
}
on_both!(fewer_scopes_are_recorded, fewer_scopes_granted);

async fn incremental_consent(backend: Backend) {
    // A provider with incremental authorization is asked only for the new scope.
    let with = WithProvider::start(backend).await;
    let first = connect(&with, "fay", &["calendar.read"]).await;
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request("fay", &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.scopes, vec!["mail.send"]);
    let user = UserBrowser::new();
    let provider_url = user.start(&started.authorization_url).await;
    let params = query(&provider_url);
    assert_eq!(params["scope"], "mail.send");
    assert_eq!(params["include_granted_scopes"], "true");
    let callback = with.fake.approve(provider_url.as_str()).await.unwrap();
    let back = user.follow_callback(&callback).await;
    assert_eq!(confirm_on(&with.server, "fay", &back).await, first);
    let connection = with
        .server
        .app()
        .store
        .connection_for(keys::TENANT, "fay", "fake")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connection.id.to_string(), first, "the one connection is updated");
    assert_eq!(
        connection.granted_scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["calendar.read", "mail.send"]
    );
    with.stop().await;

    // Any other provider is asked for the union.
    let options = CatalogOptions {
        incremental: false,
        ..Default::default()
    };
    let with = WithProvider::build(backend).catalog(options).start().await;
    connect(&with, "fay", &["calendar.read"]).await;
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request("fay", &["mail.send"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.scopes, vec!["calendar.read", "mail.send"]);
    let user = UserBrowser::new();
    let provider_url = user.start(&started.authorization_url).await;
    assert!(!query(&provider_url).contains_key("include_granted_scopes"));
    let callback = with.fake.approve(provider_url.as_str()).await.unwrap();
    confirm_on(&with.server, "fay", &user.follow_callback(&callback).await).await;
    let connection = with
        .server
        .app()
        .store
        .connection_for(keys::TENANT, "fay", "fake")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        connection.granted_scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["calendar.read", "mail.send"]
    );
    with.stop().await;
}
on_both!(incremental_consent_asks_only_what_it_must, incremental_consent);

async fn malformed_requests(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let mut consent = with.server.consent(keys::PLATFORM);
    let cases: Vec<(StartConsentRequest, Code, &str)> = vec![
        (
            StartConsentRequest {
                tenant_id: String::new(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "tenant_id",
        ),
        (
            StartConsentRequest {
                user_id: String::new(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "user_id",
        ),
        (
            StartConsentRequest {
                provider: "nope".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "unknown provider",
        ),
        (
            StartConsentRequest {
                provider: "Bad Name".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "provider",
        ),
        (start_request("u", &["teleport"]), Code::InvalidArgument, "teleport"),
        (start_request("u", &[]), Code::InvalidArgument, "nothing"),
        (
            StartConsentRequest {
                scopes: vec!["admin.everything".into()],
                ..start_request("u", &[])
            },
            Code::InvalidArgument,
            "admin.everything",
        ),
        (
            StartConsentRequest {
                scopes: vec!["x".into(); 101],
                ..start_request("u", &[])
            },
            Code::InvalidArgument,
            "more than",
        ),
        (
            StartConsentRequest {
                return_url: "https://evil.example.net/".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "allowed_return_origins",
        ),
        (
            StartConsentRequest {
                return_url: "javascript:alert(1)".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "return_url",
        ),
        (
            StartConsentRequest {
                return_url: String::new(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "return_url is required",
        ),
        (
            StartConsentRequest {
                connection_id: "not-a-uuid".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "connection_id",
        ),
        (
            StartConsentRequest {
                account_hint: "a\nb".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::InvalidArgument,
            "account_hint",
        ),
        (
            StartConsentRequest {
                tenant_id: keys::OTHER_TENANT.into(),
                ..start_request("u", &["mail.read"])
            },
            Code::PermissionDenied,
            "globex",
        ),
        (
            StartConsentRequest {
                provider: "google".into(),
                ..start_request("u", &["mail.read"])
            },
            Code::FailedPrecondition,
            "not configured",
        ),
    ];
    for (request, code, needle) in cases {
        let error = consent.start_consent(request.clone()).await.unwrap_err();
        assert_eq!(error.code(), code, "{request:?}: {}", error.message());
        assert!(
            error.message().to_lowercase().contains(&needle.to_lowercase()),
            "{request:?}: {}",
            error.message()
        );
    }
    // Nothing was stored by any of them.
    assert!(with
        .server
        .app()
        .store
        .consents_of_user(keys::TENANT, "u", None, 100)
        .await
        .unwrap()
        .is_empty());

    let error = consent
        .get_consent(GetConsentRequest { consent_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = consent
        .get_consent(GetConsentRequest {
            consent_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    // Another tenant's platform cannot see or complete acme's consent.
    let started = consent
        .start_consent(start_request("u", &["mail.read"]))
        .await
        .unwrap()
        .into_inner();
    let error = with
        .server
        .consent(keys::OTHER_PLATFORM)
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let callback = UserBrowser::new().approve(&with.fake, &started.authorization_url).await;
    let params = query(&callback);
    let error = with
        .server
        .consent(keys::OTHER_PLATFORM)
        .complete_consent(CompleteConsentRequest {
            state: params["state"].clone(),
            code: params["code"].clone(),
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = consent
        .complete_consent(CompleteConsentRequest {
            state: params["state"].clone(),
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "neither code nor error");
    let error = consent
        .complete_consent(CompleteConsentRequest {
            state: params["state"].clone(),
            code: params["code"].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::InvalidArgument,
        "CompleteConsent names the session's user"
    );
    // The rightful platform still completes it, from the user's own session.
    let done = consent
        .complete_consent(CompleteConsentRequest {
            state: params["state"].clone(),
            code: params["code"].clone(),
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, ConsentStatus::ConsentCompleted as i32);
    assert_eq!(done.granted_scopes, vec!["mail.read"]);

    // Completed from another user's session (a forwarded link): refused and
    // cancelled before the code reaches the provider.
    let started = consent
        .start_consent(start_request("u", &["files.read"]))
        .await
        .unwrap()
        .into_inner();
    let params = query(&UserBrowser::new().approve(&with.fake, &started.authorization_url).await);
    let exchanges = with.fake.stats().code_exchanges;
    let forwarded = CompleteConsentRequest {
        state: params["state"].clone(),
        code: params["code"].clone(),
        user_id: "mallory".into(),
        ..Default::default()
    };
    let error = consent.complete_consent(forwarded.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());
    assert!(error.message().contains("another user"), "{}", error.message());
    assert_eq!(
        with.fake.stats().code_exchanges,
        exchanges,
        "the provider never saw the code"
    );
    let got = consent
        .get_consent(GetConsentRequest {
            consent_id: started.consent_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, ConsentStatus::ConsentFailed as i32);
    let error = consent
        .complete_consent(CompleteConsentRequest {
            user_id: "u".into(),
            ..forwarded
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::FailedPrecondition,
        "a cancelled consent stays cancelled"
    );
    let connection = with
        .server
        .app()
        .store
        .connection_for(keys::TENANT, "u", "fake")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        connection.granted_scopes.iter().cloned().collect::<Vec<_>>(),
        vec!["mail.read"],
        "the cancelled grant added nothing"
    );
    with.stop().await;
}
on_both!(malformed_consent_requests_change_nothing, malformed_requests);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_can_be_found_by_discovery_from_an_issuer() {
    // A catalog entry with an issuer and no endpoints, for a fake without incremental authorization.
    let with = WithProvider::build(Backend::Sqlite)
        .catalog(CatalogOptions {
            incremental: false,
            ..Default::default()
        })
        .catalog_toml(|fake| {
            let issuer = fake.base_url().as_str().trim_end_matches('/').to_owned();
            format!(
                "[providers.fake]\ndisplay_name = \"Discovered\"\nissuer = \"{issuer}\"\nallowed_scopes = [\"mail.read\"]\n\
                 [providers.fake.capabilities]\n\"mail.read\" = [\"mail.read\"]\n"
            )
        })
        .start()
        .await;
    let (server, fake) = (&with.server, &with.fake);
    let client = server.app().providers.client("fake").unwrap();
    assert_eq!(client.endpoints().token, fake.token_url());
    assert_eq!(client.endpoints().revocation.as_ref(), Some(&fake.revocation_url()));
    let connection = connect(&with, "dana", &["mail.read"]).await;
    server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection,
        })
        .await
        .unwrap();
    let revoked = !revocations(fake, 1).await.is_empty();
    assert!(revoked, "the discovered revocation endpoint was used");
    with.stop().await;
}
