//! Prometheus metrics, served at `/metrics`. Labels are small closed sets
//! (method names, outcomes, provider names): never a token, id or user.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 50 µs … ~26 s
        Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
    }
}

struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, LatencyBuckets>,
    auth_failures: Family<OutcomeLabels, Counter>,
    issuances: Family<OutcomeLabels, Counter>,
    refresh_duration: Histogram,
    upstream_errors: Family<ProviderLabels, Counter>,
    audit_dropped: Counter,
    auth_audit_suppressed: Counter,
    audit_queue: Gauge,
    revocations: Family<OutcomeLabels, Counter>,
    purged: Family<KindLabels, Counter>,
    retention_failures: Family<CategoryLabels, Counter>,
    consents: Family<OutcomeLabels, Counter>,
    kek_rewrapped: Counter,
    kek_rewrap_backlog: Gauge,
    kek_epoch_failures: Family<KindLabels, Counter>,
    kek_destroyed: Counter,
    webhook_attempts: Family<OutcomeLabels, Counter>,
    webhook_lag: Histogram,
    event_watchers: Gauge,
}

/// Handle to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenvault");
        let mut r = Registrar(&mut registry);
        let inner = Inner {
            rpc_requests: r.add(
                "grpc_requests",
                "gRPC requests by method and status code",
                Family::default(),
            ),
            rpc_duration: r.add(
                "grpc_request_duration_seconds",
                "gRPC request latency",
                Family::new_with_constructor(LatencyBuckets),
            ),
            auth_failures: r.add("auth_failures", "Failed authentications by reason", Family::default()),
            issuances: r.add(
                "token_issuances",
                "GetAccessToken outcomes (cache_hit, store_hit, refreshed, or an error kind)",
                Family::default(),
            ),
            refresh_duration: r.add(
                "refresh_duration_seconds",
                "Upstream refresh latency",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            upstream_errors: r.add(
                "upstream_errors",
                "Provider call failures by provider and kind",
                Family::default(),
            ),
            audit_dropped: r.add(
                "audit_events_dropped",
                "Audit events that could not be queued",
                Counter::default(),
            ),
            auth_audit_suppressed: r.add(
                "auth_failure_audit_suppressed",
                "auth.failure audit events not written (over auth.failure_audit_per_second, or the queue full)",
                Counter::default(),
            ),
            audit_queue: r.add(
                "audit_queue_depth",
                "Audit events waiting to be written",
                Gauge::default(),
            ),
            revocations: r.add(
                "provider_revocations",
                "Provider revocation attempts by outcome",
                Family::default(),
            ),
            purged: r.add(
                "retention_purged",
                "Rows removed by the retention sweeper",
                Family::default(),
            ),
            retention_failures: r.add(
                "retention_failures",
                "Retention failures by category (one per user or category that failed; retried next pass)",
                Family::default(),
            ),
            consents: r.add("consents", "Consent outcomes", Family::default()),
            kek_rewrapped: r.add(
                "kek_rewrapped",
                "Data keys re-wrapped under the active key-encryption key",
                Counter::default(),
            ),
            kek_rewrap_backlog: r.add(
                "kek_rewrap_backlog",
                "Data keys still wrapped by a retired key-encryption key (after the last epoch pass)",
                Gauge::default(),
            ),
            kek_epoch_failures: r.add(
                "kek_epoch_failures",
                "KEK epoch steps that failed (kind: sync, rotate, rewrap, destroy, destroy_blocked); retried next pass",
                Family::default(),
            ),
            kek_destroyed: r.add(
                "kek_destroyed",
                "Retired key-encryption keys destroyed",
                Counter::default(),
            ),
            webhook_attempts: r.add(
                "webhook_attempts",
                "Webhook delivery attempts by outcome (delivered, retry, failed: given up)",
                Family::default(),
            ),
            webhook_lag: r.add(
                "webhook_delivery_lag_seconds",
                "From an event's commit to its delivery's 2xx answer",
                Histogram::new(exponential_buckets(0.005, 2.0, 20)),
            ),
            event_watchers: r.add(
                "event_watchers",
                "WatchEvents streams open on this replica",
                Gauge::default(),
            ),
            registry: Registry::default(),
        };
        Self {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// Records one finished RPC.
    pub fn rpc(&self, method: &'static str, code: &'static str, seconds: f64) {
        self.inner.rpc_requests.get_or_create(&RpcLabels { method, code }).inc();
        self.inner
            .rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// Records a failed authentication.
    pub fn auth_failure(&self, reason: &'static str) {
        self.inner
            .auth_failures
            .get_or_create(&OutcomeLabels { outcome: reason })
            .inc();
    }

    /// Records a `GetAccessToken` outcome.
    pub fn issuance(&self, outcome: &'static str) {
        self.inner.issuances.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records an upstream refresh's latency.
    pub fn refresh_latency(&self, seconds: f64) {
        self.inner.refresh_duration.observe(seconds);
    }

    /// Records a failed provider call.
    pub fn upstream_error(&self, provider: &str, kind: &'static str) {
        self.inner
            .upstream_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
                kind,
            })
            .inc();
    }

    /// Records an audit event that was dropped.
    pub fn audit_dropped(&self) {
        self.inner.audit_dropped.inc();
    }

    /// Counts an `auth.failure` audit event not written.
    pub fn auth_audit_suppressed(&self) {
        self.inner.auth_audit_suppressed.inc();
    }

    /// Sets the audit queue depth.
    pub fn audit_queue_depth(&self, depth: usize) {
        self.inner.audit_queue.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Records a provider revocation attempt.
    pub fn revocation(&self, outcome: &'static str) {
        self.inner.revocations.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records rows purged by retention.
    pub fn purged(&self, kind: &'static str, count: u64) {
        self.inner.purged.get_or_create(&KindLabels { kind }).inc_by(count);
    }

    /// Records data keys re-wrapped by an epoch pass and how many still wait.
    pub fn kek_rewrap(&self, rewrapped: u64, backlog: u64) {
        self.inner.kek_rewrapped.inc_by(rewrapped);
        self.inner
            .kek_rewrap_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    /// Records a failed KEK epoch step (`sync`, `rotate`, `rewrap`, `destroy`, `destroy_blocked`).
    pub fn kek_epoch_failure(&self, kind: &'static str) {
        self.inner.kek_epoch_failures.get_or_create(&KindLabels { kind }).inc();
    }

    /// Records a retired key-encryption key destroyed.
    pub fn kek_destroyed(&self) {
        self.inner.kek_destroyed.inc();
    }

    /// Records one retention failure (a user's purge, or a whole category) in `category`.
    pub fn retention_failure(&self, category: &'static str) {
        self.inner
            .retention_failures
            .get_or_create(&CategoryLabels { category })
            .inc();
    }

    /// Records a consent outcome.
    pub fn consent(&self, outcome: &'static str) {
        self.inner.consents.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a webhook delivery attempt by outcome (`delivered`, `retry`, `failed`).
    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.inner
            .webhook_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records how long after its event a delivery was accepted.
    pub fn webhook_lag(&self, seconds: f64) {
        self.inner.webhook_lag.observe(seconds);
    }

    /// Counts a `WatchEvents` stream opening (`+1`) or closing (`-1`).
    pub fn event_watchers(&self, change: i64) {
        self.inner.event_watchers.inc_by(change);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Registers metrics and hands each back, so that a metric's name, help and
/// type stand on one line.
struct Registrar<'a>(&'a mut Registry);

impl Registrar<'_> {
    /// Registers `metric` under `name` with `help` and hands it back.
    fn add<M: prometheus_client::registry::Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_labels() {
        let metrics = Metrics::new();
        metrics.rpc("GetAccessToken", "OK", 0.001);
        metrics.issuance("cache_hit");
        metrics.upstream_error("google", "timeout");
        let text = metrics.encode();
        assert!(
            text.contains("tokenvault_grpc_requests_total{method=\"GetAccessToken\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(text.contains("tokenvault_token_issuances_total{outcome=\"cache_hit\"} 1"));
        assert!(text.contains("tokenvault_upstream_errors_total{provider=\"google\",kind=\"timeout\"} 1"));
        metrics.retention_failure("users");
        let text = metrics.encode();
        assert!(
            text.contains("tokenvault_retention_failures_total{category=\"users\"} 1"),
            "{text}"
        );
    }
}
