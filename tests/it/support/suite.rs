//! What the keyring suites (file keyring, AWS KMS on moto, PKCS#11 on
//! SoftHSM2) share: a vault over a real key table, sealing a few tokens, and
//! the checks every keyring must pass the same way.

use super::fixture::WithProvider;
use super::Backend;
use super::{keys, TestDb};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokenvault::clock::SystemClock;
use tokenvault::proto::DisconnectRequest;
use tokenvault::store::{SqlStore, Store, StoreOptions};
use tokenvault::vault::{Binding, Field, Keyring, Vault, VaultError};
use tonic::Code;
use uuid::Uuid;

/// A sealed token: its data key, its record, its ciphertext.
pub type Sealed = (Uuid, String, Vec<u8>);

/// The binding of a test refresh token in `record`.
pub fn binding(record: &str) -> Binding<'_> {
    Binding {
        tenant_id: "acme",
        user_id: "u1",
        record,
        field: Field::RefreshToken,
        version: 0,
    }
}

/// A migrated key table on `db`.
pub async fn migrated(db: &TestDb) -> SqlStore {
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A vault over `keyring` and the key table `keys`.
pub fn vault_over(keys: &SqlStore, keyring: Arc<dyn Keyring>) -> Vault {
    Vault::new(
        keyring,
        Arc::new(keys.clone()),
        Arc::new(SystemClock),
        100,
        Duration::from_secs(60),
    )
}

/// Seals `token-<i>` for `n` records, each under a new data key.
pub async fn seal_some(v: &Vault, n: usize) -> Vec<Sealed> {
    let mut sealed = Vec::new();
    for i in 0..n {
        let key = v.create_data_key().await.unwrap();
        let record = format!("c{i}");
        let ciphertext = key.seal(&binding(&record), format!("token-{i}").as_bytes()).unwrap();
        sealed.push((key.id(), record, ciphertext));
    }
    sealed
}

/// Every sealed token opens again through `v`, its data keys unwrapped afresh.
pub async fn assert_all_open(v: &Vault, sealed: &[Sealed]) {
    v.forget_all();
    for (dek, record, ciphertext) in sealed {
        let plain = v
            .data_key(*dek)
            .await
            .unwrap()
            .open(&binding(record), ciphertext)
            .unwrap();
        assert!(plain.expose_secret().starts_with(b"token-"));
    }
}

/// A keyring without `missing` (which wraps `count` data keys) is refused at
/// start and names it; destroying a data key through `live` crypto-shreds it.
pub async fn assert_missing_named_and_shredding(
    stale: &Vault,
    live: &Vault,
    sealed: &[Sealed],
    missing: &str,
    count: u64,
) {
    let error = stale.check_keyring_covers_store().await.unwrap_err();
    assert!(
        error.to_string().contains(&format!("`{missing}` ({count} data keys)")),
        "{error}"
    );
    assert!(matches!(stale.data_key(sealed[0].0).await, Err(VaultError::UnknownKek(id)) if id == missing));
    live.destroy_data_keys(&[sealed[0].0]).await.unwrap();
    assert!(matches!(
        live.data_key(sealed[0].0).await,
        Err(VaultError::MissingDataKey(_))
    ));
}

/// Disconnecting needs no keyring call: the connection is refused at once; then the server stops.
pub async fn disconnect_and_stop(with: WithProvider, connection: &str) {
    with.server
        .connections(keys::PLATFORM)
        .disconnect(DisconnectRequest {
            connection_id: connection.to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(
        with.server.token_for(connection).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    with.stop().await;
}

/// The server on `backend` with `keys`, one connection of `kim` made through
/// consent and its first access token; every data key is wrapped by `kek`.
pub async fn connected_with_keys(
    backend: Backend,
    keys: tokenvault::config::KeysConfig,
    kek: &str,
) -> (WithProvider, String, String) {
    let with = WithProvider::build(backend)
        .config(move |config| config.keys = keys)
        .start()
        .await;
    let connection = super::provider::connect(&with, "kim", &["mail.read"]).await;
    let first = with.server.token_for(&connection).await.unwrap().access_token;
    let usage = tokenvault::store::KeyStore::kek_usage(&with.server.app().key_sql)
        .await
        .unwrap();
    assert!(!usage.is_empty() && usage.iter().all(|(id, _)| id == kek), "{usage:?}");
    (with, connection, first)
}
