//! Who is calling: the identity an API key, client certificate or workload token maps to.

use crate::config::{AuthConfig, Role};
use crate::store::TenantScope;
use crate::transport::{CertSubject, SubjectKind};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// An authenticated caller, attached to each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name used as the actor in audit events.
    pub name: Arc<str>,
    /// Roles held.
    pub roles: BTreeSet<Role>,
    /// Tenants the caller may act for.
    pub tenants: TenantScope,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the caller may act for `tenant_id`.
    pub fn may_act_for(&self, tenant_id: &str) -> bool {
        self.tenants.allows(tenant_id)
    }

    fn from_grant(name: &str, roles: &[Role], tenants: &[String]) -> Self {
        let tenants = if tenants.iter().any(|t| t == "*") {
            TenantScope::All
        } else {
            TenantScope::Only(tenants.iter().cloned().collect())
        };
        Self {
            name: Arc::from(name),
            roles: roles.iter().copied().collect(),
            tenants,
        }
    }
}

/// Every configured caller, indexed by key digest, typed certificate subject and workload subject.
#[derive(Debug, Default)]
pub struct CallerRegistry {
    by_key_digest: HashMap<[u8; 32], Arc<Caller>>,
    by_cert_subject: HashMap<CertSubject, Arc<Caller>>,
    by_workload_subject: HashMap<String, Arc<Caller>>,
}

impl CallerRegistry {
    /// Builds the registry from validated configuration.
    pub fn from_config(auth: &AuthConfig) -> Result<Self, String> {
        let mut registry = Self::default();
        for key in &auth.api_keys {
            let digest: [u8; 32] = hex::decode(&key.sha256)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| format!("api key `{}`: sha256 must be 64 hex digits", key.name))?;
            registry.by_key_digest.insert(
                digest,
                Arc::new(Caller::from_grant(&key.name, &key.roles, &key.tenants)),
            );
        }
        for cert in &auth.client_certs {
            let subject: CertSubject = cert
                .subject
                .parse()
                .map_err(|e| format!("auth.client_certs `{}`: subject {e}", cert.name))?;
            registry.by_cert_subject.insert(
                subject,
                Arc::new(Caller::from_grant(&cert.name, &cert.roles, &cert.tenants)),
            );
        }
        for workload in &auth.workloads {
            let name = workload.name.as_deref().unwrap_or(&workload.subject);
            registry.by_workload_subject.insert(
                workload.subject.clone(),
                Arc::new(Caller::from_grant(name, &workload.roles, &workload.tenants)),
            );
        }
        Ok(registry)
    }

    /// The caller a verified workload identity (a token's `sub`) maps to.
    pub fn by_workload_subject(&self, subject: &str) -> Option<Arc<Caller>> {
        self.by_workload_subject.get(subject).cloned()
    }

    /// The caller whose key hashes to `digest`. Unknown and wrong keys take the same path.
    pub fn by_key_digest(&self, digest: &[u8; 32]) -> Option<Arc<Caller>> {
        self.by_key_digest.get(digest).cloned()
    }

    /// The caller a verified client certificate name maps to: a configured
    /// subject of the same type with exactly the same value.
    pub fn by_cert_subject(&self, subject: &CertSubject) -> Option<Arc<Caller>> {
        self.by_cert_subject.get(subject).cloned()
    }

    /// The caller a verified client certificate's names map to. URI SANs are
    /// preferred: the first URI SAN a configured subject maps wins, then the
    /// first DNS SAN, then the first common name, whatever order `subjects`
    /// lists them in.
    pub fn by_cert_subjects(&self, subjects: &[CertSubject]) -> Option<Arc<Caller>> {
        [SubjectKind::Uri, SubjectKind::Dns, SubjectKind::Cn]
            .into_iter()
            .find_map(|kind| {
                subjects
                    .iter()
                    .filter(|subject| subject.kind() == kind)
                    .find_map(|subject| self.by_cert_subject(subject))
            })
    }

    /// Whether any client certificate identities are configured.
    pub fn has_cert_callers(&self) -> bool {
        !self.by_cert_subject.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientCertConfig;

    fn registry(entries: &[(&str, &str)]) -> CallerRegistry {
        let auth = AuthConfig {
            client_certs: entries
                .iter()
                .map(|(name, subject)| ClientCertConfig {
                    name: (*name).into(),
                    subject: (*subject).into(),
                    roles: vec![Role::Agent],
                    tenants: vec!["*".into()],
                })
                .collect(),
            ..Default::default()
        };
        CallerRegistry::from_config(&auth).unwrap()
    }

    fn name(caller: Option<Arc<Caller>>) -> Option<String> {
        caller.map(|c| c.name.to_string())
    }

    #[test]
    fn certificate_names_match_by_type_and_exact_value() {
        let registry = registry(&[
            ("by-uri", "uri:spiffe://x/agent"),
            ("by-dns", "dns:agent.example"),
            ("by-cn", "cn:agent-7"),
        ]);
        let found = |subjects: &[CertSubject]| name(registry.by_cert_subjects(subjects));
        assert_eq!(
            found(&[CertSubject::uri("spiffe://x/agent")]).as_deref(),
            Some("by-uri")
        );
        assert_eq!(found(&[CertSubject::dns("agent.example")]).as_deref(), Some("by-dns"));
        assert_eq!(found(&[CertSubject::cn("agent-7")]).as_deref(), Some("by-cn"));
        // The same text under another type is another name.
        assert_eq!(found(&[CertSubject::cn("spiffe://x/agent")]), None);
        assert_eq!(found(&[CertSubject::uri("agent-7")]), None);
        assert_eq!(found(&[CertSubject::cn("agent.example")]), None);
        // Exact values only.
        assert_eq!(found(&[CertSubject::uri("spiffe://x/agent/")]), None);
        assert_eq!(found(&[CertSubject::cn("Agent-7")]), None);
    }

    #[test]
    fn uri_names_are_preferred_then_dns_then_common_name() {
        let registry = registry(&[
            ("by-uri", "uri:spiffe://x/agent"),
            ("by-dns", "dns:agent.example"),
            ("by-cn", "cn:agent-7"),
        ]);
        let all = [
            CertSubject::cn("agent-7"),
            CertSubject::dns("agent.example"),
            CertSubject::uri("spiffe://x/agent"),
        ];
        assert_eq!(name(registry.by_cert_subjects(&all)).as_deref(), Some("by-uri"));
        assert_eq!(name(registry.by_cert_subjects(&all[..2])).as_deref(), Some("by-dns"));
        // An unmapped URI SAN does not hide a mapped DNS SAN or common name.
        let unmapped_uri = [CertSubject::uri("spiffe://x/other"), CertSubject::cn("agent-7")];
        assert_eq!(name(registry.by_cert_subjects(&unmapped_uri)).as_deref(), Some("by-cn"));
    }

    #[test]
    fn an_untyped_subject_is_refused_naming_the_entry() {
        let auth = AuthConfig {
            client_certs: vec![ClientCertConfig {
                name: "old-style".into(),
                subject: "agent-7".into(),
                roles: vec![Role::Agent],
                tenants: vec!["*".into()],
            }],
            ..Default::default()
        };
        let error = CallerRegistry::from_config(&auth).unwrap_err();
        assert!(error.contains("auth.client_certs `old-style`"), "{error}");
        assert!(error.contains("`agent-7` has no type"), "{error}");
    }
}
