//! Upgrading a database made before connections knew their account
//! (migrations up to 0006): every connection and its stored access token is
//! kept, with no account, and a user may then hold one connection per account.

use crate::on_both;
use crate::support::{Backend, TestDb};
use tokenvault::store::{ConnectionStore, SqlStore, Store, StoreOptions, TenantScope};
use uuid::Uuid;

/// A migrator with the backend's migrations before `0007` only.
async fn migrations_before_accounts(backend: Backend) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let folder = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0007" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

async fn upgrade_keeps_connections(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    let (_dir, old) = migrations_before_accounts(backend).await;
    old.run(store.pool()).await.unwrap();
    let id = Uuid::now_v7().to_string();
    for sql in [
        "INSERT INTO users (tenant_id, user_id, created_at) VALUES ('acme', 'old', 1)".to_owned(),
        format!(
            "INSERT INTO connections (id, tenant_id, user_id, provider, granted_scopes, status, created_at, updated_at, \
             token_version) VALUES ('{id}', 'acme', 'old', 'google', 'a', 'active', 1, 1, 1)"
        ),
    ] {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO access_tokens (connection_id, scope_key, token, token_type, scopes, expires_at, token_version, \
         created_at) VALUES ($1, '', $2, 'Bearer', 'a', 4102444800000, 1, 1)",
    )
    .bind(id.clone())
    .bind(vec![1u8, 2])
    .execute(store.pool())
    .await
    .unwrap();

    store.migrate().await.unwrap();
    let kept = store
        .connection(&TenantScope::All, id.parse().unwrap())
        .await
        .unwrap()
        .expect("the connection is kept");
    assert_eq!((kept.account_subject, kept.token_version), (None, 1));
    let tokens: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM access_tokens WHERE connection_id = '{id}'"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(tokens, 1, "its stored access token is kept");
    // One connection per account from now on; the old one is the account-less one.
    let now = chrono::Utc::now();
    let unknown = store
        .get_or_create_connection("acme", "old", "google", None, now)
        .await
        .unwrap();
    assert_eq!(unknown.id.to_string(), id);
    let other = store
        .get_or_create_connection("acme", "old", "google", Some("work"), now)
        .await
        .unwrap();
    assert_ne!(other.id.to_string(), id);
    // The foreign key still holds: deleting the connection deletes its tokens.
    sqlx::query(&format!("DELETE FROM connections WHERE id = '{id}'"))
        .execute(store.pool())
        .await
        .unwrap();
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_tokens")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tokens, 0);
    store.close().await;
}
on_both!(an_upgrade_keeps_every_connection, upgrade_keeps_connections);
