//! Test kit: a fresh database per test (PostgreSQL or SQLite), the real
//! server on port 0 with typed, authenticated clients, the fake OAuth provider
//! wired into its catalog, and the fixtures the scenarios share.

#![allow(dead_code)]

pub mod cluster;
pub mod db;
pub mod fixture;
pub mod hsm;
pub mod inspect;
pub mod jwt_issuer;
pub mod kms;
pub mod process;
pub mod provider;
pub mod proxy;
pub mod revocation;
pub mod server;
pub mod suite;
pub mod watch;
pub mod webhooks;

pub use db::{pg_host_port, Backend, TestDb};
pub use inspect::{contains, dump_database};
pub use server::{base_config, keys, random_kek, Authed, Bearer, TestServer};

use std::time::{Duration, Instant};

/// Retries until `check` passes or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs an async test body on both backends: `on_both!(name, body)` makes
/// the tests `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::support::Backend::Postgres).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::support::Backend::Sqlite).await;
            }
        }
    };
}
