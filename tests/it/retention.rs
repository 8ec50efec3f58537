//! Retention that a failure cannot stop, and purges in bounded batches: a
//! user whose rows the database refuses to delete (a trigger the test
//! creates) fails alone, the rest of the pass goes on and the next pass
//! finishes it; purges of more rows than one batch delete all of them; key
//! destruction binds bounded id lists; the CLI's exit status says it all.

use crate::on_both;
use crate::support::fixture::WithProvider;
use crate::support::inspect::{audit, revocations};
use crate::support::provider::{connect, start_fake, start_request};
use crate::support::{eventually, keys, random_kek, Backend, TestServer};
use secrecy::ExposeSecret;
use sqlx::AnyPool;
use std::time::Duration;
use tokenvault::lifecycle::{RetentionCategory, RetentionReport};
use tokenvault::proto::*;
use tokenvault::store::{AuditEvent, SqlStore, StoreOptions, WrappedDataKey};
use tokenvault_testkit::fake_provider::{CatalogOptions, FakeProviderConfig};
use tokenvault_testkit::server_process::ProcessConfig;

/// Makes the database refuse to delete `user_id`'s connections, as a
/// constraint or a broken row would: a trigger that raises.
async fn poison(pool: &AnyPool, backend: Backend, user_id: &str) {
    let statements = match backend {
        Backend::Postgres => vec![
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'poisoned row: this test refuses the delete'; END $$"
                .to_owned(),
            format!(
                "CREATE TRIGGER poison BEFORE DELETE ON connections FOR EACH ROW \
                 WHEN (OLD.user_id = '{user_id}') EXECUTE FUNCTION refuse_delete()"
            ),
        ],
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER poison BEFORE DELETE ON connections FOR EACH ROW WHEN OLD.user_id = '{user_id}' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row: this test refuses the delete'); END"
        )],
    };
    for sql in statements {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

/// Drops the trigger of [`poison`].
async fn cure(pool: &AnyPool, backend: Backend) {
    let sql = match backend {
        Backend::Postgres => "DROP TRIGGER poison ON connections",
        Backend::Sqlite => "DROP TRIGGER poison",
    };
    sqlx::query(sql).execute(pool).await.unwrap();
}

/// `SELECT COUNT(*) FROM …` with a condition on `$1` = `user_id`.
async fn count(pool: &AnyPool, sql: &str, user_id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(user_id.to_owned())
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rows_of_user(pool: &AnyPool, user_id: &str) -> [i64; 4] {
    [
        count(pool, "SELECT COUNT(*) FROM users WHERE user_id = $1", user_id).await,
        count(pool, "SELECT COUNT(*) FROM connections WHERE user_id = $1", user_id).await,
        count(
            pool,
            "SELECT COUNT(*) FROM access_tokens WHERE connection_id IN (SELECT id FROM connections WHERE user_id = $1)",
            user_id,
        )
        .await,
        count(
            pool,
            "SELECT COUNT(*) FROM consent_requests WHERE user_id = $1",
            user_id,
        )
        .await,
    ]
}

/// `n` audit events dated `days` before `now`.
async fn old_audit_events(server: &TestServer, n: usize, days: i64) {
    let now = tokenvault::clock::Clock::now(&*server.clock);
    let old: Vec<AuditEvent> = (0..n)
        .map(|_| {
            tokenvault::audit::EventBuilder::new("test.old", "success", "t", now - chrono::Duration::days(days)).build()
        })
        .collect();
    server.app().store.append_audit(&old).await.unwrap();
}

async fn delete_user(server: &TestServer, user_id: &str) {
    server
        .admin(keys::ADMIN)
        .delete_user(DeleteUserRequest {
            tenant_id: keys::TENANT.into(),
            user_id: user_id.into(),
        })
        .await
        .unwrap();
}

async fn pass(server: &TestServer) -> RetentionReport {
    server.app().sweeper.run_once(None, false).await.unwrap().unwrap()
}

async fn poisoned_user(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let pool = with.server.app().sql.pool().clone();
    for user in ["ann", "bob", "cat"] {
        connect(&with, user, &["mail.read"]).await;
        delete_user(&with.server, user).await;
    }
    // Past the audit retention once the clock has moved 31 days.
    old_audit_events(&with.server, 3, 100 - 31).await;
    with.server.clock.advance(chrono::Duration::days(31));
    poison(&pool, backend, "bob").await;

    let report = pass(&with.server).await;
    assert_eq!(
        report.users_purged, 2,
        "the users before and after the poisoned one: {report}"
    );
    assert_eq!(report.failures.len(), 1, "{report}");
    let failure = &report.failures[0];
    assert_eq!((failure.category, failure.count), (RetentionCategory::Users, 1));
    assert!(failure.first_error.contains("poisoned row"), "{}", failure.first_error);
    assert!(!report.is_complete());
    assert_eq!(report.audit_events_purged, 3, "audit retention still ran: {report}");
    assert!(audit(&with.server, "test.old").await.is_empty());
    assert!(report.to_string().contains("FAILED users: 1"), "{report}");
    for gone in ["ann", "cat"] {
        assert_eq!(rows_of_user(&pool, gone).await, [0; 4], "{gone} is purged");
    }
    let [users, connections, ..] = rows_of_user(&pool, "bob").await;
    assert_eq!((users, connections), (1, 1), "bob's purge was refused and rolled back");
    let bob = with
        .server
        .app()
        .store
        .list_connections(&tokenvault::store::ConnectionFilter {
            tenant_id: keys::TENANT.into(),
            user_id: Some("bob".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        bob[0].status(),
        tokenvault::store::ConnectionStatus::Revoked,
        "bob's access ended before his rows were refused"
    );
    assert_eq!(
        revocations(&with.fake, 3).await.len(),
        3,
        "all three revoked at the provider"
    );
    let metrics = with.server.app().metrics.encode();
    assert!(
        metrics.contains("tokenvault_retention_failures_total{category=\"users\"} 1"),
        "{metrics}"
    );

    // The next pass, once the database lets it, finishes bob.
    cure(&pool, backend).await;
    let report = pass(&with.server).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.users_purged, 1);
    assert_eq!(rows_of_user(&pool, "bob").await, [0; 4]);
    with.server.app().audit.flush().await;
    assert_eq!(audit(&with.server, "user.purged").await.len(), 3);
    assert_eq!(with.fake.stats().revocations.len(), 3, "nothing revoked twice");
    let metrics = with.server.app().metrics.encode();
    assert!(
        metrics.contains("tokenvault_retention_failures_total{category=\"users\"} 1"),
        "the successful pass adds no failure: {metrics}"
    );
    with.stop().await;
}
on_both!(a_poisoned_user_does_not_stop_retention, poisoned_user);

/// A whole category failing (the audit table refuses deletes) leaves the
/// other categories and the users to run.
async fn failing_category(backend: Backend) {
    let with = WithProvider::start(backend).await;
    let pool = with.server.app().sql.pool().clone();
    connect(&with, "dan", &["mail.read"]).await;
    delete_user(&with.server, "dan").await;
    with.server
        .consent(keys::PLATFORM)
        .start_consent(start_request("eli", &["mail.read"]))
        .await
        .unwrap();
    old_audit_events(&with.server, 2, 100 - 31).await;
    with.server.clock.advance(chrono::Duration::days(31));
    let statements = match backend {
        Backend::Postgres => vec![
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'audit table refuses deletes'; END $$",
            "CREATE TRIGGER poison BEFORE DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_delete()",
        ],
        Backend::Sqlite => vec![
            "CREATE TRIGGER poison BEFORE DELETE ON audit_events FOR EACH ROW \
             BEGIN SELECT RAISE(ABORT, 'audit table refuses deletes'); END",
        ],
    };
    for sql in statements {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let report = pass(&with.server).await;
    assert_eq!(report.users_purged, 1, "{report}");
    assert_eq!(rows_of_user(&pool, "dan").await, [0; 4]);
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(report.failures[0].category, RetentionCategory::AuditEvents);
    assert_eq!(report.consents_purged, 1, "the categories after it ran: {report}");
    assert_eq!(audit(&with.server, "test.old").await.len(), 2, "kept for the next pass");
    let metrics = with.server.app().metrics.encode();
    assert!(
        metrics.contains("tokenvault_retention_failures_total{category=\"audit_events\"} 1"),
        "{metrics}"
    );
    with.stop().await;
}
on_both!(a_failing_category_does_not_stop_the_others, failing_category);

/// On PostgreSQL, records how many rows each `DELETE` statement on `table` removed.
async fn log_delete_statements(pool: &AnyPool, table: &str) {
    for sql in [
        "CREATE TABLE delete_log (n BIGINT NOT NULL)".to_owned(),
        "CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO delete_log SELECT COUNT(*) FROM gone; RETURN NULL; END $$"
            .to_owned(),
        format!(
            "CREATE TRIGGER log_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone \
             FOR EACH STATEMENT EXECUTE FUNCTION log_delete()"
        ),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

async fn batches(backend: Backend) {
    let with = WithProvider::build(backend)
        .config(|c| c.lifecycle.retention_batch_size = 2)
        .start()
        .await;
    let server = &with.server;
    let pool = server.app().sql.pool().clone();
    // A user with three connections (one through the real flow, two of other
    // providers as the store creates them) and three consent requests.
    for capability in ["mail.read", "calendar.read", "files.read"] {
        connect(&with, "eve", &[capability]).await;
    }
    let now = tokenvault::clock::Clock::now(&*server.clock);
    for provider in ["other-1", "other-2"] {
        server
            .app()
            .store
            .get_or_create_connection(keys::TENANT, "eve", provider, None, now)
            .await
            .unwrap();
    }
    let [_, connections, tokens, consents] = rows_of_user(&pool, "eve").await;
    assert_eq!((connections, consents), (3, 3));
    assert!(tokens > 0);
    delete_user(server, "eve").await;
    // Five expired consent requests of another user, seven old audit events.
    for _ in 0..5 {
        server
            .consent(keys::PLATFORM)
            .start_consent(start_request("fin", &["mail.read"]))
            .await
            .unwrap();
    }
    old_audit_events(server, 7, 100 - 31).await;
    if backend == Backend::Postgres {
        log_delete_statements(&pool, "audit_events").await;
    }
    server.clock.advance(chrono::Duration::days(31));

    let report = pass(server).await;
    assert!(report.is_complete(), "{report}");
    assert_eq!((report.users_purged, report.connections_purged), (1, 3));
    assert_eq!(rows_of_user(&pool, "eve").await, [0; 4], "every batch of eve's rows");
    assert_eq!(report.audit_events_purged, 7);
    assert!(audit(server, "test.old").await.is_empty());
    assert_eq!(report.consents_purged, 5);
    assert_eq!(rows_of_user(&pool, "fin").await[3], 0);
    if backend == Backend::Postgres {
        let sizes: Vec<i64> = sqlx::query_scalar("SELECT n FROM delete_log")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(sizes.iter().sum::<i64>(), 7, "{sizes:?}");
        assert!(
            sizes.iter().all(|n| *n <= 2),
            "no statement deleted more than a batch: {sizes:?}"
        );
    }
    // The two refresh tokens eve's re-consents replaced were revoked a month
    // ago: their finished entries went in this pass. Her own revocation's
    // entry finishes now and goes in a later pass.
    assert_eq!(report.outbox_entries_purged, 2, "{report}");
    assert_eq!(revocations(&with.fake, 3).await.len(), 3);
    let finished = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM revocation_outbox WHERE status <> 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
        n == 1
    };
    assert!(eventually(Duration::from_secs(10), finished).await);
    server.clock.advance(chrono::Duration::seconds(1));
    let report = pass(server).await;
    assert_eq!(report.outbox_entries_purged, 1, "{report}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM revocation_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    with.stop().await;
}
on_both!(purges_of_more_than_one_batch_delete_everything, batches);

/// More data keys than PostgreSQL's 65,535 bind parameters (and SQLite's
/// limit): the store binds bounded id lists.
async fn many_keys(backend: Backend) {
    const N: usize = 70_000;
    let with = WithProvider::start(backend).await;
    let app = with.server.app();
    let pool = app.key_sql.pool().clone();
    let keys: Vec<WrappedDataKey> = (0..N)
        .map(|i| WrappedDataKey {
            id: format!("{i:08x}-0000-4000-8000-{i:012x}").parse().unwrap(),
            kek_id: "bulk".into(),
            wrapped: vec![0; 8],
            created_at: chrono::Utc::now(),
        })
        .collect();
    for chunk in keys.chunks(1000) {
        let values = (0..chunk.len())
            .map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES {values}");
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query
                .bind(key.id.to_string())
                .bind(key.kek_id.clone())
                .bind(key.wrapped.clone())
                .bind(key.created_at.timestamp_millis());
        }
        query.execute(&pool).await.unwrap();
    }
    let ids: Vec<uuid::Uuid> = keys.iter().map(|k| k.id).collect();
    assert!(app.store.referenced_data_keys(&ids).await.unwrap().is_empty());
    assert_eq!(app.vault.destroy_data_keys(&ids).await.unwrap(), N as u64);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE kek_id = 'bulk'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    with.stop().await;
}
on_both!(destroying_more_keys_than_a_statement_can_bind, many_keys);

/// `tokenvault retention` prints the report and exits 2 when part of the
/// pass failed, 0 once the next pass finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_status_says_what_failed() {
    let backend = Backend::Sqlite;
    let kek = random_kek("cli");
    let inline = kek.clone();
    let fake = start_fake(FakeProviderConfig::default(), &CatalogOptions::default()).await;
    let with = WithProvider::build(backend)
        .shared_fake(&fake)
        .config(move |c| c.keys.inline = Some(inline.into()))
        .start()
        .await;
    for user in ["gil", "hal"] {
        connect(&with, user, &["mail.read"]).await;
        delete_user(&with.server, user).await;
    }
    poison(with.server.app().sql.pool(), backend, "hal").await;
    let db = with.into_db().await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, fake.catalog_toml(&CatalogOptions::default())).unwrap();
    let config = ProcessConfig {
        database_url: db.url.expose_secret(),
        kek: &kek,
        log_level: "warn",
        catalog: &catalog,
        fake: &fake,
        keys_extra: "",
        extra: "",
    }
    .render("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap());
    let config_file = dir.path().join("tokenvault.toml");
    std::fs::write(&config_file, config).unwrap();
    let later = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let run_with = move |force: bool| {
        let mut command =
            tokenvault_testkit::server_process::clean_command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvault")));
        command
            .arg("--config")
            .arg(&config_file)
            .args(["retention", "--now", &later])
            .args(force.then_some("--force"))
            .output()
            .unwrap()
    };
    // A future --now without --dry-run purges before purge_at: refused unless --force says so.
    let refused = tokio::task::spawn_blocking({
        let run_with = run_with.clone();
        move || run_with(false)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in the future") && stderr.contains("--force"),
        "{stderr}"
    );
    let run = move || run_with(true);
    let first = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.contains("purged 1 (1 connections)"), "{stdout}");
    assert!(stdout.contains("FAILED users: 1"), "{stdout}");
    assert!(stderr.contains("users: 1"), "{stderr}");
    let store = SqlStore::connect(&db.url, &StoreOptions::default()).await.unwrap();
    cure(store.pool(), backend).await;
    store.close().await;
    let second = tokio::task::spawn_blocking(run).await.unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("purged 1 (1 connections)"), "{stdout}");
    fake.shutdown().await;
}
