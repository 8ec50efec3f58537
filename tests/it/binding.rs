//! Consent belongs to the user who started it: the start link binds the
//! consent to one browser (a cookie the callback requires), the callback is
//! the provider's own and checks `iss` (RFC 9207), and the grant becomes a
//! connection only when the platform confirms it from that user's session.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::provider::{browser, confirm, confirm_on, query, start_request, CatalogOptions, UserBrowser};
use crate::support::{contains, dump_database, keys, Backend};
use tokenvault::proto::*;
use tokenvault_testkit::fake_provider::FakeProviderConfig;
use tonic::Code;

/// Starts consent for `user` with `capabilities`: the consent id and tokenvault's start link.
async fn start(with: &WithProvider, user: &str, capabilities: &[&str]) -> (String, String) {
    let started = with
        .server
        .consent(keys::PLATFORM)
        .start_consent(start_request(user, capabilities))
        .await
        .expect("StartConsent")
        .into_inner();
    (started.consent_id, started.authorization_url)
}

/// The consent's status as `GetConsent` reports it.
async fn status(with: &WithProvider, consent_id: &str) -> ConsentStatus {
    let got = with
        .server
        .consent(keys::PLATFORM)
        .get_consent(GetConsentRequest {
            consent_id: consent_id.to_owned(),
        })
        .await
        .expect("GetConsent")
        .into_inner();
    ConsentStatus::try_from(got.status).unwrap()
}

/// Whether `user` has a connection at the fake.
async fn has_connection(with: &WithProvider, user: &str) -> bool {
    with.server
        .app()
        .store
        .connection_for(keys::TENANT, user, "fake")
        .await
        .unwrap()
        .is_some()
}

/// No token of the fake is in the database, in clear or sealed on a connection.
async fn no_tokens_stored(with: &WithProvider) {
    with.server.app().audit.flush().await;
    let dump = dump_database(with.server.app().sql.pool()).await;
    for secret in ["fake_rt_", "fake_at_", "fake_code_"] {
        assert!(!contains(&dump, secret), "`{secret}` found in the database");
    }
    let sealed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_tokens")
        .fetch_one(with.server.app().sql.pool())
        .await
        .unwrap();
    assert_eq!(sealed, 0, "no access token was stored");
}

/// The whole query of `url` with `name` set to `value` (or removed when `None`).
fn with_param(url: &url::Url, name: &str, value: Option<&str>) -> url::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut changed = url.clone();
    {
        let mut query = changed.query_pairs_mut();
        query.clear();
        for (k, v) in &pairs {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    changed
}

async fn forwarded_link(backend: Backend) {
    let with = WithProvider::start(backend).await;
    // X forwards the link StartConsent made for them; V opens it in V's own
    // browser, approves on the genuine consent screen, and lands on the
    // platform's return page inside V's session.
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let victim = UserBrowser::new();
    let callback = victim.approve(&with.fake, &link).await;
    let back = victim.follow_callback(&callback).await;
    assert_eq!(back["status"], "approved");
    assert_eq!(
        with.fake.stats().code_exchanges,
        1,
        "the grant was exchanged and put aside"
    );
    assert!(
        !has_connection(&with, "x").await,
        "nothing is connected before confirmation"
    );

    let error = confirm(&with.server, "v", &back).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());
    assert!(error.message().contains("another user"), "{}", error.message());
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentFailed);
    // X cannot finish it either: it is cancelled, and the grant is gone.
    let error = confirm(&with.server, "x", &back).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{}", error.message());
    assert!(!has_connection(&with, "x").await && !has_connection(&with, "v").await);
    no_tokens_stored(&with).await;
    let kept: Option<Vec<u8>> = sqlx::query_scalar(&format!(
        "SELECT pending_grant FROM consent_requests WHERE id = '{consent_id}'"
    ))
    .fetch_one(with.server.app().sql.pool())
    .await
    .unwrap();
    assert!(kept.is_none(), "the sealed grant was dropped");
    with.stop().await;
}
on_both!(a_forwarded_link_attaches_nothing, forwarded_link);

async fn callback_without_the_cookie(backend: Backend) {
    let with = WithProvider::start(backend).await;
    // X's browser visited the link (so the provider URL carries a live
    // state); the provider's page is completed in another browser.
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let owner = UserBrowser::new();
    let callback = owner.approve(&with.fake, &link).await;
    let stranger = browser().get(callback.as_str()).send().await.unwrap();
    assert_eq!(stranger.status(), 403);
    let page = stranger.text().await.unwrap();
    assert!(page.contains("did not start this consent"), "{page}");
    // A cookie of the right name with another value is no better.
    let name = format!("tokenvault_consent_{}", consent_id.replace('-', ""));
    let forged = browser()
        .get(callback.as_str())
        .header("cookie", format!("{name}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        with.fake.stats().code_exchanges,
        0,
        "the code never reached the provider"
    );
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentPending);

    // Another provider's callback path: refused as well.
    let mut elsewhere = callback.clone();
    elsewhere.set_path("/oauth/callback/google");
    let response = owner.get(elsewhere.as_str()).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("provider"));
    assert_eq!(with.fake.stats().code_exchanges, 0);

    // The browser that started it completes it.
    let back = owner.follow_callback(&callback).await;
    let connection = confirm_on(&with.server, "x", &back).await;
    assert!(!connection.is_empty());
    with.stop().await;
}
on_both!(
    a_callback_without_the_binding_cookie_is_refused,
    callback_without_the_cookie
);

async fn start_link(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|config| config.server.public_url = Some("https://tv.example.com/".parse().unwrap()))
        .start()
        .await;
    let (_, link) = start(&with, "x", &["mail.read"]).await;
    let handle = link.rsplit('/').next().unwrap().to_owned();
    assert!(link.starts_with("https://tv.example.com/oauth/start/"), "{link}");
    // The public URL is TLS: the cookie is Secure, and scoped to the callbacks.
    let local = with.server.http_url(&format!("/oauth/start/{handle}"));
    let response = browser().get(&local).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/oauth/callback"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(cookie.starts_with("tokenvault_consent_"), "{cookie}");
    let provider = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        query(&provider)["redirect_uri"],
        "https://tv.example.com/oauth/callback/fake"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    // Unknown and malformed handles.
    for bad in [
        "/oauth/start/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/oauth/start/x",
    ] {
        let response = browser().get(with.server.http_url(bad)).send().await.unwrap();
        assert_eq!(response.status(), 410, "{bad}");
    }
    with.stop().await;

    // Each visit binds anew: the last browser to open the link is the one
    // whose callback counts (a link scanner's visit does not spend it).
    let with = WithProvider::start(backend).await;
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let first = UserBrowser::new();
    let first_callback = first.approve(&with.fake, &link).await;
    let second = UserBrowser::new();
    let second_callback = second.approve(&with.fake, &link).await;
    let response = first.get(first_callback.as_str()).await;
    assert_eq!(response.status(), 400, "the first visit's state was replaced");
    let back = second.follow_callback(&second_callback).await;
    assert_eq!(back["status"], "approved");
    // Once used, the link is spent.
    let response = browser().get(&link).send().await.unwrap();
    assert_eq!(response.status(), 410);
    confirm_on(&with.server, "x", &back).await;
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentCompleted);
    with.stop().await;
}
on_both!(the_start_link_binds_one_browser, start_link);

async fn confirmation(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let user = UserBrowser::new();
    let back = user.follow_callback(&user.approve(&with.fake, &link).await).await;

    // A wrong code, or a malformed one: refused, nothing changes.
    let mut wrong = back.clone();
    wrong.insert(
        "completion_code".into(),
        "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into(),
    );
    let error = confirm(&with.server, "x", &wrong).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{}", error.message());
    wrong.insert("completion_code".into(), "short".into());
    let error = confirm(&with.server, "x", &wrong).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
    let mut unknown = back.clone();
    unknown.insert("consent_id".into(), uuid::Uuid::new_v4().to_string());
    assert_eq!(
        confirm(&with.server, "x", &unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    // Another tenant's platform does not see it.
    let error = with
        .server
        .consent(keys::OTHER_PLATFORM)
        .confirm_consent(ConfirmConsentRequest {
            consent_id: back["consent_id"].clone(),
            completion_code: back["completion_code"].clone(),
            user_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentApproved);
    assert!(!has_connection(&with, "x").await);

    // The right code from the user's session: connected, once.
    let confirmed = confirm(&with.server, "x", &back).await.expect("ConfirmConsent");
    assert_eq!(confirmed.status, ConsentStatus::ConsentCompleted as i32);
    assert_eq!(confirmed.granted_scopes, vec!["mail.read"]);
    let again = confirm(&with.server, "x", &back).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{}", again.message());
    with.server
        .tokens(keys::AGENT)
        .get_access_token(GetAccessTokenRequest {
            connection_id: confirmed.connection_id.clone(),
            ..Default::default()
        })
        .await
        .expect("the confirmed connection serves tokens");
    // The completion code is stored only hashed.
    with.server.app().audit.flush().await;
    let dump = dump_database(with.server.app().sql.pool()).await;
    assert!(!contains(&dump, &back["completion_code"]));

    // Never confirmed: it expires, and nothing was connected.
    let (consent_id, link) = start(&with, "y", &["mail.read"]).await;
    let user = UserBrowser::new();
    let back = user.follow_callback(&user.approve(&with.fake, &link).await).await;
    with.server.clock.advance(chrono::Duration::seconds(301));
    let error = confirm(&with.server, "y", &back).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{}", error.message());
    assert!(error.message().contains("expired"), "{}", error.message());
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentExpired);
    assert!(!has_connection(&with, "y").await);
    with.stop().await;
}
on_both!(only_a_confirmed_grant_becomes_a_connection, confirmation);

async fn without_confirmation(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|config| config.consent.tenants_without_confirmation = vec![keys::TENANT.to_owned()])
        .start()
        .await;
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let user = UserBrowser::new();
    let back = user.follow_callback(&user.approve(&with.fake, &link).await).await;
    assert_eq!(back["status"], "connected");
    assert!(!back.contains_key("completion_code"));
    assert!(has_connection(&with, "x").await);
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentCompleted);
    // The binding cookie is still required.
    let (_, link) = start(&with, "x", &["files.read"]).await;
    let callback = UserBrowser::new().approve(&with.fake, &link).await;
    assert_eq!(browser().get(callback.as_str()).send().await.unwrap().status(), 403);
    with.stop().await;
}
on_both!(
    a_tenant_without_confirmation_connects_at_the_callback,
    without_confirmation
);

/// A catalog entry for the fake found by discovery from its issuer (so its
/// issuer is known, and its metadata says whether it sends `iss`).
fn discovered_catalog(fake: &tokenvault_testkit::fake_provider::FakeProvider) -> String {
    let issuer = fake.base_url().as_str().trim_end_matches('/').to_owned();
    format!(
        "[providers.fake]\ndisplay_name = \"Discovered\"\nissuer = \"{issuer}\"\nallowed_scopes = [\"mail.read\"]\n\
         [providers.fake.capabilities]\n\"mail.read\" = [\"mail.read\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_response_issuer_is_checked() {
    // A provider that sends `iss` and says so in its metadata.
    let with = WithProvider::build(Backend::Sqlite)
        .fake(FakeProviderConfig {
            send_iss: true,
            ..Default::default()
        })
        .catalog(CatalogOptions {
            incremental: false,
            ..Default::default()
        })
        .catalog_toml(discovered_catalog)
        .start()
        .await;
    let user = UserBrowser::new();
    let (consent_id, link) = start(&with, "x", &["mail.read"]).await;
    let callback = user.approve(&with.fake, &link).await;
    let issuer = with.fake.base_url().as_str().trim_end_matches('/').to_owned();
    assert_eq!(query(&callback)["iss"], issuer);
    for (iss, why) in [
        (Some("https://attacker.example.com"), "from issuer"),
        (Some(&*format!("{issuer}/other")), "from issuer"),
        (None, "carries no `iss`"),
    ] {
        let response = user.get(with_param(&callback, "iss", iss).as_str()).await;
        assert_eq!(response.status(), 400, "{iss:?}");
        let page = response.text().await.unwrap();
        assert!(page.contains(why), "{iss:?}: {page}");
    }
    assert_eq!(
        with.fake.stats().code_exchanges,
        0,
        "a mixed-up response is never exchanged"
    );
    assert_eq!(status(&with, &consent_id).await, ConsentStatus::ConsentPending);
    let back = user.follow_callback(&callback).await;
    assert_eq!(back["status"], "approved", "the right issuer is accepted");
    with.stop().await;

    // A provider whose metadata does not promise `iss`: none is fine, a wrong one is not.
    let with = WithProvider::build(Backend::Sqlite)
        .catalog(CatalogOptions {
            incremental: false,
            ..Default::default()
        })
        .catalog_toml(discovered_catalog)
        .start()
        .await;
    let user = UserBrowser::new();
    let (_, link) = start(&with, "x", &["mail.read"]).await;
    let callback = user.approve(&with.fake, &link).await;
    assert!(!query(&callback).contains_key("iss"));
    let wrong = with_param(&callback, "iss", Some("https://attacker.example.com"));
    assert_eq!(user.get(wrong.as_str()).await.status(), 400);
    let back = user.follow_callback(&callback).await;
    assert_eq!(back["status"], "approved");
    with.stop().await;
}
