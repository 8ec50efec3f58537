//! Start-up of the real binary: a configuration naming a database is
//! production-shaped and must name its keys, its callers and where the key
//! table lives (`serve` and `check-config` refuse otherwise, with the
//! documented messages); with no database named, development defaults still
//! fill everything in.

use crate::on_both;
use crate::support::{keys, random_kek, Backend, TestDb};
use secrecy::ExposeSecret;
use std::path::Path;
use std::process::Output;
use tokenvault_testkit::server_process::ServerProcess;

const NO_KEYS: &str = "no key-encryption keys are configured: set keys.file";
const NO_CALLERS: &str = "no callers are configured: set auth.api_keys_file";
const SHARED: &str = "the key table is in the main database";
const SHARED_ACCEPTED: &str = "keys.allow_shared_database = true: the key table is in the main database";
const EPOCHS_NEED_KEYS: &str = "KEK epochs (keys.rotate_every_days, 7 unless set outside development) need a keyring";
const NO_EPOCHS: &str = "keys.rotate_every_days = 0: KEK epochs are off";

/// One `[[auth.api_keys]]` entry for the test tenant's agent key.
fn agent_key_entry() -> String {
    format!(
        "[[auth.api_keys]]\nname = \"agent\"\nsha256 = \"{}\"\nroles = [\"agent\"]\ntenants = [\"{}\"]\n",
        tokenvault::auth::hash_api_key(keys::AGENT),
        keys::TENANT
    )
}

/// `tokenvault <args> --config <dir>/tokenvault.toml` with `config`, no inherited `TOKENVAULT_*` variable.
pub(crate) fn run(dir: &Path, config: &str, args: &[&str]) -> Output {
    let path = dir.join("tokenvault.toml");
    std::fs::write(&path, config).unwrap();
    tokenvault_testkit::server_process::clean_command(Path::new(env!("CARGO_BIN_EXE_tokenvault")))
        .current_dir(dir)
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `serve` and `check-config` on `config`; both must fail, naming each of `expected` and none of `absent`.
async fn both_refuse(dir: &Path, config: &str, expected: &[&str], absent: &[&str]) {
    for args in [&["serve"][..], &["check-config"][..]] {
        let output = tokio::task::spawn_blocking({
            let (dir, config) = (dir.to_owned(), config.to_owned());
            let args: Vec<&'static str> = args.to_vec();
            move || run(&dir, &config, &args)
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{args:?}: `{text}` missing from: {stderr}");
        }
        for text in absent {
            assert!(!stderr.contains(text), "{args:?}: `{text}` unexpected in: {stderr}");
        }
    }
    assert!(
        !dir.join("tokenvault-data").exists(),
        "nothing is generated outside development"
    );
}

async fn refuses_each_missing_part(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.expose_secret();
    let kek = random_kek("k1");
    // Nothing but the database.
    both_refuse(
        dir.path(),
        &format!("database_url = \"{url}\"\n"),
        &[NO_KEYS, NO_CALLERS, SHARED],
        &[],
    )
    .await;
    // Keys and callers, but the key table in the main database.
    both_refuse(
        dir.path(),
        &format!(
            "database_url = \"{url}\"\n[keys]\ninline = \"{kek}\"\n{}",
            agent_key_entry()
        ),
        &[SHARED, "key_database_url", "keys.allow_shared_database = true"],
        &[NO_KEYS, NO_CALLERS],
    )
    .await;
    // Inline keys with KEK epochs on (the default outside development): tokenvault cannot create keys there.
    both_refuse(
        dir.path(),
        &format!(
            "database_url = \"{url}\"\n[keys]\ninline = \"{kek}\"\nallow_shared_database = true\n{}",
            agent_key_entry()
        ),
        &[EPOCHS_NEED_KEYS, "keys.rotate_every_days = 0"],
        &[NO_KEYS, NO_CALLERS, SHARED],
    )
    .await;
    // Epochs whose window does not fit in the promise.
    both_refuse(
        dir.path(),
        &format!(
            "database_url = \"{url}\"\n[keys]\nfile = \"/nonexistent/keys.toml\"\nallow_shared_database = true\nrotate_every_days = 20\ndestroy_retired_after_days = 14\n{}",
            agent_key_entry()
        ),
        &["must be at most keys.shred_within_days (30)", "up to 34 days"],
        &[NO_KEYS, NO_CALLERS, SHARED],
    )
    .await;
    // No [keys].
    both_refuse(
        dir.path(),
        &format!(
            "database_url = \"{url}\"\n[keys]\nallow_shared_database = true\n{}",
            agent_key_entry()
        ),
        &[NO_KEYS, "keys.inline", "aws-kms"],
        &[NO_CALLERS, SHARED],
    )
    .await;
    // An API-keys file with no key in it, and no client certificate.
    let empty = dir.path().join("api-keys.toml");
    std::fs::write(&empty, "# no keys yet\n").unwrap();
    both_refuse(
        dir.path(),
        &format!(
            "database_url = \"{url}\"\n[keys]\ninline = \"{kek}\"\nallow_shared_database = true\n[auth]\napi_keys_file = \"{}\"\n",
            empty.display()
        ),
        &[NO_CALLERS],
        &[NO_KEYS, SHARED],
    )
    .await;
    assert!(
        !dir.path().join("tokenvault-data").exists(),
        "no development file was written"
    );
}
on_both!(
    production_shaped_configurations_missing_a_part_do_not_start,
    refuses_each_missing_part
);

/// Starts `serve` on `config` (rendered for its two ports) and returns its log once healthy.
async fn serve_log(dir: &Path, config: impl FnOnce(std::net::SocketAddr, std::net::SocketAddr) -> String) -> String {
    let mut server = ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_tokenvault")), dir, "server", config)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let _ = server.channel().await.expect("gRPC answers");
    let log = server.log_text();
    server.kill();
    log
}

fn listeners(grpc: std::net::SocketAddr, http: std::net::SocketAddr) -> String {
    format!("[server]\ngrpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\n")
}

async fn shared_key_table_with_the_flag_starts_loudly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.expose_secret().to_owned();
    let kek = random_kek("k1");
    let log = serve_log(dir.path(), |grpc, http| {
        format!(
            "database_url = \"{url}\"\n{}[keys]\ninline = \"{kek}\"\nallow_shared_database = true\nrotate_every_days = 0\n{}",
            listeners(grpc, http),
            agent_key_entry()
        )
    })
    .await;
    assert!(log.contains(SHARED_ACCEPTED), "{log}");
    assert!(log.contains(NO_EPOCHS), "{log}");
    assert!(!log.contains("DEVELOPMENT SETUP"), "{log}");
    assert!(!dir.path().join("tokenvault-data").exists());
}
on_both!(
    a_shared_key_table_with_the_flag_starts_with_a_warning,
    shared_key_table_with_the_flag_starts_loudly
);

async fn separate_key_database_starts_quietly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key_db = db.sibling().await;
    let dir = tempfile::tempdir().unwrap();
    let (url, key_url) = (db.url.expose_secret().to_owned(), key_db.url.expose_secret().to_owned());
    // A key file tokenvault may rewrite: KEK epochs are on by default.
    let key_file = dir.path().join("keys.toml");
    std::fs::write(
        &key_file,
        tokenvault::vault::LocalKeyring::generate_file_text("k1").as_bytes(),
    )
    .unwrap();
    let log = serve_log(dir.path(), |grpc, http| {
        format!(
            "database_url = \"{url}\"\nkey_database_url = \"{key_url}\"\n{}[keys]\nfile = \"{}\"\n{}",
            listeners(grpc, http),
            key_file.display(),
            agent_key_entry()
        )
    })
    .await;
    assert!(!log.contains(SHARED_ACCEPTED), "{log}");
    assert!(!log.contains(NO_EPOCHS), "{log}");
    assert!(!log.contains("DEVELOPMENT SETUP"), "{log}");
}
on_both!(
    a_separate_key_database_starts_without_the_warning,
    separate_key_database_starts_quietly
);

/// No database named (only listeners and the data directory): the development
/// defaults fill in the SQLite file, the key file and the API keys, loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_without_a_database_still_starts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.clone();
    let log = serve_log(dir.path(), move |grpc, http| {
        format!("data_dir = \"{}\"\n{}", data_dir.display(), listeners(grpc, http))
    })
    .await;
    assert!(log.contains("DEVELOPMENT SETUP"), "{log}");
    for file in ["tokenvault.db", "keys.toml", "dev-api-keys.toml"] {
        assert!(data.join(file).is_file(), "{file} missing: {log}");
    }
    assert!(!log.contains(SHARED_ACCEPTED), "{log}");
}

/// `check-config` runs the checks start-up runs (the catalog file, the
/// configured providers) and reports every problem at once; `serve` refuses
/// the same configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_what_start_up_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        "[providers.acme]\ndisplay_name = \"Acme\"\nclient_secret = \"hunter2\"\n\
         authorization_url = \"https://id.acme.example/authorize\"\ntoken_url = \"https://id.acme.example/token\"\n\
         allowed_scopes = [\"read\"]\n[providers.acme.capabilities]\n\"read\" = [\"read\"]\n",
    )
    .unwrap();
    let config = format!(
        "data_dir = \"{data}\"\n[providers]\ncatalog_file = \"{catalog}\"\n[providers.nosuch]\nclient_id = \"x\"\nclient_secret = \"y\"\n",
        data = dir.path().join("data").display(),
        catalog = catalog.display()
    );
    let output = tokio::task::spawn_blocking({
        let (dir, config) = (dir.path().to_owned(), config.clone());
        move || run(&dir, &config, &["check-config"])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in ["client_secret", "nosuch"] {
        assert!(stderr.contains(expected), "`{expected}` missing from: {stderr}");
    }
    assert!(!stderr.contains("hunter2"), "the secret is not repeated: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("configuration is valid"));

    // Without the two mistakes, the same configuration is valid.
    std::fs::write(&catalog, "").unwrap();
    let valid = format!(
        "data_dir = \"{}\"\n[providers]\ncatalog_file = \"{}\"\n",
        dir.path().join("data").display(),
        catalog.display()
    );
    let output = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || run(&dir, &valid, &["check-config"])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid"));
}

/// `api-key create` prints entries that work where they are pasted: the
/// `[[auth.api_keys]]` one in the main configuration, the `[[api_keys]]`
/// one in an `auth.api_keys_file`; both hold the hash of the printed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_create_prints_entries_that_work_where_pasted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            run(
                &dir,
                "",
                &[
                    "api-key", "create", "--name", "ci-agent", "--role", "agent", "--tenant", "acme",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let entries = String::from_utf8_lossy(&created.stderr).into_owned();
    assert!(
        entries.contains(&format!("sha256 = \"{}\"", tokenvault::auth::hash_api_key(&key))),
        "{entries}"
    );
    let (file_entry, main_entry) = entries
        .split_once("# Or in the main configuration file:\n")
        .expect("two entries");
    let file_entry = &file_entry[file_entry.find("[[api_keys]]").expect("the keys-file entry")..];
    assert!(main_entry.starts_with("[[auth.api_keys]]"), "{main_entry}");

    let keys_file = dir.path().join("api-keys.toml");
    std::fs::write(&keys_file, file_entry).unwrap();
    for config in [
        format!("data_dir = \"{}\"\n{main_entry}\n", data.display()),
        format!(
            "data_dir = \"{}\"\n[auth]\napi_keys_file = \"{}\"\n",
            data.display(),
            keys_file.display()
        ),
    ] {
        let checked = tokio::task::spawn_blocking({
            let (dir, config) = (dir.path().to_owned(), config.clone());
            move || run(&dir, &config, &["check-config"])
        })
        .await
        .unwrap();
        assert!(
            checked.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}
