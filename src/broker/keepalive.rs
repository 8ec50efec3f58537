//! Keep-alive: refresh tokens that expire when unused (catalog
//! `refresh_idle_expiry_days`) are refreshed in the background, through the
//! same flights as any refresh, before that happens.

use super::flight::Landed;
use super::refresh::Job;
use super::{Broker, BrokerError};
use crate::store::StoreError;
use std::sync::Arc;
use uuid::Uuid;

impl Broker {
    /// Keep-alive: refreshes, in the background and once per replica set (the
    /// caller holds the sweeper lock), every active connection of a provider
    /// whose refresh tokens expire when unused (`refresh_idle_expiry_days`)
    /// and that has not been refreshed for half that time, so that a quiet
    /// month does not make its user reconnect. Returns how many were
    /// refreshed (or, on a dry run, would be). A connection that fails is
    /// logged and left to the next pass (`invalid_grant` marks it
    /// `NEEDS_REAUTH` as on any refresh).
    pub async fn keep_alive(
        self: &Arc<Self>,
        now: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let mut refreshed = 0;
        let providers: Vec<(String, u32)> = self
            .providers
            .configured()
            .filter_map(|name| {
                let days = self.providers.spec(name)?.refresh_idle_expiry_days?;
                Some((name.to_owned(), days))
            })
            .collect();
        for (provider, idle_days) in providers {
            let before = now - chrono::Duration::days(i64::from(idle_days)) / 2;
            let mut after = None;
            loop {
                let due = self
                    .store
                    .idle_connections(&provider, before, after, KEEP_ALIVE_PAGE)
                    .await?;
                let Some(last) = due.last() else { break };
                after = Some(*last);
                for id in due {
                    if dry_run {
                        refreshed += 1;
                        continue;
                    }
                    match self.refresh_in_background(id).await {
                        Ok(_) => refreshed += 1,
                        Err(error) => {
                            tracing::warn!(connection_id = %id, %provider, %error, "keep-alive refresh failed; the next pass tries again");
                        }
                    }
                }
            }
            tracing::debug!(%provider, idle_days, "keep-alive pass done");
        }
        Ok(refreshed)
    }

    /// One forced refresh of the full grant of connection `id`, in its flight.
    async fn refresh_in_background(self: &Arc<Self>, id: Uuid) -> Result<Landed, BrokerError> {
        let job = Job {
            connection_id: id,
            effective: String::new(),
            narrow: None,
            min_ttl: chrono::Duration::zero(),
            actor: Arc::from("keep-alive"),
            request_id: None,
            force: true,
        };
        self.launch(job).await
    }
}

/// Connections read per keep-alive page.
const KEEP_ALIVE_PAGE: u32 = 100;
