//! The vault over a real key table: rotation, missing keys, a separate key database.

use crate::on_both;
use crate::support::suite::{assert_all_open, seal_some};
use crate::support::{base_config, random_kek, Backend, TestDb};
use secrecy::SecretString;
use std::sync::Arc;

use tokenvault::app::{App, StartupError};
use tokenvault::clock::SystemClock;
use tokenvault::store::{SqlStore, Store, StoreOptions};
use tokenvault::vault::{LocalKeyring, Vault};

fn vault(keys: &SqlStore, spec: &str, active: &str) -> Vault {
    let ring = LocalKeyring::from_inline(&SecretString::from(spec.to_owned()), Some(active)).unwrap();
    crate::support::suite::vault_over(keys, Arc::new(ring))
}

async fn rotation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    let old = random_kek("old");
    let new = random_kek("new");

    let v1 = vault(&store, &old, "old");
    let sealed = seal_some(&v1, 7).await;

    // Both keys configured, the new one active: rotation re-wraps every data key.
    let both = format!("{old},{new}");
    let v2 = vault(&store, &both, "new");
    let report = v2.rotate(chrono::Utc::now()).await.unwrap();
    assert_eq!(
        (report.rewrapped, report.unchanged, report.active_kek.as_str()),
        (7, 0, "new")
    );
    assert_eq!(
        v2.rotate(chrono::Utc::now()).await.unwrap().rewrapped,
        0,
        "a second rotation has nothing to do"
    );

    // The old key can now be removed: everything still opens.
    let v3 = vault(&store, &new, "new");
    v3.check_keyring_covers_store().await.unwrap();
    assert_all_open(&v3, &sealed).await;

    // With only the old key, the store names the missing one; destroying a data key shreds.
    let stale = vault(&store, &old, "old");
    crate::support::suite::assert_missing_named_and_shredding(&stale, &v3, &sealed, "new", 7).await;
}
on_both!(rotation_keeps_data_readable, rotation);

#[tokio::test]
async fn start_up_fails_when_a_kek_is_missing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let config = base_config(&db);
    let app = App::build(config, Arc::new(SystemClock), true).await.unwrap();
    app.vault.create_data_key().await.unwrap();
    app.sql.close().await;

    let mut config = base_config(&db);
    config.keys.inline = Some(SecretString::from(random_kek("another")));
    let error = App::build(config, Arc::new(SystemClock), true).await.unwrap_err();
    assert!(matches!(error, StartupError::Vault(_)), "{error}");
    assert!(error.to_string().contains("`test-1` (1 data keys)"), "{error}");
}

#[tokio::test]
async fn keys_can_live_in_their_own_database() {
    let db = TestDb::new(Backend::Postgres).await;
    let key_db = db.sibling().await;
    let mut config = base_config(&db);
    config.key_database_url = Some(key_db.url.clone());
    let app = App::build(config, Arc::new(SystemClock), true).await.unwrap();
    let key = app.vault.create_data_key().await.unwrap();

    let main = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    let keys = SqlStore::connect(&key_db.url, &StoreOptions::default()).await.unwrap();
    use tokenvault::store::KeyStore;
    assert!(main.data_key(key.id()).await.unwrap().is_none());
    assert!(keys.data_key(key.id()).await.unwrap().is_some());
    main.ping().await.unwrap();
}
