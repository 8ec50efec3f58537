//! A `WatchEvents` stream as a test reads it: events in order, heartbeats
//! counted, bounded waits.

use crate::support::TestServer;
use std::time::Duration;
use tokenvault::proto::watch_events_response::Kind;
use tokenvault::proto::{Event, WatchEventsRequest, WatchEventsResponse};
use tonic::Streaming;

/// An open stream.
pub struct Watch {
    stream: Streaming<WatchEventsResponse>,
    /// Heartbeats received, with their cursors.
    pub heartbeats: Vec<u64>,
}

impl Watch {
    /// Opens a stream for `tenant` with `key`, after `after_cursor`.
    pub async fn open(server: &TestServer, key: &str, tenant: &str, after_cursor: u64) -> Result<Self, tonic::Status> {
        Self::open_with(
            server,
            key,
            WatchEventsRequest {
                tenant_id: tenant.to_owned(),
                after_cursor,
                ..Default::default()
            },
        )
        .await
    }

    /// Opens a stream with a full request.
    pub async fn open_with(server: &TestServer, key: &str, request: WatchEventsRequest) -> Result<Self, tonic::Status> {
        let stream = server.events(key).watch_events(request).await?.into_inner();
        Ok(Self {
            stream,
            heartbeats: Vec::new(),
        })
    }

    /// The next event within `within` (heartbeats skipped); `None` when none came.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let item = tokio::time::timeout_at(deadline, self.stream.message()).await.ok()?;
            match item.expect("the stream failed")?.kind {
                Some(Kind::Event(event)) => return Some(event),
                Some(Kind::Heartbeat(beat)) => self.heartbeats.push(beat.cursor),
                None => panic!("an empty stream item"),
            }
        }
    }

    /// The next `n` events (each within 10 s).
    pub async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            match self.next_event(Duration::from_secs(10)).await {
                Some(event) => events.push(event),
                None => panic!("only {i} of {n} events arrived: {:?}", types(&events)),
            }
        }
        events
    }

    /// Events until one of `last_type` arrived (each within 10 s).
    pub async fn until(&mut self, last_type: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.next_event(Duration::from_secs(10)).await {
                Some(event) => {
                    let done = event.r#type == last_type;
                    events.push(event);
                    if done {
                        return events;
                    }
                }
                None => panic!("no {last_type} arrived; got {:?}", types(&events)),
            }
        }
    }

    /// Whether no event arrives for `quiet`.
    pub async fn stays_quiet(&mut self, quiet: Duration) -> Result<(), Event> {
        match self.next_event(quiet).await {
            Some(event) => Err(event),
            None => Ok(()),
        }
    }
}

/// The types of `events`, in order.
pub fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.r#type.as_str()).collect()
}
