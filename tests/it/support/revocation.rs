//! Revocation as the platform and the outbox see it: disconnecting, reading
//! the reported provider revocation, the connection's outbox entry, and
//! whether a data key still exists.

use super::provider::CatalogOptions;
use super::{eventually, keys, TestServer};
use std::time::Duration;
use tokenvault::proto::*;
use tokenvault::store::OutboxEntry;
use tokenvault::vault::VaultError;
use tokenvault_testkit::fake_provider::CatalogRevocation;

/// How long the helpers wait for the background outbox worker.
pub const WAIT: Duration = Duration::from_secs(10);

/// `Disconnect` (platform key): the connection as answered, `REVOKED`.
pub async fn disconnect(server: &TestServer, connection_id: &str) -> Connection {
    let revoked = server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(revoked.status, ConnectionStatus::Revoked as i32);
    revoked
}

/// The connection as the platform reads it (`GetConnection`).
pub async fn read(server: &TestServer, connection_id: &str) -> Connection {
    server
        .connections(keys::PLATFORM)
        .get_connection(GetConnectionRequest {
            connection_id: connection_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap()
}

/// The provider-revocation state a revoked connection reports.
pub fn reported_state(connection: &Connection) -> ProviderRevocationState {
    let reported = connection.provider_revocation.as_ref().expect("reported once revoked");
    ProviderRevocationState::try_from(reported.state).unwrap()
}

/// Whether the data key `dek` can still be read.
pub async fn key_exists(server: &TestServer, dek: uuid::Uuid) -> bool {
    !matches!(
        server.app().vault.data_key(dek).await,
        Err(VaultError::MissingDataKey(_))
    )
}

/// The connection's one outbox entry.
pub async fn outbox_entry(server: &TestServer, connection_id: &str) -> OutboxEntry {
    let mut entries = server
        .app()
        .store
        .outbox_for_connection(connection_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.remove(0)
}

/// Waits until the connection's outbox entry has been attempted `n` times.
pub async fn attempted(server: &TestServer, connection_id: &str, n: i64) -> OutboxEntry {
    let reached = eventually(WAIT, || async {
        outbox_entry(server, connection_id).await.attempts >= n
    })
    .await;
    assert!(reached, "entry not attempted {n} times");
    outbox_entry(server, connection_id).await
}

/// The fake described as GitHub-style grant deletion.
pub fn github_style() -> CatalogOptions {
    CatalogOptions {
        revocation: CatalogRevocation::GithubGrant,
        ..Default::default()
    }
}
