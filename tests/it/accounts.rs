//! Which upstream account a connection is: learned after each code exchange
//! from the catalog's account source (ID token, the provider's account
//! endpoint, or the token response), shown on the connection, and never
//! replaced by another account's grant.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::stored_connection;
use crate::support::provider::{connect, start_request, CatalogOptions, UserBrowser};
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
        assert_eq!(userinfo, u64::from(style == CatalogAccount::Endpoint), "{style:?}: userinfo calls");
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

/// Starts a consent of `user` for `capabilities`, approves it at the fake and
/// follows the callback: the return URL's query.
async fn reconsent(with: &WithProvider, user: &str, capabilities: &[&str]) -> std::collections::HashMap<String, String> {
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, capabilities))
        .await
        .expect("StartConsent")
        .into_inner();
    let browser = UserBrowser::new();
    let callback = browser.approve(&with.fake, &started.authorization_url).await;
    browser.follow_callback(&callback).await
}

async fn another_account(backend: Backend) {
    let with = with_account(backend, CatalogAccount::Endpoint).await;
    with.fake.set_subject("work");
    let connection = connect(&with, "vic", &["mail.read"]).await;
    let before = stored_connection(&with.server, &connection).await;

    // The user signs in to the provider with another account.
    with.fake.set_subject("personal");
    let back = reconsent(&with, "vic", &["mail.read", "files.read"]).await;
    assert_eq!(back["status"], "failed", "{back:?}");
    assert!(back["error"].contains(&display_of("work")), "{back:?}");
    assert!(!back.contains_key("completion_code"), "nothing to confirm");
    let after = stored_connection(&with.server, &connection).await;
    assert_eq!(after.token_version, before.token_version, "the first account's grant is untouched");
    assert_eq!(after.refresh_token, before.refresh_token);
    assert_eq!(after.granted_scopes, before.granted_scopes);
    assert_eq!(after.account_subject.as_deref(), Some("work"));
    let token = with
        .server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        with.fake.introspect(&token.access_token).map(|i| i.subject),
        Some("work".to_owned()),
        "the connection still acts as the first account"
    );

    // The same account again: the re-consent lands, its display refreshed.
    with.fake.set_subject("work");
    let back = reconsent(&with, "vic", &["mail.read", "files.read"]).await;
    assert_eq!(
        crate::support::provider::confirm_on(&with.server, "vic", &back).await,
        connection
    );
    let account = shown(&with.server, &connection).await.account.unwrap();
    assert_eq!((account.subject.as_str(), account.display), ("work", display_of("work")));

    // A connection made before accounts were learned learns its account at its next consent.
    sqlx::query(&format!(
        "UPDATE connections SET account_subject = NULL, account_display = NULL WHERE id = '{connection}'"
    ))
    .execute(with.server.app().sql.pool())
    .await
    .unwrap();
    with.server.app().broker.cache().invalidate_all();
    assert!(shown(&with.server, &connection).await.account.is_none());
    let back = reconsent(&with, "vic", &["mail.read"]).await;
    crate::support::provider::confirm_on(&with.server, "vic", &back).await;
    assert_eq!(shown(&with.server, &connection).await.account.unwrap().subject, "work");
    with.stop().await;
}
on_both!(a_grant_for_another_account_never_replaces_the_first, another_account);
