use super::*;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn builtin() -> Catalog {
    Catalog::builtin().expect("the built-in catalog is valid")
}

fn invalid_reason(text: &str) -> (String, String) {
    match Catalog::from_toml_str(text) {
        Err(CatalogError::Invalid { provider, reason }) => (provider, reason),
        other => panic!("expected CatalogError::Invalid, got {other:?}"),
    }
}

/// A minimal valid provider, to be varied by the tests.
const MINIMAL: &str = r#"
[providers.acme]
display_name = "Acme"
authorization_url = "https://id.acme.example/authorize"
token_url = "https://id.acme.example/token"
revocation_url = "https://id.acme.example/revoke"
allowed_scopes = ["read", "write"]
[providers.acme.capabilities]
"things.read" = ["read"]
"#;

/// The built-in presets, in name order.
const PRESETS: [&str; 20] = [
    "airtable",
    "asana",
    "atlassian",
    "bitbucket",
    "box",
    "calendly",
    "digitalocean",
    "discord",
    "dropbox",
    "figma",
    "github",
    "gitlab",
    "google",
    "hubspot",
    "linear",
    "microsoft",
    "notion",
    "salesforce",
    "slack",
    "zoom",
];

#[test]
fn builtin_catalog_has_the_twenty_presets() {
    let catalog = builtin();
    assert_eq!(catalog.names().collect::<Vec<_>>(), PRESETS);
    assert_eq!(catalog.len(), 20);
    for provider in catalog.providers() {
        let docs = provider.docs_url.as_ref().expect("every built-in has docs_url");
        assert_eq!(docs.scheme(), "https", "{}", provider.name);
        assert!(provider.issuer.is_none(), "{}", provider.name);
        assert!(provider.authorization_url.is_some(), "{}", provider.name);
        assert!(provider.token_url.is_some(), "{}", provider.name);
        assert!(!provider.capabilities.is_empty(), "{}", provider.name);
    }
}

#[test]
fn builtin_revocation_endpoints() {
    let catalog = builtin();
    let revocation = |name: &str| {
        let provider = catalog.require(name).expect("built-in provider");
        (
            provider.revocation_url.as_ref().map(Url::as_str).map(str::to_owned),
            provider.revocation_method,
        )
    };
    assert_eq!(
        revocation("google"),
        (
            Some("https://oauth2.googleapis.com/revoke".to_owned()),
            RevocationMethod::Rfc7009
        )
    );
    assert_eq!(
        revocation("notion"),
        (
            Some("https://api.notion.com/v1/oauth/revoke".to_owned()),
            RevocationMethod::Rfc7009AccessToken
        )
    );
    assert_eq!(
        revocation("dropbox"),
        (
            Some("https://api.dropboxapi.com/2/auth/token/revoke".to_owned()),
            RevocationMethod::BearerAccessToken
        )
    );
    assert_eq!(
        revocation("slack"),
        (
            Some("https://slack.com/api/auth.revoke".to_owned()),
            RevocationMethod::BearerToken
        )
    );
    assert_eq!(
        revocation("github"),
        (
            Some("https://api.github.com/applications/%7Bclient_id%7D/grant".to_owned()),
            RevocationMethod::GithubGrant
        )
    );
    for name in ["microsoft", "atlassian"] {
        assert_eq!(revocation(name), (None, RevocationMethod::Unsupported), "{name}");
    }
}

#[test]
fn which_methods_refresh_before_revoking() {
    let catalog = builtin();
    let refreshes_first = |name: &str| {
        catalog
            .require(name)
            .expect("built-in provider")
            .revokes_with_access_token()
    };
    // Slack's auth.revoke ends only the token given: the refresh token itself
    // is presented, never a freshly refreshed access token.
    assert!(!refreshes_first("slack"));
    assert!(!refreshes_first("google"));
    // Dropbox's and Notion's end the refresh token through an access token of it.
    assert!(refreshes_first("dropbox"));
    assert!(refreshes_first("notion"));
    assert!(refreshes_first("github"));
}

#[test]
fn bearer_token_is_a_method_with_an_endpoint() {
    let text = MINIMAL.replace(
        "revocation_url = \"https://id.acme.example/revoke\"",
        "revocation_url = \"https://id.acme.example/revoke\"\nrevocation_method = \"bearer_token\"",
    );
    let acme = Catalog::from_toml_str(&text).expect("valid");
    let acme = acme.require("acme").expect("acme");
    assert_eq!(acme.revocation_method, RevocationMethod::BearerToken);
    assert!(!acme.revokes_with_access_token());
    let without_url = MINIMAL.replace(
        "revocation_url = \"https://id.acme.example/revoke\"",
        "revocation_method = \"bearer_token\"",
    );
    let (provider, reason) = invalid_reason(&without_url);
    assert_eq!(provider, "acme");
    assert!(reason.contains("no `revocation_url`"), "{reason}");
}

#[test]
fn every_builtin_provider_decides_its_revocation() {
    let catalog = builtin();
    for provider in catalog.providers() {
        match provider.revocation_unsupported() {
            Some(unsupported) => {
                assert_eq!(
                    provider.revocation_method,
                    RevocationMethod::Unsupported,
                    "{}",
                    provider.name
                );
                assert!(provider.revocation_url.is_none(), "{}", provider.name);
                assert!(unsupported.reason.len() > 40, "{}: a real reason", provider.name);
                assert_eq!(unsupported.user_page.scheme(), "https", "{}", provider.name);
                assert_eq!(provider.revocation_user_page.as_ref(), Some(&unsupported.user_page));
                assert!(!provider.revoke_replaced_on_reconsent(), "{}", provider.name);
            }
            None => {
                assert_ne!(
                    provider.revocation_method,
                    RevocationMethod::Unsupported,
                    "{}",
                    provider.name
                );
                assert!(
                    provider.revocation_url.is_some(),
                    "{}: built-ins name their endpoint",
                    provider.name
                );
            }
        }
    }
    let unsupported: Vec<&str> = catalog
        .providers()
        .filter(|p| p.revocation_unsupported().is_some())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        unsupported,
        ["airtable", "atlassian", "bitbucket", "figma", "hubspot", "microsoft"]
    );
    let page = |name: &str| {
        catalog
            .require(name)
            .expect("built-in")
            .revocation_unsupported()
            .map(|u| u.user_page.to_string())
    };
    assert_eq!(
        page("microsoft").as_deref(),
        Some("https://myapplications.microsoft.com/")
    );
    assert_eq!(
        page("atlassian").as_deref(),
        Some("https://id.atlassian.com/manage-profile/apps")
    );
}

#[test]
fn builtin_reconsent_revocation() {
    let catalog = builtin();
    let facts: Vec<(&str, RevocationScope, bool)> = catalog
        .providers()
        .map(|p| (p.name.as_str(), p.revocation_scope, p.revoke_replaced_on_reconsent()))
        .collect();
    assert_eq!(
        facts,
        [
            ("airtable", RevocationScope::Token, false),
            ("asana", RevocationScope::Token, true),
            ("atlassian", RevocationScope::Token, false),
            ("bitbucket", RevocationScope::Token, false),
            ("box", RevocationScope::Token, true),
            ("calendly", RevocationScope::Token, true),
            ("digitalocean", RevocationScope::Token, true),
            ("discord", RevocationScope::Token, true),
            ("dropbox", RevocationScope::Token, true),
            ("figma", RevocationScope::Token, false),
            // Grant-wide, and the new token shares the grant: revoking the old one would end it.
            ("github", RevocationScope::Grant, false),
            ("gitlab", RevocationScope::Token, true),
            ("google", RevocationScope::Grant, false),
            ("hubspot", RevocationScope::Token, false),
            ("linear", RevocationScope::Token, true),
            ("microsoft", RevocationScope::Token, false),
            ("notion", RevocationScope::Token, true),
            ("salesforce", RevocationScope::Token, true),
            ("slack", RevocationScope::Token, true),
            // Revoking uninstalls the app; a re-consent stays in the same install.
            ("zoom", RevocationScope::Grant, false),
        ]
    );
    // Grant-wide alone is not enough: a re-consent that opens a new grant may revoke the old one.
    let text = MINIMAL.replace(
        "allowed_scopes",
        "revocation_scope = \"grant\"\nreconsent_same_grant = false\nallowed_scopes",
    );
    let catalog = Catalog::from_toml_str(&text).expect("valid");
    assert!(catalog.require("acme").expect("acme").revoke_replaced_on_reconsent());
}

#[test]
fn revocation_decision_is_required() {
    let without = MINIMAL.replace("revocation_url = \"https://id.acme.example/revoke\"\n", "");
    let (provider, reason) = invalid_reason(&without);
    assert_eq!(provider, "acme");
    assert!(reason.contains("no revocation decision"), "{reason}");
    assert!(reason.contains("revocation_method = \"unsupported\""), "{reason}");

    let unsupported = |extra: &str| {
        without.replace(
            "allowed_scopes",
            &format!("revocation_method = \"unsupported\"\n{extra}allowed_scopes"),
        )
    };
    let reason_line = "revocation_unsupported_reason = \"Acme has no revocation endpoint.\"\n";
    let page_line = "revocation_user_page = \"https://id.acme.example/apps\"\n";
    for (text, expected) in [
        (unsupported(page_line), "`revocation_unsupported_reason` is required"),
        (
            unsupported(&format!("revocation_unsupported_reason = \"  \"\n{page_line}")),
            "`revocation_unsupported_reason` is required",
        ),
        (unsupported(reason_line), "`revocation_user_page` is required"),
        (
            MINIMAL.replace(
                "allowed_scopes",
                &format!("revocation_method = \"unsupported\"\n{reason_line}{page_line}allowed_scopes"),
            ),
            "`revocation_method` is \"unsupported\" but `revocation_url` is set",
        ),
        (
            unsupported(&format!("{reason_line}{page_line}revocation_scope = \"grant\"\n")),
            "`revocation_scope` and `reconsent_same_grant` make no sense",
        ),
        (
            MINIMAL.replace("allowed_scopes", &format!("{reason_line}allowed_scopes")),
            "`revocation_unsupported_reason` is set but `revocation_method` is not \"unsupported\"",
        ),
        (
            without.replace(
                "allowed_scopes",
                "revocation_method = \"bearer_access_token\"\nallowed_scopes",
            ),
            "`revocation_method` is set but there is no `revocation_url`",
        ),
        (
            unsupported(&format!(
                "{reason_line}revocation_user_page = \"http://apps.acme.example/\"\n"
            )),
            "`revocation_user_page` must use https",
        ),
    ] {
        let (provider, reason) = invalid_reason(&text);
        assert_eq!(provider, "acme");
        assert!(reason.contains(expected), "expected `{expected}`, got: {reason}");
    }

    let catalog = Catalog::from_toml_str(&unsupported(&format!("{reason_line}{page_line}"))).expect("valid");
    let acme = catalog.require("acme").expect("acme");
    assert_eq!(
        acme.revocation_unsupported(),
        Some(&UnsupportedRevocation {
            reason: "Acme has no revocation endpoint.".to_owned(),
            user_page: Url::parse("https://id.acme.example/apps").expect("url"),
        })
    );
    assert!(!acme.revoke_replaced_on_reconsent());
}

#[test]
fn github_grant_needs_a_client_id_placeholder() {
    let with_url = |url: &str, method: &str| {
        MINIMAL.replace(
            "revocation_url = \"https://id.acme.example/revoke\"",
            &format!("revocation_url = \"{url}\"\nrevocation_method = \"{method}\""),
        )
    };
    let catalog = Catalog::from_toml_str(&with_url(
        "https://api.github.com/applications/{client_id}/grant",
        "github_grant",
    ))
    .expect("valid");
    assert_eq!(
        catalog.require("acme").expect("acme").revocation_method,
        RevocationMethod::GithubGrant
    );
    for (text, expected) in [
        (
            with_url("https://api.github.com/applications/grant", "github_grant"),
            "must carry `{client_id}` in its path",
        ),
        (
            with_url("https://id.acme.example/{client_id}/revoke", "rfc7009"),
            "which only \"github_grant\" fills in",
        ),
        (
            MINIMAL
                .replace("revocation_url = \"https://id.acme.example/revoke\"\n", "")
                .replace("allowed_scopes", "revocation_method = \"github_grant\"\nallowed_scopes"),
            "\"github_grant\" needs `revocation_url`",
        ),
    ] {
        let (_, reason) = invalid_reason(&text);
        assert!(reason.contains(expected), "expected `{expected}`, got: {reason}");
    }
}

#[test]
fn an_issuer_may_supply_the_revocation_endpoint() {
    // No revocation_url: RFC 7009 at the metadata's revocation_endpoint.
    let text = r#"
[providers.corp-sso]
display_name = "Corp SSO"
issuer = "https://sso.corp.example/realms/main"
authorization_url = "https://sso.corp.example/auth"
token_url = "https://sso.corp.example/token"
allowed_scopes = ["openid"]
"#;
    let catalog = Catalog::from_toml_str(text).expect("valid");
    let sso = catalog.require("corp-sso").expect("corp-sso");
    assert_eq!(
        (sso.revocation_url.as_ref(), sso.revocation_method),
        (None, RevocationMethod::Rfc7009)
    );
    assert!(sso.revocation_unsupported().is_none());
}

#[test]
fn non_expiring_access_tokens_are_declared() {
    let no_refresh = MINIMAL.replace("allowed_scopes", "issues_refresh_tokens = false\nallowed_scopes");
    let (_, reason) = invalid_reason(&no_refresh);
    assert!(reason.contains("`access_token_expires`"), "{reason}");
    for (value, expires) in [("false", false), ("true", true)] {
        let text = no_refresh.replace(
            "allowed_scopes",
            &format!("access_token_expires = {value}\nallowed_scopes"),
        );
        let catalog = Catalog::from_toml_str(&text).expect("valid");
        assert_eq!(catalog.require("acme").expect("acme").access_token_expires, expires);
    }
    let catalog = builtin();
    assert!(
        catalog.providers().all(|p| p.access_token_expires),
        "every preset's tokens expire"
    );
}

#[test]
fn github_oauth_app_example_in_the_builtin_file_is_valid() {
    let begin = "# --- github oauth app example (begin) ---";
    let end = "# --- github oauth app example (end) ---";
    let start = BUILTIN_CATALOG.find(begin).expect("example start marker") + begin.len();
    let stop = BUILTIN_CATALOG.find(end).expect("example end marker");
    let example: String = BUILTIN_CATALOG[start..stop]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n");
    let catalog = Catalog::from_toml_str(&example).expect("the commented example is valid");
    let app = catalog.require("github_oauth_app").expect("github_oauth_app");
    assert!(!app.access_token_expires);
    assert!(!app.issues_refresh_tokens);
    assert_eq!(app.revocation_method, RevocationMethod::GithubGrant);
    assert!(!app.revoke_replaced_on_reconsent());
}

#[test]
fn builtin_endpoints_and_quirks() {
    let catalog = builtin();
    let url = |name: &str| {
        let p = catalog.require(name).expect("built-in provider");
        (
            p.authorization_url.as_ref().map(Url::to_string),
            p.token_url.as_ref().map(Url::to_string),
        )
    };
    assert_eq!(
        url("microsoft"),
        (
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize".to_owned()),
            Some("https://login.microsoftonline.com/common/oauth2/v2.0/token".to_owned())
        )
    );
    assert_eq!(
        url("google"),
        (
            Some("https://accounts.google.com/o/oauth2/v2/auth".to_owned()),
            Some("https://oauth2.googleapis.com/token".to_owned())
        )
    );

    let google = catalog.require("google").expect("google");
    assert_eq!(google.client_auth, ClientAuth::ClientSecretPost);
    assert_eq!(
        google.incremental_authorization,
        Some(IncrementalAuthorization {
            param: "include_granted_scopes".to_owned(),
            value: "true".to_owned()
        })
    );
    assert_eq!(
        google.authorization_params.get("access_type").map(String::as_str),
        Some("offline")
    );

    let microsoft = catalog.require("microsoft").expect("microsoft");
    assert_eq!(microsoft.required_scopes, set(&["offline_access", "User.Read"]));
    let google_required = set(&["openid", "https://www.googleapis.com/auth/userinfo.email"]);
    assert_eq!(
        catalog.require("google").unwrap().required_scopes,
        google_required,
        "the account is always learned"
    );
    assert!(microsoft.refresh_scope_narrowing);
    assert!(microsoft.incremental_authorization.is_none());

    let atlassian = catalog.require("atlassian").expect("atlassian");
    assert_eq!(atlassian.required_scopes, set(&["offline_access"]));
    assert_eq!(
        atlassian.authorization_params,
        [("audience", "api.atlassian.com"), ("prompt", "consent")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    );

    // A GitHub App with expiring user tokens: refresh tokens, no OAuth scopes.
    let github = catalog.require("github").expect("github");
    assert!(github.issues_refresh_tokens);
    assert!(!github.uses_scopes);
    assert!(!github.refresh_scope_narrowing);

    let slack = catalog.require("slack").expect("slack");
    assert_eq!(slack.scope_separator, ",");
    assert_eq!(slack.scope_param, "user_scope");
    assert_eq!(slack.token_response_object.as_deref(), Some("authed_user"));
    assert_eq!(slack.client_auth, ClientAuth::ClientSecretBasic);

    let notion = catalog.require("notion").expect("notion");
    assert!(!notion.uses_scopes);
    assert!(notion.allowed_scopes.is_empty());
    assert_eq!(notion.token_request_body, TokenRequestBody::Json);
    assert_eq!(notion.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(
        notion.authorization_params.get("owner").map(String::as_str),
        Some("user")
    );

    let dropbox = catalog.require("dropbox").expect("dropbox");
    assert_eq!(
        dropbox.incremental_authorization,
        Some(IncrementalAuthorization {
            param: "include_granted_scopes".to_owned(),
            value: "user".to_owned()
        })
    );
    assert_eq!(
        dropbox
            .authorization_params
            .get("token_access_type")
            .map(String::as_str),
        Some("offline")
    );
}

#[test]
fn shared_capability_names_exist_where_expected() {
    let catalog = builtin();
    let has = |provider: &str, capability: &str| {
        catalog
            .require(provider)
            .expect("built-in provider")
            .capabilities
            .contains_key(capability)
    };
    for provider in ["google", "microsoft"] {
        for capability in [
            "calendar.read",
            "calendar.write",
            "mail.read",
            "mail.send",
            "contacts.read",
        ] {
            assert!(has(provider, capability), "{provider} {capability}");
        }
    }
    for provider in ["google", "microsoft", "slack", "dropbox"] {
        assert!(has(provider, "files.read"), "{provider}");
        assert!(has(provider, "files.write"), "{provider}");
    }
    for provider in ["microsoft", "slack"] {
        assert!(has(provider, "chat.read"), "{provider}");
        assert!(has(provider, "chat.write"), "{provider}");
    }
    assert!(has("github", "repo.read"));
    assert!(has("github", "issues.write"));
    assert!(has("atlassian", "issues.write"));
    assert!(has("notion", "pages.read"));
    assert!(has("atlassian", "pages.read"));
}

#[test]
fn resolve_scopes_is_the_exact_union() {
    let catalog = builtin();
    let google = catalog.require("google").expect("google");
    let scopes = google
        .resolve_scopes(
            &strings(&["calendar.read", "mail.send"]),
            &strings(&["https://www.googleapis.com/auth/contacts.readonly"]),
        )
        .expect("resolves");
    assert_eq!(
        scopes,
        set(&[
            "https://www.googleapis.com/auth/calendar.events.readonly",
            "https://www.googleapis.com/auth/gmail.send",
            "https://www.googleapis.com/auth/contacts.readonly",
            // required_scopes: which account the grant is for.
            "openid",
            "https://www.googleapis.com/auth/userinfo.email",
        ])
    );

    // required_scopes are always added.
    let microsoft = catalog.require("microsoft").expect("microsoft");
    assert_eq!(
        microsoft
            .resolve_scopes(&strings(&["mail.send"]), &[])
            .expect("resolves"),
        set(&["Mail.Send", "User.Read", "offline_access"])
    );

    // Overlapping capabilities collapse to one scope.
    let overlapping = Catalog::from_toml_str(&format!("{MINIMAL}\"things.list\" = [\"read\"]\n")).expect("valid");
    assert_eq!(
        overlapping
            .require("acme")
            .expect("acme")
            .resolve_scopes(&strings(&["things.read", "things.list"]), &[])
            .expect("resolves"),
        set(&["read"])
    );

    // Explicit scopes only.
    let slack = catalog.require("slack").expect("slack");
    assert_eq!(
        slack
            .resolve_scopes(&[], &strings(&["chat:write", "users:read"]))
            .expect("resolves"),
        set(&["chat:write", "users:read"])
    );
    assert_eq!(
        slack.resolve_scopes(&strings(&["chat.read"]), &[]).expect("resolves"),
        set(&["channels:history", "groups:history", "im:history", "mpim:history"])
    );

    // A provider without scopes: a known capability resolves to nothing.
    let notion = catalog.require("notion").expect("notion");
    assert_eq!(
        notion.resolve_scopes(&strings(&["pages.read"]), &[]).expect("resolves"),
        BTreeSet::new()
    );
}

#[test]
fn resolve_scopes_errors() {
    let catalog = builtin();
    let google = catalog.require("google").expect("google");

    match google.resolve_scopes(&strings(&["calendar.read", "teleport"]), &[]) {
        Err(CatalogError::UnknownCapability { provider, capability }) => {
            assert_eq!(provider, "google");
            assert_eq!(capability, "teleport");
        }
        other => panic!("expected UnknownCapability, got {other:?}"),
    }

    // gmail's full-access scope is deliberately not on the allow-list.
    match google.resolve_scopes(&[], &strings(&["https://mail.google.com/"])) {
        Err(CatalogError::ScopeNotAllowed { provider, scope }) => {
            assert_eq!(provider, "google");
            assert_eq!(scope, "https://mail.google.com/");
        }
        other => panic!("expected ScopeNotAllowed, got {other:?}"),
    }

    match google.resolve_scopes(&[], &[]) {
        Err(CatalogError::NothingRequested { provider }) => assert_eq!(provider, "google"),
        other => panic!("expected NothingRequested, got {other:?}"),
    }

    let notion = catalog.require("notion").expect("notion");
    assert!(matches!(
        notion.resolve_scopes(&[], &strings(&["read_content"])),
        Err(CatalogError::ScopeNotAllowed { .. })
    ));

    let error = google
        .resolve_scopes(&strings(&["teleport"]), &[])
        .expect_err("unknown capability");
    assert_eq!(error.to_string(), "provider `google` has no capability `teleport`");
}

#[test]
fn require_unknown_provider() {
    match builtin().require("myspace") {
        Err(CatalogError::UnknownProvider { provider }) => assert_eq!(provider, "myspace"),
        other => panic!("expected UnknownProvider, got {other:?}"),
    }
    assert!(builtin().provider("myspace").is_none());
}

#[test]
fn scope_plan_incremental_asks_only_for_new_scopes() {
    let catalog = builtin();
    let google = catalog.require("google").expect("google");
    let events_ro = "https://www.googleapis.com/auth/calendar.events.readonly";
    let send = "https://www.googleapis.com/auth/gmail.send";
    let drive_ro = "https://www.googleapis.com/auth/drive.readonly";
    // Google's required scopes (which account the grant is for) are asked every time.
    let (openid, email) = ("openid", "https://www.googleapis.com/auth/userinfo.email");

    let plan = google.scope_plan(&set(&[events_ro, send]), &set(&[events_ro, drive_ro]));
    assert_eq!(
        plan,
        ScopePlan {
            ask: set(&[send, openid, email]),
            incremental: true
        }
    );

    // Nothing new: a re-consent for what was requested.
    let plan = google.scope_plan(&set(&[events_ro]), &set(&[events_ro, drive_ro]));
    assert_eq!(
        plan,
        ScopePlan {
            ask: set(&[events_ro, openid, email]),
            incremental: true
        }
    );

    let params = google.authorization_params_for(&ScopePlan {
        ask: set(&[send]),
        incremental: true,
    });
    assert_eq!(
        params,
        [
            ("access_type", "offline"),
            ("include_granted_scopes", "true"),
            ("prompt", "consent"),
            ("scope", send),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    );
}

#[test]
fn scope_plan_incremental_keeps_required_scopes() {
    let text = r#"
[providers.acme]
display_name = "Acme"
issuer = "https://id.acme.example"
incremental_authorization = { param = "include_granted_scopes", value = "true" }
required_scopes = ["offline_access"]
allowed_scopes = ["offline_access", "read", "write"]
[providers.acme.capabilities]
"things.read" = ["read"]
"things.write" = ["write"]
"#;
    let catalog = Catalog::from_toml_str(text).expect("valid");
    let acme = catalog.require("acme").expect("acme");
    let plan = acme.scope_plan(
        &set(&["offline_access", "read", "write"]),
        &set(&["offline_access", "read"]),
    );
    assert_eq!(plan.ask, set(&["offline_access", "write"]));
    assert!(plan.incremental);
}

#[test]
fn scope_plan_without_incremental_asks_for_the_union() {
    let catalog = builtin();
    let microsoft = catalog.require("microsoft").expect("microsoft");
    // `openid` was granted but is not on the allow-list: it is not asked again.
    let plan = microsoft.scope_plan(
        &set(&["Mail.Send", "offline_access"]),
        &set(&["Mail.Read", "offline_access", "openid"]),
    );
    assert_eq!(
        plan,
        ScopePlan {
            ask: set(&["Mail.Read", "Mail.Send", "User.Read", "offline_access"]),
            incremental: false
        }
    );
    assert_eq!(
        microsoft.authorization_params_for(&plan),
        [(
            "scope".to_owned(),
            "Mail.Read Mail.Send User.Read offline_access".to_owned()
        )]
        .into_iter()
        .collect()
    );

    let slack = catalog.require("slack").expect("slack");
    let plan = slack.scope_plan(&set(&["chat:write"]), &set(&["users:read"]));
    assert_eq!(plan.ask, set(&["chat:write", "users:read"]));
    assert!(!plan.incremental);
    assert_eq!(
        slack.authorization_params_for(&plan),
        [("user_scope".to_owned(), "chat:write,users:read".to_owned())]
            .into_iter()
            .collect()
    );

    // No scope parameter at all for a provider without scopes.
    let notion = catalog.require("notion").expect("notion");
    let plan = notion.scope_plan(&BTreeSet::new(), &BTreeSet::new());
    assert_eq!(
        notion.authorization_params_for(&plan),
        [("owner".to_owned(), "user".to_owned())].into_iter().collect()
    );
}

#[test]
fn join_and_split_scopes() {
    let catalog = builtin();
    let slack = catalog.require("slack").expect("slack");
    let google = catalog.require("google").expect("google");
    let github = catalog.require("github").expect("github");

    let scopes = set(&["users:read", "chat:write", "channels:history"]);
    assert_eq!(slack.join_scopes(&scopes), "channels:history,chat:write,users:read");
    assert_eq!(google.join_scopes(&set(&["b", "a"])), "a b");
    assert_eq!(google.join_scopes(&BTreeSet::new()), "");

    assert_eq!(
        slack.split_scopes("channels:history, chat:write  users:read,,"),
        set(&["channels:history", "chat:write", "users:read"])
    );
    assert_eq!(
        google.split_scopes(" openid  https://www.googleapis.com/auth/gmail.send\n"),
        set(&["openid", "https://www.googleapis.com/auth/gmail.send"])
    );
    // GitHub reports granted scopes comma-separated although it is asked space-separated.
    assert_eq!(github.split_scopes("repo,gist"), set(&["gist", "repo"]));
    assert_eq!(github.split_scopes(""), BTreeSet::new());

    // A separator other than space or comma is honoured too.
    let text = MINIMAL.replace(
        "display_name = \"Acme\"",
        "display_name = \"Acme\"\nscope_separator = \"+\"",
    );
    let catalog = Catalog::from_toml_str(&text).expect("valid");
    let acme = catalog.require("acme").expect("acme");
    assert_eq!(acme.join_scopes(&set(&["read", "write"])), "read+write");
    assert_eq!(acme.split_scopes("read+write"), set(&["read", "write"]));

    // Round trip.
    assert_eq!(slack.split_scopes(&slack.join_scopes(&scopes)), scopes);
}

#[test]
fn minimal_provider_takes_the_defaults() {
    let catalog = Catalog::from_toml_str(MINIMAL).expect("valid");
    let acme = catalog.require("acme").expect("acme");
    assert_eq!(acme.client_auth, ClientAuth::ClientSecretBasic);
    assert_eq!(acme.scope_separator, " ");
    assert_eq!(acme.scope_param, "scope");
    assert!(acme.uses_scopes);
    assert!(acme.issues_refresh_tokens);
    assert!(!acme.refresh_scope_narrowing);
    assert_eq!(acme.token_request_body, TokenRequestBody::Form);
    assert_eq!(acme.revocation_method, RevocationMethod::Rfc7009);
    assert_eq!(
        acme.revocation_url.as_ref().map(Url::as_str),
        Some("https://id.acme.example/revoke")
    );
    assert_eq!(acme.revocation_scope, RevocationScope::Token);
    assert!(!acme.reconsent_same_grant);
    assert!(acme.revoke_replaced_on_reconsent());
    assert!(acme.access_token_expires);
    assert!(acme.revocation_unsupported().is_none());
    assert_eq!(acme.docs_url, None);
    assert!(!acme.uses_discovery());
    assert_eq!(acme.refresh_rotation, RefreshRotation::Strict);
    assert_eq!(acme.refresh_idle_expiry_days, None);
    assert_eq!(acme.token_types, set(&["bearer"]));
}

#[test]
fn builtin_refresh_properties() {
    let catalog = builtin();
    let facts: Vec<(&str, RefreshRotation, Option<u32>)> = catalog
        .names()
        .map(|name| {
            let p = catalog.require(name).expect("built-in provider");
            (name, p.refresh_rotation, p.refresh_idle_expiry_days)
        })
        .collect();
    assert_eq!(
        facts,
        [
            ("airtable", RefreshRotation::Strict, Some(60)),
            ("asana", RefreshRotation::None, None),
            ("atlassian", RefreshRotation::Rotating, Some(90)),
            ("bitbucket", RefreshRotation::Strict, Some(90)),
            ("box", RefreshRotation::Strict, Some(60)),
            ("calendly", RefreshRotation::Strict, None),
            ("digitalocean", RefreshRotation::Strict, None),
            ("discord", RefreshRotation::Strict, None),
            ("dropbox", RefreshRotation::None, None),
            ("figma", RefreshRotation::None, None),
            ("github", RefreshRotation::Strict, None),
            ("gitlab", RefreshRotation::Strict, None),
            ("google", RefreshRotation::None, Some(180)),
            ("hubspot", RefreshRotation::None, None),
            ("linear", RefreshRotation::Strict, None),
            ("microsoft", RefreshRotation::Rotating, Some(90)),
            ("notion", RefreshRotation::Strict, None),
            ("salesforce", RefreshRotation::None, None),
            ("slack", RefreshRotation::Rotating, None),
            ("zoom", RefreshRotation::Strict, None),
        ]
    );
    assert_eq!(
        catalog.require("slack").expect("slack").token_types,
        set(&["bearer", "user"])
    );
}

#[test]
fn refresh_properties_need_refresh_tokens() {
    for (extra, expected) in [
        (
            "issues_refresh_tokens = false\nrefresh_rotation = \"strict\"",
            "`refresh_rotation` is set but `issues_refresh_tokens` is false",
        ),
        (
            "issues_refresh_tokens = false\nrefresh_idle_expiry_days = 30",
            "`refresh_idle_expiry_days` is set but `issues_refresh_tokens` is false",
        ),
        (
            "refresh_idle_expiry_days = 0",
            "`refresh_idle_expiry_days` must be at least 1",
        ),
        ("token_types = []", "`token_types` is empty"),
        (
            "issues_refresh_tokens = false\naccess_token_expires = false\nrefresh_url = \"https://id.acme.example/refresh\"",
            "`refresh_url` is set but the entry says `issues_refresh_tokens = false`",
        ),
        ("refresh_url = \"not a url\"", "`refresh_url`"),
        ("granted_scopes_member = \"a.b\"", "`granted_scopes_member`: `a.b` is not a JSON member name"),
    ] {
        let text = MINIMAL.replace("allowed_scopes", &format!("{extra}\nallowed_scopes"));
        let (provider, reason) = invalid_reason(&text);
        assert_eq!(provider, "acme");
        assert!(reason.contains(expected), "{extra}: {reason}");
    }
    let text = MINIMAL.replace(
        "allowed_scopes",
        "issues_refresh_tokens = false\naccess_token_expires = false\nallowed_scopes",
    );
    let acme = Catalog::from_toml_str(&text).expect("valid");
    assert_eq!(
        acme.require("acme").expect("acme").refresh_rotation,
        RefreshRotation::None
    );
}

#[test]
fn issuer_replaces_explicit_endpoints() {
    let text = r#"
[providers.corp-sso]
display_name = "Corp SSO"
issuer = "https://sso.corp.example/realms/main"
allowed_scopes = ["openid", "offline_access"]
"#;
    let catalog = Catalog::from_toml_str(text).expect("valid");
    let sso = catalog.require("corp-sso").expect("corp-sso");
    assert!(sso.uses_discovery());
    assert_eq!(
        sso.issuer.as_ref().map(Url::as_str),
        Some("https://sso.corp.example/realms/main")
    );
    assert_eq!(sso.authorization_url, None);
    assert_eq!(sso.token_url, None);
    assert!(sso.capabilities.is_empty());
    assert_eq!(
        sso.resolve_scopes(&[], &strings(&["openid"])).expect("resolves"),
        set(&["openid"])
    );
}

#[test]
fn generic_example_in_the_builtin_file_is_valid() {
    let begin = "# --- generic provider example (begin) ---";
    let end = "# --- generic provider example (end) ---";
    let start = BUILTIN_CATALOG.find(begin).expect("example start marker") + begin.len();
    let stop = BUILTIN_CATALOG.find(end).expect("example end marker");
    let example: String = BUILTIN_CATALOG[start..stop]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n");
    let catalog = Catalog::from_toml_str(&example).expect("the commented example is valid");
    let acme = catalog.require("acme").expect("acme");
    assert!(acme.uses_discovery());
    assert_eq!(
        acme.resolve_scopes(&strings(&["tickets.read"]), &[]).expect("resolves"),
        set(&["offline_access", "tickets:read"])
    );
}

#[test]
fn http_is_refused_for_public_hosts() {
    let text = MINIMAL.replace("https://id.acme.example/token", "http://id.acme.example/token");
    let (provider, reason) = invalid_reason(&text);
    assert_eq!(provider, "acme");
    assert!(reason.contains("`token_url`"), "{reason}");
    assert!(reason.contains("https"), "{reason}");

    for host in ["127.0.0.1:8080", "localhost:9000", "[::1]"] {
        let text = MINIMAL
            .replace("https://id.acme.example/token", &format!("http://{host}/token"))
            .replace("https://id.acme.example/authorize", &format!("http://{host}/authorize"));
        let catalog = Catalog::from_toml_str(&text).expect("loopback http is allowed");
        let acme = catalog.require("acme").expect("acme");
        assert_eq!(acme.token_url.as_ref().map(Url::scheme), Some("http"));
    }

    let text = MINIMAL.replace("https://id.acme.example/authorize", "ftp://id.acme.example/authorize");
    let (_, reason) = invalid_reason(&text);
    assert!(reason.contains("`authorization_url`"), "{reason}");
}

#[test]
fn capability_scope_must_be_allowed() {
    let text = MINIMAL.replace(r#""things.read" = ["read"]"#, r#""things.read" = ["read", "admin"]"#);
    let (provider, reason) = invalid_reason(&text);
    assert_eq!(provider, "acme");
    assert!(reason.contains("things.read"), "{reason}");
    assert!(reason.contains("`admin`"), "{reason}");
    assert!(reason.contains("allowed_scopes"), "{reason}");
}

#[test]
fn required_scope_must_be_allowed() {
    let text = MINIMAL.replace(
        "allowed_scopes = [\"read\", \"write\"]",
        "allowed_scopes = [\"read\", \"write\"]\nrequired_scopes = [\"offline_access\"]",
    );
    let (_, reason) = invalid_reason(&text);
    assert!(reason.contains("`required_scopes`"), "{reason}");
    assert!(reason.contains("offline_access"), "{reason}");
}

#[test]
fn client_secrets_are_not_catalog_data() {
    let text = MINIMAL.replace(
        "display_name = \"Acme\"",
        "display_name = \"Acme\"\nclient_secret = \"hunter2\"",
    );
    match Catalog::from_toml_str(&text) {
        Err(error @ CatalogError::Parse { .. }) => {
            let CatalogError::Parse { origin, line, .. } = &error else {
                unreachable!()
            };
            assert_eq!(origin, "(text)");
            assert!(line.is_some(), "the line is named");
            let message = error.to_string();
            assert!(message.contains("unknown field `client_secret`"), "{message}");
            assert!(
                !message.contains("hunter2"),
                "the misplaced secret is not quoted: {message}"
            );
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    let text = MINIMAL.replace("display_name = \"Acme\"", "display_name = \"Acme\"\nclient_id = \"x\"");
    assert!(matches!(Catalog::from_toml_str(&text), Err(CatalogError::Parse { .. })));
    // Unknown top-level keys too.
    assert!(matches!(
        Catalog::from_toml_str("provider = {}"),
        Err(CatalogError::Parse { .. })
    ));
}

#[test]
fn other_invalid_catalogs() {
    let cases: &[(&str, &str, &str)] = &[
        // (text to replace in MINIMAL, replacement, expected words of the reason)
        (
            "\"things.read\" = [\"read\"]",
            "\"Things Read\" = [\"read\"]",
            "capability name",
        ),
        (
            "\"things.read\" = [\"read\"]",
            "\"things.read\" = []",
            "maps to no scope",
        ),
        (
            "token_url = \"https://id.acme.example/token\"",
            "",
            "`token_url` is required",
        ),
        (
            "authorization_url = \"https://id.acme.example/authorize\"",
            "",
            "`authorization_url` is required",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nscope_separator = \"\"",
            "`scope_separator` is empty",
        ),
        (
            "allowed_scopes = [\"read\", \"write\"]",
            "allowed_scopes = [\"read\", \"wr ite\"]",
            "not a valid scope",
        ),
        (
            "allowed_scopes = [\"read\", \"write\"]",
            "allowed_scopes = [\"read\", \"a,b\"]",
            "not a valid scope",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nauthorization_params = { redirect_uri = \"https://evil.example/\" }",
            "`authorization_params`",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nissues_refresh_tokens = false\naccess_token_expires = true\nrefresh_scope_narrowing = true",
            "refresh_scope_narrowing",
        ),
                (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nuses_scopes = false",
            "`uses_scopes` is false",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nrequest_headers = { Authorization = \"Bearer x\" }",
            "`request_headers`",
        ),
        (
            "token_url = \"https://id.acme.example/token\"",
            "token_url = \"https://id.acme.example/token#frag\"",
            "fragment",
        ),
        (
            "token_url = \"https://id.acme.example/token\"",
            "token_url = \"https://user:pw@id.acme.example/token\"",
            "credentials",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \" \"",
            "`display_name` is empty",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(MINIMAL.contains(from), "case does not apply: {from}");
        let text = MINIMAL.replace(from, to);
        match Catalog::from_toml_str(&text) {
            Err(CatalogError::Invalid { reason, .. }) => {
                assert!(reason.contains(expected), "{expected:?} not in {reason:?}")
            }
            other => panic!("{to:?}: expected Invalid, got {other:?}"),
        }
    }

    let (provider, reason) = invalid_reason(&MINIMAL.replace("providers.acme", "providers.\"Acme Corp\""));
    assert_eq!(provider, "Acme Corp");
    assert!(reason.contains("provider name"), "{reason}");

    let (_, reason) = invalid_reason(
        r#"
[providers.empty]
display_name = "Empty"
issuer = "https://id.example"
"#,
    );
    assert!(reason.contains("nothing could ever be requested"), "{reason}");

    let (_, reason) = invalid_reason(
        r#"
[providers.odd]
display_name = "Odd"
issuer = "https://id.example/?tenant=x"
allowed_scopes = ["a"]
"#,
    );
    assert!(reason.contains("`issuer` must not have a query"), "{reason}");
}

#[test]
fn error_messages_name_provider_and_field() {
    let text = MINIMAL.replace("https://id.acme.example/token", "http://id.acme.example/token");
    let error = Catalog::from_toml_str(&text).expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "provider `acme`: `token_url` must use https (plain http is allowed only for localhost and 127.0.0.1): http://id.acme.example/token"
    );
}

#[test]
fn merge_replaces_whole_providers_by_name() {
    let mut catalog = builtin();
    let overrides = Catalog::from_toml_str(
        r#"
[providers.github]
display_name = "GitHub Enterprise"
authorization_url = "https://github.corp.example/login/oauth/authorize"
token_url = "https://github.corp.example/login/oauth/access_token"
revocation_url = "https://github.corp.example/api/v3/applications/{client_id}/grant"
revocation_method = "github_grant"
issues_refresh_tokens = false
access_token_expires = false
allowed_scopes = ["repo"]
[providers.github.capabilities]
"repo.read" = ["repo"]

[providers.acme]
display_name = "Acme"
issuer = "https://id.acme.example"
allowed_scopes = ["read"]
"#,
    )
    .expect("valid overrides");
    let google_before = catalog.require("google").expect("google").clone();

    catalog.merge(overrides);

    assert_eq!(catalog.len(), PRESETS.len() + 1);
    let github = catalog.require("github").expect("github");
    assert_eq!(github.display_name, "GitHub Enterprise");
    assert_eq!(
        github.token_url.as_ref().map(Url::as_str),
        Some("https://github.corp.example/login/oauth/access_token")
    );
    // Replaced whole: the built-in capabilities are gone, defaults apply.
    assert_eq!(
        github.capabilities.keys().map(String::as_str).collect::<Vec<_>>(),
        ["repo.read"]
    );
    assert_eq!(github.client_auth, ClientAuth::ClientSecretBasic);
    assert!(catalog.provider("acme").is_some());
    assert_eq!(catalog.require("google").expect("google"), &google_before);
}

#[test]
fn from_file_reads_and_reports_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("providers.toml");
    std::fs::write(&path, MINIMAL).expect("write");
    let catalog = Catalog::from_file(&path).expect("valid file");
    assert_eq!(catalog.names().collect::<Vec<_>>(), ["acme"]);

    let missing = dir.path().join("missing.toml");
    match Catalog::from_file(&missing) {
        Err(CatalogError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }

    std::fs::write(&path, "[providers.acme\n").expect("write");
    match Catalog::from_file(&path) {
        Err(CatalogError::Parse { origin, .. }) => assert_eq!(origin, path.display().to_string()),
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn empty_text_is_an_empty_catalog() {
    let catalog = Catalog::from_toml_str("").expect("valid");
    assert!(catalog.is_empty());
    assert_eq!(catalog, Catalog::default());
}

// ---------------------------------------------------------------------------
// New presets, account identity, API hosts, base URLs and the checker.

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/providers/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each preset's documented account: the subject and display read from its
/// recorded sample (the endpoint answer, or the token response).
const ACCOUNTS: &[(&str, &str, Option<&str>)] = &[
    ("airtable", "usrL2PNC5o3H4lBEi", Some("foo@bar.com")),
    ("asana", "4673218951", Some("gsanchez@example.com")),
    ("atlassian", "112233:aaaa-bbbb", Some("ada@example.com")),
    ("bitbucket", "{d301aafa-d676-4ee0-88be-962be7417567}", Some("evzijst")),
    ("box", "11446498", Some("ceo@example.com")),
    ("calendly", "https://api.calendly.com/users/EBHAAFHDCAEQTSEZ", None),
    (
        "digitalocean",
        "e028b1b918853eca7fba208a9d7e9d29a6e93c57",
        Some("sammy@digitalocean.com"),
    ),
    ("discord", "80351110224678912", Some("nelly")),
    ("dropbox", "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc", None),
    ("figma", "1234567890123456789", Some("ada@example.com")),
    ("github", "1", Some("octocat")),
    ("gitlab", "1", Some("john_smith")),
    ("google", "110169484474386276334", Some("ada@example.com")),
    ("hubspot", "62515", None),
    (
        "linear",
        "8c7d6e5f-4a3b-2c1d-0e9f-8a7b6c5d4e3f/2f3e9a64-8b1c-4f3b-9f5e-0e1d2c3b4a59",
        Some("ada@example.com"),
    ),
    (
        "microsoft",
        "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
        Some("ada@contoso.com"),
    ),
    (
        "notion",
        "j565j4d7x3-2882-61bs-564a-jj9d9ui-c36hxfr7x/4a7b6b41-20a1-4c0e-a0b0-2c4b8b1e8f4b",
        Some("Ada Lovelace"),
    ),
    (
        "salesforce",
        "https://login.salesforce.com/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS",
        None,
    ),
    ("slack", "T9TK3CUKW/U1234", None),
    (
        "zoom",
        "Lis74jnRQbaVa_vWaSH3gQ/KDcuGIm1QgePTO8WbOqwIQ",
        Some("ada@example.com"),
    ),
];

#[test]
fn every_preset_reads_its_account_from_the_documented_sample() {
    let catalog = builtin();
    assert_eq!(
        ACCOUNTS.iter().map(|(name, ..)| *name).collect::<Vec<_>>(),
        PRESETS,
        "one sample per preset"
    );
    for (name, subject, display) in ACCOUNTS {
        let provider = catalog.require(name).expect("preset");
        let source = provider
            .account
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no account source"));
        let document = match source {
            AccountSource::Endpoint { .. } => fixture(&format!("{name}.account.json")),
            AccountSource::TokenResponse { .. } => fixture(&format!("{name}.token.json")),
            AccountSource::IdToken { .. } => panic!("{name}: no preset uses the ID token yet"),
        };
        let identity = source.extract(&document).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(identity.subject, *subject, "{name}");
        assert_eq!(identity.display.as_deref(), *display, "{name}");
        // The subject is what makes the account: without it, a clear error.
        let pointer = source.subject_pointers()[0].clone();
        let mut broken = document.clone();
        let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
        let holder = if parent.is_empty() {
            Some(&mut broken)
        } else {
            broken.pointer_mut(parent)
        };
        holder.and_then(|v| v.as_object_mut()).expect("an object").remove(last);
        let error = source.extract(&broken).expect_err("no subject");
        assert!(
            error.to_string().contains(&pointer) && error.to_string().contains(source.document()),
            "{name}: {error}"
        );
    }
}

#[test]
fn every_preset_is_complete() {
    let catalog = builtin();
    for provider in catalog.providers() {
        let name = &provider.name;
        assert!(!provider.api_hosts.is_empty(), "{name}: api_hosts");
        assert!(provider.account.is_some(), "{name}: account");
        let registration = provider.registration_url.as_ref().expect("registration_url");
        assert_eq!(registration.scheme(), "https", "{name}");
        assert!(provider.refresh_rotation_explicit, "{name}: refresh_rotation");
        for url in [
            &provider.authorization_url,
            &provider.token_url,
            &provider.revocation_url,
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(url.scheme(), "https", "{name}: {url}");
        }
    }
    let gitlab = catalog.require("gitlab").expect("gitlab");
    assert_eq!(gitlab.base_url.as_ref().map(Url::as_str), Some("https://gitlab.com/"));
    assert_eq!(
        gitlab.authorization_url.as_ref().map(Url::as_str),
        Some("https://gitlab.com/oauth/authorize")
    );
    assert_eq!(gitlab.api_hosts, ["gitlab.com"]);
    assert_eq!(
        catalog.require("salesforce").expect("salesforce").api_hosts,
        ["*.my.salesforce.com"]
    );
}

#[test]
fn self_managed_gitlab_is_a_preset_with_a_base_url() {
    let mut catalog = builtin();
    let operator = Catalog::from_toml_str(
        r#"
[providers.gitlab_acme]
preset = "gitlab"
display_name = "GitLab (Acme)"
base_url = "https://git.acme.example:8443/gitlab"
"#,
    )
    .expect("a preset with a base URL is valid");
    catalog.merge(operator);
    let acme = catalog.require("gitlab_acme").expect("gitlab_acme");
    let gitlab = catalog.require("gitlab").expect("gitlab");
    assert_eq!(acme.display_name, "GitLab (Acme)");
    assert_eq!(
        acme.token_url.as_ref().map(Url::as_str),
        Some("https://git.acme.example:8443/gitlab/oauth/token")
    );
    assert_eq!(
        acme.revocation_url.as_ref().map(Url::as_str),
        Some("https://git.acme.example:8443/gitlab/oauth/revoke")
    );
    assert_eq!(acme.api_hosts, ["git.acme.example:8443"]);
    match &acme.account {
        Some(AccountSource::Endpoint { url, .. }) => {
            assert_eq!(url.as_str(), "https://git.acme.example:8443/gitlab/api/v4/user")
        }
        other => panic!("{other:?}"),
    }
    // Everything else is the preset's.
    assert_eq!(acme.capabilities, gitlab.capabilities);
    assert_eq!(acme.allowed_scopes, gitlab.allowed_scopes);
    assert_eq!(acme.refresh_rotation, gitlab.refresh_rotation);

    // A preset that does not exist, and a placeholder without a base URL.
    let (provider, reason) = invalid_reason("[providers.x]\npreset = \"nope\"\n");
    assert_eq!(provider, "x");
    assert!(reason.contains("no built-in provider `nope`"), "{reason}");
    let (_, reason) = invalid_reason(&MINIMAL.replace(
        "token_url = \"https://id.acme.example/token\"",
        "token_url = \"{base_url}/token\"",
    ));
    assert!(reason.contains("`token_url` uses `{base_url}`"), "{reason}");
    let (_, reason) = invalid_reason(&MINIMAL.replace(
        "display_name = \"Acme\"",
        "display_name = \"Acme\"\nbase_url = \"http://gitlab.example\"",
    ));
    assert!(reason.contains("`base_url` must use https"), "{reason}");
}

#[test]
fn account_and_api_hosts_are_validated() {
    let with = |extra: &str| {
        MINIMAL.replace(
            "[providers.acme.capabilities]",
            &format!("{extra}\n[providers.acme.capabilities]"),
        )
    };
    let cases: &[(&str, &str)] = &[
        ("api_hosts = [\"API.Example.com\"]", "lower-case host name"),
        ("api_hosts = [\"https://api.example.com\"]", "lower-case host name"),
        ("api_hosts = [\"api.example.com\", \"api.example.com\"]", "listed twice"),
        ("api_hosts = [\"api.example.com:99999\"]", "lower-case host name"),
        ("[providers.acme.account]\nsource = \"endpoint\"\nsubject = [\"/id\"]", "needs `url`"),
        (
            "[providers.acme.account]\nsource = \"endpoint\"\nurl = \"https://api.example.com/me\"",
            "needs `subject`",
        ),
        (
            "[providers.acme.account]\nsource = \"endpoint\"\nurl = \"http://api.example.com/me\"\nsubject = [\"/id\"]",
            "`account.url` must use https",
        ),
        (
            "[providers.acme.account]\nsource = \"token_response\"\nsubject = [\"user.id\"]",
            "not a JSON pointer",
        ),
        ("[providers.acme.account]\nsource = \"token_response\"", "needs `subject`"),
        (
            "[providers.acme.account]\nsource = \"id_token\"\nsubject = [\"/sub\"]",
            "source \"id_token\" takes its subject",
        ),
        (
            "[providers.acme.account]\nsource = \"endpoint\"\nurl = \"https://api.example.com/graphql\"\nbody = \"{}\"\nsubject = [\"/id\"]",
            "`account.method` is not \"POST\"",
        ),
        (
            "[providers.acme.account]\nsource = \"endpoint\"\nmethod = \"POST\"\nurl = \"https://api.example.com/graphql\"\nbody = \"{not json\"\nsubject = [\"/id\"]",
            "`account.body` is not JSON",
        ),
    ];
    for (extra, expected) in cases {
        let (_, reason) = invalid_reason(&with(extra));
        assert!(reason.contains(expected), "{extra}: {expected:?} not in {reason:?}");
    }
    let text = with("api_hosts = [\"*.my.example.com\", \"127.0.0.1:8080\", \"localhost\"]\n[providers.acme.account]\nsource = \"id_token\"");
    assert!(
        Catalog::from_toml_str(&text).is_err(),
        "an IP address is not a host name"
    );
    let text = with("api_hosts = [\"*.my.example.com\", \"api.example.com:8443\", \"localhost\"]\n[providers.acme.account]\nsource = \"id_token\"");
    let catalog = Catalog::from_toml_str(&text).expect("valid");
    let acme = catalog.require("acme").expect("acme");
    assert_eq!(
        acme.api_hosts,
        ["*.my.example.com", "api.example.com:8443", "localhost"]
    );
    assert_eq!(
        acme.account,
        Some(AccountSource::IdToken {
            display: "email".to_owned()
        })
    );
}

#[test]
fn checker_passes_the_builtin_catalog() {
    let report = check::check_builtin();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.providers, PRESETS);
    assert!(report.to_string().contains("20 providers, no problems"), "{report}");
}

/// A complete operator entry, as the checker wants it.
const COMPLETE: &str = r#"
[providers.acme]
display_name = "Acme"
docs_url = "https://id.acme.example/docs"
registration_url = "https://id.acme.example/apps"
authorization_url = "https://id.acme.example/authorize"
token_url = "https://id.acme.example/token"
revocation_url = "https://id.acme.example/revoke"
refresh_rotation = "rotating"
api_hosts = ["api.acme.example"]
allowed_scopes = ["read", "write"]
[providers.acme.account]
source = "endpoint"
url = "https://api.acme.example/me"
subject = ["/id"]
[providers.acme.capabilities]
"things.read" = ["read"]
"#;

fn problems(text: &str) -> Vec<String> {
    let report = check::check_text(text, "(test)");
    report.problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn checker_rejects_each_kind_of_incomplete_entry() {
    assert!(problems(COMPLETE).is_empty(), "{:?}", problems(COMPLETE));
    let cases: &[(&str, &str, &str)] = &[
        // (text to replace in COMPLETE, replacement, expected words)
        (
            "docs_url = \"https://id.acme.example/docs\"\n",
            "",
            "provider `acme`: `docs_url` is missing",
        ),
        (
            "registration_url = \"https://id.acme.example/apps\"\n",
            "",
            "provider `acme`: `registration_url` is missing",
        ),
        (
            "api_hosts = [\"api.acme.example\"]\n",
            "",
            "provider `acme`: `api_hosts` is missing",
        ),
        (
            "[providers.acme.account]\nsource = \"endpoint\"\nurl = \"https://api.acme.example/me\"\nsubject = [\"/id\"]\n",
            "",
            "provider `acme`: `account` is missing",
        ),
        (
            "refresh_rotation = \"rotating\"\n",
            "",
            "provider `acme`: `refresh_rotation` is not stated",
        ),
        (
            "revocation_url = \"https://id.acme.example/revoke\"\n",
            "",
            "provider `acme`: no revocation decision",
        ),
        (
            "token_url = \"https://id.acme.example/token\"",
            "token_url = \"http://127.0.0.1:9/token\"",
            "provider `acme`: `token_url` must use https in a catalog meant for production",
        ),
        (
            "token_url = \"https://id.acme.example/token\"",
            "token_url = \"http://id.acme.example/token\"",
            "provider `acme`: `token_url` must use https",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nclient_secret = \"hunter2\"",
            "provider `acme`: `client_secret`: client credentials are not catalog data",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nclient_id = \"abc\"",
            "provider `acme`: `client_id`: client credentials are not catalog data",
        ),
        (
            "\"things.read\" = [\"read\"]",
            "\"things.read\" = [\"admin\"]",
            "provider `acme`: `capabilities.\"things.read\"`: scope `admin` is not in `allowed_scopes`",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\nscopes = [\"read\"]",
            "provider `acme`: unknown field `scopes`",
        ),
        (
            "display_name = \"Acme\"",
            "display_name = \"Acme\"\npreset = \"nope\"",
            "provider `acme`: `preset`: there is no built-in provider `nope`",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(COMPLETE.contains(from), "case does not apply: {from}");
        let found = problems(&COMPLETE.replace(from, to));
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{expected:?} not in {found:?}"
        );
    }
    // The secret is reported and never echoed.
    let found = problems(&COMPLETE.replace(
        "display_name = \"Acme\"",
        "display_name = \"Acme\"\nclient_secret = \"hunter2\"",
    ));
    assert!(found.iter().all(|p| !p.contains("hunter2")), "{found:?}");
}

#[test]
fn checker_reports_every_problem_at_once() {
    let text = format!(
        "{}\n{}",
        COMPLETE
            .replace("docs_url = \"https://id.acme.example/docs\"\n", "")
            .replace(
                "\"things.read\" = [\"read\"]",
                "\"things.read\" = [\"admin\"]\n\"Bad Name\" = [\"read\"]"
            )
            .replace(
                "token_url = \"https://id.acme.example/token\"",
                "token_url = \"ftp://id.acme.example/token\""
            ),
        r#"
[providers.globex]
display_name = ""
client_secret = "s"
authorization_url = "https://globex.example/authorize"
token_url = "https://globex.example/token"
revocation_method = "unsupported"
allowed_scopes = ["a"]

[providers.initech]
display_name = "Initech"
unknown_thing = 1
"#
    );
    let report = check::check_text(&text, "(test)");
    assert_eq!(report.providers, ["acme", "globex", "initech"]);
    let acme: Vec<String> = report.problems_of("acme").map(|p| p.message.clone()).collect();
    assert!(
        acme.iter().any(|m| m.contains("`token_url` must use https")),
        "{acme:?}"
    );
    assert!(
        acme.iter()
            .any(|m| m.contains("scope `admin` is not in `allowed_scopes`")),
        "{acme:?}"
    );
    assert!(
        acme.iter()
            .any(|m| m.contains("`Bad Name` is not a valid capability name")),
        "{acme:?}"
    );
    let globex: Vec<String> = report.problems_of("globex").map(|p| p.message.clone()).collect();
    for expected in [
        "`client_secret`",
        "`display_name` is empty",
        "`revocation_unsupported_reason` is required",
    ] {
        assert!(
            globex.iter().any(|m| m.contains(expected)),
            "{expected} not in {globex:?}"
        );
    }
    let initech: Vec<String> = report.problems_of("initech").map(|p| p.message.clone()).collect();
    assert!(
        initech.iter().any(|m| m.contains("unknown field `unknown_thing`")),
        "{initech:?}"
    );
    assert!(!report.is_ok());
    assert!(report
        .to_string()
        .ends_with(&format!("(test): {} problems in 3 providers\n", report.problems.len())));

    // Problems of the file itself.
    let report = check::check_text("colour = 1\n[providers]\n", "(test)");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(report.problems[0]
        .to_string()
        .contains("unknown top-level key `colour`"));
    let report = check::check_text("[providers.x\n", "(test)");
    assert!(report.problems[0].message.starts_with("not a TOML catalog"), "{report}");
}
