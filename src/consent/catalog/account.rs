//! Where a provider tells which upstream account a grant belongs to, and the
//! pure extraction of that account from the document that carries it.
//!
//! Each catalog entry names one source (`[providers.<name>.account]`):
//!
//! - `source = "id_token"`: the OpenID Connect ID token's claims; the subject
//!   is `iss` and `sub`, the display the `email` claim (or `display`);
//! - `source = "endpoint"`: a JSON document fetched with the new access token
//!   (`url`, `method`, an optional JSON `body`), read with JSON pointers;
//! - `source = "token_response"`: members of the token response itself
//!   (Slack's `authed_user.id` and `team.id`, Notion's `owner.user.id`).
//!
//! Here the source is parsed, validated and read as a pure function
//! ([`AccountSource::extract`]); `consent::account::learn` fetches the
//! document after each code exchange.

use serde::Deserialize;
use url::Url;

/// What joins the values of several subject pointers (Slack's team and user).
pub const SUBJECT_SEPARATOR: &str = "/";

/// The longest subject or display value accepted, in bytes.
pub const MAX_IDENTITY_LEN: usize = 512;

/// The upstream account a grant belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountIdentity {
    /// Stable, unique id of the account at the provider (several pointers'
    /// values joined with [`SUBJECT_SEPARATOR`]).
    pub subject: String,
    /// Name shown to people (an email address or a user name), when the
    /// provider gives one.
    pub display: Option<String>,
}

/// Why no account could be read from a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// A subject pointer names nothing in the document.
    #[error("the account subject `{pointer}` is missing from the {document}")]
    MissingSubject {
        /// The JSON pointer.
        pointer: String,
        /// What was read (`ID token claims`, `account endpoint answer`, `token response`).
        document: &'static str,
    },
    /// A pointer names a value that is not a non-empty string or an integer.
    #[error("the account field `{pointer}` of the {document} is not a non-empty string or integer")]
    NotAnIdentifier {
        /// The JSON pointer.
        pointer: String,
        /// What was read.
        document: &'static str,
    },
    /// A value is longer than [`MAX_IDENTITY_LEN`].
    #[error("the account field `{pointer}` of the {document} is longer than {MAX_IDENTITY_LEN} bytes")]
    TooLong {
        /// The JSON pointer.
        pointer: String,
        /// What was read.
        document: &'static str,
    },
}

/// The HTTP method of an account endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountMethod {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST` (GraphQL endpoints, e.g. Linear's `viewer` query).
    Post,
}

/// Where a provider's account identity comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    /// The OpenID Connect ID token: subject `iss` and `sub`, display the
    /// `display` claim (`email` unless the entry says otherwise).
    IdToken {
        /// The claim shown to people.
        display: String,
    },
    /// A JSON document fetched with the access token as `Authorization: Bearer`.
    Endpoint {
        /// The endpoint (https).
        url: Url,
        /// `GET` or `POST`.
        method: AccountMethod,
        /// JSON body of a `POST` (a GraphQL query), sent as `application/json`.
        body: Option<String>,
        /// JSON pointers whose values, joined, are the subject.
        subject: Vec<String>,
        /// JSON pointer of the display value.
        display: Option<String>,
    },
    /// Members of the code-exchange token response.
    TokenResponse {
        /// JSON pointers whose values, joined, are the subject.
        subject: Vec<String>,
        /// JSON pointer of the display value.
        display: Option<String>,
    },
}

impl AccountSource {
    /// What the source reads, in words (for errors and `catalog show`).
    pub fn document(&self) -> &'static str {
        match self {
            Self::IdToken { .. } => "ID token claims",
            Self::Endpoint { .. } => "account endpoint answer",
            Self::TokenResponse { .. } => "token response",
        }
    }

    /// The subject pointers this source reads.
    pub fn subject_pointers(&self) -> Vec<String> {
        match self {
            Self::IdToken { .. } => vec!["/iss".to_owned(), "/sub".to_owned()],
            Self::Endpoint { subject, .. } | Self::TokenResponse { subject, .. } => subject.clone(),
        }
    }

    /// The display pointer this source reads, if any.
    pub fn display_pointer(&self) -> Option<String> {
        match self {
            Self::IdToken { display } => Some(format!("/{}", escape_token(display))),
            Self::Endpoint { display, .. } | Self::TokenResponse { display, .. } => display.clone(),
        }
    }

    /// The account in `document`: the ID token's claims, the endpoint's JSON
    /// answer, or the token response, as the source says.
    ///
    /// Every subject pointer must name a non-empty string or an integer; the
    /// display is optional (a missing, null or empty display is `None`, any
    /// other non-identifier is an error).
    pub fn extract(&self, document: &serde_json::Value) -> Result<AccountIdentity, AccountError> {
        let what = self.document();
        let mut parts = Vec::new();
        for pointer in self.subject_pointers() {
            let value = document.pointer(&pointer).ok_or_else(|| AccountError::MissingSubject {
                pointer: pointer.clone(),
                document: what,
            })?;
            let text = identifier(value, &pointer, what)?.ok_or_else(|| AccountError::NotAnIdentifier {
                pointer: pointer.clone(),
                document: what,
            })?;
            parts.push(text);
        }
        let subject = parts.join(SUBJECT_SEPARATOR);
        let display = match self.display_pointer() {
            Some(pointer) => match document.pointer(&pointer) {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => identifier(value, &pointer, what)?,
            },
            None => None,
        };
        Ok(AccountIdentity { subject, display })
    }
}

/// A string (non-empty after trimming) or an integer as text; `Ok(None)` for
/// an empty string.
fn identifier(
    value: &serde_json::Value,
    pointer: &str,
    document: &'static str,
) -> Result<Option<String>, AccountError> {
    let text = match value {
        serde_json::Value::String(text) => text.trim().to_owned(),
        serde_json::Value::Number(number) if number.is_i64() || number.is_u64() => number.to_string(),
        _ => {
            return Err(AccountError::NotAnIdentifier {
                pointer: pointer.to_owned(),
                document,
            })
        }
    };
    if text.len() > MAX_IDENTITY_LEN {
        return Err(AccountError::TooLong {
            pointer: pointer.to_owned(),
            document,
        });
    }
    Ok((!text.is_empty()).then_some(text))
}

/// RFC 6901 escaping of one reference token.
fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `[providers.<name>.account]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) source: RawAccountKind,
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) method: AccountMethod,
    pub(super) body: Option<String>,
    #[serde(default)]
    pub(super) subject: Vec<String>,
    pub(super) display: Option<String>,
}

/// The `source` of `[providers.<name>.account]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAccountKind {
    IdToken,
    Endpoint,
    TokenResponse,
}

/// Whether `pointer` is an RFC 6901 JSON pointer that names a member (not the
/// whole document).
pub(super) fn is_json_pointer(pointer: &str) -> bool {
    if !pointer.starts_with('/') || pointer.len() < 2 {
        return false;
    }
    // `~` must be followed by 0 or 1.
    let bytes = pointer.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| *b != b'~' || matches!(bytes.get(i + 1), Some(b'0') | Some(b'1')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token_response(subject: &[&str], display: Option<&str>) -> AccountSource {
        AccountSource::TokenResponse {
            subject: subject.iter().map(|s| (*s).to_owned()).collect(),
            display: display.map(str::to_owned),
        }
    }

    #[test]
    fn id_token_subject_is_issuer_and_sub() {
        let source = AccountSource::IdToken {
            display: "email".to_owned(),
        };
        let claims = json!({"iss": "https://accounts.google.com", "sub": "1057", "email": "ada@example.com"});
        assert_eq!(
            source.extract(&claims).unwrap(),
            AccountIdentity {
                subject: "https://accounts.google.com/1057".to_owned(),
                display: Some("ada@example.com".to_owned()),
            }
        );
        let error = source.extract(&json!({"iss": "https://x"})).unwrap_err();
        assert_eq!(
            error,
            AccountError::MissingSubject {
                pointer: "/sub".to_owned(),
                document: "ID token claims"
            }
        );
        assert!(error.to_string().contains("`/sub` is missing from the ID token claims"));
    }

    #[test]
    fn several_pointers_are_joined_and_integers_are_text() {
        let source = token_response(&["/team/id", "/authed_user/id"], None);
        let body = json!({"team": {"id": "T1"}, "authed_user": {"id": "U2"}});
        assert_eq!(source.extract(&body).unwrap().subject, "T1/U2");
        let source = token_response(&["/id"], Some("/username"));
        let identity = source.extract(&json!({"id": 42, "username": "ada"})).unwrap();
        assert_eq!(
            (identity.subject.as_str(), identity.display.as_deref()),
            ("42", Some("ada"))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_pointer() {
        let source = token_response(&["/id"], Some("/email"));
        for body in [
            json!({"id": ""}),
            json!({"id": null}),
            json!({"id": {"x": 1}}),
            json!({"id": 1.5}),
        ] {
            let error = source.extract(&body).unwrap_err();
            assert!(
                matches!(error, AccountError::NotAnIdentifier { ref pointer, .. } if pointer == "/id"),
                "{body}: {error:?}"
            );
        }
        let long = "x".repeat(MAX_IDENTITY_LEN + 1);
        assert!(matches!(
            source.extract(&json!({ "id": long })),
            Err(AccountError::TooLong { .. })
        ));
        // A missing or empty display is no display; a non-identifier display is an error.
        assert_eq!(source.extract(&json!({"id": "a"})).unwrap().display, None);
        assert_eq!(source.extract(&json!({"id": "a", "email": ""})).unwrap().display, None);
        assert!(source.extract(&json!({"id": "a", "email": ["x"]})).is_err());
    }

    #[test]
    fn json_pointers_are_checked() {
        for good in ["/id", "/a/b", "/a~1b", "/a~0"] {
            assert!(is_json_pointer(good), "{good}");
        }
        for bad in ["", "/", "id", "a/b", "/a~2", "/a~"] {
            assert!(!is_json_pointer(bad), "{bad}");
        }
    }
}
