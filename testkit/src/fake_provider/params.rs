//! Request parameters: form bodies and query strings (RFC 6749 §3.1), and
//! scope lists in the fake's configured syntax.

use std::collections::{HashMap, HashSet};

/// Parsed form or query parameters. Empty values count as absent (RFC 6749 §3.1).
pub(super) struct Params {
    values: HashMap<String, String>,
    /// Parameters that appeared more than once, in order of first repetition.
    pub(super) repeated: Vec<String>,
}

impl Params {
    pub(super) fn parse(input: &[u8]) -> Self {
        let mut values = HashMap::new();
        let mut repeated = Vec::new();
        for (key, value) in url::form_urlencoded::parse(input) {
            if values.contains_key(key.as_ref()) {
                if !repeated.contains(&key.to_string()) {
                    repeated.push(key.to_string());
                }
            } else {
                values.insert(key.into_owned(), value.into_owned());
            }
        }
        Self { values, repeated }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// An `invalid_request` description when a parameter is repeated (RFC 6749 §3.1).
    pub(super) fn repeated_error(&self) -> Option<String> {
        self.repeated.first().map(|key| format!("parameter {key} is repeated"))
    }
}

/// The scopes of a `scope` parameter, without blanks and duplicates.
pub(super) fn split_scopes(scope: &str, separator: &str) -> Vec<String> {
    let parts: Vec<&str> = if separator.is_empty() {
        vec![scope]
    } else {
        scope.split(separator).collect()
    };
    dedup(
        parts
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    )
}

/// Removes duplicates, keeping the first occurrence's position.
pub(super) fn dedup(scopes: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    scopes.into_iter().filter(|s| seen.insert(s.clone())).collect()
}
