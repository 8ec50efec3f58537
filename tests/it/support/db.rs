//! A fresh database per test: PostgreSQL (a `tv_test_*` database on the
//! server `TOKENVAULT_TEST_PG` names, dropped afterwards) or SQLite (a file in
//! a temporary directory).

use secrecy::SecretString;
use sqlx::Connection;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The server PostgreSQL tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("TOKENVAULT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The `host:port` of the PostgreSQL server the tests use.
pub fn pg_host_port() -> String {
    let url = pg_admin_url();
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}

/// A database that exists for one test and is dropped afterwards (even on panic).
pub struct TestDb {
    pub backend: Backend,
    pub url: SecretString,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    backend,
                    url: SecretString::from(url),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("tv_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL must be reachable (set TOKENVAULT_TEST_PG)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let base = pg_admin_url();
                let url = match base.rsplit_once('/') {
                    Some((prefix, _)) => format!("{prefix}/{name}"),
                    None => panic!("TOKENVAULT_TEST_PG must end in /<database>"),
                };
                Self {
                    backend,
                    url: SecretString::from(url),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// A database the test made itself elsewhere (e.g. on its own
    /// [`Cluster`](super::cluster::Cluster)), not dropped by this value.
    pub fn external(url: String) -> Self {
        Self {
            backend: Backend::Postgres,
            url: SecretString::from(url),
            pg_name: None,
            _dir: None,
        }
    }

    /// The same database, without owning it (a second replica's view).
    pub fn attach(other: &TestDb) -> Self {
        Self {
            backend: other.backend,
            url: other.url.clone(),
            pg_name: None,
            _dir: None,
        }
    }

    /// A second database on the same backend (for a separate key database).
    pub async fn sibling(&self) -> Self {
        Self::new(self.backend).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
