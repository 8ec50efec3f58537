//! Typed certificate names: a client certificate's URI SANs, DNS SANs and
//! subject common names, each tagged with its kind, and the `uri:…`, `dns:…`,
//! `cn:…` form configuration names them in. A name matches only a name of its
//! own kind with the same value, so a common name that reads like a URI never
//! passes for a URI SAN.

use std::fmt;
use std::str::FromStr;

/// The kind of a certificate name, in the order identities are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    /// A URI subject alternative name (a SPIFFE ID, for one).
    Uri,
    /// A DNS subject alternative name.
    Dns,
    /// A common name (CN) of the certificate's subject.
    Cn,
}

impl SubjectKind {
    /// The prefix configuration writes this kind with, without the colon.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Uri => "uri",
            Self::Dns => "dns",
            Self::Cn => "cn",
        }
    }
}

/// One typed name of a certificate: its kind and its exact value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSubject {
    kind: SubjectKind,
    value: String,
}

impl CertSubject {
    /// A URI SAN.
    pub fn uri(value: impl Into<String>) -> Self {
        Self::new(SubjectKind::Uri, value)
    }

    /// A DNS SAN.
    pub fn dns(value: impl Into<String>) -> Self {
        Self::new(SubjectKind::Dns, value)
    }

    /// A subject common name.
    pub fn cn(value: impl Into<String>) -> Self {
        Self::new(SubjectKind::Cn, value)
    }

    /// A name of `kind` with `value`.
    pub fn new(kind: SubjectKind, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }

    /// The kind of name.
    pub fn kind(&self) -> SubjectKind {
        self.kind
    }

    /// The value, exactly as in the certificate.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// Written as in configuration: `uri:spiffe://…`, `dns:…`, `cn:…`.
impl fmt::Display for CertSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), self.value)
    }
}

/// Why a configured certificate subject is not a typed name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// No `uri:`, `dns:` or `cn:` prefix.
    #[error(
        "`{0}` has no type: write `uri:<URI SAN>` (e.g. `uri:spiffe://example.org/agent`), \
         `dns:<DNS SAN>` or `cn:<common name>`"
    )]
    Untyped(String),
    /// A known prefix with nothing after it.
    #[error("`{0}` names no value after its type")]
    Empty(String),
    /// The value starts or ends with whitespace, which no certificate name matches by accident.
    #[error("`{0}` has whitespace around its value")]
    Whitespace(String),
}

impl FromStr for CertSubject {
    type Err = SubjectError;

    /// Parses `uri:…`, `dns:…` or `cn:…`; the prefix is lower case, the value is kept exactly.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, value) = [SubjectKind::Uri, SubjectKind::Dns, SubjectKind::Cn]
            .into_iter()
            .find_map(|kind| {
                let value = text.strip_prefix(kind.prefix())?.strip_prefix(':')?;
                Some((kind, value))
            })
            .ok_or_else(|| SubjectError::Untyped(text.to_owned()))?;
        if value.is_empty() {
            return Err(SubjectError::Empty(text.to_owned()));
        }
        if value.trim() != value {
            return Err(SubjectError::Whitespace(text.to_owned()));
        }
        Ok(Self::new(kind, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_subjects_are_typed() {
        assert_eq!(
            "uri:spiffe://x/y".parse::<CertSubject>().unwrap(),
            CertSubject::uri("spiffe://x/y")
        );
        assert_eq!(
            "dns:a.example".parse::<CertSubject>().unwrap(),
            CertSubject::dns("a.example")
        );
        assert_eq!("cn:agent-7".parse::<CertSubject>().unwrap(), CertSubject::cn("agent-7"));
        assert_eq!("cn:a:b".parse::<CertSubject>().unwrap(), CertSubject::cn("a:b"));
        assert_eq!(CertSubject::uri("spiffe://x").to_string(), "uri:spiffe://x");
    }

    #[test]
    fn untyped_empty_and_padded_subjects_are_refused() {
        for text in ["agent-7", "spiffe://x/y", "URI:spiffe://x", "uri", "email:a@b", ""] {
            let error = text.parse::<CertSubject>().unwrap_err();
            assert_eq!(error, SubjectError::Untyped(text.to_owned()), "{text}");
            assert!(error.to_string().contains("has no type"), "{error}");
        }
        assert_eq!(
            "dns:".parse::<CertSubject>().unwrap_err(),
            SubjectError::Empty("dns:".into())
        );
        assert_eq!(
            "cn: agent".parse::<CertSubject>().unwrap_err(),
            SubjectError::Whitespace("cn: agent".into())
        );
    }

    #[test]
    fn names_of_different_kinds_never_match() {
        assert_ne!(CertSubject::cn("spiffe://x"), CertSubject::uri("spiffe://x"));
        assert_ne!(CertSubject::dns("a.example"), CertSubject::cn("a.example"));
    }
}
