//! Client authentication at `/token` and `/revoke` (RFC 6749 §2.3.1:
//! `client_secret_basic` and `client_secret_post`), and the form body both
//! endpoints require.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};

use super::config::{ClientAuthMethod, FakeProviderConfig};
use super::params::Params;
use super::responses::OAuthError;

fn invalid_client(description: &'static str) -> OAuthError {
    OAuthError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description,
    }
}

/// Token and revocation requests must be `application/x-www-form-urlencoded`.
pub(super) fn check_form(headers: &HeaderMap) -> Result<(), OAuthError> {
    let is_form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if is_form {
        Ok(())
    } else {
        Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "body must be application/x-www-form-urlencoded",
        })
    }
}

/// Client authentication per RFC 6749 §2.3.1; returns the client id.
pub(super) fn authenticate_client(
    config: &FakeProviderConfig,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
        })
        .map(parse_basic);
    let body_secret = params.get("client_secret");
    let body_id = params.get("client_id");

    if basic.is_some() && body_secret.is_some() {
        return Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "more than one client authentication method",
        });
    }
    let allows_basic = matches!(config.client_auth, ClientAuthMethod::Basic | ClientAuthMethod::Either);
    let allows_post = matches!(config.client_auth, ClientAuthMethod::Post | ClientAuthMethod::Either);
    match (basic, body_secret) {
        (Some(_), _) if !allows_basic => Err(invalid_client("client_secret_basic is not allowed for this client")),
        (Some(None), _) => Err(invalid_client("malformed Basic credentials")),
        (Some(Some((id, secret))), _) => {
            if id != config.client_id || secret != config.client_secret {
                Err(invalid_client("client authentication failed"))
            } else if body_id.is_some_and(|body_id| body_id != id) {
                Err(invalid_client("client_id does not match the credentials"))
            } else {
                Ok(id)
            }
        }
        (None, Some(_)) if !allows_post => Err(invalid_client("client_secret_post is not allowed for this client")),
        (None, Some(secret)) => match body_id {
            Some(id) if id == config.client_id && secret == config.client_secret => Ok(id.to_owned()),
            _ => Err(invalid_client("client authentication failed")),
        },
        (None, None) => Err(invalid_client("client authentication required")),
    }
}

/// Decodes `base64(urlencode(id) ":" urlencode(secret))`.
pub(super) fn parse_basic(credentials: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(credentials).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn form_decode(input: &str) -> Option<String> {
    let mut bytes = input.bytes();
    let mut out = Vec::with_capacity(input.len());
    while let Some(byte) = bytes.next() {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}
