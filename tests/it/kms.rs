//! The AWS KMS keyring against moto's server mode (a real HTTP KMS on
//! 127.0.0.1): the vault suite (round trip, tamper, encryption context,
//! rotation, missing keys, key state at start-up) and the whole server with
//! `backend = "aws-kms"`, including a KMS outage and its end.

use crate::on_both;
use crate::support::kms::Moto;
use crate::support::provider::connect;
use crate::support::suite::{
    assert_all_open, assert_missing_named_and_shredding, binding, connected_with_keys, disconnect_and_stop, seal_some,
};
use crate::support::{Backend, TestDb, TestServer};
use std::sync::Arc;
use tokenvault::store::{KeyStore, SqlStore, Store, StoreOptions};
use tokenvault::vault::{Keyring, KmsKeyring, Vault, VaultError};
use tonic::Code;
use uuid::Uuid;

async fn keyring(moto: &Moto, active: &str, older: &[&str]) -> Arc<KmsKeyring> {
    let config = moto.keys_config(active, older);
    Arc::new(KmsKeyring::connect(config.kms.as_ref().unwrap(), &[]).await.unwrap())
}

fn vault(keys: &SqlStore, ring: Arc<KmsKeyring>) -> Vault {
    crate::support::suite::vault_over(keys, ring)
}

async fn vault_suite(backend: Backend) {
    let moto = Moto::start();
    let first = moto.create_aliased_key("tokenvault-first").await;
    let second = moto.create_key().await;
    let db = TestDb::new(backend).await;
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    store.migrate().await.unwrap();

    // Round trip under a key named by its alias: the stored KEK id is the key's ARN.
    let ring = keyring(&moto, "alias/tokenvault-first", &[]).await;
    assert_eq!(ring.active_id(), first);
    let v1 = vault(&store, ring.clone());
    let sealed = seal_some(&v1, 3).await;
    assert_eq!(store.kek_usage().await.unwrap(), vec![(first.clone(), 3)]);
    assert_all_open(&v1, &sealed).await;

    // A tampered wrapped key, or one presented under another data key id
    // (the encryption context), does not unwrap: KMS says so, we say DATA_LOSS.
    let stored = store.data_key(sealed[0].0).await.unwrap().unwrap();
    let mut tampered = stored.wrapped.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let error = ring.unwrap(&stored.kek_id, stored.id, &tampered).await.unwrap_err();
    assert!(
        matches!(error, VaultError::UnwrapFailed { dek_id } if dek_id == stored.id),
        "{error}"
    );
    let other = Uuid::new_v4();
    let error = ring.unwrap(&stored.kek_id, other, &stored.wrapped).await.unwrap_err();
    assert!(
        matches!(error, VaultError::UnwrapFailed { dek_id } if dek_id == other),
        "{error}"
    );
    assert_eq!(tonic::Status::from(error).code(), Code::DataLoss);
    assert!(ring.unwrap(&stored.kek_id, stored.id, &stored.wrapped).await.is_ok());

    // Rotation to a second key with ReEncrypt; the first stays configured to unwrap.
    let both = keyring(&moto, &second, &["alias/tokenvault-first"]).await;
    assert!(both.contains(&first) && both.contains(&second));
    let v2 = vault(&store, both);
    let report = v2.rotate(chrono::Utc::now()).await.unwrap();
    assert_eq!((report.rewrapped, report.unchanged), (3, 0));
    assert_eq!(report.active_kek, second);
    assert_eq!(store.kek_usage().await.unwrap(), vec![(second.clone(), 3)]);
    assert_eq!(
        v2.rotate(chrono::Utc::now()).await.unwrap().rewrapped,
        0,
        "nothing left to re-wrap"
    );
    // The re-wrapped key is bound to its id too.
    let rewrapped = store.data_key(sealed[1].0).await.unwrap().unwrap();
    assert_eq!(rewrapped.kek_id, second);
    assert!(matches!(
        keyring(&moto, &second, &[])
            .await
            .unwrap(&second, Uuid::new_v4(), &rewrapped.wrapped)
            .await,
        Err(VaultError::UnwrapFailed { .. })
    ));

    // With only the second key, everything still opens.
    let v3 = vault(&store, keyring(&moto, &second, &[]).await);
    v3.check_keyring_covers_store().await.unwrap();
    assert_all_open(&v3, &sealed).await;
    // With only the first, the store names the missing key; destroying a data key shreds.
    let stale = vault(&store, keyring(&moto, &first, &[]).await);
    assert_missing_named_and_shredding(&stale, &v3, &sealed, &second, 3).await;
}
on_both!(kms_vault_suite, vault_suite);

/// The key id at the end of an ARN (moto's DisableKey takes only that).
fn bare_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn start_up_checks_the_kms_keys() {
    let moto = Moto::start();
    let key = moto.create_key().await;
    let key_two = moto.create_key().await;
    let client = moto.client().await;

    let config = moto.keys_config("alias/nothing-here", &[]);
    let error = KmsKeyring::connect(config.kms.as_ref().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::Keyring(_)), "{error}");
    assert!(error.to_string().contains("alias/nothing-here"), "{error}");

    client.disable_key().key_id(bare_id(&key)).send().await.unwrap();
    let config = moto.keys_config(&key, &[]);
    let error = KmsKeyring::connect(config.kms.as_ref().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not enabled"), "{error}");

    // Access denied: moto answers a Decrypt that names another key than the
    // ciphertext's with AccessDeniedException (it does not enforce key state
    // or IAM on Decrypt): refused, FAILED_PRECONDITION, said clearly.
    let live = moto.create_key().await;
    let ring = KmsKeyring::connect(moto.keys_config(&live, &[&key_two]).kms.as_ref().unwrap(), &[])
        .await
        .unwrap();
    let dek = Uuid::new_v4();
    let (kek, wrapped) = ring.wrap(dek, &[7u8; 32]).await.unwrap();
    assert_eq!(kek, live);
    let error = ring.unwrap(&key_two, dek, &wrapped).await.unwrap_err();
    assert!(
        matches!(error, VaultError::KmsRefused(ref reason) if reason.contains("AccessDenied")),
        "{error}"
    );
    let status = tonic::Status::from(error);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("AWS KMS"), "{status:?}");

    // KMS out of reach at start: a clear start-up error.
    drop(moto);
    let error = KmsKeyring::connect(config.kms.as_ref().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::KmsUnavailable(_)), "{error}");
}

async fn token(server: &TestServer, connection_id: &str) -> Result<String, tonic::Status> {
    server.token_for(connection_id).await.map(|r| r.access_token)
}

/// Drops every cached token and data key: the next call reads the database and unwraps through KMS.
fn clear_caches(server: &TestServer) {
    server.app().broker.cache().invalidate_all();
    server.app().vault.forget_all();
}

async fn server_round_trip(backend: Backend) {
    let mut moto = Moto::start();
    let arn = moto.create_aliased_key("tokenvault").await;
    let (with, connection, first) = connected_with_keys(backend, moto.keys_config("alias/tokenvault", &[]), &arn).await;
    let server = &with.server;

    // Cache miss: the data key is unwrapped by KMS again, the same token comes back.
    clear_caches(server);
    assert_eq!(token(server, &connection).await.unwrap(), first);

    // KMS frozen: the cached token is still served; a miss needing an unwrap is UNAVAILABLE.
    moto.pause();
    assert_eq!(token(server, &connection).await.unwrap(), first);
    clear_caches(server);
    let error = token(server, &connection).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("AWS KMS"), "{error:?}");
    assert!(!error.message().contains(&first), "no token in the message");

    // KMS back: works again.
    moto.resume();
    assert_eq!(token(server, &connection).await.unwrap(), first);

    // A second connection, then KMS killed: cached served, a miss refused clearly.
    let other = connect(&with, "lee", &["mail.read"]).await;
    let other_token = token(server, &other).await.unwrap();
    moto.kill();
    assert_eq!(token(server, &other).await.unwrap(), other_token);
    clear_caches(server);
    let error = token(server, &other).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("AWS KMS"), "{error:?}");

    // Disconnect needs no KMS call: revoked at once.
    disconnect_and_stop(with, &connection).await;
}
on_both!(kms_server_round_trip, server_round_trip);

/// KEK epochs in AWS KMS: a new epoch is a new KMS key (CreateKey), data
/// keys are re-wrapped to it with ReEncrypt, and a retired key is scheduled
/// for deletion (ScheduleKeyDeletion, pending window 7 days) once due; a
/// restart adopts the newest epoch even though the configured key is pending deletion.
async fn kms_epochs(backend: Backend) {
    let moto = Moto::start();
    let first = moto.create_aliased_key("tokenvault-epochs").await;
    let db = TestDb::new(backend).await;
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    let policy = tokenvault::vault::EpochPolicy {
        rotate_every: Some(chrono::Duration::days(7)),
        destroy_retired_after: chrono::Duration::days(14),
        rewrap_per_second: 0,
    };
    let ring = keyring(&moto, "alias/tokenvault-epochs", &[]).await;
    let v = vault(&store, ring.clone()).with_epochs(policy);
    let mut sealed = Vec::new();
    for i in 0..3 {
        let key = v.create_data_key().await.unwrap();
        let record = format!("c{i}");
        sealed.push((key.id(), record.clone(), key.seal(&binding(&record), b"token").unwrap()));
    }
    let day0 = chrono::Utc::now();
    assert_eq!(v.epoch_pass(day0).await.unwrap().unwrap().started, None);
    let report = v.epoch_pass(day0 + chrono::Duration::days(7)).await.unwrap().unwrap();
    let second = report.started.clone().expect("a new KMS key");
    assert!(second.starts_with("arn:aws:kms:") && second != first, "{second}");
    assert_eq!(report.rewrapped, 3);
    assert_eq!(store.kek_usage().await.unwrap(), vec![(second.clone(), 3)]);
    let client = moto.client().await;
    let tags = client
        .list_resource_tags()
        .key_id(bare_id(&second))
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags().iter().any(|t| t.tag_key() == "tokenvault:epoch"),
        "the epoch's key is tagged"
    );

    // Day 21: the first key is due; it is scheduled for deletion, not deleted at once.
    let report = v.epoch_pass(day0 + chrono::Duration::days(21)).await.unwrap().unwrap();
    assert_eq!(report.destroyed, vec![first.clone()], "{report:?}");
    let described = client.describe_key().key_id(&first).send().await.unwrap();
    let meta = described.key_metadata().unwrap();
    assert_eq!(meta.key_state(), Some(&aws_sdk_kms::types::KeyState::PendingDeletion));
    let epoch = store
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kek_id == first)
        .unwrap();
    let gone = epoch.gone_at.unwrap();
    assert!(
        gone >= chrono::Utc::now() + chrono::Duration::days(6),
        "gone after the pending window: {gone}"
    );
    let status = v.key_status(day0 + chrono::Duration::days(21)).await.unwrap();
    assert!(status.backups_unreadable_after.is_some());

    // A restart: the configured key is pending deletion, the newest epoch is active.
    let live: Vec<String> = store
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.destroyed_at.is_none())
        .map(|e| e.kek_id)
        .collect();
    let config = moto.keys_config("alias/tokenvault-epochs", &[]);
    let restarted = Arc::new(KmsKeyring::connect(config.kms.as_ref().unwrap(), &live).await.unwrap());
    assert_eq!(restarted.active_id(), live.last().unwrap().clone());
    let v2 = vault(&store, restarted).with_epochs(policy);
    v2.sync_epochs().await.unwrap();
    for (dek, record, ciphertext) in &sealed {
        assert!(v2
            .data_key(*dek)
            .await
            .unwrap()
            .open(&binding(record), ciphertext)
            .is_ok());
    }
    // Without the epochs, the configured key alone refuses to start: it is pending deletion.
    let error = KmsKeyring::connect(config.kms.as_ref().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not enabled"), "{error}");
}
on_both!(kms_key_epochs, kms_epochs);
