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

/// Runs `run(url)` on a fresh database under a multi-threaded runtime, after
/// printing `title` and the machine; the database is dropped afterwards,
/// even when the run panics.
pub fn run_on_fresh_database<F, Fut>(title: &str, server: &str, run: F) -> Result<()>
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let db = BenchDb::create().await?;
        println!(
            "# {title}\n\nmachine: {} cores; server: {server} ({} build), PostgreSQL {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if cfg!(debug_assertions) { "debug" } else { "optimized" },
            pg_admin_url().rsplit_once('@').map_or("", |(_, host)| host)
        );
        let url = db.url.clone();
        let outcome = tokio::spawn(async move { run(url).await }).await;
        db.drop_now().await;
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    })
}
