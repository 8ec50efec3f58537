//! The PKCS#11 keyring against SoftHSM2 (a real PKCS#11 token): the vault
//! suite (round trip, tamper, binding to the data key and the KEK, rotation,
//! missing keys), what start-up checks, the operator's `keys init-hsm` and
//! `check-config`, the whole server with `backend = "pkcs11"`, and KEK epochs
//! whose keys are generated on and destroyed from the token.

use crate::on_both;
use crate::support::hsm::SoftHsm;
use crate::support::suite::{
    assert_all_open, assert_missing_named_and_shredding, connected_with_keys, disconnect_and_stop, migrated, seal_some,
};
use crate::support::{keys, Backend, TestDb, TestServer};
use secrecy::ExposeSecret;
use std::sync::Arc;
use tokenvault::store::{KeyStore, SqlStore};
use tokenvault::vault::{Keyring, Pkcs11Keyring, Vault, VaultError, PKCS11_WRAPPED_LEN};
use tonic::Code;
use uuid::Uuid;

async fn keyring(hsm: &SoftHsm, active: &str, older: &[&str]) -> Arc<Pkcs11Keyring> {
    Arc::new(
        Pkcs11Keyring::connect(&hsm.pkcs11_config(active, older), &[])
            .await
            .unwrap(),
    )
}

fn vault(keys: &SqlStore, ring: Arc<Pkcs11Keyring>) -> Vault {
    crate::support::suite::vault_over(keys, ring)
}

async fn vault_suite(backend: Backend) {
    let hsm = SoftHsm::new();
    hsm.create_key("kek-1").await;
    hsm.create_key("kek-2").await;
    // Generated on the token, sensitive and never extractable: its value never leaves it.
    assert_eq!(hsm.key_protection("kek-1"), (true, false, true));
    assert!(
        !hsm.key_value_readable("kek-1"),
        "the token refuses to hand out the key"
    );
    let db = TestDb::new(backend).await;
    let store = migrated(&db).await;

    let ring = keyring(&hsm, "kek-1", &[]).await;
    assert_eq!(ring.active_id(), "kek-1");
    assert_eq!(ring.ids(), ["kek-1"]);
    let v1 = vault(&store, ring.clone());
    let sealed = seal_some(&v1, 3).await;
    assert_eq!(store.kek_usage().await.unwrap(), vec![("kek-1".to_owned(), 3)]);
    assert_all_open(&v1, &sealed).await;
    let stored = store.data_key(sealed[0].0).await.unwrap().unwrap();
    assert_eq!(stored.wrapped.len(), PKCS11_WRAPPED_LEN);

    // A tampered wrapped key, one presented under another data key id, and one
    // relabelled to another KEK of the token all fail GCM on the token: DATA_LOSS.
    for (index, flip) in [(0usize, 0x01u8), (5, 0x80), (30, 0x01), (PKCS11_WRAPPED_LEN - 1, 0x01)] {
        let mut tampered = stored.wrapped.clone();
        tampered[index] ^= flip;
        let error = ring.unwrap(&stored.kek_id, stored.id, &tampered).await.unwrap_err();
        assert!(
            matches!(error, VaultError::UnwrapFailed { dek_id } if dek_id == stored.id),
            "byte {index}: {error}"
        );
    }
    let error = ring
        .unwrap(&stored.kek_id, stored.id, &stored.wrapped[..40])
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::UnwrapFailed { .. }), "{error}");
    let other = Uuid::new_v4();
    let error = ring.unwrap(&stored.kek_id, other, &stored.wrapped).await.unwrap_err();
    assert!(
        matches!(error, VaultError::UnwrapFailed { dek_id } if dek_id == other),
        "{error}"
    );
    assert_eq!(tonic::Status::from(error).code(), Code::DataLoss);
    let both = keyring(&hsm, "kek-2", &["kek-1"]).await;
    let error = both.unwrap("kek-2", stored.id, &stored.wrapped).await.unwrap_err();
    assert!(matches!(error, VaultError::UnwrapFailed { .. }), "relabelled: {error}");
    assert!(ring.unwrap(&stored.kek_id, stored.id, &stored.wrapped).await.is_ok());

    // Rotation to the second key; the first stays configured to unwrap.
    assert!(both.contains("kek-1") && both.contains("kek-2"));
    let v2 = vault(&store, both);
    let report = v2.rotate(chrono::Utc::now()).await.unwrap();
    assert_eq!((report.rewrapped, report.unchanged), (3, 0));
    assert_eq!(report.active_kek, "kek-2");
    assert_eq!(store.kek_usage().await.unwrap(), vec![("kek-2".to_owned(), 3)]);
    assert_eq!(v2.rotate(chrono::Utc::now()).await.unwrap().rewrapped, 0);
    let rewrapped = store.data_key(sealed[1].0).await.unwrap().unwrap();
    assert_ne!(
        rewrapped.wrapped,
        store.data_key(sealed[2].0).await.unwrap().unwrap().wrapped
    );

    // With only the second key, everything still opens; with only the first,
    // the store names the missing key.
    let v3 = vault(&store, keyring(&hsm, "kek-2", &[]).await);
    v3.check_keyring_covers_store().await.unwrap();
    assert_all_open(&v3, &sealed).await;
    let stale = vault(&store, keyring(&hsm, "kek-1", &[]).await);
    assert_missing_named_and_shredding(&stale, &v3, &sealed, "kek-2", 3).await;
}
on_both!(hsm_vault_suite, vault_suite);

#[tokio::test]
async fn start_up_checks_the_token_pin_and_keys() {
    let hsm = SoftHsm::new();
    hsm.create_key("kek-1").await;
    let connect = |config: tokenvault::config::Pkcs11Config| async move {
        Pkcs11Keyring::connect(&config, &[])
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    let mut config = hsm.pkcs11_config("kek-1", &[]);
    config.token_label = "no-such-token".to_owned();
    let error = connect(config).await;
    assert!(
        error.contains("no initialised PKCS#11 token labelled `no-such-token`") && error.contains(&hsm.token_label),
        "names the tokens it saw: {error}"
    );

    let wrong_pin = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong_pin.path(), "000000").unwrap();
    let mut config = hsm.pkcs11_config("kek-1", &[]);
    config.pin_file = wrong_pin.path().to_owned();
    let error = connect(config).await;
    assert!(error.contains("PIN") && error.contains("wrong"), "{error}");
    assert!(!error.contains(crate::support::hsm::PIN), "no PIN in the message");

    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut config = hsm.pkcs11_config("kek-1", &[]);
    config.pin_file = empty.path().to_owned();
    assert!(connect(config).await.contains("is empty"));

    let error = connect(hsm.pkcs11_config("kek-9", &[])).await;
    assert!(
        error.contains("no AES key labelled `kek-9`") && error.contains("keys init-hsm"),
        "{error}"
    );
    let error = connect(hsm.pkcs11_config("kek-1", &["kek-0"])).await;
    assert!(error.contains("older_key_labels names `kek-0`"), "{error}");

    let mut config = hsm.pkcs11_config("kek-1", &[]);
    config.module = "/nonexistent/libpkcs11.so".into();
    let error = connect(config).await;
    assert!(error.contains("cannot load the PKCS#11 library"), "{error}");

    // The right configuration works, and the key's label is the stored KEK id.
    let ring = keyring(&hsm, "kek-1", &[]).await;
    let dek = Uuid::new_v4();
    let (kek, wrapped) = ring.wrap(dek, &[7u8; 32]).await.unwrap();
    assert_eq!(kek, "kek-1");
    assert_eq!(ring.unwrap(&kek, dek, &wrapped).await.unwrap().id(), dek);
    // A second keyring in the same process shares the library and its login.
    let again = keyring(&hsm, "kek-1", &[]).await;
    assert_eq!(again.unwrap(&kek, dek, &wrapped).await.unwrap().id(), dek);
    drop(ring);
    assert_eq!(again.unwrap(&kek, dek, &wrapped).await.unwrap().id(), dek);
}

/// `tokenvault <args>` with `config`, as an operator runs it.
fn tokenvault(dir: &std::path::Path, config: &str, args: &[&str]) -> (bool, String) {
    let path = dir.join("tokenvault.toml");
    std::fs::write(&path, config).unwrap();
    let out = tokenvault_testkit::server_process::clean_command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvault")))
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The operator's path: `check-config` says the key is missing, `keys init-hsm` creates it on the token, then it is valid.
#[tokio::test]
async fn keys_init_hsm_creates_the_configured_key() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let config = format!(
        "database_url = \"{}\"\n[[auth.api_keys]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"admin\"]\ntenants = [\"{}\"]\n{}",
        db.url.expose_secret(),
        tokenvault::auth::hash_api_key(keys::ADMIN),
        keys::TENANT,
        hsm.keys_toml("tokenvault-kek")
            .replacen("[keys]\n", "[keys]\nallow_shared_database = true\n", 1)
    );
    let (ok, out) = tokenvault(dir.path(), &config, &["check-config"]);
    assert!(!ok && out.contains("no AES key labelled `tokenvault-kek`"), "{out}");
    let (ok, out) = tokenvault(dir.path(), &config, &["keys", "init-hsm"]);
    assert!(ok && out.contains("created AES-256 key `tokenvault-kek`"), "{out}");
    assert_eq!(hsm.key_labels(), ["tokenvault-kek"]);
    assert_eq!(hsm.key_protection("tokenvault-kek"), (true, false, true));
    let (ok, out) = tokenvault(dir.path(), &config, &["keys", "init-hsm"]);
    assert!(ok && out.contains("already on token"), "{out}");
    assert_eq!(hsm.key_labels(), ["tokenvault-kek"], "not created twice");
    let (ok, out) = tokenvault(dir.path(), &config, &["check-config"]);
    assert!(ok && out.contains("configuration is valid"), "{out}");
    assert!(!out.contains(crate::support::hsm::PIN), "no PIN in the output");

    // With epochs, a new epoch's key takes over and the configured one is
    // destroyed from the token; check-config reads the epochs and still passes.
    let config = config.replace("rotate_every_days = 0", "rotate_every_days = 7");
    let (ok, out) = tokenvault(dir.path(), &config, &["migrate"]);
    assert!(ok, "{out}");
    let (ok, out) = tokenvault(dir.path(), &config, &["keys", "rotate"]);
    assert!(ok, "{out}");
    let later = (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339();
    let (ok, out) = tokenvault(dir.path(), &config, &["keys", "run", "--force", "--now", &later]);
    assert!(ok && out.contains("destroyed retired key: tokenvault-kek"), "{out}");
    let labels = hsm.key_labels();
    assert!(
        !labels.is_empty() && labels.iter().all(|l| l.starts_with("tv-")),
        "only epoch keys remain: {labels:?}"
    );
    let (ok, out) = tokenvault(dir.path(), &config, &["check-config"]);
    assert!(ok && out.contains("configuration is valid"), "{out}");
}

async fn token(server: &TestServer, connection_id: &str) -> Result<String, tonic::Status> {
    server.token_for(connection_id).await.map(|r| r.access_token)
}

async fn server_round_trip(backend: Backend) {
    let hsm = SoftHsm::new();
    hsm.create_key("tokenvault").await;
    let (with, connection, first) =
        connected_with_keys(backend, hsm.keys_config("tokenvault", &[]), "tokenvault").await;
    let server = &with.server;
    // Cache miss: the data key is unwrapped on the token again, the same token comes back.
    server.app().broker.cache().invalidate_all();
    server.app().vault.forget_all();
    assert_eq!(token(server, &connection).await.unwrap(), first);

    // The token fails (its storage gone): the cached token is still served; a
    // cache miss that needs an unwrap, and a new consent that needs a new data
    // key, are UNAVAILABLE and say so; nothing was written for the consent.
    let before = crate::support::dump_database(server.app().sql.pool()).await;
    hsm.lose_storage();
    assert_eq!(token(server, &connection).await.unwrap(), first);
    server.app().broker.cache().invalidate_all();
    server.app().vault.forget_all();
    let error = token(server, &connection).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("HSM"), "{error:?}");
    assert!(!error.message().contains(&first), "no token in the message");
    let error = server
        .consent(keys::PLATFORM)
        .start_consent(crate::support::provider::start_request("noor", &["mail.read"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("HSM"), "{error:?}");
    assert_eq!(
        crate::support::dump_database(server.app().sql.pool()).await,
        before,
        "the refused consent left nothing behind"
    );

    disconnect_and_stop(with, &connection).await;
}
on_both!(hsm_server_round_trip, server_round_trip);

/// KEK epochs on the token: a new epoch is a key generated on the token, data
/// keys are re-wrapped to it, and a retired key is destroyed from the token
/// (gone at once) once due; a restart adopts the newest epoch although the
/// configured key is gone.
async fn hsm_epochs(backend: Backend) {
    let hsm = SoftHsm::new();
    hsm.create_key("kek-1").await;
    let db = TestDb::new(backend).await;
    let store = migrated(&db).await;
    let policy = tokenvault::vault::EpochPolicy {
        rotate_every: Some(chrono::Duration::days(7)),
        destroy_retired_after: chrono::Duration::days(14),
        rewrap_per_second: 0,
    };
    let v = vault(&store, keyring(&hsm, "kek-1", &[]).await).with_epochs(policy);
    let sealed = seal_some(&v, 3).await;
    let day0 = chrono::Utc::now();
    assert_eq!(v.epoch_pass(day0).await.unwrap().unwrap().started, None);
    let report = v.epoch_pass(day0 + chrono::Duration::days(7)).await.unwrap().unwrap();
    let second = report.started.clone().expect("a new key on the token");
    assert_eq!(report.rewrapped, 3);
    assert_eq!(hsm.key_labels(), {
        let mut labels = vec!["kek-1".to_owned(), second.clone()];
        labels.sort();
        labels
    });
    assert_eq!(hsm.key_protection(&second), (true, false, true));
    assert_eq!(store.kek_usage().await.unwrap(), vec![(second.clone(), 3)]);

    // Day 21: a third epoch starts, and the first key is due and destroyed from the token.
    let before = chrono::Utc::now();
    let report = v.epoch_pass(day0 + chrono::Duration::days(21)).await.unwrap().unwrap();
    assert_eq!(report.destroyed, vec!["kek-1".to_owned()], "{report:?}");
    let third = report.started.clone().expect("the third epoch");
    let mut expected = vec![second.clone(), third.clone()];
    expected.sort();
    assert_eq!(hsm.key_labels(), expected, "the token no longer holds kek-1");
    let epoch = store
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kek_id == "kek-1")
        .unwrap();
    assert!(
        epoch.gone_at.unwrap() >= before - chrono::Duration::seconds(1),
        "gone at once"
    );
    assert_all_open(&v, &sealed).await;

    // A restart: the configured key is gone, the newest epoch is active.
    let live: Vec<String> = store
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.destroyed_at.is_none())
        .map(|e| e.kek_id)
        .collect();
    assert_eq!(live.len(), 2);
    assert_eq!(live.last(), Some(&third));
    let restarted = Arc::new(
        Pkcs11Keyring::connect(&hsm.pkcs11_config("kek-1", &[]), &live)
            .await
            .unwrap(),
    );
    assert_eq!(restarted.active_id(), third);
    assert!(restarted.contains(&second) && !restarted.contains("kek-1"));
    let v2 = vault(&store, restarted).with_epochs(policy);
    v2.sync_epochs().await.unwrap();
    assert_all_open(&v2, &sealed).await;
    // Without the epochs, the configured key alone refuses to start: it was destroyed.
    let error = Pkcs11Keyring::connect(&hsm.pkcs11_config("kek-1", &[]), &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no AES key labelled `kek-1`"), "{error}");
}
on_both!(hsm_key_epochs, hsm_epochs);
