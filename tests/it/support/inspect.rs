//! Reading what a test server stored and what the fake saw: database dumps,
//! connections, audit events, revocations at the provider.

use super::server::TestServer;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use tokenvault::store::{AuditEvent, AuditFilter, Connection, TenantScope};
use tokenvault::vault::{Binding, Field};
use tokenvault_testkit::fake_provider::{FakeProvider, RevocationRecord};

/// Every text and byte column of every table, for "no secret in clear" checks.
pub async fn dump_database(pool: &sqlx::AnyPool) -> Vec<u8> {
    use sqlx::Row;
    let mut out = Vec::new();
    for table in [
        "users",
        "data_keys",
        "connections",
        "access_tokens",
        "consent_requests",
        "audit_events",
        "revocation_outbox",
        "events",
        "webhook_endpoints",
        "webhook_deliveries",
        "webhook_attempts",
    ] {
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(pool)
            .await
            .expect("dump");
        for row in rows {
            for i in 0..row.len() {
                if let Ok(Some(text)) = row.try_get::<Option<String>, _>(i) {
                    out.extend_from_slice(text.as_bytes());
                } else if let Ok(Some(bytes)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    out.extend_from_slice(&bytes);
                }
                out.push(b'\n');
            }
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Exposes a secret for assertions.
pub fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

/// The connection `connection_id` as the store holds it (any tenant).
pub async fn stored_connection(server: &TestServer, connection_id: &str) -> Connection {
    server
        .app()
        .store
        .connection(&TenantScope::All, connection_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
}

/// The refresh token the store holds for a connection, decrypted.
pub async fn stored_refresh_token(server: &TestServer, connection_id: &str) -> String {
    let app = server.app();
    let token = open_refresh_token(app.store.as_ref(), &app.vault, connection_id.parse().unwrap())
        .await
        .unwrap();
    token.expose_secret().to_owned()
}

/// Opens the refresh token `store` holds for a connection with `vault`'s keys
/// (the connection's data key read from `vault`'s key table): the error says
/// why it does not open.
pub async fn open_refresh_token(
    store: &dyn tokenvault::store::Store,
    vault: &tokenvault::vault::Vault,
    connection_id: uuid::Uuid,
) -> Result<SecretString, tokenvault::vault::VaultError> {
    let connection = store
        .connection(&TenantScope::All, connection_id)
        .await?
        .expect("the connection is in that database");
    let key = vault.data_key(connection.dek_id.expect("a data key")).await?;
    let record = connection.id.to_string();
    key.open_string(
        &Binding {
            tenant_id: &connection.tenant_id,
            user_id: &connection.user_id,
            record: &record,
            field: Field::RefreshToken,
            version: connection.token_version,
        },
        connection.refresh_token.expect("a refresh token").as_bytes(),
    )
}

/// The audit events of `action` (at most 100), after flushing the batched ones.
pub async fn audit(server: &TestServer, action: &str) -> Vec<AuditEvent> {
    server.app().audit.flush().await;
    server
        .app()
        .store
        .list_audit(&AuditFilter {
            action: Some(action.to_owned()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Waits (bounded) until the fake has seen `n` revocation requests.
pub async fn revocations(fake: &FakeProvider, n: usize) -> Vec<RevocationRecord> {
    for _ in 0..100 {
        let seen = fake.stats().revocations;
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.stats().revocations
}

/// The server's `/metrics` page (Prometheus text).
pub async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.http_url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}
