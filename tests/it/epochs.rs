//! KEK epochs with the managed key file: scheduled rotation, background
//! re-wrap, destruction of retired keys on schedule; backups of both
//! databases (`pg_dump`, SQLite `VACUUM INTO`) that stop opening tokens once
//! the epoch window has passed while a recent backup still restores; and two
//! server processes rotating on one database under traffic, one of them
//! killed in the middle of the re-wrap.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{open_refresh_token, stored_refresh_token};
use crate::support::process::ServerProcess;
use crate::support::provider::{connect, start_fake, start_request, CatalogOptions};
use crate::support::{eventually, keys, Backend, TestDb};
use chrono::Duration as Days;
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokenvault::clock::{Clock, SystemClock};
use tokenvault::proto::admin_service_client::AdminServiceClient;
use tokenvault::proto::consent_service_client::ConsentServiceClient;
use tokenvault::proto::{GetAccessTokenRequest, RevokeConnectionRequest, RotateKeysRequest};
use tokenvault::store::{KeyStore, SqlStore, Store, StoreOptions};
use tokenvault::vault::{EpochPolicy, LocalKeyring, Vault, VaultError};
use tokenvault_testkit::fake_provider::FakeProviderConfig;

/// A fresh key file with one key, `k1`, in `dir`.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(&path, LocalKeyring::generate_file_text("k1").as_bytes()).unwrap();
    path
}

/// A vault of its own over `path` (another replica's view, or a backup's
/// reader) and the key table `keys`; `active` overrides the file's.
fn file_vault(path: &Path, active: Option<&str>, keys: SqlStore) -> Vault {
    Vault::new(
        Arc::new(LocalKeyring::from_file(path, active).unwrap()),
        Arc::new(keys),
        Arc::new(SystemClock),
        10,
        Duration::from_secs(60),
    )
}

/// The key ids the key file holds now.
fn file_key_ids(path: &Path) -> Vec<String> {
    LocalKeyring::from_file(path, None)
        .map(|ring| tokenvault::vault::Keyring::ids(&ring))
        .unwrap()
}

/// A server whose KEKs are in `path` with 7-day epochs destroyed 14 days after retirement.
async fn server_with_epochs(backend: Backend, path: &Path, separate_key_db: Option<&TestDb>) -> WithProvider {
    let path = path.to_owned();
    let key_url = separate_key_db.map(|db| db.url.clone());
    WithProvider::build(backend)
        .config(move |config| {
            config.keys.inline = None;
            config.keys.file = Some(path);
            config.keys.rotate_every_days = Some(7);
            config.keys.destroy_retired_after_days = 14;
            if let Some(url) = key_url {
                config.key_database_url = Some(url);
                config.keys.allow_shared_database = false;
            }
        })
        .start()
        .await
}

async fn epochs_rotate_rewrap_and_destroy(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let with = server_with_epochs(backend, &path, None).await;
    let ids = [
        connect(&with, "u1", &["mail.read"]).await,
        connect(&with, "u2", &["mail.read"]).await,
    ];
    let app = with.server.app();
    let (vault, clock) = (&app.vault, &with.server.clock);
    let keys = app.key_sql.clone();
    let wrapped = keys.kek_usage().await.unwrap().iter().map(|(_, n)| n).sum::<u64>();
    assert!(wrapped >= 2);

    // The first pass makes the configured key the first epoch.
    let report = vault.epoch_pass(clock.now()).await.unwrap().expect("leads");
    assert_eq!(report.started, None);
    let epochs = keys.kek_epochs().await.unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0].kek_id, "k1");

    // Not due yet: nothing happens.
    clock.advance(Days::days(6));
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    assert_eq!((report.started, report.rewrapped), (None, 0));

    // Day 7: a new key in the file becomes active and every data key is re-wrapped under it.
    clock.advance(Days::days(1));
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    let second = report.started.clone().expect("a new epoch");
    assert_eq!(report.rewrapped, wrapped, "{report:?}");
    assert_eq!(report.backlog, 0);
    assert_eq!(keys.kek_usage().await.unwrap(), vec![(second.clone(), wrapped)]);
    assert_eq!(file_key_ids(&path), vec!["k1".to_owned(), second.clone()]);
    vault.forget_all();
    for id in &ids {
        assert!(!stored_refresh_token(&with.server, id).await.is_empty());
        with.server.token_for(id).await.expect("a token under the new epoch");
    }
    // New data keys are wrapped by the new epoch.
    connect(&with, "u3", &["mail.read"]).await;
    assert_eq!(keys.kek_usage().await.unwrap().len(), 1);

    // Retired on day 7, destroyed on day 21, not before (a third epoch started on day 20, on schedule).
    clock.advance(Days::days(13));
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    assert!(report.destroyed.is_empty(), "{report:?}");
    let third = report.started.clone().expect("day 20 starts the third epoch");
    assert!(file_key_ids(&path).contains(&"k1".to_owned()));
    clock.advance(Days::days(1));
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    assert_eq!(report.destroyed, vec!["k1".to_owned()], "{report:?}");
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(
        !file_key_ids(&path).contains(&"k1".to_owned()),
        "k1 is gone from the key file"
    );
    let k1 = keys
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kek_id == "k1")
        .unwrap();
    assert!(k1.destroyed_at.is_some() && k1.gone_at.is_some());
    vault.forget_all();
    for id in &ids {
        assert!(!stored_refresh_token(&with.server, id).await.is_empty());
    }

    // What `keys status` shows: the window for a backup taken now.
    let status = vault.key_status(clock.now()).await.unwrap();
    assert_eq!(status.active, third);
    let activated = status
        .epochs
        .iter()
        .find(|e| e.epoch.kek_id == third)
        .unwrap()
        .epoch
        .activated_at;
    assert_eq!(
        status.backups_unreadable_after,
        Some(activated + Days::days(7) + Days::days(14))
    );
    with.stop().await;
}
on_both!(
    epochs_rotate_re_wrap_and_destroy_on_schedule,
    epochs_rotate_rewrap_and_destroy
);

/// A key a stale replica wrapped under the retired KEK after the re-wrap is
/// re-wrapped by the next pass before that KEK is destroyed; a key that cannot
/// be re-wrapped keeps its KEK alive (the pass says why) until it is gone.
async fn destruction_waits_for_the_rewrap(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let with = server_with_epochs(backend, &path, None).await;
    connect(&with, "u1", &["mail.read"]).await;
    let app = with.server.app();
    let (vault, clock) = (&app.vault, &with.server.clock);
    vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    let second = vault.start_epoch(clock.now()).await.unwrap();
    assert!(vault.epoch_pass(clock.now()).await.unwrap().unwrap().rewrapped > 0);
    // A replica that has not yet adopted the new epoch still wraps under k1.
    let stale = file_vault(&path, Some("k1"), app.key_sql.clone());
    let late = stale.create_data_key().await.unwrap();
    // And one key under k1 that cannot be re-wrapped (its wrapping was damaged).
    let damaged = uuid::Uuid::new_v4();
    app.key_sql
        .insert_data_key(&tokenvault::store::WrappedDataKey {
            id: damaged,
            kek_id: "k1".into(),
            wrapped: vec![0; tokenvault::vault::WRAPPED_LEN],
            created_at: clock.now(),
        })
        .await
        .unwrap();
    clock.advance(Days::days(15));
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    // Day 15 also starts a third epoch (on schedule): everything re-wraps under it, but the damaged key.
    let third = report.started.clone().expect("a third epoch");
    assert_eq!((report.rewrap_failures, report.backlog), (1, 1), "{report:?}");
    assert!(report.destroyed.is_empty(), "{report:?}");
    assert!(
        report.problems.iter().any(|p| p.contains("still wraps 1 data keys")),
        "{report:?}"
    );
    let k1 = app
        .key_sql
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kek_id == "k1")
        .unwrap();
    assert!(k1.last_error.unwrap().contains("still wraps 1"));
    assert!(file_key_ids(&path).contains(&"k1".to_owned()));
    let stored = app.key_sql.data_key(late.id()).await.unwrap().unwrap();
    assert_eq!(stored.kek_id, third, "the stale replica's key was re-wrapped");
    assert_ne!(second, third);

    // Once the damaged key is gone (destroyed with its connection, say), k1 goes too.
    vault.destroy_data_keys(&[damaged]).await.unwrap();
    let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    assert_eq!(report.destroyed, vec!["k1".to_owned()], "{report:?}");
    assert!(!file_key_ids(&path).contains(&"k1".to_owned()));
    with.stop().await;
}
on_both!(
    a_retired_kek_is_destroyed_only_once_nothing_is_wrapped_by_it,
    destruction_waits_for_the_rewrap
);

/// A replica that cannot load the current epoch's key (its key file is not
/// the shared one) refuses new data keys with UNAVAILABLE instead of wrapping
/// them under a retired key that will be destroyed; once the key loads, it serves again.
async fn a_replica_behind_the_epoch_refuses_new_data_keys(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let with = server_with_epochs(backend, &path, None).await;
    let app = with.server.app();
    app.vault.epoch_pass(with.server.clock.now()).await.unwrap().unwrap();
    // Another host's copy of the key file, taken before the next epoch.
    let copy = dir.path().join("copy.toml");
    std::fs::copy(&path, &copy).unwrap();
    let new = app.vault.start_epoch(with.server.clock.now()).await.unwrap();
    let behind = file_vault(&copy, None, app.key_sql.clone());
    let error = behind.sync_epochs().await.unwrap_err();
    assert!(
        matches!(error, VaultError::UnknownKek(ref kek) if *kek == new),
        "{error}"
    );
    let error = behind.create_data_key().await.unwrap_err();
    assert!(
        matches!(error, VaultError::EpochBehind(ref kek) if *kek == new),
        "{error}"
    );
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
    // The key file catches up: the replica adopts the epoch and wraps under it.
    std::fs::copy(&path, &copy).unwrap();
    behind.sync_epochs().await.unwrap();
    let key = behind.create_data_key().await.unwrap();
    assert_eq!(app.key_sql.data_key(key.id()).await.unwrap().unwrap().kek_id, new);
    with.stop().await;
}
on_both!(
    a_replica_that_cannot_load_the_current_epoch_refuses_new_data_keys,
    a_replica_behind_the_epoch_refuses_new_data_keys
);

/// A database backup: PostgreSQL `pg_dump`/`pg_restore` into a fresh
/// database, or SQLite `VACUUM INTO` a new file. Returns the restored copy.
async fn backup(db_url: &str, backend: Backend, dir: &Path, name: &str) -> TestDb {
    match backend {
        Backend::Postgres => {
            let file = dir.join(format!("{name}.dump"));
            let status = std::process::Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--file"])
                .arg(&file)
                .arg(db_url)
                .status()
                .expect("pg_dump runs (Debian's postgresql-client)");
            assert!(status.success(), "pg_dump failed");
            let restored = TestDb::new(Backend::Postgres).await;
            let status = std::process::Command::new("pg_restore")
                .args(["--no-owner", "--dbname"])
                .arg(restored.url.expose_secret())
                .arg(&file)
                .status()
                .expect("pg_restore runs");
            assert!(status.success(), "pg_restore failed");
            restored
        }
        Backend::Sqlite => {
            let restored = TestDb::new(Backend::Sqlite).await;
            let target = restored.url.expose_secret().trim_start_matches("sqlite://").to_owned();
            let store = SqlStore::connect(
                &secrecy::SecretString::from(db_url.to_owned()),
                &StoreOptions::default(),
            )
            .await
            .unwrap();
            sqlx::query(&format!("VACUUM INTO '{target}'"))
                .execute(store.pool())
                .await
                .expect("VACUUM INTO");
            restored
        }
    }
}

/// Both databases of a backup, restored.
struct Backup {
    main: TestDb,
    keys: TestDb,
}

impl Backup {
    async fn take(main: &TestDb, keys: &TestDb, dir: &Path, name: &str) -> Self {
        Self {
            main: backup(main.url.expose_secret(), main.backend, dir, &format!("{name}-main")).await,
            keys: backup(keys.url.expose_secret(), keys.backend, dir, &format!("{name}-keys")).await,
        }
    }

    /// Opens a connection's refresh token from this backup with the key file as it is now.
    async fn open(&self, key_file: &Path, connection_id: &str) -> Result<String, VaultError> {
        let main = SqlStore::connect(&self.main.url, &StoreOptions::default())
            .await
            .unwrap();
        let keys = SqlStore::connect(&self.keys.url, &StoreOptions::default())
            .await
            .unwrap();
        let vault = file_vault(key_file, None, keys).with_epochs(EpochPolicy::default());
        let store: &dyn Store = &main;
        open_refresh_token(store, &vault, connection_id.parse().unwrap())
            .await
            .map(|token| token.expose_secret().to_owned())
    }
}

async fn backups_stop_opening_tokens_after_the_window(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let key_db = TestDb::new(backend).await;
    let with = server_with_epochs(backend, &path, Some(&key_db)).await;
    let leaving = connect(&with, "leaving", &["mail.read"]).await;
    let staying = connect(&with, "staying", &["mail.read"]).await;
    let app = with.server.app();
    let (vault, clock) = (app.vault.clone(), with.server.clock.clone());
    vault.epoch_pass(clock.now()).await.unwrap().unwrap();
    let main_db = TestDb::attach(&with.server.db);

    // Day 0: a backup of both databases, then the user's connection is revoked and its data key destroyed.
    let before = Backup::take(&main_db, &key_db, dir.path(), "day0").await;
    assert!(before.open(&path, &leaving).await.is_ok(), "a fresh backup opens");
    with.server
        .admin(keys::ADMIN)
        .revoke_connection(RevokeConnectionRequest {
            connection_id: leaving.clone(),
            reason: "user asked".into(),
        })
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let _ = app.lifecycle.outbox().process_due().await;
            let connection = app
                .store
                .connection(&tokenvault::store::TenantScope::All, leaving.parse().unwrap())
                .await
                .unwrap();
            connection.is_some_and(|c| c.dek_id.is_none())
        })
        .await,
        "the revoked connection's data key is destroyed in the live database"
    );
    // The live database cannot open it any more, but the day-0 backup still does (the threat epochs close).
    assert!(before.open(&path, &leaving).await.is_ok());

    // One pass a day: epochs start on days 7, 14, 21; k1 (active on day 0) is destroyed on day 21.
    for day in 1..=21 {
        clock.advance(Days::days(1));
        let report = vault.epoch_pass(clock.now()).await.unwrap().unwrap();
        assert!(report.problems.is_empty(), "day {day}: {report:?}");
        if day == 20 {
            assert!(
                before.open(&path, &leaving).await.is_ok(),
                "day 20 is inside the window"
            );
        }
    }
    for id in [&leaving, &staying] {
        let error = before.open(&path, id).await.unwrap_err();
        assert!(
            matches!(error, VaultError::UnknownKek(ref kek) if kek == "k1"),
            "the day-0 backup opens nothing after the window: {error}"
        );
    }
    // A backup taken within the window restores the users still there.
    let recent = Backup::take(&main_db, &key_db, dir.path(), "day21").await;
    assert!(!recent.open(&path, &staying).await.unwrap().is_empty());
    with.stop().await;
}
on_both!(
    a_backup_stops_opening_tokens_once_the_epoch_window_has_passed,
    backups_stop_opening_tokens_after_the_window
);

/// Two server processes on one PostgreSQL database and one key file, serving
/// traffic (token requests and new consents) while an operator rotates on
/// the first; it is killed in the middle of the re-wrap. The second
/// finishes the re-wrap in the background, no call fails, every data key
/// ends under the new KEK, and a later epoch pass destroys the retired one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_rotate_under_traffic_and_an_interrupted_rewrap_completes() {
    let fake = start_fake(FakeProviderConfig::default(), &CatalogOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path());
    let with = {
        let path = path.clone();
        WithProvider::build(Backend::Postgres)
            .shared_fake(&fake)
            .config(move |config| {
                config.keys.inline = None;
                config.keys.file = Some(path);
                config.keys.rotate_every_days = Some(7);
            })
            .start()
            .await
    };
    let mut ids = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        ids.push(connect(&with, user, &["mail.read"]).await);
    }
    let db = with.into_db().await;
    // Enough data keys that the re-wrap takes a while: 3,000 more, under k1.
    let keys = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    let seeding = file_vault(&path, None, keys.clone());
    for _ in 0..3000 {
        seeding.create_data_key().await.unwrap();
    }
    let total_before: u64 = keys.kek_usage().await.unwrap().iter().map(|(_, n)| n).sum();

    let kek = format!("file:{}", path.display());
    let epoch_settings = "rotate_every_days = 7\nepoch_check_seconds = 1\nrewrap_per_second = 0\n";
    let mut first = ServerProcess::spawn_with_keys(&db, &kek, epoch_settings, &fake, "info", "").await;
    let second = ServerProcess::spawn_with_keys(&db, &kek, epoch_settings, &fake, "info", "").await;

    // Traffic on the second process: tokens for every connection, and new consents (new data keys).
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, served, failed, ids) = (stop.clone(), served.clone(), failed.clone(), ids.clone());
        let mut tokens = second.tokens().await;
        let mut consent = ConsentServiceClient::new(tonic::service::interceptor::InterceptedService::new(
            second.process.channel().await.unwrap(),
            crate::support::Bearer::with(format!("Bearer {}", keys::PLATFORM).parse().unwrap()),
        ));
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let token = tokens
                    .get_access_token(GetAccessTokenRequest {
                        connection_id: ids[n % ids.len()].clone(),
                        ..Default::default()
                    })
                    .await;
                let started = consent
                    .start_consent(start_request(&format!("new-{n}"), &["mail.read"]))
                    .await;
                if let Err(error) = &started {
                    eprintln!("StartConsent failed during the rotation: {error:?}");
                }
                if let Err(error) = &token {
                    eprintln!("GetAccessToken failed during the rotation: {error:?}");
                }
                for ok in [token.is_ok(), started.is_ok()] {
                    if ok {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Rotate on the first process; kill it once part of the re-wrap is done.
    let mut admin = AdminServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        first.process.channel().await.unwrap(),
        crate::support::Bearer::with(format!("Bearer {}", keys::ADMIN).parse().unwrap()),
    ));
    let rotation = tokio::spawn(async move { admin.rotate_keys(RotateKeysRequest {}).await });
    let partly = eventually(Duration::from_secs(30), || {
        let keys = keys.clone();
        async move {
            let usage = keys.kek_usage().await.unwrap();
            usage.len() == 2 && usage.iter().all(|(_, n)| *n > 100)
        }
    })
    .await;
    assert!(
        partly,
        "the re-wrap was caught half done: {:?}",
        keys.kek_usage().await.unwrap()
    );
    first.kill9();
    assert!(rotation.await.unwrap().is_err(), "the killed process did not answer");
    let new_kek = keys
        .kek_epochs()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.retired_at.is_none())
        .expect("an active epoch")
        .kek_id;
    assert_ne!(new_kek, "k1");

    // The second process's background pass finishes the re-wrap.
    let done = eventually(Duration::from_secs(60), || {
        let (keys, new_kek) = (keys.clone(), new_kek.clone());
        async move {
            let usage = keys.kek_usage().await.unwrap();
            usage.len() == 1 && usage[0].0 == new_kek
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(
        done,
        "every data key ends under the new KEK: {:?}",
        keys.kek_usage().await.unwrap()
    );
    if failed.load(Ordering::Relaxed) > 0 {
        // What the serving process logged about the failures.
        let logs = second.stop();
        panic!(
            "{} calls failed during the rotation; the second process logged:\n{logs}",
            failed.load(Ordering::Relaxed)
        );
    }
    assert!(served.load(Ordering::Relaxed) > 10);
    let total_after: u64 = keys.kek_usage().await.unwrap().iter().map(|(_, n)| n).sum();
    assert!(total_after >= total_before, "no data key was lost");

    // Fifteen days on, an epoch pass (the CLI, as an operator would run it) destroys k1.
    let config_path = dir.path().join("cli.toml");
    std::fs::write(
        &config_path,
        format!(
            "database_url = \"{}\"\n[keys]\nfile = \"{}\"\nallow_shared_database = true\n",
            db.url.expose_secret(),
            path.display()
        ),
    )
    .unwrap();
    let later = (chrono::Utc::now() + Days::days(15)).to_rfc3339();
    let refused = tokenvault_cli(&config_path, &["keys", "run", "--now", &later]);
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a future --now needs --force: {refusal}"
    );
    assert!(refusal.contains("--force"), "{refusal}");
    let ran = tokenvault_cli(&config_path, &["keys", "run", "--force", "--now", &later]);
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "{out}{}", String::from_utf8_lossy(&ran.stderr));
    assert!(out.contains("destroyed retired key: k1"), "{out}");
    assert!(!file_key_ids(&path).contains(&"k1".to_owned()));
    let status = tokenvault_cli(&config_path, &["keys", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains("k1") && text.contains("destroyed"), "{text}");
    assert!(
        text.contains("backups taken now stop opening any token after"),
        "{text}"
    );

    // The second process still serves every connection.
    let mut tokens = second.tokens().await;
    for id in &ids {
        tokens
            .get_access_token(GetAccessTokenRequest {
                connection_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    second.stop();
}

/// `tokenvault --config <config> <args>`, as an operator runs it, without the test's `TOKENVAULT_*` variables.
fn tokenvault_cli(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokenvault_testkit::server_process::clean_command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvault")))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}
