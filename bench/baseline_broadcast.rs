//! The fan-out baseline: a minimal tonic server, from the same generated
//! code as the runtime, that implements `EventService.SubscribeEvents` as
//! the idiomatic tonic streaming pattern (one tokio broadcast channel, each
//! subscriber's response stream a `BroadcastStream` over its own receiver)
//! and `TaskService.UpdateTaskProgress` as "build the same kind of `Event`
//! (a `TaskEvent` payload of the runtime's shape and size) and send it into
//! the channel". Every other method answers `UNIMPLEMENTED`. Whatever the
//! runtime spends above it on fan-out is the runtime's own cost. (The
//! generated server yields `SubscribeEventsFrame`s; the baseline wraps each
//! response in one, which encodes it as tonic would: per subscriber.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use comfy_reality::pb::event_service_server::{EventService, EventServiceServer};
use comfy_reality::pb::subscribe_events_response::Item;
use comfy_reality::pb::task_service_server::{TaskService, TaskServiceServer};
use comfy_reality::pb::{
    CancelTaskRequest, CancelTaskResponse, CreateTaskRequest, CreateTaskResponse, Event,
    GetTaskRequest, GetTaskResponse, ListEventsRequest, ListEventsResponse, ListTasksRequest,
    ListTasksResponse, RetryTaskRequest, RetryTaskResponse, SubscribeEventsFrame,
    SubscribeEventsRequest, SubscribeEventsResponse, Task, TaskEvent, TaskEventType,
    UpdateTaskProgressRequest, UpdateTaskProgressResponse, WatchExecutionRequest,
    WatchExecutionResponse, event,
};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

/// Events a subscriber may fall behind before it lags (the runtime's live
/// channel holds as many).
const CAPACITY: usize = 4096;

/// The broadcast channel and the sequence counter, shared by both services.
#[derive(Clone)]
struct Broadcast {
    /// Every subscriber's stream reads a receiver of this sender.
    sender: broadcast::Sender<SubscribeEventsResponse>,
    /// The last sequence number handed out.
    sequence: Arc<AtomicU64>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl EventService for Broadcast {
    type SubscribeEventsStream = BoxStream<SubscribeEventsFrame>;

    async fn subscribe_events(
        &self,
        _: Request<SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        // A subscriber that lagged skips what it missed.
        let stream = BroadcastStream::new(self.sender.subscribe()).filter_map(Result::ok);
        Ok(Response::new(Box::pin(
            stream.map(|item| Ok(SubscribeEventsFrame::Message(item))),
        )))
    }

    async fn list_events(
        &self,
        _: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type WatchExecutionStream = BoxStream<WatchExecutionResponse>;

    async fn watch_execution(
        &self,
        _: Request<WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

#[tonic::async_trait]
impl TaskService for Broadcast {
    async fn create_task(
        &self,
        _: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn get_task(
        &self,
        _: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn list_tasks(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn update_task_progress(
        &self,
        request: Request<UpdateTaskProgressRequest>,
    ) -> Result<Response<UpdateTaskProgressResponse>, Status> {
        let request = request.into_inner();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let progress = request.progress.unwrap_or(0.0);
        let item = progress_event(
            sequence,
            request.id.clone(),
            request.progress_message.clone(),
            progress,
        );
        let now = item_timestamp(&item);
        // No subscriber is not an error.
        let _ = self.sender.send(item);
        Ok(Response::new(UpdateTaskProgressResponse {
            task: Some(Task {
                id: request.id,
                progress,
                progress_message: request.progress_message,
                updated_at: now,
                ..Task::default()
            }),
        }))
    }

    async fn cancel_task(
        &self,
        _: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn retry_task(
        &self,
        _: Request<RetryTaskRequest>,
    ) -> Result<Response<RetryTaskResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// The subscription item the baseline sends for one progress report: an
/// `Event` with a `TaskEvent` payload shaped like the runtime's (a fresh
/// UUID, the task id, PROGRESS, the message, `{"progress":P}` as data,
/// source `runtime`, the sequence, the same timestamp twice).
pub fn progress_event(
    sequence: u64,
    task_id: String,
    message: Option<String>,
    progress: f64,
) -> SubscribeEventsResponse {
    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
    let task_event = TaskEvent {
        id: uuid::Uuid::new_v4().to_string(),
        task_id: task_id.clone(),
        event_type: TaskEventType::Progress.into(),
        timestamp: Some(now),
        message,
        data: format!("{{\"progress\":{progress:?}}}"),
        source: Some("runtime".to_owned()),
        correlation_id: None,
        sequence,
    };
    SubscribeEventsResponse {
        item: Some(Item::Event(Event {
            sequence,
            timestamp: Some(now),
            payload: Some(event::Payload::TaskEvent(task_event)),
            task_id: Some(task_id),
            execution_id: None,
            workflow_id: None,
            node: false,
        })),
    }
}

/// The publication time of an item built by [`progress_event`].
fn item_timestamp(item: &SubscribeEventsResponse) -> Option<prost_types::Timestamp> {
    match &item.item {
        Some(Item::Event(event)) => event.timestamp,
        _ => None,
    }
}

/// Serves the baseline on a free port, printing `listening on ADDR`.
pub async fn serve() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    println!("broadcast baseline listening on {addr}");
    let (sender, _) = broadcast::channel(CAPACITY);
    let service = Broadcast {
        sender,
        sequence: Arc::new(AtomicU64::new(0)),
    };
    // TCP_NODELAY like the runtime's listener, so latencies compare.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EventServiceServer::new(service.clone()))
        .add_service(TaskServiceServer::new(service))
        .serve_with_incoming(incoming)
        .await
        .expect("serve");
}
