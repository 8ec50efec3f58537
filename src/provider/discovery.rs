//! Endpoint discovery from an issuer: OpenID Connect Discovery 1.0
//! (`/.well-known/openid-configuration`), then RFC 8414 authorization-server
//! metadata (`/.well-known/oauth-authorization-server`).

use super::http::ProviderHttp;
use super::Endpoints;
use url::Url;

fn well_known(issuer: &Url, suffix: &str, insert_before_path: bool) -> Option<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut url = issuer.clone();
    if insert_before_path {
        // RFC 8414 §3.1: the well-known segment goes between host and path.
        url.set_path(&format!("/.well-known/{suffix}{path}"));
    } else {
        url.set_path(&format!("{path}/.well-known/{suffix}"));
    }
    Some(url)
}

fn endpoint(document: &serde_json::Value, field: &str) -> Result<Option<Url>, String> {
    let Some(text) = document.get(field).and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let url = Url::parse(text).map_err(|_| format!("`{field}` is not a URL"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!("`{field}` must be https"));
    }
    Ok(Some(url))
}

/// Reads the issuer's metadata and returns its endpoints.
pub async fn discover(http: &ProviderHttp, issuer: &Url) -> Result<Endpoints, String> {
    let candidates = [
        well_known(issuer, "openid-configuration", false),
        well_known(issuer, "oauth-authorization-server", true),
    ];
    let mut last_error = String::from("no metadata document found");
    for url in candidates.into_iter().flatten() {
        let document = match http.get_json(url.as_str()).await {
            Ok(document) => document,
            Err(error) => {
                last_error = format!("{url}: {error}");
                continue;
            }
        };
        let stated = document.get("issuer").and_then(|v| v.as_str()).unwrap_or_default();
        if stated.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
            return Err(format!("{url}: metadata names issuer `{stated}`, expected `{issuer}`"));
        }
        let authorization = endpoint(&document, "authorization_endpoint")?
            .ok_or_else(|| format!("{url}: no authorization_endpoint"))?;
        let token = endpoint(&document, "token_endpoint")?.ok_or_else(|| format!("{url}: no token_endpoint"))?;
        let revocation = endpoint(&document, "revocation_endpoint")?;
        let iss_parameter_supported = document
            .get("authorization_response_iss_parameter_supported")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        return Ok(Endpoints {
            authorization,
            token,
            revocation,
            iss_parameter_supported,
        });
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        let issuer = Url::parse("https://login.example.com/tenant").unwrap();
        assert_eq!(
            well_known(&issuer, "openid-configuration", false).unwrap().as_str(),
            "https://login.example.com/tenant/.well-known/openid-configuration"
        );
        assert_eq!(
            well_known(&issuer, "oauth-authorization-server", true)
                .unwrap()
                .as_str(),
            "https://login.example.com/.well-known/oauth-authorization-server/tenant"
        );
    }
}
