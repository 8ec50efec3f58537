//! The retention sweeper: purges users past `purge_at`, audit events past
//! their retention, expired consent requests, finished outbox entries,
//! long-revoked connections and data keys nothing refers to. One replica at
//! a time (PostgreSQL advisory lock); `--dry-run` only counts.
//!
//! Each user and each category stands alone: a failure is logged, counted in
//! `tokenvault_retention_failures_total{category}`, reported in
//! [`RetentionReport::failures`] and retried by the next pass, while the rest
//! of the pass goes on. The store deletes in bounded batches.

use super::{Lifecycle, LifecycleError, OutboxWorker};
use crate::audit::EventBuilder;
use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::events::{Event, EventType};
use crate::store::{ConsentRecord, KeyStore, Store, Trail, User};
use crate::telemetry::Metrics;
use crate::vault::Vault;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The parts of a retention pass; each one fails (and is retried) on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetentionCategory {
    /// Users past `purge_at` (one failure per user).
    Users,
    /// The provider revocations the pass attempts.
    ProviderRevocations,
    /// Audit events past the retention.
    AuditEvents,
    /// Consent requests still waiting when they expired (`consent.expired`).
    ExpiredConsents,
    /// Expired consent requests (and their data keys).
    Consents,
    /// Finished outbox entries.
    OutboxEntries,
    /// Long-revoked connections.
    RevokedConnections,
    /// Data keys nothing refers to.
    OrphanKeys,
    /// The keep-alive refresh of idle connections.
    KeepAlive,
    /// Events past `events.retention_days`, and finished webhook deliveries as old.
    Events,
}

impl RetentionCategory {
    /// The name in the report, the log and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::ProviderRevocations => "provider_revocations",
            Self::AuditEvents => "audit_events",
            Self::ExpiredConsents => "expired_consents",
            Self::Consents => "consents",
            Self::OutboxEntries => "outbox_entries",
            Self::RevokedConnections => "revoked_connections",
            Self::OrphanKeys => "orphan_keys",
            Self::KeepAlive => "keep_alive",
            Self::Events => "events",
        }
    }
}

impl std::fmt::Display for RetentionCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What failed in one category during a pass (the next pass retries it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionFailure {
    /// The category.
    pub category: RetentionCategory,
    /// How many failures (users, for [`RetentionCategory::Users`]; otherwise 1).
    pub count: u64,
    /// The first error's message (no secret: store and vault errors carry none).
    pub first_error: String,
}

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
    /// Consent requests that expired while still waiting (each now `failed`, with `consent.expired`).
    pub consents_expired: u64,
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
    /// Events past the event retention, and finished webhook deliveries and attempts as old.
    pub events_purged: u64,
    /// What failed, one entry per category, in category order; empty when everything succeeded.
    pub failures: Vec<RetentionFailure>,
}

impl RetentionReport {
    /// Whether every user and every category succeeded.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }

    /// How many failures the pass met, over all categories.
    pub fn failure_count(&self) -> u64 {
        self.failures.iter().map(|f| f.count).sum()
    }

    /// Adds a failure in `category`.
    fn record_failure(&mut self, category: RetentionCategory, error: &LifecycleError) {
        match self.failures.iter_mut().find(|f| f.category == category) {
            Some(failure) => failure.count += 1,
            None => {
                self.failures.push(RetentionFailure {
                    category,
                    count: 1,
                    first_error: error.to_string(),
                });
                self.failures.sort_by_key(|f| f.category);
            }
        }
    }
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
        let ended = if self.dry_run { "would end" } else { "ended" };
        writeln!(f, "  consents left waiting:      {ended} {}", self.consents_expired)?;
        writeln!(f, "  expired consent requests:   {verb} {}", self.consents_purged)?;
        writeln!(f, "  finished outbox entries:    {verb} {}", self.outbox_entries_purged)?;
        writeln!(
            f,
            "  long-revoked connections:   {verb} {}",
            self.revoked_connections_purged
        )?;
        writeln!(f, "  unreferenced data keys:     {verb} {}", self.orphan_keys_destroyed)?;
        writeln!(f, "  events and deliveries:      {verb} {}", self.events_purged)?;
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
        )?;
        for failure in &self.failures {
            write!(
                f,
                "\n  FAILED {}: {} (first error: {}); the next pass retries",
                failure.category, failure.count, failure.first_error
            )?;
        }
        Ok(())
    }
}

/// How long an expired consent request stays readable by `GetConsent`.
const CONSENT_GRACE: chrono::Duration = chrono::Duration::days(1);
/// Users read per page of those due for purge.
const USER_PAGE: u32 = 100;
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
    event_retention: chrono::Duration,
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
            event_retention: chrono::Duration::days(30),
        }
    }

    /// The same sweeper keeping events (and webhook deliveries) `days` days.
    pub fn with_event_retention(mut self, days: u32) -> Self {
        self.event_retention = chrono::Duration::days(i64::from(days));
        self
    }

    /// One pass at `now` (the clock's time if `None`), if this process gets the sweeper lock.
    /// `Ok(None)` when another process holds it; `Err` only when the lock cannot be asked for.
    /// What failed inside the pass is in the report's `failures`.
    pub async fn run_once(
        &self,
        now: Option<DateTime<Utc>>,
        dry_run: bool,
    ) -> Result<Option<RetentionReport>, LifecycleError> {
        let Some(lead) = self.store.try_lead().await? else {
            return Ok(None);
        };
        tracing::debug!(dry_run, "retention: pass starting (this replica leads)");
        let report = self.pass(now.unwrap_or_else(|| self.clock.now()), dry_run).await;
        tracing::debug!(complete = report.is_complete(), "retention: pass done");
        lead.release().await;
        Ok(Some(report))
    }

    /// One pass: every category in turn, each one's failure recorded and the rest carried on.
    async fn pass(&self, now: DateTime<Utc>, dry_run: bool) -> RetentionReport {
        use RetentionCategory as C;
        let mut report = RetentionReport {
            now: Some(now),
            dry_run,
            ..RetentionReport::default()
        };
        self.purge_users(now, dry_run, &mut report).await;
        if !dry_run {
            let attempted = self.outbox.process_due().await;
            if let Some(n) = self.check(&mut report, C::ProviderRevocations, attempted) {
                report.provider_revocations_attempted = n as u64;
            }
        }
        let audit = self.store.purge_audit(now - self.audit_retention, dry_run).await;
        if let Some(n) = self.check(&mut report, C::AuditEvents, audit) {
            report.audit_events_purged = n;
        }
        let expired = self.expire_consents(now, dry_run).await;
        if let Some(n) = self.check(&mut report, C::ExpiredConsents, expired) {
            report.consents_expired = n;
        }
        if let Some(n) = self.check(&mut report, C::Consents, self.consents(now, dry_run).await) {
            report.consents_purged = n;
        }
        let outbox = self.store.purge_outbox(now, dry_run).await;
        if let Some(n) = self.check(&mut report, C::OutboxEntries, outbox) {
            report.outbox_entries_purged = n;
        }
        let revoked = self
            .store
            .purge_revoked_connections(now - self.audit_retention, dry_run)
            .await;
        if let Some(n) = self.check(&mut report, C::RevokedConnections, revoked) {
            report.revoked_connections_purged = n;
        }
        if let Some(n) = self.check(&mut report, C::OrphanKeys, self.orphan_keys(now, dry_run).await) {
            report.orphan_keys_destroyed = n;
        }
        if let Some(n) = self.check(&mut report, C::Events, self.events(now, dry_run).await) {
            report.events_purged = n;
        }
        let kept_alive = self.lifecycle.broker().keep_alive(now, dry_run).await;
        if let Some(n) = self.check(&mut report, C::KeepAlive, kept_alive) {
            report.idle_connections_refreshed = n;
        }
        if !dry_run {
            for (kind, count) in [
                ("users", report.users_purged),
                ("audit_events", report.audit_events_purged),
                ("consents", report.consents_purged),
                ("outbox_entries", report.outbox_entries_purged),
                ("revoked_connections", report.revoked_connections_purged),
                ("data_keys", report.orphan_keys_destroyed),
                ("events", report.events_purged),
            ] {
                self.metrics.purged(kind, count);
            }
        }
        report
    }

    /// The value of a category's step, or its failure logged, counted and recorded.
    fn check<T, E: Into<LifecycleError>>(
        &self,
        report: &mut RetentionReport,
        category: RetentionCategory,
        result: Result<T, E>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                let error = error.into();
                tracing::warn!(category = category.as_str(), %error, "retention: this part failed; the rest of the pass goes on and the next pass retries it");
                self.metrics.retention_failure(category.as_str());
                report.record_failure(category, &error);
                None
            }
        }
    }

    /// Purges (or counts) every user past `purge_at`, each on its own: one
    /// that fails stays for the next pass, behind the cursor of this one.
    async fn purge_users(&self, now: DateTime<Utc>, dry_run: bool, report: &mut RetentionReport) {
        let mut after: Option<User> = None;
        loop {
            let due = self.store.users_due_for_purge(now, after.as_ref(), USER_PAGE).await;
            let Some(due) = self.check(report, RetentionCategory::Users, due) else {
                return;
            };
            for user in &due {
                let purged = if dry_run {
                    self.lifecycle
                        .user_connections(&user.tenant_id, &user.user_id)
                        .await
                        .map(|c| c.len())
                } else {
                    self.lifecycle.purge_user(user).await
                };
                match purged {
                    Ok(connections) => {
                        report.users_purged += 1;
                        report.connections_purged += connections as u64;
                    }
                    Err(error) => {
                        tracing::warn!(
                            tenant_id = %user.tenant_id,
                            user_id = %user.user_id,
                            %error,
                            "retention: purging this user failed; the other users go on and the next pass retries it"
                        );
                        self.metrics.retention_failure(RetentionCategory::Users.as_str());
                        report.record_failure(RetentionCategory::Users, &error);
                    }
                }
            }
            if due.len() < USER_PAGE as usize {
                return;
            }
            after = due.into_iter().last();
        }
    }

    /// Ends the consent requests that expired while waiting, each with `consent.expired`.
    async fn expire_consents(&self, now: DateTime<Utc>, dry_run: bool) -> Result<u64, LifecycleError> {
        let trail = |consent: &ConsentRecord| -> Trail {
            Trail::from(
                EventBuilder::new("consent.expired", "failure", "system", now)
                    .user(&consent.tenant_id, &consent.user_id)
                    .detail("consent_id", consent.id.to_string())
                    .detail("provider", consent.provider.clone())
                    .detail("state", consent.state.as_str())
                    .build(),
            )
            .with_event(
                Event::new(EventType::ConsentExpired, &consent.tenant_id, &consent.user_id, now)
                    .reason(&format!("the consent expired at {}", consent.expires_at.to_rfc3339()))
                    .with(|d| {
                        d.provider = Some(consent.provider.clone());
                        d.consent_id = Some(consent.id);
                    }),
            )
        };
        Ok(self.store.expire_consents(now, dry_run, &trail).await?)
    }

    /// Events past their retention, then finished webhook deliveries and attempts as old.
    async fn events(&self, now: DateTime<Utc>, dry_run: bool) -> Result<u64, LifecycleError> {
        let before = now - self.event_retention;
        let events = self.store.purge_events(before, dry_run).await?;
        let deliveries = self.store.purge_webhook_deliveries(before, dry_run).await?;
        Ok(events + deliveries)
    }

    /// Expired consent requests, and the data keys that sealed their verifiers.
    async fn consents(&self, now: DateTime<Utc>, dry_run: bool) -> Result<u64, LifecycleError> {
        let (purged, keys) = self.store.purge_consents(now - CONSENT_GRACE, dry_run).await?;
        if !dry_run && !keys.is_empty() {
            // Should this fail, the keys are orphans now: the orphan step destroys them.
            self.vault.destroy_and_announce(&keys, &*self.store).await?;
        }
        Ok(purged)
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
                Ok(Some(report)) if report.is_complete() => tracing::info!(
                    users = report.users_purged,
                    audit_events = report.audit_events_purged,
                    consents = report.consents_purged,
                    outbox = report.outbox_entries_purged,
                    keys = report.orphan_keys_destroyed,
                    "retention pass done"
                ),
                Ok(Some(report)) => tracing::warn!(
                    users = report.users_purged,
                    audit_events = report.audit_events_purged,
                    failures = report.failure_count(),
                    failed = %report.failures.iter().map(|f| f.category.as_str()).collect::<Vec<_>>().join(","),
                    "retention pass done with failures; the next pass retries them"
                ),
                Ok(None) => tracing::debug!("retention: another replica holds the sweeper lock"),
                Err(error) => tracing::warn!(%error, "retention pass failed; next pass retries"),
            }
        }
    }
}
