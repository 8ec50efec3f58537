//! The `[providers]` section: an optional operator catalog file and, per
//! provider name, the OAuth client credentials (never part of the catalog).

use secrecy::SecretString;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// `[providers]`: `catalog_file = "…"` plus one `[providers.<name>]` table per configured provider.
#[derive(Debug, Default)]
pub struct ProvidersConfig {
    /// Operator catalog merged over the built-in one.
    pub catalog_file: Option<PathBuf>,
    /// Client credentials by provider name.
    pub clients: BTreeMap<String, ProviderClientConfig>,
}

/// The OAuth client tokenvault is registered as at one provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderClientConfig {
    /// The client id the provider issued.
    pub client_id: String,
    /// The client secret, inline or from `TOKENVAULT_PROVIDERS__<NAME>__CLIENT_SECRET`.
    pub client_secret: Option<SecretString>,
    /// A file holding the client secret (for example a mounted Kubernetes Secret).
    pub client_secret_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProvidersVisitor;

        impl<'de> Visitor<'de> for ProvidersVisitor {
            type Value = ProvidersConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`catalog_file` and one table of client credentials per provider")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProvidersConfig, A::Error> {
                let mut config = ProvidersConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "catalog_file" {
                        config.catalog_file = Some(map.next_value()?);
                    } else {
                        let client: ProviderClientConfig = map.next_value()?;
                        if config.clients.insert(key.clone(), client).is_some() {
                            return Err(de::Error::custom(format!("provider `{key}` is configured twice")));
                        }
                    }
                }
                Ok(config)
            }
        }

        deserializer.deserialize_map(ProvidersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn catalog_file_and_clients_share_the_table() {
        let config: ProvidersConfig = toml::from_str(
            r#"
            catalog_file = "/etc/catalog.toml"
            [google]
            client_id = "id-1"
            client_secret = "s3cret"
            [slack]
            client_id = "id-2"
            client_secret_file = "/run/slack"
            "#,
        )
        .unwrap();
        assert_eq!(config.catalog_file, Some(PathBuf::from("/etc/catalog.toml")));
        assert_eq!(config.clients["google"].client_id, "id-1");
        assert_eq!(
            config.clients["google"].client_secret.as_ref().unwrap().expose_secret(),
            "s3cret"
        );
        assert_eq!(
            config.clients["slack"].client_secret_file,
            Some(PathBuf::from("/run/slack"))
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_client_fields_are_rejected() {
        let error =
            toml::from_str::<ProvidersConfig>("[google]\nclient_id = \"x\"\nclient_secert = \"typo\"\n").unwrap_err();
        assert!(error.to_string().contains("client_secert"), "{error}");
    }
}
