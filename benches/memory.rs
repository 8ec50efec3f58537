//! What each cached connection costs in memory, component by component: the
//! server's own structures (token cache, data-key cache, issuance tallies)
//! filled the way the server fills them, measured by a counting allocator
//! (dhat) as live heap bytes and blocks. `BENCHMARKS.md` sets these beside the
//! resident memory the load bench measures on the real server.
//!
//! `cargo bench --bench memory [-- --connections 100000 --token-bytes 200]`

// A bench binary: its helpers need no API docs.
#![allow(missing_docs)]

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Parser;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use tokenvault::audit::AuditLog;
use tokenvault::broker::{CachedToken, Issuance, Owner, ScopeText, TokenCache, UsageLog};
use tokenvault::clock::{SharedClock, SystemClock};
use tokenvault::store::{KeyStore, ScopeSet, SqlStore, Store, StoreOptions};
use tokenvault::telemetry::Metrics;
use tokenvault::vault::{LocalKeyring, Vault};
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

#[derive(Parser, Debug)]
struct Args {
    /// Connections to hold.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Size of each access token (Google's opaque tokens are ~200 bytes; the
    /// load bench's fake provider issues ~40).
    #[arg(long, default_value_t = 200)]
    token_bytes: usize,
    /// Ignored (cargo bench passes it).
    #[arg(long)]
    bench: bool,
}

/// Live heap now.
fn live() -> (usize, usize) {
    let stats = dhat::HeapStats::get();
    (stats.curr_bytes, stats.curr_blocks)
}

/// One row of the table: bytes and blocks per connection added since `before`.
fn row(name: &str, before: (usize, usize), count: usize) -> (f64, f64) {
    let (bytes, blocks) = live();
    let per_bytes = bytes.saturating_sub(before.0) as f64 / count as f64;
    let per_blocks = blocks.saturating_sub(before.1) as f64 / count as f64;
    println!("| {name} | {per_bytes:.0} | {per_blocks:.1} |");
    (per_bytes, per_blocks)
}

fn token(i: usize, size: usize) -> SecretString {
    let mut text = format!("at-{i}-");
    while text.len() < size {
        text.push('x');
    }
    SecretString::from(text)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _profiler = dhat::Profiler::builder().testing().build();
    let count = args.connections.max(1);
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let users: Vec<String> = (0..count).map(|i| format!("user-{i:06}")).collect();
    let now = Utc::now();
    println!(
        "## Memory per cached connection ({count} connections, {} B access tokens)\n",
        args.token_bytes
    );
    println!("| component | bytes per connection | heap blocks per connection |");
    println!("|---|---:|---:|");

    // The token cache, filled as a miss fills it (full grant, one scope key).
    let cache = TokenCache::new(count as u64 * 2, Duration::from_secs(3600));
    let before = live();
    let scopes: ScopeSet = ["https://www.googleapis.com/auth/gmail.readonly".to_owned()].into();
    for (i, (id, user)) in ids.iter().zip(&users).enumerate() {
        let cached = CachedToken::new(
            Owner {
                tenant_id: "acme",
                user_id: user,
                provider: "google",
            },
            token(i, args.token_bytes),
            &scopes,
            &scopes,
            now + chrono::Duration::hours(1),
            now,
        );
        cache.insert_if_current(cache.epoch(), &[(*id, String::new())], Arc::new(cached));
    }
    let _ = cache.len(); // runs moka's pending maintenance
    let (cache_bytes, cache_blocks) = row("token cache: token, tenant/user, scopes, cache slot", before, count);

    // The data-key cache, filled by unwrapping keys from a real key table.
    let dir = tempfile::tempdir().context("temp dir")?;
    let url = SecretString::from(format!("sqlite:{}", dir.path().join("keys.db").display()));
    let store = SqlStore::connect(&url, &StoreOptions::default())
        .await
        .context("sqlite")?;
    store.migrate().await.context("migrate")?;
    let store = Arc::new(store);
    let keys: Arc<dyn KeyStore> = store.clone();
    let kek = LocalKeyring::generate_file_text("kek-1");
    let dir_kek = dir.path().join("keys.toml");
    std::fs::write(&dir_kek, kek.as_bytes()).context("write kek")?;
    let keyring = Arc::new(LocalKeyring::from_file(&dir_kek, None).context("keyring")?);
    let clock: SharedClock = Arc::new(SystemClock);
    let vault = Vault::new(keyring, keys, clock, count as u64 * 2, Duration::from_secs(300));
    let warmup = vault.create_data_key().await.context("data key")?;
    drop(warmup);
    let before = live();
    let mut held = 0usize;
    for _ in 0..count {
        let key = vault.create_data_key().await.context("data key")?;
        held += usize::from(key.id() != Uuid::nil());
    }
    let (key_bytes, key_blocks) = row("data-key cache: 32-byte key, id, cache slot", before, held);

    // Issuance tallies between two flushes (one caller, one scope set per connection).
    let usage = UsageLog::default();
    let audit = AuditLog::start(store.clone(), Metrics::new(), 1_000);
    let actor: Arc<str> = Arc::from("agent-acme");
    let granted = ScopeText::of(&scopes);
    let before = live();
    for (id, user) in ids.iter().zip(&users) {
        usage.record(
            Issuance {
                actor: &actor,
                connection_id: *id,
                tenant_id: "acme",
                user_id: user,
                scope_key: "",
                scopes: &granted,
                outcome: "cache_hit",
                request_id: None,
            },
            now,
        );
    }
    let (tally_bytes, tally_blocks) = row("issuance tally until the next flush", before, count);
    usage.flush(&audit, &*store).await;
    audit.flush().await;
    let (kept_bytes, _) = live();
    println!(
        "| issuance tallies after a flush | {:.0} | — |",
        kept_bytes.saturating_sub(before.0) as f64 / count as f64
    );

    let total = cache_bytes + key_bytes + tally_bytes;
    let blocks = cache_blocks + key_blocks + tally_blocks;
    println!("| **total live heap** | **{total:.0}** | **{blocks:.1}** |");
    println!(
        "\nglibc adds 8 bytes to each block and rounds it up to 16 (at least 32): about {:.0} bytes per connection on top.",
        blocks * 12.0
    );
    Ok(())
}
