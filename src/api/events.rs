//! EventService handlers.

use std::pin::Pin;

use futures_util::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::pb::event_service_server::EventService;
use crate::pb::{
    ListEventsRequest, ListEventsResponse, SubscribeEventsFrame, SubscribeEventsRequest,
    WatchExecutionRequest, WatchExecutionResponse,
};
use crate::runtime::Runtime;
use crate::runtime::events::StreamItem;

use super::convert;
use super::events_convert::{
    self, FilterFields, event_to_pb, stream_item_to_pb, watch_update_to_pb,
};
use super::record_span;
use super::status::invalid_argument;

/// Serves EventService over the runtime's event bus.
#[derive(Clone)]
pub struct EventApi {
    /// The runtime handle.
    runtime: Runtime,
}

impl EventApi {
    /// Handlers over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeEventsStream = BoxStream<SubscribeEventsFrame>;

    async fn subscribe_events(
        &self,
        request: Request<SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let request = request.into_inner();
        let filter = events_convert::filter_from_pb(FilterFields {
            task_ids: request.task_ids,
            execution_ids: request.execution_ids,
            workflow_ids: request.workflow_ids,
            tags: request.tags,
            event_types: request.event_types,
            categories: request.categories,
            min_level: request.min_level,
            include_node_events: request.include_node_events,
        })
        .map_err(|e| invalid_argument(&e))?;
        let visibility = runtime.event_visibility();
        let items = self
            .runtime
            .subscribe_events(filter, request.after_sequence)?;
        // One step per item: the caller's visibility, then the wire.
        let stream = items.filter_map(move |item| match item {
            Ok(StreamItem::Event(event)) if !visibility.sees(&event) => None,
            Ok(item) => Some(Ok(stream_item_to_pb(&item))),
            Err(error) => Some(Err(Status::from(error))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let (filter, after, limit) =
            events_convert::list_request(request.into_inner()).map_err(|e| invalid_argument(&e))?;
        let page = runtime.list_events(&filter, after, limit)?;
        Ok(Response::new(ListEventsResponse {
            events: page.events.iter().map(|e| event_to_pb(e)).collect(),
            next_page_token: page
                .next_after
                .map(events_convert::encode_event_token)
                .unwrap_or_default(),
            last_sequence: page.last_sequence,
        }))
    }

    type WatchExecutionStream = BoxStream<WatchExecutionResponse>;

    async fn watch_execution(
        &self,
        request: Request<WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let runtime = self.runtime.scoped(super::caller(&request));
        let id =
            convert::require_id("id", &request.get_ref().id).map_err(|e| invalid_argument(&e))?;
        record_span("execution_id", &id);
        let views = runtime.watch_execution(&id).await?;
        let stream = ReceiverStream::new(views).map(|update| match update {
            Ok(update) => Ok(WatchExecutionResponse {
                update: Some(watch_update_to_pb(update)),
            }),
            Err(error) => Err(Status::from(error)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
