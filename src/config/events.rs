//! `[events]`: the event log, `WatchEvents` and webhook delivery.

use serde::Deserialize;

/// The event log and its consumers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Days events are kept (a watcher may resume from any cursor that recent).
    pub retention_days: u32,
    /// Seconds between heartbeats on an idle `WatchEvents` stream.
    pub heartbeat_seconds: u64,
    /// Milliseconds between looks at the log when no notification comes
    /// (SQLite has none; on PostgreSQL it is the fallback behind `LISTEN`).
    pub poll_interval_ms: u64,
    /// Most `WatchEvents` streams one replica serves at once.
    pub max_watchers: usize,
    /// Webhook delivery.
    pub webhooks: WebhooksConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            heartbeat_seconds: 15,
            poll_interval_ms: 500,
            max_watchers: 1000,
            webhooks: WebhooksConfig::default(),
        }
    }
}

/// Webhook endpoints and delivery.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Deliveries in flight at once on each replica (0 turns delivery off on this replica).
    pub workers: usize,
    /// Timeout of one delivery request (connect to last byte).
    pub request_timeout_seconds: u64,
    /// Largest response body read from an endpoint (the rest is dropped).
    pub max_response_bytes: usize,
    /// First retry delay after a failed attempt, in milliseconds; it doubles each time.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in seconds.
    pub retry_max_seconds: u64,
    /// Seconds after its event a delivery is given up (`failed`).
    pub give_up_after_seconds: u64,
    /// Hours a rotated secret keeps signing beside the new one.
    pub previous_secret_hours: u32,
    /// Networks (CIDR, e.g. `10.20.0.0/16`) an endpoint may resolve to even
    /// though they are private, loopback or link-local: by default such
    /// addresses are refused (no SSRF through webhooks).
    pub allowed_networks: Vec<String>,
    /// Whether `http://` is accepted for loopback endpoints (development
    /// only; any other endpoint must be `https://`).
    pub allow_http_loopback: bool,
    /// Most endpoints per tenant.
    pub max_endpoints_per_tenant: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            request_timeout_seconds: 10,
            max_response_bytes: 64 * 1024,
            retry_initial_ms: 5_000,
            retry_max_seconds: 3_600,
            give_up_after_seconds: 3 * 24 * 3600,
            previous_secret_hours: 24,
            allowed_networks: Vec::new(),
            allow_http_loopback: false,
            max_endpoints_per_tenant: 20,
        }
    }
}
