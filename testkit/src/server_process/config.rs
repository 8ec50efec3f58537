//! The configuration file of a server process whose one provider is the fake.

use std::net::SocketAddr;
use std::path::Path;

use crate::fake_provider::{CatalogOptions, FakeProvider};

/// Configuration of a server process on one database whose one provider is
/// the fake (under [`CatalogOptions::default`]'s name). The key table shares
/// that database (`keys.allow_shared_database = true`).
#[derive(Debug, Clone, Copy)]
pub struct ProcessConfig<'a> {
    /// `database_url`.
    pub database_url: &'a str,
    /// `keys.inline` (`id:base64`), or a key file tokenvault may rewrite
    /// (`keys.file`, KEK epochs on) when it starts with `file:`.
    pub kek: &'a str,
    /// `log.level` (the format is JSON).
    pub log_level: &'a str,
    /// The operator catalog file describing the fake ([`FakeProvider::catalog_toml`]).
    pub catalog: &'a Path,
    /// The fake, for its client credentials.
    pub fake: &'a FakeProvider,
    /// Lines added to the `[keys]` section (for example KEK epoch settings).
    pub keys_extra: &'a str,
    /// TOML appended as is: `[[auth.api_keys]]` entries and any other sections.
    pub extra: &'a str,
}

impl ProcessConfig<'_> {
    /// The configuration file's text for listeners on `grpc` and `http`.
    pub fn render(&self, grpc: SocketAddr, http: SocketAddr) -> String {
        format!(
            r#"database_url = "{db}"
[server]
grpc_listen = "{grpc}"
http_listen = "{http}"
shutdown_grace_seconds = 2
[log]
format = "json"
level = "{level}"
[keys]
{keys}
allow_shared_database = true
{keys_extra}
[consent]
allowed_return_origins = ["https://app.example.com"]
[providers]
catalog_file = "{catalog}"
[providers.{provider}]
client_id = "{client_id}"
client_secret = "{client_secret}"
{extra}"#,
            db = self.database_url,
            level = self.log_level,
            keys = match self.kek.strip_prefix("file:") {
                Some(path) => format!("file = \"{path}\""),
                None => format!("inline = \"{}\"\nrotate_every_days = 0", self.kek),
            },
            keys_extra = self.keys_extra,
            catalog = self.catalog.display(),
            provider = CatalogOptions::default().name,
            client_id = self.fake.config().client_id,
            client_secret = self.fake.config().client_secret,
            extra = self.extra,
        )
    }
}
