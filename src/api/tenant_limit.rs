//! A per-tenant rate limit on an RPC whose every call costs storage
//! (`StartConsent` creates a data key and a consent row): a
//! [`KeyedLimiter`] over tenant ids, bounded like every other table.

use crate::keyed_limiter::KeyedLimiter;
use std::num::NonZeroU32;
use tonic::Status;

/// Tenants tracked at once.
const TRACKED_TENANTS: usize = 100_000;

/// At most `per_minute` calls of `rpc` a minute per tenant.
#[derive(Debug)]
pub struct TenantRateLimit {
    rpc: &'static str,
    per_minute: u32,
    limiter: Option<KeyedLimiter<String>>,
}

impl TenantRateLimit {
    /// `per_minute` calls of `rpc` per tenant a minute (0: unlimited).
    pub fn new(rpc: &'static str, per_minute: u32) -> Self {
        Self {
            rpc,
            per_minute,
            limiter: NonZeroU32::new(per_minute).map(|n| KeyedLimiter::new(n, TRACKED_TENANTS)),
        }
    }

    /// Counts one call for `tenant_id`: `RESOURCE_EXHAUSTED` past the limit.
    pub fn check(&self, tenant_id: &str) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check(tenant_id).map_err(|wait| {
            Status::resource_exhausted(format!(
                "tenant `{tenant_id}` made more than {} {} calls in a minute; retry in {} s \
                 (limit: consent.max_starts_per_minute)",
                self.per_minute,
                self.rpc,
                wait.as_secs() + 1
            ))
        })
    }
}
