//! The runtime core: the task registry (client-reported tasks and their state
//! machine), the workflow registry, and runtime facts for operators. It knows
//! neither tonic nor the generated protobuf types; `api/` converts.

pub mod artifacts;
pub mod bus;
mod error;
pub mod events;
mod executor;
mod fingerprint;
mod pending;
pub mod scheduler;
mod scoped;
mod tasks;
pub mod workflow_checks;
mod workflows;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use bus::EventBus;
pub use error::{ErrorClass, ObjectKind, RuntimeError};
pub use executor::{
    BackendDevice, BackendState, ExecuteRequest, ExecutionOptions, ExecutionView, Executor,
    LoadSnapshot, ValidationReport, WorkflowSource,
};
pub use scoped::{Caller, EventVisibility, ScopedRuntime};
pub use tasks::{MAX_CANCEL_CASCADE, NewTaskRequest, ProgressUpdate, TaskRegistry};
pub use workflows::{RegisterWorkflowRequest, WorkflowRegistry};

use crate::config::Config;
use crate::gpu::GpuMonitor;
use crate::model::{NewWorkflow, Task, ValidationError, WorkflowDefinition};
use crate::store::{ExecutionFilter, Page, Store};

/// A stable 64-bit digest of `bytes` (FNV-1a), the same in every process.
pub(crate) fn fingerprint_of(bytes: &[u8]) -> u64 {
    let hex = fingerprint::Fingerprint::default().field(bytes).finish();
    u64::from_str_radix(&hex, 16).unwrap_or(0)
}

/// Runs `work`, a call that waits on the store (a write of its own, committed
/// before it returns), on Tokio's blocking threads: the async thread, which
/// runs every connection and the executor, serves them meanwhile. Outside a
/// Tokio runtime it runs here. It runs in the caller's span (its logs carry
/// the call's request id). A panic in `work` goes on in the caller.
pub(crate) async fn off_thread<T, F>(work: F) -> Result<T, RuntimeError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, RuntimeError> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return work();
    };
    let span = tracing::Span::current();
    match runtime.spawn_blocking(move || span.in_scope(work)).await {
        Ok(outcome) => outcome,
        Err(stopped) => match stopped.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(RuntimeError::Unavailable(
                "the runtime is shutting down".into(),
            )),
        },
    }
}

/// The store `meta` key of the secret forwarding replicas sign callers' certificate names with.
pub const FORWARD_SECRET_META: &str = "forward_secret";

/// Default page size of listings.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size of listings.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One update of [`Runtime::watch_execution`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The whole execution, first and after every change of its state
    /// (boxed: it is large, a step is small).
    Snapshot(Box<ExecutionView>),
    /// A progress step of one running node, between changes.
    Progress(ProgressStep),
}

/// A progress step of one running node, read from its progress event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressStep {
    /// The event's sequence.
    pub sequence: u64,
    /// The node's NODE task.
    pub task_id: String,
    /// The node id in the graph.
    pub node_id: String,
    /// The node's class.
    pub class_type: String,
    /// Steps done.
    pub value: f64,
    /// Steps in all.
    pub max: f64,
    /// The execution's overall progress within [0, 1].
    pub execution_progress: f64,
}

impl ProgressStep {
    /// The step a node's progress event carries (`value` and `max` in its
    /// data); `None` for any other event.
    fn from_event(event: &bus::Event) -> Option<Self> {
        let bus::EventPayload::Task(task_event) = &event.payload else {
            return None;
        };
        if task_event.event_type != crate::model::TaskEventType::Progress {
            return None;
        }
        let data = &task_event.data;
        let number = |key: &str| data.get(key).and_then(serde_json::Value::as_f64);
        let text = |key: &str| {
            data.get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Some(Self {
            sequence: event.sequence,
            task_id: task_event.task_id.clone(),
            node_id: text("node_id"),
            class_type: text("class_type"),
            value: number("value")?,
            max: number("max")?,
            execution_progress: number("execution_progress").unwrap_or_default(),
        })
    }
}

/// What arrived for one watched execution since the last update.
#[derive(Default)]
struct PendingWatch {
    /// Something other than a node's progress step happened (or events were
    /// missed): the execution must be read again.
    state_changed: bool,
    /// The newest progress step.
    step: Option<ProgressStep>,
}

impl PendingWatch {
    fn note(&mut self, event: &bus::Event, id: &str) {
        if event.context.execution_id.as_deref() != Some(id) {
            return;
        }
        match ProgressStep::from_event(event) {
            Some(step) => self.step = Some(step),
            None => self.state_changed = true,
        }
    }
}

/// A cheap, cloneable handle to the runtime, given to every gRPC handler.
#[derive(Clone)]
pub struct Runtime {
    /// Shared state behind the handle.
    inner: Arc<Inner>,
}

struct Inner {
    /// Every task: client-reported ones and those of executions.
    tasks: Arc<TaskRegistry>,
    /// Runs workflow executions.
    executor: Executor,
    /// Stops the executor, its backends and probers.
    cancel: CancellationToken,
    /// Cancelled when the server starts draining: open event streams end
    /// with UNAVAILABLE and new ones are refused (see [`Runtime::close_streams`]).
    streams_closing: CancellationToken,
    /// The executor's tasks.
    tracker: TaskTracker,
    /// Registered workflows.
    workflows: WorkflowRegistry,
    /// The effective configuration, as loaded and validated at startup.
    config: Config,
    /// When this runtime started.
    started_at: DateTime<Utc>,
    /// This host's GPUs, sampled on a blocking thread of `tracker`.
    gpu: GpuMonitor,
    /// Each principal's executions that may be queued or running (`limits.max_queued`).
    active_by_owner: scoped::ActiveByOwner,
}

impl Runtime {
    /// A runtime over `store` with the given (validated) configuration, watching this host's
    /// GPUs through NVML (opened here: a brief blocking call; see [`Runtime::with_gpu`]).
    /// Starts the executor (backend sockets, probers, the scheduling actor) and the GPU
    /// sampler, so it must be called inside a tokio runtime; [`Runtime::shutdown`] stops them.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Result<Self, RuntimeError> {
        Self::with_gpu(config, store, GpuMonitor::load_nvml())
    }

    /// [`Runtime::new`] with this host's GPUs seen through `gpu` (NVML opened by the caller
    /// off the async workers, or a fake probe in tests).
    pub fn with_gpu(
        config: Config,
        store: Arc<dyn Store>,
        gpu: GpuMonitor,
    ) -> Result<Self, RuntimeError> {
        let bus = EventBus::new(config.events.history_len, Some(Arc::clone(&store)));
        let tasks = Arc::new(TaskRegistry::new(Arc::clone(&store), bus.clone()));
        if let Ok(event) = crate::model::RuntimeEvent::new(
            crate::model::EventCategory::System,
            "config.loaded",
            format!(
                "runtime started with {} backend(s), max_concurrent_tasks {}",
                config.servers.len(),
                config.runtime.max_concurrent_tasks
            ),
        ) {
            bus.publish_runtime(event, bus::EventContext::default());
        }
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let executor = Executor::start(
            &config,
            Arc::clone(&tasks),
            Arc::clone(&store),
            &gpu,
            &tracker,
            &cancel,
        )?;
        gpu.spawn_sampler(config.executor.gpu_sample_interval(), &tracker, &cancel);
        Ok(Self {
            inner: Arc::new(Inner {
                tasks,
                executor,
                cancel,
                streams_closing: CancellationToken::new(),
                tracker,
                workflows: WorkflowRegistry::new(store),
                config,
                started_at: Utc::now(),
                gpu,
                active_by_owner: scoped::ActiveByOwner::default(),
            }),
        })
    }

    /// Ends every open event stream (SubscribeEvents, WatchExecution) with
    /// UNAVAILABLE naming the last sequence it passed, and refuses new ones:
    /// the server calls it when draining starts, so long-lived streams do not
    /// hold the drain open until its deadline. Unary calls are unaffected.
    pub fn close_streams(&self) {
        self.inner.streams_closing.cancel();
    }

    /// Stops the executor and waits for its tasks. Executions in flight stay
    /// as they are in the store.
    pub async fn shutdown(&self) {
        self.close_streams();
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        // The executor's last reports may still be held back (see
        // `EventBus::deferrable_batch`): hand them over and let them commit.
        if let Err(error) = self.inner.tasks.bus().settled().await {
            tracing::warn!(%error, "the last state changes before stopping were not stored");
        }
    }

    /// The task registry.
    pub fn tasks(&self) -> &TaskRegistry {
        &self.inner.tasks
    }

    /// This host's GPUs and their last readings.
    pub fn gpu(&self) -> &GpuMonitor {
        &self.inner.gpu
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.inner.executor
    }

    /// The secret forwarding replicas sign callers' certificate names with, on a store several
    /// runtimes share (Redis): read from the store, made and stored on first use. `None` on
    /// the other stores, or when the store cannot be read (then no forwarded name is taken).
    pub fn forward_secret(&self) -> Option<String> {
        if self.inner.config.runtime.queue_type != crate::config::QueueType::Redis {
            return None;
        }
        let store = self.inner.tasks.store();
        match store.meta(FORWARD_SECRET_META) {
            Ok(Some(secret)) => Some(secret),
            Ok(None) => {
                let secret = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                match store.set_meta(FORWARD_SECRET_META, &secret) {
                    Ok(()) => Some(secret),
                    Err(error) => {
                        tracing::warn!(%error, "the forwarding secret could not be stored");
                        None
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the forwarding secret could not be read");
                None
            }
        }
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        self.inner.tasks.bus()
    }

    /// Resolves a workflow source: a registered version, or inline JSON
    /// parsed and graph-checked (problems are reported by the executor).
    fn resolve(&self, source: &WorkflowSource) -> Result<(WorkflowDefinition, bool), RuntimeError> {
        match source {
            WorkflowSource::Registered { id, version } => {
                Ok((self.inner.workflows.get(id, version.as_deref())?, true))
            }
            WorkflowSource::Inline(json) => {
                let max = self.inner.config.scheduling.max_workflow_bytes;
                if json.len() > max {
                    return Err(ValidationError::single(
                        "workflow_json",
                        format!("is {} bytes; at most {max} are accepted", json.len()),
                    )
                    .into());
                }
                let mut workflow =
                    WorkflowDefinition::from_api_json(NewWorkflow::new("inline workflow"), json)?;
                workflow.id = fingerprint::Fingerprint::default()
                    .field(json.as_bytes())
                    .finish_after("inline-");
                Ok((workflow, false))
            }
        }
    }

    /// ExecuteWorkflow.
    pub async fn execute(&self, request: ExecuteRequest) -> Result<ExecutionView, RuntimeError> {
        let (workflow, registered) = self.resolve(&request.workflow)?;
        // On the heap: its state (the request, the workflow, what is prepared
        // from them) is kilobytes, which every future around it (this one,
        // the scoped runtime's, the handler's, tonic's) would otherwise hold
        // and copy when it is created and moved.
        Box::pin(self.inner.executor.submit(request, workflow, registered)).await
    }

    /// ValidateWorkflow.
    pub fn validate_workflow(
        &self,
        source: &WorkflowSource,
        options: &ExecutionOptions,
    ) -> Result<ValidationReport, RuntimeError> {
        match self.resolve(source) {
            Ok((workflow, _)) => Ok(self.inner.executor.validate(&workflow, options)),
            Err(RuntimeError::Validation(problems)) => Ok(ValidationReport {
                problems,
                ..ValidationReport::default()
            }),
            Err(other) => Err(other),
        }
    }

    /// GetExecution.
    pub async fn get_execution(&self, id: &str) -> Result<ExecutionView, RuntimeError> {
        self.inner.executor.view_with_position(id).await
    }

    /// ListExecutions.
    pub fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<ExecutionView, u64>, RuntimeError> {
        self.inner.executor.list(filter, after, limit)
    }

    /// CancelExecution.
    pub async fn cancel_execution(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<ExecutionView, RuntimeError> {
        self.inner.executor.cancel(id, reason).await
    }

    /// CreateTask: a client-reported task. Its parent may not be a task of an
    /// execution (an execution's tasks are its root and its nodes). The store
    /// creates it in a write of its own (its idempotency key is checked in
    /// it), waited for on a blocking thread (`off_thread`).
    pub async fn create_task(&self, request: NewTaskRequest) -> Result<Task, RuntimeError> {
        if let Some(parent) = &request.parent_id
            && let Some(execution_id) = self.inner.executor.execution_of_task(parent)?
        {
            return Err(ValidationError::single(
                "parent_id",
                format!(
                    "task {parent} belongs to execution {execution_id}; use dependencies to order work around an execution"
                ),
            )
            .into());
        }
        let tasks = Arc::clone(&self.inner.tasks);
        off_thread(move || tasks.create(request)).await
    }

    /// UpdateTaskProgress: only for client-reported tasks; the runtime alone
    /// reports on the tasks of executions.
    pub async fn update_task_progress(
        &self,
        id: &str,
        update: ProgressUpdate,
    ) -> Result<Task, RuntimeError> {
        if let Some(execution_id) = self.inner.executor.execution_of_task(id)? {
            return Err(RuntimeError::FailedPrecondition {
                kind: ObjectKind::Task,
                id: id.to_owned(),
                reason: format!(
                    "the task belongs to execution {execution_id}, whose progress the runtime reports; use CancelExecution or RetryTask on its root task"
                ),
            });
        }
        self.inner.tasks.update_progress(id, update).await
    }

    /// CancelTask: a task of an execution (root or node) cancels the whole
    /// execution; any other task is cancelled with its subtasks.
    pub async fn cancel_task(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<Task, RuntimeError> {
        match self.inner.executor.execution_of_task(id)? {
            Some(execution_id) => {
                let reason = reason.or_else(|| Some(format!("task {id} cancelled")));
                self.inner.executor.cancel(&execution_id, reason).await?;
                self.inner.tasks.get(id)
            }
            None => self.inner.tasks.cancel(id, reason).await,
        }
    }

    /// RetryTask: an execution's root task runs the execution again; a NODE
    /// task cannot be retried alone; any other task moves to RETRYING.
    pub async fn retry_task(&self, id: &str) -> Result<Task, RuntimeError> {
        match self.inner.executor.execution_of_task(id)? {
            Some(execution_id) => {
                let execution = self.inner.executor.view(&execution_id)?.execution;
                if execution.root_task_id.as_deref() != Some(id) {
                    return Err(RuntimeError::FailedPrecondition {
                        kind: ObjectKind::Task,
                        id: id.to_owned(),
                        reason: format!(
                            "a node task is retried with its execution: retry task {}",
                            execution.root_task_id.unwrap_or_default()
                        ),
                    });
                }
                self.inner.executor.retry(&execution_id).await?;
                self.inner.tasks.get(id)
            }
            None => self.inner.tasks.retry(id).await,
        }
    }

    /// SubscribeEvents: see [`events::subscribe`].
    pub fn subscribe_events(
        &self,
        filter: events::EventFilter,
        after: Option<u64>,
    ) -> Result<events::Subscription, RuntimeError> {
        let config = &self.inner.config.events;
        events::subscribe(
            self.bus(),
            filter,
            after,
            events::SubscribeOptions {
                buffer: config.subscriber_buffer,
                heartbeat: config.heartbeat(),
                closing: self.inner.streams_closing.clone(),
            },
        )
    }

    /// ListEvents: see [`events::list`].
    pub fn list_events(
        &self,
        filter: &events::EventFilter,
        after: u64,
        limit: usize,
    ) -> Result<events::EventPage, RuntimeError> {
        events::list(self.bus(), filter, after, limit)
    }

    /// WatchExecution: the execution now, then after every change of its
    /// state, until it ends (the channel then closes); between changes, each
    /// progress step of a running node as a small [`WatchUpdate::Progress`]
    /// (no re-read of the execution). Updates that come faster than the
    /// reader are coalesced: the reader always gets the newest state, and the
    /// newest step.
    pub async fn watch_execution(
        &self,
        id: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchUpdate, RuntimeError>>, RuntimeError> {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let closing = self.inner.streams_closing.clone();
        if closing.is_cancelled() {
            return Err(RuntimeError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        // Live first, so no change after the first read can be missed.
        let mut live = self.bus().subscribe();
        let first = self.inner.executor.view_with_position(id).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let runtime = self.clone();
        let id = id.to_owned();
        self.inner.tracker.spawn(async move {
            let mut previous = first.clone();
            let mut ended = first.execution.status().is_terminal();
            if tx
                .send(Ok(WatchUpdate::Snapshot(Box::new(first))))
                .await
                .is_err()
            {
                return;
            }
            while !ended {
                let mut pending = PendingWatch::default();
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(event) => pending.note(&event, &id),
                        Err(RecvError::Lagged(_)) => pending.state_changed = true,
                        Err(RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                    () = closing.cancelled() => {
                        let end = RuntimeError::StreamClosed {
                            last_sequence: runtime.bus().last_sequence(),
                        };
                        let _ = tx.send(Err(end)).await;
                        return;
                    }
                };
                // Coalesce what is already waiting.
                loop {
                    match live.try_recv() {
                        Ok(event) => pending.note(&event, &id),
                        Err(TryRecvError::Lagged(_)) => pending.state_changed = true,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => return,
                    }
                }
                let update = if pending.state_changed {
                    let view = match runtime.inner.executor.view_with_position(&id).await {
                        Ok(view) => view,
                        Err(error) => {
                            let _ = tx.send(Err(error)).await;
                            return;
                        }
                    };
                    if view == previous {
                        pending.step.map(WatchUpdate::Progress)
                    } else {
                        ended = view.execution.status().is_terminal();
                        previous = view.clone();
                        Some(WatchUpdate::Snapshot(Box::new(view)))
                    }
                } else {
                    pending.step.map(WatchUpdate::Progress)
                };
                if let Some(update) = update
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Opens one of an execution's artifacts.
    pub async fn open_artifact(
        &self,
        execution_id: &str,
        path: &str,
    ) -> Result<artifacts::OpenArtifact, RuntimeError> {
        self.inner.executor.open_artifact(execution_id, path).await
    }

    /// The workflow registry.
    pub fn workflows(&self) -> &WorkflowRegistry {
        &self.inner.workflows
    }

    /// Each principal's executions that may be queued or running.
    fn active_by_owner(&self) -> &scoped::ActiveByOwner {
        &self.inner.active_by_owner
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the state store can take reads and writes now (see
    /// [`Store::health`]); readiness follows it. Blocking: call it
    /// off the async workers.
    pub fn store_health(&self) -> Result<(), crate::store::StoreError> {
        self.inner.tasks.store().health()
    }

    /// When the runtime started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.inner.started_at
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::{JsonObject, TaskPriority, TaskStatus, TaskType};
    use crate::store::MemoryStore;

    fn client_task(name: &str, dependencies: Vec<String>) -> NewTaskRequest {
        NewTaskRequest {
            name: name.into(),
            task_type: TaskType::Preprocessing,
            priority: TaskPriority::Normal,
            dependencies,
            metadata: JsonObject::new(),
            description: None,
            tags: BTreeSet::new(),
            parent_id: None,
            max_retries: 0,
            timeout_seconds: None,
            request_id: None,
            ownership: None,
        }
    }

    fn status(status: TaskStatus) -> ProgressUpdate {
        ProgressUpdate {
            status: Some(status),
            ..ProgressUpdate::default()
        }
    }

    #[tokio::test]
    async fn the_dependency_index_forgets_a_dependency_once_it_ended() {
        let runtime = Runtime::new(Config::default(), Arc::new(MemoryStore::new())).unwrap();
        let a = runtime
            .create_task(client_task("a", Vec::new()))
            .await
            .unwrap();
        let b = runtime
            .create_task(client_task("b", vec![a.id.clone()]))
            .await
            .unwrap();
        assert_eq!(runtime.tasks().indexed_dependencies(), 1);
        runtime
            .update_task_progress(&a.id, status(TaskStatus::Running))
            .await
            .unwrap();
        runtime
            .update_task_progress(&a.id, status(TaskStatus::Completed))
            .await
            .unwrap();
        // The executor's actor handles the end on its own task.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runtime.tasks().indexed_dependencies() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the index still holds the waiters of {}",
                a.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Its waiter is untouched: a completed requirement releases it.
        let b = runtime.tasks().latest(&b.id).unwrap().unwrap();
        assert!(!b.status().is_terminal(), "{:?}", b.status());
        runtime.shutdown().await;
    }

    /// The server's scheduler (one worker thread) runs a task woken by a message next; the
    /// actor's yield lets the other calls' tasks that are ready run first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn submissions_ready_together_share_one_turn_and_one_commit() {
        const CALLS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let mut config = Config::default();
        // Nothing listens there: the executions stay queued.
        config.servers = vec![crate::config::ServerConfig::with_url("http://127.0.0.1:9")];
        config.scheduling.probe_interval_seconds = 3600.0;
        let shared: Arc<dyn Store> = store.clone();
        let runtime = Runtime::new(config, shared).unwrap();
        let request = ExecuteRequest::inline(
            r#"{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}"#,
        );
        // The start-up's writes are behind this one.
        runtime.execute(request.clone()).await.unwrap();
        let before = store.commit_count();
        // The calls' tasks are ready together, as those of one read of a connection are.
        let launcher = {
            let (runtime, request) = (runtime.clone(), request.clone());
            tokio::spawn(async move {
                (0..CALLS)
                    .map(|_| {
                        let (runtime, request) = (runtime.clone(), request.clone());
                        tokio::spawn(async move { runtime.execute(request).await })
                    })
                    .collect::<Vec<_>>()
            })
        };
        for call in launcher.await.unwrap() {
            call.await.unwrap().unwrap();
        }
        // One for the turn; one more allowed for a write that the closed backend's
        // reconnects may make meanwhile.
        let commits = store.commit_count() - before;
        assert!(commits <= 2, "{CALLS} submissions took {commits} commits");
        runtime.shutdown().await;
    }

    /// The task API's writes (a progress report, a cancel, a retry, a create) wait for their
    /// commit without holding the one async thread: while the store file's write lock is
    /// taken from elsewhere, each call waits and the thread goes on; once the lock goes,
    /// each is answered with its write durable. (A call that blocked the thread on its
    /// commit would hold the first poll until the writer gave up, after its 5 s busy
    /// timeout, and that poll would answer.)
    #[tokio::test]
    async fn task_writes_wait_for_their_commit_without_holding_the_thread() {
        use futures_util::FutureExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Arc::new(crate::store::SqliteStore::open(&path).unwrap());
        let shared: Arc<dyn Store> = store.clone();
        let runtime = Runtime::new(Config::default(), shared).unwrap();
        let running = runtime
            .create_task(client_task("running", Vec::new()))
            .await
            .unwrap();
        runtime
            .update_task_progress(&running.id, status(TaskStatus::Running))
            .await
            .unwrap();
        let failed = runtime
            .create_task(NewTaskRequest {
                max_retries: 1,
                ..client_task("failed", Vec::new())
            })
            .await
            .unwrap();
        runtime
            .update_task_progress(&failed.id, status(TaskStatus::Failed))
            .await
            .unwrap();
        let pending = runtime
            .create_task(client_task("pending", Vec::new()))
            .await
            .unwrap();
        runtime.bus().settled().await.unwrap();

        let lock = rusqlite::Connection::open(&path).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        let half = ProgressUpdate {
            progress: Some(0.5),
            ..ProgressUpdate::default()
        };
        let mut report = Box::pin(runtime.update_task_progress(&running.id, half));
        let mut cancel = Box::pin(runtime.cancel_task(&pending.id, None));
        let mut retry = Box::pin(runtime.retry_task(&failed.id));
        let mut create = Box::pin(runtime.create_task(client_task("new", Vec::new())));
        assert!((&mut report).now_or_never().is_none(), "the report waits");
        assert!((&mut cancel).now_or_never().is_none(), "the cancel waits");
        assert!((&mut retry).now_or_never().is_none(), "the retry waits");
        assert!((&mut create).now_or_never().is_none(), "the create waits");
        lock.execute_batch("COMMIT").unwrap();
        let wait = Duration::from_secs(10);
        let report = tokio::time::timeout(wait, report).await.unwrap().unwrap();
        let cancel = tokio::time::timeout(wait, cancel).await.unwrap().unwrap();
        let retry = tokio::time::timeout(wait, retry).await.unwrap().unwrap();
        let create = tokio::time::timeout(wait, create).await.unwrap().unwrap();
        // Each answer was durable when it was given.
        let stored = |id: &str| store.get_task(id).unwrap().unwrap();
        assert_eq!(stored(&report.id).progress(), 0.5);
        assert_eq!(stored(&cancel.id).status(), TaskStatus::Cancelled);
        assert_eq!(stored(&retry.id).status(), TaskStatus::Retrying);
        assert_eq!(stored(&create.id).status(), TaskStatus::Pending);
        runtime.shutdown().await;
    }
}
