//! [`DeliveryWorker`]: delivers queued webhook deliveries, at least once.
//! Each worker task claims one due delivery at a time (the claim fences it:
//! one replica delivers each, and a worker that dies leaves it due again
//! when the claim runs out), POSTs the event signed with the endpoint's
//! secrets, records the attempt (status code, latency, error), and settles
//! the delivery: delivered on a 2xx, else retried after a delay that
//! doubles from `retry_initial_ms` up to `retry_max_seconds`, until the
//! give-up time after the event, when it is `failed`. Requests are bounded
//! (timeout, no redirects, no proxy, at most `max_response_bytes` read) and
//! connect only to addresses the [`AddressPolicy`] allows.

use super::address::AddressPolicy;
use super::endpoints::signing_secrets;
use super::signature::signature_header;
use crate::clock::SharedClock;
use crate::config::WebhooksConfig;
use crate::events::{Event, EventData, EventHub};
use crate::store::{DeliveryNext, Store, TenantScope, WebhookAttempt, WebhookDelivery};
use crate::telemetry::Metrics;
use crate::vault::Vault;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The JSON body of a delivery (the Standard Webhooks envelope).
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The event.
    pub data: WebhookData<'a>,
}

/// The `data` of a delivery body: the event's ids and its payload.
#[derive(Debug, Serialize)]
pub struct WebhookData<'a> {
    /// The event's cursor in the log (the `WatchEvents` resume point).
    pub cursor: i64,
    /// The event id (also the `webhook-id` header).
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: &'a str,
    /// The user, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    /// The connection, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<Uuid>,
    /// The typed payload.
    #[serde(flatten)]
    pub payload: &'a EventData,
}

impl<'a> WebhookBody<'a> {
    /// The body for `event`.
    pub fn of(event: &'a Event) -> Self {
        Self {
            event_type: event.event_type.as_str(),
            timestamp: event.occurred_at,
            data: WebhookData {
                cursor: event.cursor,
                id: event.id,
                tenant_id: &event.tenant_id,
                user_id: event.user_id.as_deref(),
                connection_id: event.connection_id,
                payload: &event.data,
            },
        }
    }
}

/// Delivery settings, from `events.webhooks`.
#[derive(Debug, Clone, Copy)]
struct Settings {
    workers: usize,
    max_response_bytes: usize,
    retry_initial: Duration,
    retry_max: Duration,
    give_up_after: ChronoDuration,
    /// How long a claim lasts: longer than one request.
    claim_for: ChronoDuration,
}

/// The delivery worker of one replica.
pub struct DeliveryWorker {
    store: Arc<dyn Store>,
    vault: Vault,
    hub: Arc<EventHub>,
    clock: SharedClock,
    metrics: Metrics,
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    settings: Settings,
}

impl std::fmt::Debug for DeliveryWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryWorker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
struct Answer {
    status: Option<u16>,
    error: Option<String>,
}

impl Answer {
    /// No answer: `error` went wrong.
    fn failed(error: String) -> Self {
        Self {
            status: None,
            error: Some(error),
        }
    }
}

impl DeliveryWorker {
    /// A worker with its own HTTP client (bounded, no redirects, no proxy, checked resolver).
    pub fn new(
        store: Arc<dyn Store>,
        vault: Vault,
        hub: Arc<EventHub>,
        policy: Arc<AddressPolicy>,
        clock: SharedClock,
        metrics: Metrics,
        config: &WebhooksConfig,
    ) -> Result<Arc<Self>, String> {
        let timeout = Duration::from_secs(config.request_timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .user_agent(concat!("tokenvault-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook HTTP client: {e}"))?;
        let give_up_after =
            ChronoDuration::seconds(i64::try_from(config.give_up_after_seconds).unwrap_or(i64::MAX / 2));
        Ok(Arc::new(Self {
            store,
            vault,
            hub,
            clock,
            metrics,
            http,
            policy,
            settings: Settings {
                workers: config.workers,
                max_response_bytes: config.max_response_bytes,
                retry_initial: Duration::from_millis(config.retry_initial_ms.max(1)),
                retry_max: Duration::from_secs(config.retry_max_seconds.max(1)),
                give_up_after,
                claim_for: ChronoDuration::from_std(timeout * 3).unwrap_or(ChronoDuration::minutes(1)),
            },
        }))
    }

    /// Starts the worker tasks, until `stop`.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        for _ in 0..self.settings.workers {
            let worker = Arc::clone(self);
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await });
        }
    }

    /// One task: deliver what is due, else wait for a signal or the poll interval.
    async fn run(&self, stop: CancellationToken) {
        let mut signal = self.hub.subscribe();
        loop {
            signal.borrow_and_update();
            let worked = match self.deliver_next().await {
                Ok(worked) => worked,
                Err(error) => {
                    tracing::warn!(%error, "webhook delivery: the database failed; retrying");
                    false
                }
            };
            if worked {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = signal.changed() => {}
                () = tokio::time::sleep(self.hub.poll_interval()) => {}
            }
        }
    }

    /// Claims and delivers one due delivery; `false` when none was due.
    pub async fn deliver_next(&self) -> Result<bool, crate::store::StoreError> {
        let now = self.clock.now();
        let claim = Uuid::now_v7();
        let Some(delivery) = self
            .store
            .claim_next_delivery(now, now + self.settings.claim_for, claim)
            .await?
        else {
            return Ok(false);
        };
        self.attempt(&delivery, claim).await?;
        Ok(true)
    }

    /// One attempt of a claimed delivery, recorded and settled.
    async fn attempt(&self, delivery: &WebhookDelivery, claim: Uuid) -> Result<(), crate::store::StoreError> {
        let started = Instant::now();
        let attempted_at = self.clock.now();
        let endpoint = self
            .store
            .webhook_endpoint(&TenantScope::All, delivery.endpoint_id)
            .await?;
        let event = self.store.event(delivery.event_id).await?;
        // Nothing left to deliver (an endpoint deleted while this delivery was being queued, or an
        // event past retention): the delivery ends `failed` rather than staying pending.
        let (answer, gone) = match (&endpoint, &event) {
            (None, _) => (Answer::failed("the endpoint was deleted".to_owned()), true),
            (_, None) => (
                Answer::failed("the event is no longer in the log (retention)".to_owned()),
                true,
            ),
            (Some(endpoint), Some(event)) => (self.post(endpoint, event, attempted_at).await, false),
        };
        let delivered = answer.status.is_some_and(|s| (200..300).contains(&s));
        let next = if delivered {
            DeliveryNext::Delivered
        } else {
            let retry_at = attempted_at + self.backoff(delivery.attempts);
            if gone || retry_at > delivery.created_at + self.settings.give_up_after {
                DeliveryNext::Failed
            } else {
                DeliveryNext::RetryAt(retry_at)
            }
        };
        let attempt = WebhookAttempt {
            id: Uuid::now_v7(),
            endpoint_id: delivery.endpoint_id,
            event_id: delivery.event_id,
            attempted_at,
            status_code: answer.status.map(i64::from),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            error: answer.error,
        };
        let recorded = self.store.record_delivery_attempt(&attempt, next, claim).await?;
        let outcome = match next {
            DeliveryNext::Delivered => "delivered",
            DeliveryNext::RetryAt(_) => "retry",
            DeliveryNext::Failed => "failed",
        };
        self.metrics.webhook_attempt(outcome);
        if delivered {
            let lag = (self.clock.now() - delivery.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.webhook_lag(lag);
        }
        tracing::debug!(endpoint_id = %delivery.endpoint_id, event_id = %delivery.event_id,
            status = ?attempt.status_code, outcome, recorded, "webhook: attempt recorded");
        if matches!(next, DeliveryNext::Failed) {
            tracing::warn!(endpoint_id = %delivery.endpoint_id, event_id = %delivery.event_id,
                attempts = delivery.attempts + 1, "webhook: delivery given up");
        }
        Ok(())
    }

    /// The delay before retry number `attempts + 1`: doubling, capped, with up to 10 % jitter.
    fn backoff(&self, attempts: i64) -> ChronoDuration {
        let exponent = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
        let base = self
            .settings
            .retry_initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.settings.retry_max);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
        ChronoDuration::from_std(base + jitter).unwrap_or(ChronoDuration::hours(1))
    }

    /// POSTs the signed event; the answer's status, or what went wrong.
    async fn post(&self, endpoint: &crate::store::WebhookEndpoint, event: &Event, now: DateTime<Utc>) -> Answer {
        let failed = Answer::failed;
        if let Err(refused) = self.policy.check_before_sending(&endpoint.url) {
            return failed(refused.to_string());
        }
        let body = match serde_json::to_vec(&WebhookBody::of(event)) {
            Ok(body) => body,
            Err(e) => return failed(format!("encoding the event failed: {e}")),
        };
        let secrets = match self
            .vault
            .data_key(endpoint.dek_id)
            .await
            .and_then(|key| signing_secrets(&key, endpoint, now))
        {
            Ok(secrets) => secrets,
            Err(e) => return failed(format!("cannot open the endpoint's secret: {e}")),
        };
        // The receiver checks the timestamp against its own clock: the real time, not the service clock.
        let timestamp = Utc::now().timestamp();
        let id = event.id.to_string();
        let signature = signature_header(&secrets, &id, timestamp, &body);
        let sent = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status().as_u16();
        // Read (and drop) at most max_response_bytes, so a slow or endless body cannot hold the worker.
        let mut stream = response.bytes_stream();
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    read += chunk.len();
                    if read >= self.settings.max_response_bytes {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Answer {
            status: Some(status),
            error: (!(200..300).contains(&status)).then(|| format!("the endpoint answered HTTP {status}")),
        }
    }
}

/// A request failure in words, without the URL (it may carry a platform's token in its query).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_redirect() {
        "redirects are not followed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut cause = String::new();
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", cause.chars().take(300).collect::<String>())
    }
}
