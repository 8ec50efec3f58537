//! `auth.failure` audit events: one per refusal of the authentication layer,
//! with the peer address and the reason, never the presented credential.
//! A flood of bad credentials must not become a flood of database writes,
//! so the events are rate-limited themselves (a direct GCRA, a burst of one
//! second's allowance) and queued without waiting; those not written are
//! counted, and the next event written carries that count as `suppressed`
//! (also the `tokenvault_auth_failure_audit_suppressed_total` metric).

use crate::audit::{AuditLog, EventBuilder};
use crate::clock::SharedClock;
use crate::telemetry::Metrics;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Actor of an `auth.failure` whose caller is unknown.
pub const UNAUTHENTICATED_ACTOR: &str = "unauthenticated";

/// One refusal, as the audit event records it.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// Why (`missing`, `malformed`, `unknown`, `wrong_role`, `peer_limit`, `global_limit`, …).
    pub reason: &'a str,
    /// What failed underneath a rate limit (`unknown`, …), if it was one.
    pub cause: Option<&'a str>,
    /// The kind of credential presented (`api_key`, `client_cert`, `workload_token`, `none`).
    pub credential: &'a str,
    /// The caller's name when it authenticated but was refused (wrong role); else unknown.
    pub actor: Option<&'a str>,
    /// A verified workload identity's subject that no entry maps (not a secret).
    pub subject: Option<&'a str>,
    /// The peer address, if the transport knows it.
    pub peer: Option<IpAddr>,
    /// The gRPC method called.
    pub rpc: &'a str,
    /// The request id.
    pub request_id: Option<&'a str>,
}

/// Writes `auth.failure` events, at most `per_second` a second.
pub struct FailureAudit {
    audit: AuditLog,
    clock: SharedClock,
    metrics: Metrics,
    limiter: Option<DefaultDirectRateLimiter>,
    suppressed: AtomicU64,
}

impl std::fmt::Debug for FailureAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureAudit")
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish()
    }
}

impl FailureAudit {
    /// Events go to `audit`, at most `per_second` a second (0: none are written, all are counted).
    pub fn new(audit: AuditLog, clock: SharedClock, metrics: Metrics, per_second: u32) -> Self {
        Self {
            audit,
            clock,
            metrics,
            limiter: NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records one refusal (or counts it as suppressed).
    pub fn record(&self, refusal: &Refusal<'_>) {
        let allowed = self.limiter.as_ref().is_some_and(|l| l.check().is_ok());
        if !allowed {
            self.suppress(1);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::AcqRel);
        let mut event = EventBuilder::new(
            "auth.failure",
            "denied",
            refusal.actor.unwrap_or(UNAUTHENTICATED_ACTOR),
            self.clock.now(),
        )
        .request_id(refusal.request_id)
        .detail("reason", refusal.reason)
        .detail("credential", refusal.credential)
        .detail("rpc", refusal.rpc)
        .detail(
            "peer",
            refusal.peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        )
        .detail("suppressed", suppressed);
        if let Some(subject) = refusal.subject {
            event = event.detail("subject", subject);
        }
        if let Some(cause) = refusal.cause {
            event = event.detail("cause", cause);
        }
        if !self.audit.try_enqueue(event.build()) {
            // The queue is full (or the writer stopped): this one and the count it carried.
            self.suppress(1);
            self.suppressed.fetch_add(suppressed, Ordering::AcqRel);
        }
    }

    fn suppress(&self, n: u64) {
        self.suppressed.fetch_add(n, Ordering::AcqRel);
        self.metrics.auth_audit_suppressed();
    }

    /// Refusals not written since the last event that was.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Acquire)
    }
}
