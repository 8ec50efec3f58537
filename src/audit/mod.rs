//! Append-only audit events. Events carry ids, scopes, outcomes and reasons,
//! never a token, code or verifier. They reach the database three ways:
//!
//! - **With the change they record**, in its transaction: every state change
//!   builds its events with [`EventBuilder`] and hands them to the store
//!   method as a [`Trail`](crate::store::Trail), which appends them before it
//!   commits, so the change and its events commit together or not at all. A
//!   change whose events cannot be written fails (the RPC gets the error and
//!   the caller may retry; a retry records exactly once). These are
//!   `connection.revoked`, `consent.started`, `consent.completed`,
//!   `consent.denied`, `consent.failed`, `user.deleted`, `user.restored`,
//!   `user.purged`, `connection.needs_reauth` and
//!   `connection.refresh_interrupted` (with the refresh commit or the
//!   needs-reauth it ended in). An event whose content depends on what the
//!   transaction finds (whether there was a credential to queue for the
//!   provider) is built by a closure the store calls; a call that changes
//!   nothing (already revoked, already deleted) records nothing.
//! - **On their own, at once** ([`AuditLog::write`]), for what changes no row of
//!   ours or cannot share a transaction with it: `vault.integrity_failure`
//!   (a stored secret failed to open: nothing changed), `keys.rotated` (the
//!   data keys are re-wrapped one by one in the key database, which may be
//!   another database; the event follows, and a failed write fails
//!   `RotateKeys`, whose retry re-wraps whatever is left), and
//!   `provider.revocation` (an outbox attempt at the provider).
//! - **Queued and batched** ([`AuditLog::enqueue`]): the `token.issued`
//!   tallies, so the token hot path makes no database write. They are
//!   counted in memory and handed to the queue every
//!   `broker.usage_flush_seconds`; the writer writes what it holds at most
//!   [`TICK`] after the first event of a batch arrives (or at 500 events).
//!   At shutdown (SIGTERM) both are flushed before the process exits. A crash
//!   (SIGKILL, power loss) loses at most the tallies of the last
//!   `broker.usage_flush_seconds` plus [`TICK`]; while the database is
//!   unreachable the writer holds its batch and retries, so the window then
//!   extends back to when the database went away (at most the queue's
//!   capacity, after which issuers wait).
//! - **Queued if there is room** ([`AuditLog::try_enqueue`]): `auth.failure`,
//!   the authentication layer's refusals, which a flood of bad credentials
//!   causes at will. They are rate-limited before they get here and never
//!   wait for the queue: one that finds it full is counted as suppressed
//!   (see `auth::FailureAudit`). They carry no tenant (the caller is not
//!   known), so only a caller allowed every tenant lists them.

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

    /// The tenant concerned (no user: a tenant-wide action).
    pub fn tenant(mut self, tenant_id: &str) -> Self {
        self.event.tenant_id = Some(tenant_id.to_owned());
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

/// Events per batch write.
const BATCH: usize = 500;
/// The longest an event waits in the writer before its batch is written
/// (while the database answers).
pub const TICK: Duration = Duration::from_millis(200);

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

    /// Writes events now, in a transaction of their own: only for events that
    /// record no change of our rows (see the module docs); a change's events
    /// go in its [`Trail`](crate::store::Trail).
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

    /// Queues an event for the next batch if there is room now, without
    /// waiting: `false` when the queue is full or the writer has stopped (the
    /// caller counts it as suppressed). For events a flood can cause
    /// (`auth.failure`), which must never slow the server down.
    pub fn try_enqueue(&self, event: AuditEvent) -> bool {
        let queued = self.sender.try_send(Message::Event(Box::new(event))).is_ok();
        self.metrics
            .audit_queue_depth(self.sender.max_capacity() - self.sender.capacity());
        queued
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
    // When the pending batch must be written: a tick after its first event.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let first = match due.filter(|_| !batch.is_empty()) {
            None => receiver.recv().await,
            Some(due_at) => match tokio::time::timeout_at(due_at, receiver.recv()).await {
                Ok(message) => message,
                Err(_) => {
                    // The batch's first event has waited a tick: write what is pending.
                    write_with_retry(&*store, &mut batch, &metrics).await;
                    due = None;
                    continue;
                }
            },
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
        if due.is_none() && !batch.is_empty() {
            due = Some(tokio::time::Instant::now() + TICK);
        }
        if flush_now || batch.len() >= BATCH {
            write_with_retry(&*store, &mut batch, &metrics).await;
            due = None;
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
