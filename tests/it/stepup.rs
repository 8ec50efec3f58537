//! Step-up from the agent loop: `GetAccessToken` with capabilities, a
//! structured `CONSENT_REQUIRED` (google.rpc.ErrorInfo) naming what is not
//! granted, and the same call succeeding once the user has consented to it.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::provider::{connect, start_request, UserBrowser};
use crate::support::{keys, Backend, TestServer};
use std::collections::HashMap;
use tokenvault::proto::*;
use tonic::Code;
use tonic_types::StatusExt;

/// `GetAccessToken` of `connection` for `capabilities` and `scopes`, by `key`.
async fn ask(
    server: &TestServer,
    key: &str,
    connection: &str,
    capabilities: &[&str],
    scopes: &[&str],
) -> Result<GetAccessTokenResponse, tonic::Status> {
    server
        .tokens(key)
        .get_access_token(GetAccessTokenRequest {
            connection_id: connection.to_owned(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The `ErrorInfo` of a `CONSENT_REQUIRED` refusal: its metadata.
fn consent_required(status: &tonic::Status) -> HashMap<String, String> {
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    let details = status.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "CONSENT_REQUIRED");
    assert_eq!(info.domain, "tokenvault");
    info.metadata.clone()
}

async fn step_up(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let server = &with.server;
    let connection = connect(&with, "ivy", &["calendar.read"]).await;

    // A granted capability: a token carrying its scopes.
    let token = ask(server, keys::AGENT, &connection, &["calendar.read"], &[])
        .await
        .unwrap();
    assert_eq!(token.scopes, vec!["calendar.read"]);

    // Not granted, from the cache and from the store: the same structured answer.
    for cached in [true, false] {
        if !cached {
            server.app().broker.cache().invalidate_all();
        }
        let status = ask(server, keys::AGENT, &connection, &["calendar.read", "mail.send"], &[])
            .await
            .unwrap_err();
        let metadata = consent_required(&status);
        assert_eq!(metadata["connection_id"], connection, "cached: {cached}");
        assert_eq!(metadata["provider"], "fake");
        assert_eq!(metadata["missing_capabilities"], "mail.send", "only what is missing");
        assert_eq!(metadata["missing_scopes"], "mail.send");
        assert!(status.message().contains("mail.send"), "{}", status.message());
    }
    // An explicit scope is named the same way (no capability to name).
    let status = ask(server, keys::AGENT, &connection, &[], &["files.read"])
        .await
        .unwrap_err();
    let metadata = consent_required(&status);
    assert_eq!(metadata["missing_scopes"], "files.read");
    assert_eq!(metadata["missing_capabilities"], "");
    let refreshes = with.fake.stats().refreshes;

    // The platform turns it into a consent prompt for that connection.
    let status = ask(server, keys::AGENT, &connection, &["mail.send"], &[])
        .await
        .unwrap_err();
    let metadata = consent_required(&status);
    let started = server
        .consent(keys::PLATFORM)
        .start_consent(StartConsentRequest {
            connection_id: metadata["connection_id"].clone(),
            provider: metadata["provider"].clone(),
            capabilities: metadata["missing_capabilities"].split(' ').map(str::to_owned).collect(),
            ..start_request("ivy", &[])
        })
        .await
        .expect("StartConsent for the step-up")
        .into_inner();
    assert_eq!(started.scopes, vec!["mail.send"], "asked only for what is missing");
    // Until the user approves and the platform confirms, still not granted.
    let user = UserBrowser::new();
    let back = user
        .follow_callback(&user.approve(&with.fake, &started.authorization_url).await)
        .await;
    consent_required(
        &ask(server, keys::AGENT, &connection, &["mail.send"], &[])
            .await
            .unwrap_err(),
    );
    let confirmed = crate::support::provider::confirm_on(server, "ivy", &back).await;
    assert_eq!(confirmed, connection, "the same connection gained the capability");

    // The agent's same call now succeeds.
    let token = ask(server, keys::AGENT, &connection, &["mail.send"], &[])
        .await
        .unwrap();
    assert_eq!(token.scopes, vec!["mail.send"]);
    let both = ask(server, keys::AGENT, &connection, &["calendar.read", "mail.send"], &[])
        .await
        .unwrap();
    assert_eq!(both.scopes, vec!["calendar.read", "mail.send"]);
    assert!(with.fake.stats().refreshes > refreshes, "narrowed by refresh");
    with.stop().await;
}
on_both!(an_ungranted_capability_is_a_consent_prompt, step_up);

async fn bad_capabilities(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let server = &with.server;
    let connection = connect(&with, "jo", &["calendar.read"]).await;
    ask(server, keys::AGENT, &connection, &[], &[]).await.unwrap();
    for cached in [true, false] {
        if !cached {
            server.app().broker.cache().invalidate_all();
        }
        let error = ask(server, keys::AGENT, &connection, &["teleport"], &[])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().contains("teleport"), "{}", error.message());
        // Another tenant's agent learns nothing about the connection's provider.
        let error = ask(server, keys::OTHER_AGENT, &connection, &["teleport"], &[])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied, "cached: {cached}");
        assert!(error.get_error_details().error_info().is_none());
    }
    for bad in ["Mail.Send", "", "a b"] {
        let error = ask(server, keys::AGENT, &connection, &[bad], &[]).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad:?}");
    }
    let many: Vec<String> = (0..51).map(|i| format!("c{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        ask(server, keys::AGENT, &connection, &many, &[])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        ask(server, keys::AGENT, &unknown, &["calendar.read"], &[])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    with.stop().await;
}
on_both!(bad_capabilities_are_refused_clearly, bad_capabilities);
