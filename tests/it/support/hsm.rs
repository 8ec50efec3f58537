//! SoftHSM2, a real PKCS#11 token implementation (Debian's `softhsm2`), for
//! the HSM keyring tests: one token directory per test process (named by
//! `SOFTHSM2_CONF`, which server processes started by the test inherit), one
//! freshly initialised token per test (`softhsm2-util --init-token`), and a
//! PKCS#11 session of the test's own to look at what the token holds. Without
//! SoftHSM2 these tests fail, never skip (scripts/test installs it).

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tokenvault::config::{KeysBackend, KeysConfig, Pkcs11Config};

/// Debian's SoftHSM2 PKCS#11 library.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token.
pub const PIN: &str = "246810";

/// The process's SoftHSM2 configuration file (set once, before the library is first initialised).
fn configuration() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        assert!(
            available(),
            "the PKCS#11 tests need SoftHSM2 ({MODULE} and softhsm2-util): \
             `apt-get install softhsm2` (scripts/test runs scripts/install-softhsm)"
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("softhsm-{}", std::process::id()));
        let tokens = dir.join("tokens");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        conf
    })
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success() || !out.stdout.is_empty())
}

/// Whether SoftHSM2 is installed (the benches measure the PKCS#11 keyring only then).
pub fn available() -> bool {
    Path::new(MODULE).exists() && which("softhsm2-util")
}

/// A fresh SoftHSM2 token.
pub struct SoftHsm {
    /// The token's label.
    pub token_label: String,
    /// The token's own directory in SoftHSM2's token directory.
    storage: PathBuf,
    /// Holds the PIN file.
    dir: tempfile::TempDir,
}

fn token_dirs(tokens: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tokens)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

impl SoftHsm {
    /// Initialises a new token with a unique label and the test PIN.
    pub fn new() -> Self {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let conf = configuration();
        let tokens = conf.parent().unwrap().join("tokens");
        let token_label = format!("tv-{:08x}", rand::random::<u32>());
        // One initialisation at a time, so the directory that appears is this token's.
        let _one = INIT.lock().unwrap_or_else(|p| p.into_inner());
        let before = token_dirs(&tokens);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                &token_label,
                "--pin",
                PIN,
                "--so-pin",
                "13579",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let storage = token_dirs(&tokens)
            .into_iter()
            .find(|d| !before.contains(d))
            .expect("the new token's directory");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        Self {
            token_label,
            storage,
            dir,
        }
    }

    /// Takes the token's storage away under the running library (as a failing
    /// device would): from now on the token shows none of its keys.
    pub fn lose_storage(&self) {
        let mut away = self.storage.clone().into_os_string();
        away.push(".lost");
        std::fs::rename(&self.storage, away).unwrap();
    }

    /// The PIN file (the PIN and a trailing newline, as a mounted Secret often has).
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// `[keys.pkcs11]` for this token with `key_label` active and `older` labels, no epochs.
    pub fn pkcs11_config(&self, key_label: &str, older: &[&str]) -> Pkcs11Config {
        Pkcs11Config {
            module: PathBuf::from(MODULE),
            token_label: self.token_label.clone(),
            pin_file: self.pin_file(),
            key_label: key_label.to_owned(),
            older_key_labels: older.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// `[keys]` with `backend = "pkcs11"` for this token.
    pub fn keys_config(&self, key_label: &str, older: &[&str]) -> KeysConfig {
        KeysConfig {
            backend: KeysBackend::Pkcs11,
            pkcs11: Some(self.pkcs11_config(key_label, older)),
            rotate_every_days: Some(0),
            ..KeysConfig::default()
        }
    }

    /// The same `[keys]` as TOML, for a server process's configuration file.
    pub fn keys_toml(&self, key_label: &str) -> String {
        format!(
            "[keys]\nbackend = \"pkcs11\"\nrotate_every_days = 0\n[keys.pkcs11]\nmodule = \"{MODULE}\"\n\
             token_label = \"{}\"\npin_file = \"{}\"\nkey_label = \"{key_label}\"\n",
            self.token_label,
            self.pin_file().display()
        )
    }

    /// Creates an AES key labelled `label` as an operator would (`keys init-hsm`'s code path).
    pub async fn create_key(&self, label: &str) {
        let created = tokenvault::vault::Pkcs11Keyring::create_configured_key(&self.pkcs11_config(label, &[]))
            .await
            .unwrap();
        assert!(created, "`{label}` was new");
    }

    /// A logged-in session of the test's own on this token.
    pub fn session(&self) -> Session {
        let _ = configuration();
        let context = Pkcs11::new(MODULE).unwrap();
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(error) => panic!("C_Initialize: {error}"),
        }
        let slot = context
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == self.token_label)
            .expect("the test token");
        let session = context.open_rw_session(slot).unwrap();
        match session.login(UserType::User, Some(&SecretString::from(PIN.to_owned()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(error) => panic!("C_Login: {error}"),
        }
        session
    }

    /// Labels of every AES key on the token, sorted, as the token reports them.
    pub fn key_labels(&self) -> Vec<String> {
        let session = self.session();
        let mut labels: Vec<String> = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
            ])
            .unwrap()
            .into_iter()
            .map(|object| {
                match session
                    .get_attributes(object, &[AttributeType::Label])
                    .unwrap()
                    .as_slice()
                {
                    [Attribute::Label(bytes)] => String::from_utf8_lossy(bytes).into_owned(),
                    other => panic!("no label: {other:?}"),
                }
            })
            .collect();
        labels.sort();
        labels
    }

    /// The protection attributes of the key labelled `label`: (sensitive, extractable, never extractable).
    pub fn key_protection(&self, label: &str) -> (bool, bool, bool) {
        let session = self.session();
        let object = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .unwrap()
            .into_iter()
            .next()
            .expect("the key");
        let attributes = session
            .get_attributes(
                object,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                ],
            )
            .unwrap();
        match attributes.as_slice() {
            [Attribute::Sensitive(s), Attribute::Extractable(e), Attribute::NeverExtractable(n)] => (*s, *e, *n),
            other => panic!("{other:?}"),
        }
    }

    /// Whether the token hands out the key's value (it must not).
    pub fn key_value_readable(&self, label: &str) -> bool {
        let session = self.session();
        let object = session
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .unwrap()
            .into_iter()
            .next()
            .expect("the key");
        matches!(
            session.get_attributes(object, &[AttributeType::Value]).as_deref(),
            Ok([Attribute::Value(_)])
        )
    }
}
