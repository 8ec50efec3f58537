//! KEK epochs and data-key cache misses, per keyring: how many data keys a
//! vault unwraps per second when none is cached (key-table read + unwrap, 16
//! at a time), and how long one epoch's re-wrap of every data key takes.
//!
//! `PATH="$(scripts/install-moto):$PATH" cargo bench --bench epochs`
//! (`-- --keys 100000 --kms-keys 10000 --hsm-keys 10000` are the defaults;
//! AWS KMS is measured on moto when `moto_server` is on PATH, PKCS#11 on a
//! SoftHSM2 token when SoftHSM2 is installed; the key table is a
//! fresh PostgreSQL database on `TOKENVAULT_TEST_PG`, default
//! postgres://postgres@127.0.0.1:5432/postgres, dropped afterwards.)

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support/kms.rs"]
#[allow(dead_code)]
mod moto;

#[path = "../tests/it/support/hsm.rs"]
#[allow(dead_code)]
mod hsm;

use futures::stream::{self, StreamExt};
use secrecy::SecretString;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvault::clock::SystemClock;
use tokenvault::store::{SqlStore, Store, StoreOptions};
use tokenvault::vault::{EpochPolicy, Keyring, LocalKeyring, Vault};
use uuid::Uuid;

const CONCURRENCY: usize = 16;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh PostgreSQL database for the key table; dropped by [`drop_database`].
async fn fresh_database() -> (String, String) {
    let admin =
        std::env::var("TOKENVAULT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("tv_bench_{}", Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL (TOKENVAULT_TEST_PG)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    (admin, url)
}

async fn drop_database(admin: &str, url: &str) {
    let name = url.rsplit('/').next().unwrap();
    let mut connection = sqlx::PgConnection::connect(admin).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await;
}

/// Fills a fresh key table with `count` data keys wrapped by `keyring`,
/// measures cache-miss unwraps and one epoch's re-wrap, and prints one line each.
async fn measure(name: &str, keyring: Arc<dyn Keyring>, count: usize) {
    let (admin, url) = fresh_database().await;
    let store = SqlStore::connect(&SecretString::from(url.clone()), &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let vault = Vault::new(
        keyring.clone(),
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        1_000_000,
        Duration::from_secs(3600),
    )
    .with_epochs(EpochPolicy {
        rotate_every: Some(chrono::Duration::days(7)),
        ..EpochPolicy::default()
    });
    let started = Instant::now();
    let ids: Vec<Uuid> = stream::iter(0..count)
        .map(|_| {
            let vault = vault.clone();
            async move { vault.create_data_key().await.unwrap().id() }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let created = started.elapsed();

    // Cache misses: every data key once, none cached.
    vault.forget_all();
    let misses = ids.len().min(20_000);
    let started = Instant::now();
    stream::iter(ids.iter().take(misses).copied())
        .map(|id| {
            let vault = vault.clone();
            async move { vault.data_key(id).await.unwrap() }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|_| async {})
        .await;
    let miss_rate = misses as f64 / started.elapsed().as_secs_f64();

    // One epoch: a new KEK, and every data key re-wrapped under it (one pass, no pacing).
    let started = Instant::now();
    let report = vault.rotate(chrono::Utc::now()).await.unwrap();
    let rewrap = started.elapsed();
    assert_eq!(report.rewrapped as usize, count, "every data key re-wrapped");
    println!(
        "{name:<14} created {count} data keys in {:>7.1} s | cache-miss unwraps (key-table read + unwrap, {CONCURRENCY} at a time): {:>8.0}/s | one epoch's re-wrap of {count}: {:>7.1} s ({:>6.0}/s)",
        created.as_secs_f64(),
        miss_rate,
        rewrap.as_secs_f64(),
        count as f64 / rewrap.as_secs_f64()
    );
    store.close().await;
    drop_database(&admin, &url).await;
}

fn main() {
    let keys = arg("--keys", 100_000);
    let kms_keys = arg("--kms-keys", 10_000);
    let hsm_keys = arg("--hsm-keys", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, LocalKeyring::generate_file_text("k1").as_bytes()).unwrap();
        measure("file", Arc::new(LocalKeyring::from_file(&path, None).unwrap()), keys).await;
        if moto::Moto::available() {
            let server = moto::Moto::start();
            let arn = server.create_key().await;
            let config = server.keys_config(&arn, &[]);
            let kms = tokenvault::vault::KmsKeyring::connect(config.kms.as_ref().unwrap(), &[])
                .await
                .unwrap();
            measure("aws_kms_moto", Arc::new(kms), kms_keys).await;
        } else {
            eprintln!("epochs bench: moto_server is not on PATH; AWS KMS is not measured (scripts/install-moto)");
        }
        if hsm::available() {
            let token = hsm::SoftHsm::new();
            token.create_key("bench-kek").await;
            let ring = tokenvault::vault::Pkcs11Keyring::connect(&token.pkcs11_config("bench-kek", &[]), &[])
                .await
                .unwrap();
            measure("pkcs11_softhsm2", Arc::new(ring), hsm_keys).await;
        } else {
            eprintln!("epochs bench: SoftHSM2 is not installed; PKCS#11 is not measured (scripts/install-softhsm)");
        }
    });
}
