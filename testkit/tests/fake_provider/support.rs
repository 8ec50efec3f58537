//! Helpers: an authorization URL as tokenvault would build it, raw token and
//! revocation requests, and their answers; and, for every test module, the
//! names the tests use (as `use super::*` gave them inside the crate).

pub use axum::body::Bytes;
pub use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use base64::Engine as _;
pub use chrono::{TimeDelta, Utc};
pub use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
pub use http::HeaderMap;
pub use sha2::{Digest as _, Sha256};
pub use std::time::{Duration, Instant};
pub use tokenvault_testkit::fake_provider::*;
pub use url::Url;

pub const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback?tenant=t1";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

pub fn auth_url(p: &FakeProvider, scope: &str, extra: &[(&str, &str)]) -> String {
    let mut url = p.authorization_url();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "test-client")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", "st-123")
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256")
        .append_pair("access_type", "offline");
    for (key, value) in extra {
        url.query_pairs_mut().append_pair(key, value);
    }
    url.to_string()
}

pub fn query(url: &Url, key: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
    pub fn str(&self, key: &str) -> String {
        self.json()[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {}", self.json()))
            .to_owned()
    }
    pub fn header(&self, name: http::HeaderName) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

pub async fn post(url: Url, pairs: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(pairs));
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

pub const BASIC: Option<(&str, &str)> = Some(("test-client", "test-secret"));

pub async fn get_code(p: &FakeProvider, scope: &str) -> String {
    let location = p.approve(&auth_url(p, scope, &[])).await.unwrap();
    query(&location, "code").unwrap()
}

pub async fn exchange(p: &FakeProvider, code: &str, verifier: &str) -> Answer {
    let pairs = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    post(p.token_url(), &pairs, BASIC).await
}

pub async fn refresh_with(p: &FakeProvider, refresh_token: &str, scope: Option<&str>) -> Answer {
    let mut pairs = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
    if let Some(scope) = scope {
        pairs.push(("scope", scope));
    }
    post(p.token_url(), &pairs, BASIC).await
}

/// Code flow; returns (access_token, refresh_token).
pub async fn tokens(p: &FakeProvider, scope: &str) -> (String, String) {
    let code = get_code(p, scope).await;
    let answer = exchange(p, &code, VERIFIER).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    (answer.str("access_token"), answer.str("refresh_token"))
}

pub async fn start() -> FakeProvider {
    FakeProvider::start(FakeProviderConfig::default()).await.unwrap()
}

pub fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}
