//! What the benchmarks share: a PostgreSQL database of their own for the run.

use anyhow::{Context as _, Result};
use sqlx::Connection as _;
use uuid::Uuid;

/// The admin URL: `TOKENVAULT_TEST_PG`, else the local server.
pub fn pg_admin_url() -> String {
    std::env::var("TOKENVAULT_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that lives for the run.
pub struct BenchDb {
    name: String,
    /// Its URL.
    pub url: String,
}

impl BenchDb {
    /// Creates a fresh database.
    pub async fn create() -> Result<Self> {
        let admin = pg_admin_url();
        let name = format!("tv_bench_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .context("PostgreSQL must be reachable (set TOKENVAULT_TEST_PG)")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("create the benchmark database")?;
        let _ = conn.close().await;
        let (prefix, _) = admin
            .rsplit_once('/')
            .context("TOKENVAULT_TEST_PG must end in /<database>")?;
        Ok(Self {
            url: format!("{prefix}/{name}"),
            name,
        })
    }

    /// Drops it.
    pub async fn drop_now(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}
