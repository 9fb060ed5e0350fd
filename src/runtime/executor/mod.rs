//! The executor: validates and admits workflow executions, runs them on the
//! pool of ComfyUI backends by priority, and keeps their tasks, progress,
//! outputs and artifacts.
//!
//! - Submission ([`Executor::submit`]) runs on the caller's task: every check
//!   (graph, size, config, overrides, the backends' `/object_info`,
//!   dependencies), then one atomic store write of the execution, its root
//!   WORKFLOW task and the prompt's JSON bytes (its NODE tasks, one per node,
//!   are stored when it is first dispatched).
//! - One actor task ([`actor`]) owns the [`Scheduler`](crate::runtime::scheduler::Scheduler)
//!   and every decision about an execution's status: dispatch, take-back,
//!   retries with backoff, cancellation, dependencies, backend up/down.
//! - Each dispatch runs as an attempt task ([`attempt`]) that posts the
//!   prompt, follows it and reports back.
//! - Probers ([`pool`]) report backends going up and down.
//!
//! Status of an execution (and its root task): PENDING while its dependencies
//! are not met; QUEUED in the runtime's queue; RUNNING once handed to a
//! backend (waiting in the backend's own queue, then executing: the root
//! task's progress message says which); RETRYING during a retry's back-off;
//! then COMPLETED, FAILED or CANCELLED.
//!
//! # Which way the imports point
//!
//! ```text
//! submit -> mod (the handle) -> actor -> attempt -> shared -> pool -> messages -> failure
//! ```
//!
//! Each module imports only modules to its right (`deps` and `prompt_nodes`,
//! a queued prompt's nodes read from its text, are leaves beside them): what
//! several tasks share lives in [`messages`] (what they send each other),
//! [`failure`] (why an attempt failed) and [`shared`] (state and helpers),
//! below every task that uses it. [`submit`] holds the submission
//! checks, more of [`Executor`]'s `impl`; this file imports nothing from it.

mod actor;
mod attempt;
mod deps;
mod failure;
mod messages;
mod pool;
mod prompt_nodes;
mod shared;
mod submit;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::model::{
    JsonObject, Task, TaskDependency, TaskPriority, TaskStatus, TaskType, ValidationError,
    WorkflowExecution,
};
use crate::store::{ExecutionFilter, Page, Store};

use super::tasks::TaskRegistry;
use super::{ObjectKind, RuntimeError};

pub use pool::{BackendDevice, BackendState};
pub use shared::LoadSnapshot;

use messages::Msg;
use pool::Pool;
use shared::{Settings, Shared};

/// Where the workflow of an execution comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowSource {
    /// A registered workflow (the highest version when none is given).
    Registered {
        /// Workflow id.
        id: String,
        /// Semver version.
        version: Option<String>,
    },
    /// Inline ComfyUI API-format JSON.
    Inline(String),
}

/// A validated ExecuteWorkflow request, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteRequest {
    /// The workflow.
    pub workflow: WorkflowSource,
    /// Per-execution options.
    pub options: ExecutionOptions,
    /// Priority.
    pub priority: TaskPriority,
    /// Tags of the root task.
    pub tags: BTreeSet<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Dependencies of the execution (on its root task).
    pub dependencies: Vec<TaskDependency>,
    /// Name of the root task.
    pub name: Option<String>,
    /// Who submits it; `None` without authentication. The execution and its tasks carry it,
    /// and its idempotency key is scoped to the tenant.
    pub ownership: Option<crate::model::Ownership>,
}

impl ExecuteRequest {
    /// An inline workflow (API-format JSON) with everything else at its default: NORMAL
    /// priority, default options, and no tags, idempotency key, dependencies, name or owner.
    pub fn inline(workflow_json: impl Into<String>) -> Self {
        Self {
            workflow: WorkflowSource::Inline(workflow_json.into()),
            options: ExecutionOptions::default(),
            priority: TaskPriority::Normal,
            tags: BTreeSet::new(),
            idempotency_key: None,
            dependencies: Vec::new(),
            name: None,
            ownership: None,
        }
    }
}

/// The key an idempotency key is stored under: the tenant's own namespace, so that two
/// tenants using the same key never meet.
pub(crate) fn scoped_key(key: &str, ownership: Option<&crate::model::Ownership>) -> String {
    match ownership {
        Some(ownership) => format!("{}\u{1f}{key}", ownership.tenant),
        None => key.to_owned(),
    }
}

/// Per-execution options of an execute (or validate) request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionOptions {
    /// Literal inputs to set, node id -> {input name: value}, numbers exactly
    /// as sent; never a link.
    pub overrides: JsonObject,
    /// Running-time limit; `None` means the configured default.
    pub timeout_seconds: Option<f64>,
    /// Retries after a transient failure; `None` means the configured default.
    pub max_retries: Option<u32>,
}

impl ExecutionOptions {
    /// The options as the execution record keeps them (its `config` object):
    /// only the keys that are set.
    pub fn to_json(&self) -> JsonObject {
        let mut config = JsonObject::new();
        if !self.overrides.is_empty() {
            config.insert(
                "overrides".into(),
                serde_json::Value::Object(self.overrides.clone()),
            );
        }
        if let Some(seconds) = self.timeout_seconds
            && let Some(number) = serde_json::Number::from_f64(seconds)
        {
            config.insert("timeout_seconds".into(), serde_json::Value::Number(number));
        }
        if let Some(retries) = self.max_retries {
            config.insert("max_retries".into(), serde_json::Value::from(retries));
        }
        config
    }
}

/// An execution as the API shows it: the record with its tasks, and where
/// it waits.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionView {
    /// The execution, `tasks` filled (root first) and `node_metrics` from the
    /// NODE tasks.
    pub execution: WorkflowExecution,
    /// Queued executions ahead of it, while it waits in the runtime's queue.
    pub queue_position: Option<u32>,
}

impl ExecutionView {
    /// The root task, if present.
    pub fn root(&self) -> Option<&Task> {
        let root = self.execution.root_task_id.as_deref()?;
        self.execution.tasks.iter().find(|t| t.id == root)
    }
}

/// What ValidateWorkflow found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidationReport {
    /// Every problem (empty when valid).
    pub problems: ValidationError,
    /// Node classes the workflow needs, sorted.
    pub required_classes: Vec<String>,
    /// Backends, up now, that have every required class.
    pub backends: Vec<String>,
    /// Whether the object_info checks ran.
    pub object_info_checked: bool,
}

/// The executor handle. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    /// State shared with the actor and the attempts.
    shared: Arc<Shared>,
    /// The actor's inbox.
    tx: mpsc::UnboundedSender<Msg>,
}

impl Executor {
    /// Starts the backend pool, the probers and the actor on `tracker`; they
    /// stop when `cancel` is cancelled.
    pub(crate) fn start(
        config: &Config,
        tasks: Arc<TaskRegistry>,
        store: Arc<dyn Store>,
        gpu: &crate::gpu::GpuMonitor,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Self, RuntimeError> {
        let settings = Settings::from_config(config);
        let instance = instance_id(store.as_ref())?;
        let pool = Pool::start(&config.servers, instance, gpu, cancel)
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        let shared = Arc::new(Shared::new(Arc::clone(&tasks), store, settings, pool));
        let (tx, rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        tasks.set_ended_sender(ended_tx);
        shared
            .pool
            .spawn_probers(tracker, &tx, shared.settings.probe_interval, cancel);
        let actor = actor::Actor::new(Arc::clone(&shared), tx.clone(), tracker.clone());
        let cancel_actor = cancel.clone();
        let shared_for_shutdown = Arc::clone(&shared);
        tracker.spawn(async move {
            actor.run(rx, ended_rx, cancel_actor).await;
            shared_for_shutdown.pool.shutdown().await;
        });
        Ok(Self { shared, tx })
    }

    /// The backends, by name, with their state.
    pub fn backends(&self) -> Vec<(String, BackendState)> {
        self.shared
            .pool
            .backends()
            .iter()
            .map(|b| (b.name.clone(), b.state()))
            .collect()
    }

    /// The load the actor last published: queued per priority, and executions
    /// handed to each backend (in the order of [`Executor::backends`]).
    pub fn load(&self) -> LoadSnapshot {
        self.shared.load()
    }

    /// One execution with its tasks and, while queued, its queue position.
    pub async fn view_with_position(&self, id: &str) -> Result<ExecutionView, RuntimeError> {
        let mut view = self.view(id)?;
        if view.execution.status() == TaskStatus::Queued {
            view.queue_position = self.queue_position(id).await;
        }
        Ok(view)
    }

    /// One execution with its tasks.
    pub fn view(&self, id: &str) -> Result<ExecutionView, RuntimeError> {
        let (execution, mut tasks) = self
            .shared
            .store
            .execution_with_tasks(id)?
            .ok_or_else(|| RuntimeError::execution_not_found(id))?;
        let execution = self.shared.durable_state(execution);
        self.shared.tasks.durable_states(&mut tasks);
        Ok(ExecutionView {
            execution: with_tasks(execution, tasks),
            queue_position: None,
        })
    }

    fn assemble(&self, execution: WorkflowExecution) -> Result<ExecutionView, RuntimeError> {
        let execution = self.shared.durable_state(execution);
        let mut tasks = match execution.root_task_id.as_deref() {
            Some(root_id) => self.shared.store.root_and_children(root_id)?,
            None => Vec::new(),
        };
        self.shared.tasks.durable_states(&mut tasks);
        Ok(ExecutionView {
            execution: with_tasks(execution, tasks),
            queue_position: None,
        })
    }

    /// A page of executions in creation order.
    pub fn list(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<ExecutionView, u64>, RuntimeError> {
        let page = self.shared.store.list_executions(filter, after, limit)?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|e| self.assemble(e))
                .collect::<Result<_, _>>()?,
            next: page.next,
        })
    }

    /// Cancels an execution (idempotent); see the module docs.
    pub async fn cancel(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<ExecutionView, RuntimeError> {
        let execution = self
            .shared
            .store
            .get_execution(id)?
            .ok_or_else(|| RuntimeError::execution_not_found(id))?;
        if !execution.status().is_terminal() {
            let (reply, answer) = oneshot::channel();
            self.tx
                .send(Msg::Cancel {
                    execution_id: id.to_owned(),
                    reason,
                    reply,
                })
                .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))?;
            answer
                .await
                .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))?;
        }
        self.durable().await?;
        self.view(id)
    }

    /// Waits until every write handed to the store so far is durable, so
    /// that what a client is told next can no longer be undone by a crash
    /// ([`EventBus::settled`](crate::runtime::EventBus::settled): it writes
    /// nothing itself).
    pub(super) async fn durable(&self) -> Result<(), RuntimeError> {
        Ok(self.shared.tasks.bus().settled().await?)
    }

    /// The execution a task belongs to, if any.
    pub fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.shared.store.execution_of_task(task_id)?)
    }

    /// RetryTask on an execution's root task: a FAILED execution with retries
    /// left runs again.
    pub async fn retry(&self, id: &str) -> Result<ExecutionView, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Retry {
                execution_id: id.to_owned(),
                reply,
            })
            .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))?;
        answer
            .await
            .map_err(|_| RuntimeError::Unavailable("the executor has stopped".into()))??;
        self.durable().await?;
        self.view(id)
    }

    /// Opens one of an execution's artifacts.
    pub async fn open_artifact(
        &self,
        execution_id: &str,
        path: &str,
    ) -> Result<super::artifacts::OpenArtifact, RuntimeError> {
        let execution = self
            .shared
            .store
            .get_execution(execution_id)?
            .ok_or_else(|| RuntimeError::execution_not_found(execution_id))?;
        super::artifacts::open(
            &self.shared.settings.artifact_dir,
            execution_id,
            path,
            &execution.artifacts,
        )
        .await
        .map_err(|e| artifact_error(execution_id, e))
    }

    /// Queued executions ahead of `id` while it waits in the runtime's queue.
    pub async fn queue_position(&self, id: &str) -> Option<u32> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Position {
                execution_id: id.to_owned(),
                reply,
            })
            .ok()?;
        answer.await.ok().flatten()
    }
}

/// This runtime's instance id, kept in the store so that it survives a
/// restart: the ComfyUI client ids derive from it, so a restarted runtime
/// receives the messages of the prompts it posted before.
fn instance_id(store: &dyn Store) -> Result<uuid::Uuid, RuntimeError> {
    const KEY: &str = "instance_id";
    if let Some(id) = store.meta(KEY)?
        && let Ok(id) = uuid::Uuid::parse_str(&id)
    {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4();
    store.set_meta(KEY, &id.hyphenated().to_string())?;
    Ok(id)
}

/// The error for an artifact that could not be opened.
fn artifact_error(execution_id: &str, error: super::artifacts::ArtifactError) -> RuntimeError {
    use super::artifacts::ArtifactError;
    match error {
        ArtifactError::NotAnArtifact { .. } | ArtifactError::Refused { .. } => {
            ValidationError::single("path", error.to_string()).into()
        }
        ArtifactError::Missing { .. } => RuntimeError::FailedPrecondition {
            kind: ObjectKind::Execution,
            id: execution_id.to_owned(),
            reason: error.to_string(),
        },
        other => {
            tracing::error!(execution_id, error = %other, "artifact could not be read");
            RuntimeError::Unavailable("the artifact could not be read".into())
        }
    }
}

/// `execution` with its `tasks` (the root first, then its children; only
/// the NODE ones are kept) and its `node_metrics` from the NODE tasks.
fn with_tasks(mut execution: WorkflowExecution, tasks: Vec<Task>) -> WorkflowExecution {
    let root_id = execution.root_task_id.as_deref();
    execution.tasks = Vec::with_capacity(tasks.len());
    for task in tasks {
        if Some(task.id.as_str()) != root_id {
            if task.task_type != TaskType::Node {
                continue;
            }
            if let Some(node) = task.metadata.get("node_id").and_then(Value::as_str) {
                execution
                    .node_metrics
                    .insert(node.to_owned(), task.metrics.clone());
            }
        }
        execution.tasks.push(task);
    }
    execution
}

#[cfg(test)]
mod tests;
