//! Rotated refresh tokens whose commit failed because the database was
//! unavailable: the provider has already retired the old one, so the new one
//! (sealed) waits in memory and is stored in the background as soon as the
//! database is back; until then no refresh of that connection may run.

use super::BrokerError;
use crate::clock::SharedClock;
use crate::store::{RefreshCommit, RefreshWrite, Store, StoreError, Trail};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often a waiting rotation is retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long a waiting rotation is retried before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// The rotations waiting for the database: connection → (the token version
/// the refresh started from, what it must store, and what records it).
#[derive(Clone, Default)]
pub(super) struct PendingRotations {
    waiting: Arc<DashMap<Uuid, (i64, RefreshWrite, Trail)>>,
}

impl PendingRotations {
    /// Before a refresh of `id`: stores its waiting rotation, if any; fails
    /// while the database still cannot take it.
    pub(super) async fn settle(&self, store: &dyn Store, id: Uuid, now: DateTime<Utc>) -> Result<(), BrokerError> {
        if self.waiting.contains_key(&id) && !self.store_one(store, id, now).await? {
            return Err(BrokerError::Store(StoreError::Unavailable(
                "a rotated refresh token is waiting for the database".to_owned(),
            )));
        }
        Ok(())
    }

    /// Keeps `write` (refreshed from `version`) and its `trail`, and stores
    /// them in the background, retrying every second for up to ten minutes.
    pub(super) fn keep(
        &self,
        store: Arc<dyn Store>,
        clock: SharedClock,
        id: Uuid,
        version: i64,
        write: RefreshWrite,
        trail: Trail,
    ) {
        // Until it is stored, no refresh of this connection may use the old (rotated-away) token.
        self.waiting.insert(id, (version, write, trail));
        let pending = self.clone();
        tokio::spawn(async move {
            let give_up = Instant::now() + GIVE_UP_AFTER;
            loop {
                tokio::time::sleep(RETRY_EVERY).await;
                match pending.store_one(&*store, id, clock.now()).await {
                    Ok(true) => return,
                    Ok(false) if Instant::now() < give_up => continue,
                    Ok(false) => {
                        pending.waiting.remove(&id);
                        tracing::error!(connection_id = %id, "a rotated refresh token could not be stored for ten minutes; the connection will need re-consent");
                        return;
                    }
                    Err(error) => {
                        tracing::error!(connection_id = %id, %error, "a rotated refresh token could not be stored; the connection will need re-consent");
                        return;
                    }
                }
            }
        });
    }

    /// Stores the waiting rotation of `id`: `Ok(true)` when it is settled
    /// (stored, or superseded), `Ok(false)` while the database is unavailable.
    async fn store_one(&self, store: &dyn Store, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let Some((version, write, trail)) = self.waiting.get(&id).map(|entry| entry.value().clone()) else {
            return Ok(true);
        };
        match store.commit_refresh(id, version, &write, &trail, now).await {
            Ok(outcome) => {
                self.waiting.remove_if(&id, |_, (v, _, _)| *v == version);
                if outcome == RefreshCommit::Stored {
                    tracing::info!(connection_id = %id, "rotated refresh token stored after the database came back");
                } else {
                    tracing::warn!(connection_id = %id, "a pending rotated refresh token was superseded");
                }
                Ok(true)
            }
            Err(StoreError::Unavailable(_)) => Ok(false),
            Err(error) => {
                self.waiting.remove_if(&id, |_, (v, _, _)| *v == version);
                Err(error)
            }
        }
    }
}
