//! `EventService`: `WatchEvents`, the tenant's event log as a resumable stream.

use super::context::CallContext;
use super::{convert, validate};
use crate::app::App;
use crate::clock::to_proto;
use crate::events::{EventType, WatchItem, WatchRequest};
use crate::proto::event_service_server::EventService;
use crate::proto::*;
use crate::telemetry::Metrics;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Most types one watch may filter on.
const MAX_TYPES: usize = 32;

/// `EventService` over the app.
#[derive(Debug, Clone)]
pub struct EventApi {
    app: Arc<App>,
}

impl EventApi {
    /// The service.
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

/// Counts an open stream for as long as it lives.
struct OpenStream(Metrics);

impl OpenStream {
    fn new(metrics: Metrics) -> Self {
        metrics.event_watchers(1);
        Self(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.event_watchers(-1);
    }
}

/// Event type names, each one known.
pub(super) fn event_types(names: &[String]) -> Result<Vec<EventType>, Status> {
    if names.len() > MAX_TYPES {
        return Err(Status::invalid_argument(format!("at most {MAX_TYPES} types")));
    }
    names
        .iter()
        .map(|name| {
            EventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                Status::invalid_argument(format!(
                    "unknown event type `{}`; known types: {}",
                    name.chars().filter(|c| !c.is_control()).take(64).collect::<String>(),
                    known.join(", ")
                ))
            })
        })
        .collect()
}

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<WatchEventsResponse, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let context = CallContext::of(&request)?;
        let body = request.into_inner();
        validate::tenant(&body.tenant_id)?;
        validate::may_act_for(&context.caller, &body.tenant_id)?;
        let types = event_types(&body.types)?;
        let after_cursor =
            i64::try_from(body.after_cursor).map_err(|_| Status::invalid_argument("after_cursor is out of range"))?;
        let items = self
            .app
            .events
            .watch(WatchRequest {
                tenant_id: body.tenant_id,
                after_cursor,
                types,
                start_at_latest: body.start_at_latest,
            })
            .await?;
        let open = OpenStream::new(self.app.metrics.clone());
        let stream = ReceiverStream::new(items).map(move |item| {
            let _open = &open;
            match item {
                Ok(WatchItem::Event(event)) => Ok(WatchEventsResponse {
                    kind: Some(watch_events_response::Kind::Event(convert::event(&event))),
                }),
                Ok(WatchItem::Heartbeat { cursor, at }) => Ok(WatchEventsResponse {
                    kind: Some(watch_events_response::Kind::Heartbeat(Heartbeat {
                        cursor: u64::try_from(cursor).unwrap_or(0),
                        at: Some(to_proto(at)),
                    })),
                }),
                Err(error) => Err(Status::from(error)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
