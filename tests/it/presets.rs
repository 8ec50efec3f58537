//! The built-in presets end to end: `StartConsent` through the real gRPC
//! server asks each provider for exactly the mapped scopes; each provider's
//! documented token response, served over real HTTP, is parsed into the
//! right scopes and expiry with the right client authentication; and
//! `tokenvault catalog` checks, lists and shows them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use tokenvault::config::ProviderClientConfig;
use tokenvault::consent::catalog::{AccountSource, Catalog, ClientAuth, TokenRequestBody};
use tokenvault::proto::StartConsentRequest;
use tokenvault::provider::{Endpoints, ProviderClient, ProviderHttp};
use url::Url;

use crate::support::provider::{browser, query};
use crate::support::{base_config, keys, Backend, TestDb, TestServer};

fn client_id(provider: &str) -> String {
    format!("cid-{provider}")
}

/// The provider's authorization URL a consent sends the browser to: the
/// `authorization_url` itself, or where tokenvault's `/oauth/start/{consent}`
/// (when the server has it) redirects.
async fn provider_redirect(authorization_url: &str) -> Url {
    let url = Url::parse(authorization_url).expect("a URL");
    if !url.path().starts_with("/oauth/start/") {
        return url;
    }
    let response = browser().get(authorization_url).send().await.expect("/oauth/start");
    assert!(response.status().is_redirection(), "{}", response.status());
    Url::parse(response.headers()["location"].to_str().unwrap()).expect("a URL")
}

#[tokio::test]
async fn every_preset_asks_for_exactly_the_mapped_scopes() {
    let catalog = Catalog::builtin().unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    for name in catalog.names() {
        config.providers.clients.insert(
            name.to_owned(),
            ProviderClientConfig {
                client_id: client_id(name),
                client_secret: Some(SecretString::from(format!("secret-{name}"))),
                client_secret_file: None,
            },
        );
    }
    let server = TestServer::start_on(db, config).await;
    let mut consent = server.consent(keys::PLATFORM);
    let mut checked = 0;
    for spec in catalog.providers() {
        for (capability, scopes) in &spec.capabilities {
            let user = format!("u-{}-{capability}", spec.name);
            let started = consent
                .start_consent(StartConsentRequest {
                    tenant_id: keys::TENANT.into(),
                    user_id: user,
                    provider: spec.name.clone(),
                    capabilities: vec![capability.clone()],
                    scopes: vec![],
                    return_url: "https://app.example.com/connected".into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{} {capability}: {}", spec.name, e.message()))
                .into_inner();
            let what = format!("{} {capability}", spec.name);
            let mut expected: BTreeSet<String> = scopes.clone();
            expected.extend(spec.required_scopes.iter().cloned());
            let reported: BTreeSet<String> = started.scopes.iter().cloned().collect();
            assert_eq!(reported, expected, "{what}: StartConsent's scopes");

            let location = provider_redirect(&started.authorization_url).await;
            let endpoint = spec.authorization_url.as_ref().expect("presets name it");
            assert_eq!(
                (location.origin(), location.path()),
                (endpoint.origin(), endpoint.path()),
                "{what}: {location}"
            );
            let params = query(&location);
            assert_eq!(params.get("response_type").map(String::as_str), Some("code"), "{what}");
            assert_eq!(params.get("client_id"), Some(&client_id(&spec.name)), "{what}");
            assert_eq!(
                params.get("code_challenge_method").map(String::as_str),
                Some("S256"),
                "{what}"
            );
            assert!(
                params.contains_key("code_challenge") && params.contains_key("state"),
                "{what}"
            );
            assert!(
                params
                    .get("redirect_uri")
                    .is_some_and(|uri| uri.ends_with(&format!("/oauth/callback/{}", spec.name))),
                "{what}: {params:?}"
            );
            if spec.uses_scopes {
                // Exactly the mapped scopes, joined with the provider's separator.
                assert_eq!(
                    params.get(&spec.scope_param),
                    Some(&spec.join_scopes(&expected)),
                    "{what}: {location}"
                );
                if spec.scope_param != "scope" {
                    assert!(!params.contains_key("scope"), "{what}");
                }
            } else {
                assert!(
                    !params.contains_key("scope"),
                    "{what}: no scope for a provider without scopes"
                );
            }
            for (name, value) in &spec.authorization_params {
                assert_eq!(params.get(name), Some(value), "{what}: extra parameter {name}");
            }
            // Providers with incremental authorization get their parameter.
            let incremental = spec.incremental_authorization.as_ref();
            if let Some(incremental) = incremental {
                assert_eq!(params.get(&incremental.param), Some(&incremental.value), "{what}");
            }
            let known = [
                "response_type",
                "client_id",
                "redirect_uri",
                "state",
                "code_challenge",
                "code_challenge_method",
                spec.scope_param.as_str(),
            ];
            for name in params.keys() {
                assert!(
                    known.contains(&name.as_str())
                        || spec.authorization_params.contains_key(name)
                        || incremental.is_some_and(|i| i.param == *name),
                    "{what}: unexpected parameter {name}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 80, "every capability of every preset: {checked}");
    server.stop().await;
}

/// What the tiny token endpoint saw.
#[derive(Default, Clone)]
struct Seen {
    headers: Option<HeaderMap>,
    body: Option<String>,
}

/// A token endpoint on 127.0.0.1 answering every POST with `body`.
async fn token_endpoint(body: String) -> (Url, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = (Arc::new(body), seen.clone());
    let app =
        axum::Router::new()
            .route(
                "/token",
                post(
                    |State((answer, seen)): State<(Arc<String>, Arc<Mutex<Seen>>)>,
                     headers: HeaderMap,
                     request: String| async move {
                        *seen.lock().unwrap() = Seen {
                            headers: Some(headers),
                            body: Some(request),
                        };
                        ([("content-type", "application/json")], answer.as_str().to_owned())
                    },
                ),
            )
            .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen, task)
}

/// A local account endpoint answering `body` to any `GET` or `POST`, keeping the request it saw.
async fn account_endpoint(body: String) -> (Url, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = (Arc::new(body), seen.clone());
    let answer = |State((answer, seen)): State<(Arc<String>, Arc<Mutex<Seen>>)>,
                  headers: HeaderMap,
                  request: String| async move {
        *seen.lock().unwrap() = Seen {
            headers: Some(headers),
            body: Some(request),
        };
        ([("content-type", "application/json")], answer.as_str().to_owned())
    };
    let app = axum::Router::new()
        .route("/account", axum::routing::get(answer).post(answer))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/account", listener.local_addr().unwrap())).unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen, task)
}

fn fixture_text(name: &str) -> String {
    let path = format!("{}/tests/fixtures/providers/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each preset's documented code-exchange answer: the scopes tokenvault
/// records as granted (`None`: the answer has no `scope`, so "as requested")
/// and the access token's lifetime in seconds.
const TOKEN_ANSWERS: &[(&str, Option<&[&str]>, i64)] = &[
    (
        "airtable",
        Some(&["data.records:read", "schema.bases:read", "user.email:read"]),
        3600,
    ),
    ("asana", None, 3600),
    ("atlassian", Some(&["offline_access", "read:jira-work"]), 3600),
    // `scope` since 2026-05-04 (before, `scopes`): the consumer's permissions.
    ("bitbucket", Some(&["account", "repository"]), 7200),
    ("box", None, 3600),
    ("calendly", Some(&["scheduled_events:read", "users:read"]), 7200),
    ("digitalocean", Some(&["read", "write"]), 2_592_000),
    ("discord", Some(&["guilds", "identify"]), 604_800),
    (
        "dropbox",
        Some(&["account_info.read", "files.content.read", "files.metadata.read"]),
        14_400,
    ),
    ("figma", None, 7_776_000),
    ("github", Some(&[]), 28_800),
    // GitLab's documented answer has no `scope`.
    ("gitlab", None, 7200),
    (
        "google",
        Some(&[
            "https://www.googleapis.com/auth/calendar.events.readonly",
            "https://www.googleapis.com/auth/userinfo.email",
        ]),
        3599,
    ),
    // A `scopes` array (granted_scopes_member).
    (
        "hubspot",
        Some(&["crm.objects.contacts.read", "crm.objects.contacts.write", "oauth"]),
        1800,
    ),
    // Comma-separated, as Linear writes scopes.
    ("linear", Some(&["read", "write"]), 86_399),
    // Microsoft answers with the resource-prefixed form (docs/providers.md).
    (
        "microsoft",
        Some(&[
            "https://graph.microsoft.com/Calendars.Read",
            "https://graph.microsoft.com/User.Read",
        ]),
        3599,
    ),
    ("notion", None, 3600),
    // No `expires_in`: tokenvault assumes an hour.
    ("salesforce", Some(&["api", "id", "refresh_token"]), 3600),
    // The user token under `authed_user`, scopes comma-separated.
    ("slack", Some(&["channels:history", "chat:write"]), 43_200),
    (
        "zoom",
        Some(&["meeting:read:list_meetings", "meeting:read:meeting", "user:read:user"]),
        3599,
    ),
];

#[tokio::test]
async fn every_preset_parses_its_documented_token_answer() {
    let catalog = Catalog::builtin().unwrap();
    assert_eq!(
        TOKEN_ANSWERS.iter().map(|(name, ..)| *name).collect::<Vec<_>>(),
        catalog.names().collect::<Vec<_>>(),
        "one recorded answer per preset"
    );
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    for (name, scopes, lifetime) in TOKEN_ANSWERS {
        let spec = catalog.require(name).unwrap().clone();
        let answer = fixture_text(&format!("{name}.token.json"));
        let (token_url, seen, task) = token_endpoint(answer.clone()).await;
        let endpoints = Endpoints {
            authorization: spec.authorization_url.clone().unwrap(),
            token: token_url,
            revocation: None,
            iss_parameter_supported: false,
        };
        let secret = SecretString::from("s3cret".to_owned());
        let http = ProviderHttp::new(Duration::from_secs(5), 64 * 1024).unwrap();
        let client = ProviderClient::new(Arc::new(spec.clone()), endpoints, "cid", Some(&secret), http);
        let exchanged = client
            .exchange_code(
                &SecretString::from("the-code".to_owned()),
                &SecretString::from("the-verifier-0123456789012345678901234567890123".to_owned()),
                &Url::parse("https://tv.example.com/oauth/callback").unwrap(),
                now,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let set = &exchanged.tokens;
        let expected = scopes.map(|s| s.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>());
        assert_eq!(
            set.scopes.clone().map(|s| s.into_iter().collect::<BTreeSet<_>>()),
            expected,
            "{name}: granted scopes"
        );
        assert_eq!((set.expires_at - now).num_seconds(), *lifetime, "{name}: expiry");
        assert!(
            set.refresh_token.is_some(),
            "{name}: every preset issues refresh tokens"
        );

        // The request carried the preset's client authentication and encoding.
        let seen = seen.lock().unwrap().clone();
        let headers = seen.headers.expect("a request");
        let body = seen.body.expect("a body");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("cid:s3cret")
        );
        let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
        match spec.client_auth {
            ClientAuth::ClientSecretBasic => {
                assert_eq!(authorization, Some(basic.as_str()), "{name}");
                assert!(!body.contains("s3cret"), "{name}: the secret only in the header");
            }
            ClientAuth::ClientSecretPost => {
                assert_eq!(authorization, None, "{name}");
                assert!(
                    body.contains("client_secret") && body.contains("s3cret"),
                    "{name}: {body}"
                );
            }
        }
        match spec.token_request_body {
            TokenRequestBody::Json => {
                let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
                assert_eq!(
                    json["code_verifier"], "the-verifier-0123456789012345678901234567890123",
                    "{name}"
                );
            }
            TokenRequestBody::Form => assert!(body.contains("code_verifier=the-verifier"), "{name}: {body}"),
        }
        for (header, value) in &spec.request_headers {
            assert_eq!(
                headers.get(header).and_then(|v| v.to_str().ok()),
                Some(value.as_str()),
                "{name}"
            );
        }
        task.abort();

        // The account, learned as the consent flow learns it: from this very
        // answer (token-response style), or from the account endpoint called
        // with the answer's access token (served here with the provider's
        // documented answer, `{name}.account.json`).
        let mut spec = spec;
        let account_call = match &mut spec.account {
            Some(AccountSource::Endpoint { url, .. }) => {
                let (local, seen, task) = account_endpoint(fixture_text(&format!("{name}.account.json"))).await;
                *url = local;
                Some((seen, task))
            }
            _ => None,
        };
        let endpoints = Endpoints {
            authorization: spec.authorization_url.clone().unwrap(),
            token: client.endpoints().token.clone(),
            revocation: None,
            iss_parameter_supported: false,
        };
        let http = ProviderHttp::new(Duration::from_secs(5), 64 * 1024).unwrap();
        let client = ProviderClient::new(Arc::new(spec.clone()), endpoints, "cid", Some(&secret), http);
        let learned = tokenvault::consent::account::learn(&client, &exchanged, now)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match (&spec.account, learned) {
            (None, learned) => assert!(learned.is_none(), "{name}"),
            (Some(_), Some(identity)) => assert!(!identity.subject.is_empty(), "{name}"),
            (Some(_), None) => panic!("{name}: no account learned"),
        }
        if let Some((seen, task)) = account_call {
            let seen = seen.lock().unwrap().clone();
            let headers = seen.headers.expect("the account endpoint was called");
            let bearer = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(
                bearer,
                format!("Bearer {}", exchanged.tokens.access_token.expose_secret()),
                "{name}: the account endpoint gets the new access token"
            );
            task.abort();
        }
    }
}

/// The `tokenvault` binary with no TOKENVAULT_* variable of the test
/// environment (TOKENVAULT_TEST_PG and the like would be read as configuration).
fn tokenvault() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvault"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOKENVAULT_") {
            command.env_remove(&name);
        }
    }
    command
}

#[test]
fn catalog_commands_check_list_and_show() {
    let output = tokenvault().args(["catalog", "check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("20 providers, no problems"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("catalog.toml");
    std::fs::write(
        &bad,
        r#"
[providers.acme]
display_name = "Acme"
client_secret = "hunter2"
authorization_url = "https://id.acme.example/authorize"
token_url = "http://id.acme.example/token"
allowed_scopes = ["read"]
[providers.acme.capabilities]
"things.read" = ["write"]

[providers.gitlab_acme]
preset = "gitlab"
base_url = "https://git.acme.example"
"#,
    )
    .unwrap();
    let output = tokenvault().args(["catalog", "check"]).arg(&bad).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    for expected in [
        "provider `acme`: `client_secret`: client credentials are not catalog data",
        "provider `acme`: `token_url` must use https",
        "provider `acme`: no revocation decision",
        "provider `acme`: `capabilities.\"things.read\"`: scope `write` is not in `allowed_scopes`",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
    assert!(
        !stdout.contains("gitlab_acme"),
        "the preset entry is complete:\n{stdout}"
    );
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    assert!(stderr.contains("problems"), "{stderr}");

    let output = tokenvault().args(["catalog", "list"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 21, "{stdout}");

    let config = dir.path().join("tokenvault.toml");
    std::fs::write(&config, "[server]\npublic_url = \"https://tv.example.com\"\n").unwrap();
    let output = tokenvault()
        .args(["--config"])
        .arg(&config)
        .args(["catalog", "show", "gitlab"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "https://gitlab.com/-/user_settings/applications",
        "redirect URI             https://tv.example.com/oauth/callback/gitlab\n",
        "account                  GET https://gitlab.com/api/v4/user",
        "api read_api read_repository read_user write_repository",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in\n{stdout}");
    }
    let output = tokenvault().args(["catalog", "show", "nope"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown provider `nope`"));
}

/// Figma refreshes at an endpoint of its own (`refresh_url`): a connection
/// made through the preset refreshes there, never at the token endpoint
/// (which, like the fake here, refuses the refresh grant).
#[tokio::test]
async fn figma_refreshes_at_its_own_refresh_endpoint() {
    use tokenvault_testkit::fake_provider::{FakeProvider, FakeProviderConfig};
    let fake = FakeProvider::start(FakeProviderConfig {
        separate_refresh_endpoint: true,
        rotate_refresh_tokens: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = base_config(&db);
    // The preset with its endpoints moved to the fake (loopback http is a
    // development catalog) and the fake's userinfo as the account.
    let catalog = format!(
        "[providers.figma_local]\npreset = \"figma\"\nauthorization_url = \"{a}\"\ntoken_url = \"{t}\"\n\
         refresh_url = \"{r}\"\n[providers.figma_local.account]\nsource = \"endpoint\"\nurl = \"{u}\"\n\
         subject = [\"/sub\"]\n",
        a = fake.authorization_url(),
        t = fake.token_url(),
        r = fake.refresh_url(),
        u = fake.userinfo_url(),
    );
    let _catalog = crate::support::provider::install_catalog(&mut config, &fake, "figma_local", &catalog);
    let server = TestServer::start_on(db, config).await;

    let started = server
        .consent(keys::PLATFORM)
        .start_consent(StartConsentRequest {
            tenant_id: keys::TENANT.into(),
            user_id: "u-figma".into(),
            provider: "figma_local".into(),
            capabilities: vec!["designs.read".into()],
            return_url: "https://app.example.com/connected".into(),
            ..Default::default()
        })
        .await
        .expect("StartConsent")
        .into_inner();
    let params = crate::support::provider::approve_on(&fake, &started.authorization_url).await;
    let connection = crate::support::provider::confirm_on(&server, "u-figma", &params).await;
    let before = fake.stats();
    assert_eq!((before.code_exchanges, before.refreshes), (1, 0));

    // The access token is due: the next call refreshes.
    server.clock.advance(chrono::Duration::seconds(3600));
    let token = server
        .tokens(keys::AGENT)
        .get_access_token(tokenvault::proto::GetAccessTokenRequest {
            connection_id: connection,
            ..Default::default()
        })
        .await
        .expect("GetAccessToken")
        .into_inner();
    let after = fake.stats();
    assert_eq!(after.successful_refreshes, 1, "{after:?}");
    assert_eq!(after.refresh_endpoint_requests, 1, "the refresh went to refresh_url");
    assert_eq!(
        after.token_endpoint_requests, before.token_endpoint_requests,
        "no refresh at the token endpoint"
    );
    assert!(!token.access_token.is_empty());
    server.stop().await;
    fake.shutdown().await;
}
