//! The retention sweeper: purges users past `purge_at`, audit events past
//! their retention, expired consent requests, finished outbox entries,
//! long-revoked connections and data keys nothing refers to. One replica at
//! a time (PostgreSQL advisory lock); `--dry-run` only counts.

use super::{Lifecycle, LifecycleError, OutboxWorker};
use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::store::{KeyStore, Store};
use crate::telemetry::Metrics;
use crate::vault::Vault;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one pass did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The time the pass used as "now".
    pub now: Option<DateTime<Utc>>,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Users purged (past `purge_at`).
    pub users_purged: u64,
    /// Their connections, revoked (provider revocation queued) and deleted.
    pub connections_purged: u64,
    /// Audit events older than the retention.
    pub audit_events_purged: u64,
    /// Expired consent requests.
    pub consents_purged: u64,
    /// Finished outbox entries.
    pub outbox_entries_purged: u64,
    /// Revoked connections kept past the audit retention.
    pub revoked_connections_purged: u64,
    /// Data keys nothing refers to any more.
    pub orphan_keys_destroyed: u64,
    /// Provider revocations attempted during the pass.
    pub provider_revocations_attempted: u64,
    /// Idle connections refreshed so that their refresh tokens do not expire.
    pub idle_connections_refreshed: u64,
}

impl std::fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would purge" } else { "purged" };
        writeln!(
            f,
            "retention pass at {}{}",
            self.now.map(|n| n.to_rfc3339()).unwrap_or_default(),
            if self.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  users past purge_at:        {verb} {} ({} connections)",
            self.users_purged, self.connections_purged
        )?;
        writeln!(f, "  audit events:               {verb} {}", self.audit_events_purged)?;
        writeln!(f, "  expired consent requests:   {verb} {}", self.consents_purged)?;
        writeln!(f, "  finished outbox entries:    {verb} {}", self.outbox_entries_purged)?;
        writeln!(
            f,
            "  long-revoked connections:   {verb} {}",
            self.revoked_connections_purged
        )?;
        writeln!(f, "  unreferenced data keys:     {verb} {}", self.orphan_keys_destroyed)?;
        writeln!(
            f,
            "  provider revocations tried: {}",
            self.provider_revocations_attempted
        )?;
        let refreshed = if self.dry_run { "would refresh" } else { "refreshed" };
        write!(
            f,
            "  idle connections kept alive: {refreshed} {}",
            self.idle_connections_refreshed
        )
    }
}

/// How long an expired consent request stays readable by `GetConsent`.
const CONSENT_GRACE: chrono::Duration = chrono::Duration::days(1);
/// Data keys younger than this are never considered orphans (a consent or refresh may be using one right now).
const ORPHAN_MIN_AGE: chrono::Duration = chrono::Duration::hours(1);

/// Runs retention passes.
pub struct Sweeper {
    store: Arc<dyn Store>,
    keys: Arc<dyn KeyStore>,
    vault: Vault,
    lifecycle: Arc<Lifecycle>,
    outbox: Arc<OutboxWorker>,
    clock: SharedClock,
    metrics: Metrics,
    audit_retention: chrono::Duration,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

impl Sweeper {
    /// A sweeper over the stores.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &LifecycleConfig,
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyStore>,
        vault: Vault,
        lifecycle: Arc<Lifecycle>,
        outbox: Arc<OutboxWorker>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            keys,
            vault,
            lifecycle,
            outbox,
            clock,
            metrics,
            audit_retention: chrono::Duration::days(i64::from(config.audit_retention_days)),
        }
    }

    /// One pass at `now` (the clock's time if `None`), if this process gets the sweeper lock.
    /// `Ok(None)` when another process holds it.
    pub async fn run_once(
        &self,
        now: Option<DateTime<Utc>>,
        dry_run: bool,
    ) -> Result<Option<RetentionReport>, LifecycleError> {
        let Some(_lead) = self.store.try_lead().await? else {
            return Ok(None);
        };
        self.pass(now.unwrap_or_else(|| self.clock.now()), dry_run)
            .await
            .map(Some)
    }

    async fn pass(&self, now: DateTime<Utc>, dry_run: bool) -> Result<RetentionReport, LifecycleError> {
        let mut report = RetentionReport {
            now: Some(now),
            dry_run,
            ..RetentionReport::default()
        };
        loop {
            let due = self.store.users_due_for_purge(now, 100).await?;
            if due.is_empty() {
                break;
            }
            for user in &due {
                report.users_purged += 1;
                report.connections_purged += if dry_run {
                    self.store
                        .list_connections(&crate::store::ConnectionFilter {
                            tenant_id: user.tenant_id.clone(),
                            user_id: Some(user.user_id.clone()),
                            limit: 10_000,
                            ..Default::default()
                        })
                        .await?
                        .len() as u64
                } else {
                    self.lifecycle.purge_user(user).await? as u64
                };
            }
            if dry_run {
                break;
            }
        }
        if !dry_run {
            report.provider_revocations_attempted = self.outbox.process_due().await? as u64;
        }
        report.audit_events_purged = self.store.purge_audit(now - self.audit_retention, dry_run).await?;
        let (consents, consent_keys) = self.store.purge_consents(now - CONSENT_GRACE, dry_run).await?;
        report.consents_purged = consents;
        if !dry_run && !consent_keys.is_empty() {
            self.vault.destroy_and_announce(&consent_keys, &*self.store).await?;
        }
        report.outbox_entries_purged = self.store.purge_outbox(now, dry_run).await?;
        report.revoked_connections_purged = self
            .store
            .purge_revoked_connections(now - self.audit_retention, dry_run)
            .await?;
        report.orphan_keys_destroyed = self.orphan_keys(now, dry_run).await?;
        report.idle_connections_refreshed = self.lifecycle.broker().keep_alive(now, dry_run).await?;
        if !dry_run {
            for (kind, count) in [
                ("users", report.users_purged),
                ("audit_events", report.audit_events_purged),
                ("consents", report.consents_purged),
                ("outbox_entries", report.outbox_entries_purged),
                ("revoked_connections", report.revoked_connections_purged),
                ("data_keys", report.orphan_keys_destroyed),
            ] {
                self.metrics.purged(kind, count);
            }
        }
        Ok(report)
    }

    /// Data keys older than an hour that no connection, consent or outbox entry refers to.
    async fn orphan_keys(&self, now: DateTime<Utc>, dry_run: bool) -> Result<u64, LifecycleError> {
        let mut after = None;
        let mut found = 0;
        loop {
            let page = self.keys.data_keys_page(after, 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let candidates: Vec<_> = page
                .iter()
                .filter(|k| k.created_at < now - ORPHAN_MIN_AGE)
                .map(|k| k.id)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let referenced = self.store.referenced_data_keys(&candidates).await?;
            let orphans: Vec<_> = candidates.into_iter().filter(|id| !referenced.contains(id)).collect();
            found += orphans.len() as u64;
            if !dry_run && !orphans.is_empty() {
                self.vault.destroy_and_announce(&orphans, &*self.store).await?;
            }
        }
        Ok(found)
    }

    /// Runs a pass every `interval` until `stop` (inside `serve`).
    pub async fn run(self: Arc<Self>, stop: CancellationToken, interval: Duration) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.run_once(None, false).await {
                Ok(Some(report)) => tracing::info!(
                    users = report.users_purged,
                    audit_events = report.audit_events_purged,
                    consents = report.consents_purged,
                    outbox = report.outbox_entries_purged,
                    keys = report.orphan_keys_destroyed,
                    "retention pass done"
                ),
                Ok(None) => tracing::debug!("retention: another replica holds the sweeper lock"),
                Err(error) => tracing::warn!(%error, "retention pass failed; next pass retries"),
            }
        }
    }
}
