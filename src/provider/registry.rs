//! The configured providers: catalog entries with client credentials and
//! resolved endpoints, built once at start-up.

use super::{discover, Endpoints, ProviderClient, ProviderError, ProviderHttp};
use crate::config::ProviderClientConfig;
use crate::consent::catalog::{Catalog, ProviderSpec};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why the provider set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    /// Credentials for a provider the catalog does not know.
    #[error("providers.{0}: no such provider in the catalog (built-in or catalog_file)")]
    UnknownProvider(String),
}

/// Every catalog provider, and a client for each configured one.
#[derive(Debug, Default)]
pub struct Providers {
    catalog: Catalog,
    clients: BTreeMap<String, Arc<ProviderClient>>,
    unavailable: BTreeMap<String, String>,
}

impl Providers {
    /// Builds clients for the configured providers; issuer-only entries are discovered now.
    pub async fn build(
        catalog: Catalog,
        configured: &BTreeMap<String, ProviderClientConfig>,
        http: ProviderHttp,
    ) -> Result<Self, ProvidersError> {
        let mut clients = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        for (name, credentials) in configured {
            let spec = catalog
                .provider(name)
                .ok_or_else(|| ProvidersError::UnknownProvider(name.clone()))?;
            let spec = Arc::new(spec.clone());
            match endpoints(&spec, &http).await {
                Ok(endpoints) => {
                    let client = ProviderClient::new(
                        spec,
                        endpoints,
                        &credentials.client_id,
                        credentials.client_secret.as_ref(),
                        http.clone(),
                    );
                    clients.insert(name.clone(), Arc::new(client));
                }
                Err(reason) => {
                    tracing::error!(provider = %name, %reason, "provider discovery failed; it is unavailable until restart");
                    unavailable.insert(name.clone(), reason);
                }
            }
        }
        Ok(Self {
            catalog,
            clients,
            unavailable,
        })
    }

    /// A set over explicit clients (tests).
    pub fn from_clients(catalog: Catalog, clients: Vec<ProviderClient>) -> Self {
        Self {
            catalog,
            clients: clients
                .into_iter()
                .map(|c| (c.spec().name.clone(), Arc::new(c)))
                .collect(),
            unavailable: BTreeMap::new(),
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog entry of `name`, if the catalog has one.
    pub fn spec(&self, name: &str) -> Option<&ProviderSpec> {
        self.catalog.provider(name)
    }

    /// The client for `name`, or why there is none.
    pub fn client(&self, name: &str) -> Result<Arc<ProviderClient>, ProviderError> {
        if let Some(client) = self.clients.get(name) {
            return Ok(client.clone());
        }
        match self.unavailable.get(name) {
            Some(reason) => Err(ProviderError::Unavailable(format!(
                "{name}: discovery failed: {reason}"
            ))),
            None => Err(ProviderError::NotConfigured(name.to_owned())),
        }
    }

    /// Names of the providers with clients.
    pub fn configured(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }
}

async fn endpoints(spec: &ProviderSpec, http: &ProviderHttp) -> Result<Endpoints, String> {
    // The revocation endpoint comes from the metadata when the entry names
    // none and its revocation is not declared unsupported.
    let wants_revocation = spec.revocation_url.is_none() && spec.revocation_unsupported().is_none();
    let discovered = match (&spec.issuer, &spec.authorization_url, &spec.token_url) {
        (Some(issuer), None, _) | (Some(issuer), _, None) => Some(discover(http, issuer).await?),
        (Some(issuer), Some(_), Some(_)) if wants_revocation => match discover(http, issuer).await {
            Ok(discovered) => Some(discovered),
            Err(reason) => {
                tracing::warn!(provider = %spec.name, %reason, "discovery of the revocation endpoint failed; revocations at this provider fail until restart");
                None
            }
        },
        _ => None,
    };
    let authorization = spec
        .authorization_url
        .clone()
        .or_else(|| discovered.as_ref().map(|d| d.authorization.clone()))
        .ok_or("no authorization endpoint")?;
    let token = spec
        .token_url
        .clone()
        .or_else(|| discovered.as_ref().map(|d| d.token.clone()))
        .ok_or("no token endpoint")?;
    let iss_parameter_supported = discovered.as_ref().is_some_and(|d| d.iss_parameter_supported);
    let revocation = spec
        .revocation_url
        .clone()
        .or_else(|| discovered.and_then(|d| d.revocation));
    if revocation.is_none() && wants_revocation {
        tracing::warn!(provider = %spec.name, "the issuer's metadata has no revocation_endpoint; revocations at this provider fail (set revocation_url, or revocation_method = \"unsupported\")");
    }
    Ok(Endpoints {
        authorization,
        token,
        revocation,
        iss_parameter_supported,
    })
}
