//! Capabilities in a token request: resolved to the scopes that serve them
//! (from the connection's catalog entry), and, when the connection lacks
//! some of what was asked, the consent the user must give.

use super::{Broker, BrokerError, Requester, TokenRequest};
use crate::store::ScopeSet;
use uuid::Uuid;

/// What a token request asked for that its connection was not granted: the
/// user must consent to it (`StartConsent` with this connection and these
/// capabilities or scopes) before the request can succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRequired {
    /// The connection asked for.
    pub connection_id: Uuid,
    /// Its provider.
    pub provider: String,
    /// Requested scopes (explicit, or serving a capability) not granted, sorted.
    pub missing_scopes: Vec<String>,
    /// Requested capabilities whose scopes are not all granted, sorted.
    pub missing_capabilities: Vec<String>,
}

impl std::fmt::Display for ConsentRequired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not granted to connection {}:", self.connection_id)?;
        if !self.missing_capabilities.is_empty() {
            write!(f, " capabilities {}", self.missing_capabilities.join(", "))?;
            f.write_str(";")?;
        }
        write!(
            f,
            " scopes {}; the user must consent to them (StartConsent with this connection_id)",
            self.missing_scopes.join(", ")
        )
    }
}

impl TokenRequest {
    /// The consent `connection_id` (of `provider`, granted what `granted`
    /// accepts) lacks for this request, if any.
    pub(super) fn not_granted(
        &self,
        connection_id: Uuid,
        provider: &str,
        granted: impl Fn(&str) -> bool,
    ) -> Option<BrokerError> {
        let missing_scopes: Vec<String> = self.scopes.iter().filter(|s| !granted(s)).cloned().collect();
        if missing_scopes.is_empty() {
            return None;
        }
        let missing_capabilities = self
            .capabilities
            .iter()
            .filter(|(_, scopes)| scopes.iter().any(|s| !granted(s)))
            .map(|(name, _)| name.clone())
            .collect();
        Some(BrokerError::ConsentRequired(Box::new(ConsentRequired {
            connection_id,
            provider: provider.to_owned(),
            missing_scopes,
            missing_capabilities,
        })))
    }
}

impl Broker {
    /// `request` with its capabilities resolved against the connection's
    /// provider: their scopes join the explicit ones. The provider comes from
    /// the cached full-grant token when there is one (no database), else from
    /// the connection; the caller's tenant is checked first, so that an
    /// unknown capability says nothing about another tenant's connection.
    pub(super) async fn resolve_capabilities(
        &self,
        who: &Requester<'_>,
        request: &TokenRequest,
        names: &[String],
    ) -> Result<TokenRequest, BrokerError> {
        let id = request.connection_id;
        let provider = match self.cache.get(&(id, String::new())) {
            Some(token) if !who.tenants.allows(token.tenant_id()) => return Err(BrokerError::WrongTenant),
            Some(token) => token.provider().to_owned(),
            None => {
                let (connection, _) = self.reader.read(id, "").await?.ok_or(BrokerError::NotFound(id))?;
                if !who.tenants.allows(&connection.tenant_id) {
                    return Err(BrokerError::WrongTenant);
                }
                connection.provider
            }
        };
        let spec = self.providers.spec(&provider).ok_or_else(|| {
            BrokerError::ProviderMisconfigured(format!("provider `{provider}` is not in the catalog"))
        })?;
        let mut resolved = request.clone();
        for name in names {
            let scopes: ScopeSet = spec
                .capabilities
                .get(name)
                .ok_or_else(|| BrokerError::UnknownCapability {
                    provider: provider.clone(),
                    capability: name.clone(),
                })?
                .iter()
                .cloned()
                .collect();
            resolved.scopes.extend(scopes.iter().cloned());
            resolved.capabilities.push((name.clone(), scopes));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn request(scopes: &[&str], capabilities: &[(&str, &[&str])]) -> TokenRequest {
        TokenRequest {
            connection_id: Uuid::nil(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            capabilities: capabilities
                .iter()
                .map(|(name, scopes)| (name.to_string(), scopes.iter().map(|s| s.to_string()).collect()))
                .collect(),
            min_ttl: chrono::Duration::zero(),
            require_min_ttl: false,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn only_what_is_missing_is_named() {
        let asked = request(
            &["a", "b", "c"],
            &[("cap.ab", &["a", "b"]), ("cap.c", &["c"]), ("cap.a", &["a"])],
        );
        let granted = |s: &str| s == "a" || s == "c";
        let Some(BrokerError::ConsentRequired(needed)) = asked.not_granted(Uuid::nil(), "google", granted) else {
            panic!("consent is required");
        };
        assert_eq!(needed.missing_scopes, vec!["b"]);
        assert_eq!(needed.missing_capabilities, vec!["cap.ab"]);
        assert_eq!(needed.provider, "google");
        let message = needed.to_string();
        assert!(message.contains("capabilities cap.ab; scopes b"), "{message}");
        assert!(asked.not_granted(Uuid::nil(), "google", |_| true).is_none());
    }
}
