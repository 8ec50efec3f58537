//! The user's browser at the fake: [`FakeProvider::approve`] follows an
//! authorization URL one hop and hands back where the fake redirects.

use http::header::LOCATION;
use url::Url;

use super::FakeProvider;

/// Errors of [`FakeProvider::approve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FakeError {
    /// The authorization URL does not parse.
    #[error("authorization URL is not a valid URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// The authorization URL points somewhere other than this fake.
    #[error("authorization URL does not point at this fake provider (expected origin {expected})")]
    ForeignUrl {
        /// This fake's base URL.
        expected: String,
    },
    /// The HTTP request failed.
    #[error("request to the fake provider failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The fake answered without redirecting (e.g. 400 for an unknown client).
    #[error("the fake provider answered {status} instead of redirecting: {body}")]
    NoRedirect {
        /// HTTP status of the answer.
        status: u16,
        /// Body of the answer.
        body: String,
    },
    /// The redirect's `Location` is missing or not a URL.
    #[error("the fake provider redirected to an invalid location: {0}")]
    BadLocation(String),
}

impl FakeProvider {
    /// Acts as the user's browser: GETs the authorization URL tokenvault
    /// produced (no redirect following) and returns the `Location` it
    /// redirects to (`redirect_uri?code=..&state=..` or
    /// `?error=access_denied&state=..`). The URL must point at this fake.
    pub async fn approve(&self, authorization_url: &str) -> Result<Url, FakeError> {
        let url = Url::parse(authorization_url)?;
        if url.origin() != self.base_url.origin() {
            return Err(FakeError::ForeignUrl {
                expected: self.base_url.to_string(),
            });
        }
        let response = self.browser.get(url.clone()).send().await?;
        let status = response.status();
        if !status.is_redirection() {
            let body = response.text().await.unwrap_or_default();
            return Err(FakeError::NoRedirect {
                status: status.as_u16(),
                body,
            });
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| FakeError::BadLocation("no Location header".to_owned()))?;
        url.join(location)
            .map_err(|e| FakeError::BadLocation(format!("{location}: {e}")))
    }
}
