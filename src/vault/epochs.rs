//! KEK epochs: crypto-shredding that holds against backups.
//!
//! Destroying a data key shreds a connection's tokens in the live database,
//! but a backup taken before still holds the wrapped data key. It opens only
//! with the KEK that wrapped it, so the KEKs themselves rotate: every
//! `rotate_every_days` a new KEK (created in the keyring: a new AWS KMS key,
//! a new key object in the HSM, a new entry in the managed key file) becomes
//! the active one, every data key is re-wrapped under it in the background,
//! and a retired KEK is destroyed `destroy_retired_after_days` after it was
//! retired. A backup taken at time *B* holds data keys wrapped by the epoch
//! active at *B*; that KEK is gone by *B* + rotate + destroy (+ AWS KMS's
//! pending-deletion window), and with it every token of that backup.
//!
//! The epochs live in the key database (`kek_epochs`): every replica adopts
//! the newest one on each pass ([`Vault::sync_epochs`]); one replica at a
//! time (an advisory lock on the key database) starts epochs, re-wraps and
//! destroys ([`Vault::epoch_pass`]). Re-wrapping is resumable (it looks for
//! data keys not under the active KEK) and safe with several replicas (each
//! re-wrap is conditional on the key's old KEK). A retired KEK that still
//! wraps any data key is not destroyed: the pass records why and retries.

use super::{RotationReport, Vault, VaultError};
use crate::store::{KekEpoch, WrappedDataKey};
use crate::telemetry::Metrics;
use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How KEK epochs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPolicy {
    /// How long an epoch lasts (`None`: no scheduled epochs).
    pub rotate_every: Option<Duration>,
    /// How long a retired KEK is kept before it is destroyed.
    pub destroy_retired_after: Duration,
    /// Most data keys re-wrapped per second (0: no limit).
    pub rewrap_per_second: u32,
}

impl Default for EpochPolicy {
    fn default() -> Self {
        Self {
            rotate_every: None,
            destroy_retired_after: Duration::days(14),
            rewrap_per_second: 0,
        }
    }
}

impl EpochPolicy {
    /// The policy `[keys]` configures (with the epoch length already resolved for the setup).
    pub fn from_config(keys: &crate::config::KeysConfig, rotate_every_days: u32) -> Self {
        Self {
            rotate_every: (rotate_every_days > 0).then(|| Duration::days(i64::from(rotate_every_days))),
            destroy_retired_after: Duration::days(i64::from(keys.destroy_retired_after_days)),
            rewrap_per_second: keys.rewrap_per_second,
        }
    }
}

/// What one epoch pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochReport {
    /// A new epoch started with this KEK.
    pub started: Option<String>,
    /// Data keys re-wrapped under the active KEK.
    pub rewrapped: u64,
    /// Data keys that could not be re-wrapped (retried next pass).
    pub rewrap_failures: u64,
    /// Data keys still under a retired KEK after the pass.
    pub backlog: u64,
    /// Retired KEKs destroyed.
    pub destroyed: Vec<String>,
    /// Why a step did not complete (retried next pass).
    pub problems: Vec<String>,
}

/// The state of one epoch, for `tokenvault keys status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStatus {
    /// The epoch as stored.
    pub epoch: KekEpoch,
    /// Data keys it still wraps.
    pub wraps: u64,
    /// When it is (or was) due for destruction: retirement + `destroy_retired_after`,
    /// or for the active epoch its scheduled end + that.
    pub destroy_due: Option<DateTime<Utc>>,
}

/// What `tokenvault keys status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The keyring backend.
    pub backend: &'static str,
    /// The active KEK.
    pub active: String,
    /// Whether epochs rotate on a schedule.
    pub rotation: Option<Duration>,
    /// Every epoch, oldest first.
    pub epochs: Vec<EpochStatus>,
    /// KEK ids that wrap data keys but are no epoch (keys configured before epochs were on).
    pub outside_epochs: Vec<(String, u64)>,
    /// After this time no backup taken now opens any token (`None`: never, epochs are off).
    pub backups_unreadable_after: Option<DateTime<Utc>>,
}

/// Page size of the re-wrap pass.
const REWRAP_PAGE: u32 = 200;
/// Keyring calls in flight at once while re-wrapping (AWS KMS and HSMs answer over a network).
const REWRAP_CONCURRENCY: usize = 8;

impl Vault {
    /// The epoch policy.
    pub fn epoch_policy(&self) -> EpochPolicy {
        self.epochs
    }

    /// Adopts the epochs in the key database: loads each live epoch's KEK
    /// into the keyring (a key another replica created) and activates the
    /// newest. With no epochs recorded, the configured active key stays active.
    pub async fn sync_epochs(&self) -> Result<Vec<KekEpoch>, VaultError> {
        let epochs = self.keys.kek_epochs().await?;
        for epoch in epochs.iter().filter(|e| e.destroyed_at.is_none()) {
            if let Err(error) = self.keyring.load_key(&epoch.kek_id).await {
                if epoch.retired_at.is_none() {
                    // Wrapping on under the retired key would lose those data keys when it is destroyed.
                    *self.behind.lock().unwrap_or_else(|p| p.into_inner()) = Some(epoch.kek_id.clone());
                    return Err(error);
                }
                tracing::warn!(kek = %epoch.kek_id, %error, "a retired KEK epoch cannot be loaded; data keys it still wraps do not open here");
            }
        }
        *self.behind.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(current) = current_epoch(&epochs) {
            if self.keyring.active_id() != current.kek_id {
                self.keyring.activate(&current.kek_id)?;
                tracing::info!(kek = %current.kek_id, "KEK epoch adopted: new data keys are wrapped with it");
            }
        }
        Ok(epochs)
    }

    /// Starts a new epoch now: a new KEK in the keyring becomes the active one
    /// and every other epoch is retired. Needs a keyring that manages its keys.
    pub async fn start_epoch(&self, now: DateTime<Utc>) -> Result<String, VaultError> {
        let epochs = self.keys.kek_epochs().await?;
        if epochs.is_empty() {
            // The configured key is the first epoch: it is retired (and later destroyed) like any other.
            self.keys
                .begin_kek_epoch(&self.epoch_record(self.keyring.active_id(), now))
                .await?;
        }
        let label = epoch_label(now);
        let kek_id = self.keyring.create_key(&label).await?;
        self.keys
            .begin_kek_epoch(&self.epoch_record(kek_id.clone(), now))
            .await?;
        self.keyring.activate(&kek_id)?;
        tracing::info!(kek = %kek_id, "new KEK epoch started; re-wrapping data keys under it");
        Ok(kek_id)
    }

    fn epoch_record(&self, kek_id: String, now: DateTime<Utc>) -> KekEpoch {
        KekEpoch {
            kek_id,
            backend: self.keyring.backend().to_owned(),
            activated_at: now,
            retired_at: None,
            destroyed_at: None,
            gone_at: None,
            last_error: None,
        }
    }

    /// One pass of the epoch job at `now`, if this process leads it (`Ok(None)` otherwise):
    /// starts an epoch when the active one is due, re-wraps what is not under
    /// the active KEK, destroys retired KEKs that are due and wrap nothing.
    pub async fn epoch_pass(&self, now: DateTime<Utc>) -> Result<Option<EpochReport>, VaultError> {
        let Some(lead) = self.keys.try_lead_key_epochs().await? else {
            return Ok(None);
        };
        let report = self.lead_epoch_pass(now).await;
        lead.release().await;
        report.map(Some)
    }

    async fn lead_epoch_pass(&self, now: DateTime<Utc>) -> Result<EpochReport, VaultError> {
        let mut report = EpochReport::default();
        let epochs = self.sync_epochs().await?;
        if let Some(every) = self.epochs.rotate_every {
            if self.keyring.manages_keys() {
                let due = match current_epoch(&epochs) {
                    Some(current) => current.activated_at + every <= now,
                    None => true,
                };
                if due && !epochs.is_empty() {
                    match self.start_epoch(now).await {
                        Ok(kek) => report.started = Some(kek),
                        Err(error) => report.problems.push(format!("starting a new epoch: {error}")),
                    }
                } else if epochs.is_empty() {
                    // Epochs just turned on: the configured key is the first one, from now.
                    self.keys
                        .begin_kek_epoch(&self.epoch_record(self.keyring.active_id(), now))
                        .await?;
                }
            } else {
                report.problems.push(format!(
                    "keys.rotate_every_days is set but the {} keyring cannot create keys",
                    self.keyring.backend()
                ));
            }
        }
        let rewrap = self.rewrap_to_active(self.epochs.rewrap_per_second).await?;
        report.rewrapped = rewrap.rewrapped;
        report.rewrap_failures = rewrap.failed;
        if let Some(error) = rewrap.first_error {
            report.problems.push(format!("re-wrapping: {error}"));
        }
        let usage = self.keys.kek_usage().await?;
        let active = self.keyring.active_id();
        report.backlog = usage.iter().filter(|(kek, _)| *kek != active).map(|(_, n)| n).sum();
        self.destroy_due(now, &usage, &mut report).await?;
        Ok(report)
    }

    async fn destroy_due(
        &self,
        now: DateTime<Utc>,
        usage: &[(String, u64)],
        report: &mut EpochReport,
    ) -> Result<(), VaultError> {
        let epochs = self.keys.kek_epochs().await?;
        for epoch in &epochs {
            let Some(retired) = epoch.retired_at else { continue };
            if epoch.destroyed_at.is_some() || retired + self.epochs.destroy_retired_after > now {
                continue;
            }
            let wraps = usage
                .iter()
                .find(|(kek, _)| *kek == epoch.kek_id)
                .map_or(0, |(_, n)| *n);
            if wraps > 0 {
                let why = format!(
                    "not destroyed: still wraps {wraps} data keys (re-wrap not finished); destruction waits for it"
                );
                self.keys.kek_epoch_error(&epoch.kek_id, Some(&why)).await?;
                report.problems.push(format!("KEK `{}` {why}", epoch.kek_id));
                continue;
            }
            match self.keyring.destroy_key(&epoch.kek_id).await {
                Ok(done) => {
                    self.keys
                        .kek_epoch_destroyed(&epoch.kek_id, now, done.gone_at.max(now))
                        .await?;
                    tracing::info!(kek = %epoch.kek_id, gone_at = %done.gone_at, "retired KEK destroyed");
                    report.destroyed.push(epoch.kek_id.clone());
                }
                Err(error) => {
                    let why = format!("destroying failed: {error}");
                    self.keys.kek_epoch_error(&epoch.kek_id, Some(&why)).await?;
                    report.problems.push(format!("KEK `{}` {why}", epoch.kek_id));
                }
            }
        }
        Ok(())
    }

    /// Re-wraps every data key not under the active KEK (at most
    /// `per_second` a second, 0 for no limit); a key that fails is counted and skipped.
    pub(super) async fn rewrap_to_active(&self, per_second: u32) -> Result<RewrapProgress, VaultError> {
        let active = self.keyring.active_id();
        let mut progress = RewrapProgress::default();
        let mut after: Option<Uuid> = None;
        let started = tokio::time::Instant::now();
        loop {
            let page = self.keys.data_keys_not_under(&active, after, REWRAP_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            // Paced in steps of one keyring batch: the n-th re-wrap no earlier than n / per_second after the start.
            let mut batch = Vec::with_capacity(page.len());
            for chunk in page.chunks(REWRAP_CONCURRENCY) {
                let results = futures::future::join_all(chunk.iter().map(|stored| self.rewrap_one(stored))).await;
                for result in results {
                    match result {
                        Ok(pair) => batch.push(pair),
                        Err(error) => {
                            progress.failed += 1;
                            progress.first_error.get_or_insert(error);
                        }
                    }
                }
                if per_second > 0 {
                    let done = batch.len() as u64 + progress.rewrapped + progress.failed;
                    let due = started + std::time::Duration::from_secs_f64(done as f64 / f64::from(per_second));
                    tokio::time::sleep_until(due).await;
                }
            }
            // One transaction per page; a key destroyed or re-wrapped by another process meanwhile stays as it is.
            progress.rewrapped += self.keys.rewrap_data_keys(&batch).await?;
        }
        Ok(progress)
    }

    /// The data key re-wrapped under the active KEK, with the KEK it was under.
    async fn rewrap_one(&self, stored: &WrappedDataKey) -> Result<(WrappedDataKey, String), VaultError> {
        let (kek_id, wrapped) = self.keyring.rewrap(&stored.kek_id, stored.id, &stored.wrapped).await?;
        let updated = WrappedDataKey {
            id: stored.id,
            kek_id,
            wrapped,
            created_at: stored.created_at,
        };
        Ok((updated, stored.kek_id.clone()))
    }

    /// `keys rotate` / `RotateKeys`: with a keyring that manages its keys and
    /// epochs on, starts a new epoch first; then re-wraps every data key under
    /// the active KEK (data untouched).
    pub async fn rotate(&self, now: DateTime<Utc>) -> Result<RotationReport, VaultError> {
        self.sync_epochs().await?;
        if self.epochs.rotate_every.is_some() && self.keyring.manages_keys() {
            self.start_epoch(now).await?;
        }
        let progress = self.rewrap_to_active(0).await?;
        if let Some(error) = progress.first_error {
            return Err(error);
        }
        let active = self.keyring.active_id();
        let unchanged = self
            .keys
            .kek_usage()
            .await?
            .iter()
            .filter(|(kek, _)| *kek == active)
            .map(|(_, n)| *n)
            .sum::<u64>()
            .saturating_sub(progress.rewrapped);
        Ok(RotationReport {
            active_kek: active,
            rewrapped: progress.rewrapped,
            unchanged,
        })
    }

    /// The epochs, what each wraps, and when today's backups stop opening tokens.
    pub async fn key_status(&self, now: DateTime<Utc>) -> Result<KeyStatus, VaultError> {
        let epochs = self.sync_epochs().await?;
        let usage = self.keys.kek_usage().await?;
        let wraps = |kek: &str| usage.iter().find(|(k, _)| k == kek).map_or(0, |(_, n)| *n);
        let destroy_after = self.epochs.destroy_retired_after;
        let delay = Duration::days(i64::from(self.keyring.destruction_delay_days()));
        let rotation = self.epochs.rotate_every;
        let mut statuses = Vec::with_capacity(epochs.len());
        // A backup taken now holds the wrapped keys of every epoch whose material is not yet gone.
        let mut unreadable_after = Some(now);
        for epoch in &epochs {
            let destroy_due = match (epoch.retired_at, rotation) {
                (Some(retired), _) => Some(retired + destroy_after),
                (None, Some(every)) => Some(epoch.activated_at + every + destroy_after),
                (None, None) => None,
            };
            let gone = epoch.gone_at.or_else(|| destroy_due.map(|due| due.max(now) + delay));
            unreadable_after = unreadable_after.zip(gone).map(|(a, b)| a.max(b));
            statuses.push(EpochStatus {
                epoch: epoch.clone(),
                wraps: wraps(&epoch.kek_id),
                destroy_due,
            });
        }
        let outside_epochs: Vec<(String, u64)> = usage
            .iter()
            .filter(|(kek, _)| !epochs.iter().any(|e| e.kek_id == *kek))
            .cloned()
            .collect();
        if epochs.is_empty() || !outside_epochs.is_empty() {
            // Keys outside any epoch are never destroyed by tokenvault: no bound.
            unreadable_after = None;
        }
        Ok(KeyStatus {
            backend: self.keyring.backend(),
            active: self.keyring.active_id(),
            rotation,
            epochs: statuses,
            outside_epochs,
            backups_unreadable_after: unreadable_after,
        })
    }

    /// Runs an epoch pass every `interval` until `stop` (inside `serve`): every
    /// replica adopts new epochs; the one holding the lock also rotates, re-wraps and destroys.
    pub async fn run_epochs(
        self,
        stop: CancellationToken,
        interval: std::time::Duration,
        clock: crate::clock::SharedClock,
        metrics: Metrics,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.epoch_pass(clock.now()).await {
                Ok(Some(report)) => {
                    metrics.kek_rewrap(report.rewrapped, report.backlog);
                    for _ in &report.destroyed {
                        metrics.kek_destroyed();
                    }
                    if report.rewrap_failures > 0 {
                        metrics.kek_epoch_failure("rewrap");
                    }
                    for problem in &report.problems {
                        let kind = if problem.contains("still wraps") {
                            "destroy_blocked"
                        } else if problem.starts_with("starting") || problem.contains("cannot create") {
                            "rotate"
                        } else if problem.starts_with("re-wrapping") {
                            "rewrap"
                        } else {
                            "destroy"
                        };
                        metrics.kek_epoch_failure(kind);
                        tracing::warn!(problem = %problem, "KEK epoch pass: retried next pass");
                    }
                    if report.started.is_some() || report.rewrapped > 0 || !report.destroyed.is_empty() {
                        tracing::info!(
                            started = report.started.as_deref().unwrap_or(""),
                            rewrapped = report.rewrapped,
                            backlog = report.backlog,
                            destroyed = report.destroyed.len(),
                            "KEK epoch pass done"
                        );
                    }
                }
                Ok(None) => {
                    if let Err(error) = self.sync_epochs().await {
                        metrics.kek_epoch_failure("sync");
                        tracing::warn!(%error, "could not adopt the current KEK epoch; retried next pass");
                    }
                }
                Err(error) => {
                    metrics.kek_epoch_failure("sync");
                    tracing::warn!(%error, "KEK epoch pass failed; retried next pass");
                }
            }
        }
    }
}

/// What a re-wrap pass did.
#[derive(Debug, Default)]
pub(super) struct RewrapProgress {
    /// Keys re-wrapped.
    pub rewrapped: u64,
    /// Keys that failed.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<VaultError>,
}

/// The active epoch: the newest one not retired.
fn current_epoch(epochs: &[KekEpoch]) -> Option<&KekEpoch> {
    epochs
        .iter()
        .filter(|e| e.retired_at.is_none() && e.destroyed_at.is_none())
        .max_by_key(|e| e.activated_at)
}

/// A key id for a new epoch: its start time and a random suffix (valid in every keyring).
fn epoch_label(now: DateTime<Utc>) -> String {
    format!("tv-{}-{:04x}", now.format("%Y%m%dT%H%M%S"), rand::random::<u16>())
}
