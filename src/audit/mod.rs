//! Append-only audit events. Events carry ids, scopes, outcomes and reasons,
//! never a token, code or verifier. Operator actions are written before the
//! RPC answers; token issuance is queued and written in batches, so the hot
//! path makes no database write, and the queue is flushed at shutdown.

use crate::store::{AuditEvent, Store, StoreError};
use crate::telemetry::Metrics;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// Builds an [`AuditEvent`].
#[derive(Debug, Clone)]
pub struct EventBuilder {
    event: AuditEvent,
}

impl EventBuilder {
    /// An event of `action` with `outcome`, done by `actor` at `at`.
    pub fn new(action: &str, outcome: &str, actor: &str, at: DateTime<Utc>) -> Self {
        Self {
            event: AuditEvent {
                id: Uuid::now_v7(),
                // Stored with millisecond precision; keep the event equal to what is read back.
                occurred_at: DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at),
                tenant_id: None,
                user_id: None,
                connection_id: None,
                actor: actor.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
                detail: serde_json::Value::Object(serde_json::Map::new()),
                request_id: None,
            },
        }
    }

    /// The tenant and user concerned.
    pub fn user(mut self, tenant_id: &str, user_id: &str) -> Self {
        self.event.tenant_id = Some(tenant_id.to_owned());
        self.event.user_id = Some(user_id.to_owned());
        self
    }

    /// The connection concerned.
    pub fn connection(mut self, id: Uuid) -> Self {
        self.event.connection_id = Some(id);
        self
    }

    /// The request that caused it.
    pub fn request_id(mut self, id: Option<&str>) -> Self {
        self.event.request_id = id.map(str::to_owned);
        self
    }

    /// Adds a secret-free detail field.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let serde_json::Value::Object(map) = &mut self.event.detail {
            map.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The finished event.
    pub fn build(self) -> AuditEvent {
        self.event
    }
}

enum Message {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

/// The audit writer: immediate writes for operator actions, a batched queue for the hot path.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    sender: mpsc::Sender<Message>,
    flusher: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

const BATCH: usize = 500;
const TICK: Duration = Duration::from_millis(200);

impl AuditLog {
    /// Starts the background writer; at most `capacity` events wait in memory
    /// (callers wait for room beyond that: audit is never silently dropped while the process lives).
    pub fn start(store: Arc<dyn Store>, metrics: Metrics, capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let flusher = tokio::spawn(run_writer(store.clone(), receiver, metrics.clone()));
        Self {
            store,
            sender,
            flusher: Arc::new(Mutex::new(Some(flusher))),
            metrics,
        }
    }

    /// Writes events now (operator actions: durable before the RPC answers).
    pub async fn write(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.store.append_audit(events).await
    }

    /// Queues an event for the next batch.
    pub async fn enqueue(&self, event: AuditEvent) {
        if self.sender.send(Message::Event(Box::new(event))).await.is_err() {
            self.metrics.audit_dropped();
            tracing::error!("audit event dropped: the audit writer has stopped");
        }
        self.metrics
            .audit_queue_depth(self.sender.max_capacity() - self.sender.capacity());
    }

    /// Waits until everything queued so far is written (or the writer gave up).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Flushes and stops the writer (at shutdown).
    pub async fn shutdown(&self) {
        self.flush().await;
        if let Some(handle) = self.flusher.lock().await.take() {
            handle.abort();
        }
    }
}

async fn run_writer(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<Message>, metrics: Metrics) {
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = if batch.is_empty() {
            receiver.recv().await
        } else {
            match tokio::time::timeout(TICK, receiver.recv()).await {
                Ok(message) => message,
                Err(_) => {
                    // Quiet for a tick: write what is pending.
                    write_with_retry(&*store, &mut batch, &metrics).await;
                    continue;
                }
            }
        };
        let Some(first) = first else {
            write_with_retry(&*store, &mut batch, &metrics).await;
            return;
        };
        let mut flush_now = false;
        let mut take = |message: Message, batch: &mut Vec<AuditEvent>| match message {
            Message::Event(event) => batch.push(*event),
            Message::Flush(done) => {
                waiters.push(done);
                flush_now = true;
            }
        };
        take(first, &mut batch);
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(message) => take(message, &mut batch),
                Err(_) => break,
            }
        }
        if flush_now || batch.len() >= BATCH {
            write_with_retry(&*store, &mut batch, &metrics).await;
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

/// Writes the batch, retrying with backoff while the database is away; the
/// queue behind it fills meanwhile, which slows callers rather than losing events.
async fn write_with_retry(store: &dyn Store, batch: &mut Vec<AuditEvent>, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match store.append_audit(batch).await {
            Ok(()) => {
                batch.clear();
                metrics.audit_queue_depth(0);
                return;
            }
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, pending = batch.len(), "audit write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(error) => {
                for _ in batch.iter() {
                    metrics.audit_dropped();
                }
                tracing::error!(%error, dropped = batch.len(), "audit batch rejected by the database");
                batch.clear();
                return;
            }
        }
    }
}
