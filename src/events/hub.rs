//! [`EventHub`]: one per process. It turns the store's notifications (on
//! PostgreSQL, a `NOTIFY` from whichever replica committed events) into a
//! wake-up signal, and serves each `WatchEvents` stream: the events after
//! the caller's cursor in pages, then each new one as it commits, and a
//! heartbeat with the cursor reached whenever the stream is idle. Streams
//! poll the log as well (SQLite has no notifications; on PostgreSQL it
//! covers a lost listener), so nothing waits on a missed signal.

use super::{Event, EventType};
use crate::clock::SharedClock;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

/// Events read per page of a replay.
const PAGE: u32 = 500;

/// How streams behave.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Heartbeat interval of an idle stream.
    pub heartbeat: Duration,
    /// How often an idle stream looks at the log without a signal.
    pub poll: Duration,
    /// Most streams at once.
    pub max_watchers: usize,
}

/// What a watcher asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// The tenant whose events are streamed.
    pub tenant_id: String,
    /// The last cursor the watcher has seen (0: from the oldest event kept).
    pub after_cursor: i64,
    /// Only these types (every type when empty).
    pub types: Vec<EventType>,
    /// Start after the latest event, ignoring `after_cursor`.
    pub start_at_latest: bool,
}

/// One item of a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// An event.
    Event(Box<Event>),
    /// Nothing new: the stream is alive and has reached `cursor`.
    Heartbeat {
        /// The cursor to resume from.
        cursor: i64,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Why a stream cannot start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The cursor is older than the log keeps.
    #[error("cursor {cursor} is older than the event log keeps: events after cursor {purged_through} are available")]
    Expired {
        /// The cursor asked for.
        cursor: i64,
        /// The oldest cursor one may resume from.
        purged_through: i64,
    },
    /// The cursor is beyond anything written.
    #[error("cursor {cursor} is ahead of the event log (its latest cursor is {latest})")]
    Ahead {
        /// The cursor asked for.
        cursor: i64,
        /// The latest cursor written.
        latest: i64,
    },
    /// Too many streams on this replica.
    #[error("this replica already serves {0} event streams; retry later or on another replica")]
    Busy(usize),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The wake-up signal and the streams.
pub struct EventHub {
    store: Arc<dyn Store>,
    clock: SharedClock,
    settings: WatchSettings,
    signal: watch::Sender<u64>,
    watchers: Arc<Semaphore>,
    /// Cancelled when the serving process stops: every stream ends.
    closing: CancellationToken,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EventHub {
    /// A hub over `store`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock, settings: WatchSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            settings,
            signal: watch::channel(0).0,
            watchers: Arc::new(Semaphore::new(settings.max_watchers.max(1))),
            closing: CancellationToken::new(),
        })
    }

    /// Starts forwarding the store's notifications to the signal, until
    /// `stop`, which also ends every stream.
    pub async fn start(self: &Arc<Self>, stop: CancellationToken) -> Result<(), StoreError> {
        let closing = self.closing.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            stopped.cancelled().await;
            closing.cancel();
        });
        let Some(mut notices) = self.store.listen_events().await? else {
            return Ok(());
        };
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    notice = notices.recv() => match notice {
                        Some(()) => hub.wake(),
                        None => return,
                    },
                }
            }
        });
        Ok(())
    }

    /// Wakes every stream and delivery worker of this process.
    pub fn wake(&self) {
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The signal: it changes whenever events may have committed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// How often to look at the log without a signal.
    pub fn poll_interval(&self) -> Duration {
        self.settings.poll
    }

    /// Opens a stream: checks the cursor against the log's bounds, then
    /// feeds items into the returned channel until the receiver is dropped,
    /// the process stops, or the database fails (the last item is then the error).
    pub async fn watch(
        self: &Arc<Self>,
        request: WatchRequest,
    ) -> Result<mpsc::Receiver<Result<WatchItem, WatchError>>, WatchError> {
        let permit = Arc::clone(&self.watchers)
            .try_acquire_owned()
            .map_err(|_| WatchError::Busy(self.settings.max_watchers))?;
        let bounds = self.store.event_bounds().await?;
        let cursor = if request.start_at_latest {
            bounds.latest
        } else if request.after_cursor == 0 {
            // From the oldest event the log still keeps.
            bounds.purged_through
        } else if request.after_cursor > bounds.latest {
            return Err(WatchError::Ahead {
                cursor: request.after_cursor,
                latest: bounds.latest,
            });
        } else if request.after_cursor < bounds.purged_through {
            return Err(WatchError::Expired {
                cursor: request.after_cursor,
                purged_through: bounds.purged_through,
            });
        } else {
            request.after_cursor
        };
        let (sender, receiver) = mpsc::channel(64);
        let hub = Arc::clone(self);
        let stop = self.closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            hub.feed(request, cursor, sender, stop).await;
        });
        Ok(receiver)
    }

    /// Replays after `cursor`, then waits for news: a signal, the poll
    /// interval, or the heartbeat.
    async fn feed(
        &self,
        request: WatchRequest,
        mut cursor: i64,
        sender: mpsc::Sender<Result<WatchItem, WatchError>>,
        stop: CancellationToken,
    ) {
        let mut signal = self.subscribe();
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            signal.borrow_and_update();
            let page = match self
                .store
                .events_after(&request.tenant_id, cursor, &request.types, PAGE)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    let _ = self.send(&sender, Err(error.into()), &stop).await;
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            // A gap after the cursor is a rolled-back cursor, a filter, or a purge that
            // ran since the stream started: only the last one is an error.
            if page.first().is_some_and(|e| e.cursor != cursor + 1) {
                match self.store.event_bounds().await {
                    Ok(bounds) if bounds.purged_through > cursor => {
                        let expired = WatchError::Expired {
                            cursor,
                            purged_through: bounds.purged_through,
                        };
                        let _ = self.send(&sender, Err(expired), &stop).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = self.send(&sender, Err(error.into()), &stop).await;
                        return;
                    }
                }
            }
            for event in page {
                cursor = event.cursor;
                if !self.send(&sender, Ok(WatchItem::Event(Box::new(event))), &stop).await {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = sender.closed() => return,
                _ = signal.changed() => {}
                () = tokio::time::sleep(self.settings.poll) => {}
                _ = heartbeat.tick() => {
                    let beat = WatchItem::Heartbeat { cursor, at: self.clock.now() };
                    if !self.send(&sender, Ok(beat), &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends one item; `false` when the watcher is gone or the process stops
    /// (a watcher that stops reading does not hold the shutdown).
    async fn send(
        &self,
        sender: &mpsc::Sender<Result<WatchItem, WatchError>>,
        item: Result<WatchItem, WatchError>,
        stop: &CancellationToken,
    ) -> bool {
        tokio::select! {
            () = stop.cancelled() => false,
            sent = sender.send(item) => sent.is_ok(),
        }
    }
}
