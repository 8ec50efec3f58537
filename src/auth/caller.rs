//! Who is calling: the identity an API key, client certificate or workload token maps to.

use crate::config::{AuthConfig, Role};
use crate::store::TenantScope;
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

/// Every configured caller, indexed by key digest, certificate subject and workload subject.
#[derive(Debug, Default)]
pub struct CallerRegistry {
    by_key_digest: HashMap<[u8; 32], Arc<Caller>>,
    by_cert_subject: HashMap<String, Arc<Caller>>,
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
            registry.by_cert_subject.insert(
                cert.subject.clone(),
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

    /// The caller a verified client certificate subject maps to.
    pub fn by_cert_subject(&self, subject: &str) -> Option<Arc<Caller>> {
        self.by_cert_subject.get(subject).cloned()
    }

    /// Whether any client certificate identities are configured.
    pub fn has_cert_callers(&self) -> bool {
        !self.by_cert_subject.is_empty()
    }
}
