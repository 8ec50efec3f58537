//! Request validation shared by the services: every field is checked before
//! anything is read or written, and failures name the field.

use crate::auth::Caller;
use crate::store::ScopeSet;
use std::str::FromStr;
use tonic::Status;
use uuid::Uuid;

/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 128;
/// Longest user id.
pub const MAX_USER_LEN: usize = 256;
/// Most scopes in one request.
pub const MAX_SCOPES: usize = 100;
/// Longest scope.
pub const MAX_SCOPE_LEN: usize = 512;

/// A required UUID field.
pub fn id(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Uuid::from_str(value)
        .ok()
        .filter(|_| value.len() == 36)
        .ok_or_else(|| Status::invalid_argument(format!("{field} must be a UUID")))
}

/// A tenant id: 1–128 characters of `A-Z a-z 0-9 . _ : @ -`.
pub fn tenant(value: &str) -> Result<&str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument("tenant_id is required"));
    }
    if value.len() > MAX_TENANT_LEN
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
    {
        return Err(Status::invalid_argument(format!(
            "tenant_id must be 1-{MAX_TENANT_LEN} characters of A-Z a-z 0-9 . _ : @ -"
        )));
    }
    Ok(value)
}

/// A user id: 1–256 printable characters.
pub fn user(value: &str) -> Result<&str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument("user_id is required"));
    }
    if value.len() > MAX_USER_LEN || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "user_id must be 1-{MAX_USER_LEN} bytes without control characters"
        )));
    }
    Ok(value)
}

/// A list of scopes: at most 100, each 1–512 visible ASCII characters (RFC 6749 §3.3).
pub fn scopes(field: &str, values: &[String]) -> Result<ScopeSet, Status> {
    if values.len() > MAX_SCOPES {
        return Err(Status::invalid_argument(format!(
            "{field} lists more than {MAX_SCOPES} entries"
        )));
    }
    let mut set = ScopeSet::new();
    for value in values {
        // RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E
        let valid = !value.is_empty()
            && value.len() <= MAX_SCOPE_LEN
            && value
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            return Err(Status::invalid_argument(format!(
                "{field} contains an invalid entry (1-{MAX_SCOPE_LEN} visible ASCII characters, no spaces, quotes or backslashes)"
            )));
        }
        set.insert(value.clone());
    }
    Ok(set)
}

/// The caller may act for `tenant_id`.
pub fn may_act_for(caller: &Caller, tenant_id: &str) -> Result<(), Status> {
    if caller.may_act_for(tenant_id) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "caller `{}` may not act for tenant `{tenant_id}`",
            caller.name
        )))
    }
}

/// Page size: default 100, at most 1000.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 100,
        n => n.min(1000),
    }
}

/// Decodes a page token (an id); empty means the first page.
pub fn page_token(token: &str) -> Result<Option<Uuid>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    Uuid::from_str(token)
        .map(Some)
        .map_err(|_| Status::invalid_argument("page_token is not one this server issued"))
}

/// Most capabilities one request may name.
const MAX_CAPABILITIES: usize = 50;

/// Capability names (at most 50, each 1-64 characters of a-z 0-9 . _ -), sorted and deduplicated.
pub fn capability_names(values: &[String]) -> Result<Vec<String>, Status> {
    if values.len() > MAX_CAPABILITIES {
        return Err(Status::invalid_argument(format!(
            "capabilities lists more than {MAX_CAPABILITIES} entries"
        )));
    }
    for value in values {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(Status::invalid_argument(
                "capabilities must be names of 1-64 characters of a-z 0-9 . _ -",
            ));
        }
    }
    let mut names = values.to_vec();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        assert!(id("connection_id", "").unwrap_err().message().contains("required"));
        assert!(id("connection_id", "nope").unwrap_err().message().contains("UUID"));
        assert!(id("connection_id", &Uuid::new_v4().to_string()).is_ok());
        assert!(tenant("acme-1").is_ok());
        assert!(tenant("a b").is_err());
        assert!(tenant(&"a".repeat(129)).is_err());
        assert!(user("alice@example.com").is_ok());
        assert!(user("bad\nuser").is_err());
        assert!(scopes("scopes", &["https://www.googleapis.com/auth/gmail.send".into()]).is_ok());
        assert!(scopes("scopes", &["has space".into()]).is_err());
        assert!(scopes("scopes", &vec!["a".to_owned(); 101]).is_err());
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(5000), 1000);
    }
}
