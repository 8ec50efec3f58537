//! Which upstream account a connection is: learned after each code exchange
//! from the catalog's account source (ID token, the provider's account
//! endpoint, or the token response), shown on the connection, and never
//! replaced by another account's grant.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::stored_connection;
use crate::support::provider::{confirm_on, connect, start_request, CatalogOptions, UserBrowser};
use crate::support::{keys, Backend, TestServer};
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::{display_of, CatalogAccount};

/// The scenario with the fake's account described as `account`.
async fn with_account(backend: Backend, account: CatalogAccount) -> WithProvider {
    WithProvider::build(backend)
        .catalog(CatalogOptions {
            account,
            ..Default::default()
        })
        .start()
        .await
}

/// `GetConnection` as the platform sees it.
async fn shown(server: &TestServer, connection_id: &str) -> Connection {
    server
        .connections(keys::PLATFORM)
        .get_connection(GetConnectionRequest {
            connection_id: connection_id.to_owned(),
        })
        .await
        .expect("GetConnection")
        .into_inner()
        .connection
        .expect("a connection")
}

async fn each_style(backend: Backend) {
    for (style, subject) in [
        (CatalogAccount::Endpoint, "acct-a".to_owned()),
        (CatalogAccount::TokenResponse, "acct-a".to_owned()),
        (CatalogAccount::IdToken, String::new()),
    ] {
        let with = with_account(backend, style).await;
        with.fake.set_subject("acct-a");
        // An ID token's subject is its issuer and `sub`.
        let subject = if subject.is_empty() {
            format!("{}/acct-a", with.fake.base_url().as_str().trim_end_matches('/'))
        } else {
            subject
        };
        let connection = connect(&with, "uma", &["mail.read"]).await;
        let account = shown(&with.server, &connection).await.account.expect("an account");
        assert_eq!(account.subject, subject, "{style:?}");
        assert_eq!(account.display, display_of("acct-a"), "{style:?}");
        let userinfo = with.fake.stats().userinfo_requests;
        assert_eq!(
            userinfo,
            u64::from(style == CatalogAccount::Endpoint),
            "{style:?}: userinfo calls"
        );
        // ListConnections and ExportUserData name it too.
        let listed = with
            .server
            .connections(keys::PLATFORM)
            .list_connections(ListConnectionsRequest {
                tenant_id: keys::TENANT.into(),
                user_id: "uma".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.connections[0].account.as_ref().unwrap().subject, subject);
        let exported = with
            .server
            .connections(keys::PLATFORM)
            .export_user_data(ExportUserDataRequest {
                tenant_id: keys::TENANT.into(),
                user_id: "uma".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(exported.connections[0].account.as_ref().unwrap().subject, subject);
        with.stop().await;
    }

    // A provider whose entry names no source: no account.
    let with = with_account(backend, CatalogAccount::None).await;
    let connection = connect(&with, "uma", &["mail.read"]).await;
    assert!(shown(&with.server, &connection).await.account.is_none());
    with.stop().await;
}
on_both!(the_account_is_learned_in_each_catalog_style, each_style);

/// Starts a consent of `user` for `capabilities` (of `connection_id`, when
/// given), approves it at the fake and follows the callback: the return URL's query.
async fn consent(
    with: &WithProvider,
    user: &str,
    capabilities: &[&str],
    connection_id: Option<&str>,
) -> std::collections::HashMap<String, String> {
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(StartConsentRequest {
            connection_id: connection_id.unwrap_or_default().to_owned(),
            ..start_request(user, capabilities)
        })
        .await
        .expect("StartConsent")
        .into_inner();
    let browser = UserBrowser::new();
    let callback = browser.approve(&with.fake, &started.authorization_url).await;
    browser.follow_callback(&callback).await
}

/// The account a connection's tokens act as at the fake.
async fn acts_as(with: &WithProvider, connection_id: &str) -> String {
    let token = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("GetAccessToken")
        .into_inner();
    with.fake.introspect(&token.access_token).expect("a live token").subject
}

async fn several_accounts(backend: Backend) {
    let with = with_account(backend, CatalogAccount::Endpoint).await;
    with.fake.set_subject("work");
    let work = connect(&with, "vic", &["mail.read"]).await;
    let before = stored_connection(&with.server, &work).await;

    // A second account of the same provider: its own connection; the first is untouched.
    with.fake.set_subject("personal");
    let back = consent(&with, "vic", &["files.read"], None).await;
    let personal = confirm_on(&with.server, "vic", &back).await;
    assert_ne!(personal, work);
    let after = stored_connection(&with.server, &work).await;
    assert_eq!(
        after.token_version, before.token_version,
        "the first account's grant is untouched"
    );
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(after.granted_scopes, before.granted_scopes);
    let listed = with
        .server
        .connections(keys::PLATFORM)
        .list_connections(ListConnectionsRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "vic".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connections;
    let accounts: Vec<_> = listed
        .iter()
        .map(|c| (c.id.clone(), c.account.clone().unwrap().display))
        .collect();
    assert_eq!(
        accounts,
        vec![
            (work.clone(), display_of("work")),
            (personal.clone(), display_of("personal"))
        ],
        "each account, visibly named"
    );
    assert_eq!(
        acts_as(&with, &work).await,
        "work",
        "each token works only for its account"
    );
    assert_eq!(acts_as(&with, &personal).await, "personal");

    // Re-consent of the work connection, signed in as the personal account
    // (the platform's account_hint is the provider's login_hint): refused, nothing changes.
    with.fake.set_subject("work");
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(StartConsentRequest {
            connection_id: work.clone(),
            account_hint: "personal".into(),
            ..start_request("vic", &["mail.read", "files.read"])
        })
        .await
        .unwrap()
        .into_inner();
    let browser = UserBrowser::new();
    let provider_url = browser.start(&started.authorization_url).await;
    assert_eq!(crate::support::provider::query(&provider_url)["login_hint"], "personal");
    let callback = with.fake.approve(provider_url.as_str()).await.unwrap();
    let back = browser.follow_callback(&callback).await;
    assert_eq!(back["status"], "failed", "{back:?}");
    assert!(back["error"].contains(&display_of("work")), "{back:?}");
    assert!(back["error"].contains(&display_of("personal")), "{back:?}");
    assert!(!back.contains_key("completion_code"), "nothing to confirm");
    let unchanged = stored_connection(&with.server, &work).await;
    assert_eq!(unchanged.token_version, before.token_version);
    assert_eq!(unchanged.refresh_token, before.refresh_token);
    assert_eq!(acts_as(&with, &work).await, "work");
    // The refused grant is kept nowhere, so it is revoked at the provider: the
    // personal account keeps only its own connection's refresh token.
    let fake = with.fake.clone();
    let revoked = crate::support::eventually(std::time::Duration::from_secs(10), || {
        let fake = fake.clone();
        async move { fake.live_refresh_tokens("personal") == 1 }
    })
    .await;
    assert!(
        revoked,
        "live refresh tokens of the personal account: {}",
        with.fake.live_refresh_tokens("personal")
    );
    assert_eq!(
        acts_as(&with, &personal).await,
        "personal",
        "the personal connection still works"
    );

    // Signed in as the right account, the re-consent of that connection lands on it.
    let back = consent(&with, "vic", &["mail.read", "files.read"], Some(&work)).await;
    assert_eq!(confirm_on(&with.server, "vic", &back).await, work);
    assert_eq!(
        stored_connection(&with.server, &work).await.granted_scopes.len(),
        2,
        "the work connection gained files.read"
    );
    // And without connection_id, the account decides which connection it is.
    with.fake.set_subject("personal");
    let back = consent(&with, "vic", &["mail.read"], None).await;
    assert_eq!(confirm_on(&with.server, "vic", &back).await, personal);

    // A connection made before accounts were learned learns its account at its next consent.
    sqlx::query(&format!(
        "UPDATE connections SET account_subject = NULL, account_display = NULL WHERE id = '{work}'"
    ))
    .execute(with.server.app().sql.pool())
    .await
    .unwrap();
    with.server.app().broker.cache().invalidate_all();
    assert!(shown(&with.server, &work).await.account.is_none());
    with.fake.set_subject("work");
    let back = consent(&with, "vic", &["mail.read"], None).await;
    assert_eq!(confirm_on(&with.server, "vic", &back).await, work);
    assert_eq!(shown(&with.server, &work).await.account.unwrap().subject, "work");
    with.stop().await;
}
on_both!(
    a_user_connects_several_accounts_and_none_replaces_another,
    several_accounts
);

async fn other_account_as_new_connection(backend: Backend) {
    let with = WithProvider::build(backend)
        .catalog(CatalogOptions {
            account: CatalogAccount::TokenResponse,
            ..Default::default()
        })
        .config(|config| config.consent.other_account = tokenvault::config::OtherAccount::NewConnection)
        .start()
        .await;
    with.fake.set_subject("work");
    let work = connect(&with, "wes", &["mail.read"]).await;
    with.fake.set_subject("personal");
    let back = consent(&with, "wes", &["mail.read"], Some(&work)).await;
    let personal = confirm_on(&with.server, "wes", &back).await;
    assert_ne!(personal, work, "the other account got its own connection");
    assert_eq!(acts_as(&with, &work).await, "work");
    assert_eq!(acts_as(&with, &personal).await, "personal");
    with.stop().await;
}
on_both!(
    a_reconsent_for_another_account_may_make_a_new_connection,
    other_account_as_new_connection
);
