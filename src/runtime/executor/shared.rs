//! What the executor's handle, actor and attempts share: the [`Settings`]
//! read from the configuration and the [`Shared`] state (task registry,
//! store, backend pool, the admission counter, recent durations), with the
//! helpers that read-modify-write an execution record and publish runtime
//! events and metrics.
//!
//! Imports point down only: to the backend [`pool`](super::pool), the task
//! registry, the store and the model; never to the handle, the actor or the
//! attempts.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::Config;
use crate::model::{
    EventCategory, JsonObject, LogLevel, PerformanceMetric, RuntimeEvent, TaskPriority,
    WorkflowExecution,
};
use crate::runtime::RuntimeError;
use crate::runtime::bus::{Commit, EventContext};
use crate::runtime::pending::PendingWrites;
use crate::runtime::tasks::TaskRegistry;
use crate::store::{Changes, NewExecutionRecord, Store};

use super::pool::Pool;

/// Settings the executor reads from the configuration once.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Most executions waiting in the runtime's queue.
    pub max_queue_len: usize,
    /// Most executions handed to backends at once.
    pub max_concurrent: usize,
    /// Running-time limit of an execution that sets none.
    pub default_timeout: Duration,
    /// Back-off before the first retry.
    pub retry_delay: Duration,
    /// Longest back-off between retries.
    pub retry_max_delay: Duration,
    /// Silence about a prompt after which its backend is asked where it is.
    pub stall_timeout: Duration,
    /// Time between two probes of a backend.
    pub probe_interval: Duration,
    /// Where artifacts are written, one folder per execution.
    pub artifact_dir: PathBuf,
    /// Largest accepted `workflow_json`, in bytes.
    pub max_workflow_bytes: usize,
    /// Most nodes accepted in one workflow.
    pub max_workflow_nodes: usize,
    /// How devices and GPU memory steer placement (`[executor]`).
    pub gpu_policy: crate::runtime::scheduler::GpuPolicy,
    /// Most prompts handed to one backend at once.
    pub pipeline_depth: usize,
}

impl Settings {
    /// The settings of `config`.
    pub(super) fn from_config(config: &Config) -> Self {
        Self {
            max_queue_len: config.scheduling.max_queue_len,
            max_concurrent: config.runtime.max_concurrent_tasks,
            default_timeout: config.runtime.task_timeout(),
            retry_delay: config.runtime.task_retry_delay(),
            retry_max_delay: config.scheduling.retry_max_delay(),
            stall_timeout: config.scheduling.stall_timeout(),
            probe_interval: config.scheduling.probe_interval(),
            artifact_dir: config.artifact_dir(),
            max_workflow_bytes: config.scheduling.max_workflow_bytes,
            max_workflow_nodes: config.scheduling.max_workflow_nodes,
            gpu_policy: crate::runtime::scheduler::GpuPolicy {
                enable_gpu: config.executor.enable_gpu,
                prefer_gpu_types: config.executor.prefer_gpu_types.clone(),
                gpu_memory_fraction: config.executor.gpu_memory_fraction,
            },
            pipeline_depth: config.scheduling.backend_pipeline_depth,
        }
    }
}

/// The runtime's load as the actor last published it, read without a round
/// trip to the actor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// Executions waiting in the runtime's queue, one entry per priority,
    /// CRITICAL first (empty until the actor first publishes).
    pub queued: Vec<(TaskPriority, usize)>,
    /// Executions handed to each backend (running or waiting in its own
    /// queue), indexed like the pool's backends.
    pub on_backend: Vec<usize>,
}

/// State shared by the handle, the actor and the attempts.
pub(crate) struct Shared {
    /// The task registry (task state changes and their events).
    pub tasks: Arc<TaskRegistry>,
    /// Where executions, tasks and prompts are kept.
    pub store: Arc<dyn Store>,
    /// See [`Settings`].
    pub settings: Settings,
    /// The backends.
    pub pool: Pool,
    /// Serialises read-modify-write of execution records.
    exec_gate: Mutex<()>,
    /// Execution records handed to the store whose write has not committed,
    /// each shared with its write (`Changes::executions`).
    pending: PendingWrites<Arc<WorkflowExecution>>,
    /// Prompts of new executions whose write has not committed.
    pending_prompts: PendingWrites<bytes::Bytes>,
    /// Executions admitted and not yet ended (bounded by max_queue_len +
    /// max_concurrent_tasks).
    pub backlog: AtomicUsize,
    /// Recent execution durations in seconds, for the retry-after hint.
    recent: Mutex<Vec<f64>>,
    /// The load the actor last published.
    load: Mutex<LoadSnapshot>,
}

impl Shared {
    /// Shared state over `tasks`, `store` and `pool`, nothing admitted yet.
    pub(super) fn new(
        tasks: Arc<TaskRegistry>,
        store: Arc<dyn Store>,
        settings: Settings,
        pool: Pool,
    ) -> Self {
        Self {
            tasks,
            store,
            settings,
            pool,
            exec_gate: Mutex::new(()),
            pending: PendingWrites::keeping(|execution: &Arc<WorkflowExecution>| {
                execution.status() == crate::model::TaskStatus::Running
            }),
            pending_prompts: PendingWrites::default(),
            backlog: AtomicUsize::new(0),
            recent: Mutex::new(Vec::new()),
            load: Mutex::new(LoadSnapshot::default()),
        }
    }

    /// The load the actor last published.
    pub(crate) fn load(&self) -> LoadSnapshot {
        self.load
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the published load (the actor, after each message).
    pub(crate) fn set_load(&self, load: LoadSnapshot) {
        *self.load.lock().unwrap_or_else(PoisonError::into_inner) = load;
    }

    /// Stores a new execution (its record, tasks, prompt and CREATED
    /// events) as one write, without waiting for it: read through the
    /// pending writes until it commits.
    pub(crate) fn create_execution(&self, mut record: NewExecutionRecord) {
        if !record.execution.tasks.is_empty() {
            Arc::make_mut(&mut record.execution).tasks = Vec::new();
        }
        let id = record.execution.id.clone();
        let forget_execution = self
            .pending
            .insert(id.clone(), Arc::clone(&record.execution));
        let forget_prompt = self.pending_prompts.insert(id, record.prompt.clone());
        self.tasks.create_execution(
            record,
            Box::new(move || {
                forget_execution();
                forget_prompt();
            }),
        );
    }

    /// An execution's prompt as stored: the one waiting for its commit,
    /// else the store's.
    pub(crate) fn execution_prompt(&self, id: &str) -> Result<Option<bytes::Bytes>, RuntimeError> {
        match self.pending_prompts.get(id) {
            Some(prompt) => Ok(Some(prompt)),
            None => Ok(self.store.execution_prompt(id)?),
        }
    }

    /// Remembers `execution` as just stored (by a write the caller waited
    /// for), so that the next read-modify-write starts from it, not from the
    /// store; the returned closure forgets it unless a newer write came since.
    pub(crate) fn remember_execution(
        &self,
        execution: &Arc<WorkflowExecution>,
    ) -> Box<dyn FnOnce() + Send> {
        self.pending
            .insert(execution.id.clone(), Arc::clone(execution))
    }

    /// Read-modify-write of one execution record under the gate; the write
    /// is not waited for (it commits with the next group).
    pub(crate) fn update_execution<F>(
        &self,
        id: &str,
        change: F,
    ) -> Result<Arc<WorkflowExecution>, RuntimeError>
    where
        F: FnOnce(&mut WorkflowExecution) -> Result<(), RuntimeError>,
    {
        self.update_execution_then(id, change)
            .map(|(execution, _)| execution)
    }

    /// [`Shared::update_execution`], with the write to wait for (`None`
    /// when nothing changed).
    pub(crate) fn update_execution_then<F>(
        &self,
        id: &str,
        change: F,
    ) -> Result<(Arc<WorkflowExecution>, Option<Commit>), RuntimeError>
    where
        F: FnOnce(&mut WorkflowExecution) -> Result<(), RuntimeError>,
    {
        self.change_execution(id, |_| false, change, true)
    }

    /// A running execution's progress, `overall`, when it is more than the
    /// execution has (progress never goes backwards within an execution's
    /// life). With `record` false the execution's record is left alone: its
    /// new state is kept in memory, stored by the execution's next write, and
    /// read meanwhile by readers of durable state (`durable_state`); it is
    /// durable once the thread's batch, which carries the node's progress
    /// event, commits.
    pub(crate) fn execution_progress(
        &self,
        id: &str,
        overall: f64,
        record: bool,
    ) -> Result<(), RuntimeError> {
        self.change_execution(
            id,
            // Most reports do not raise it (a node's start, a step of a later node that
            // weighs less): they copy nothing. Not a number raises nothing either.
            |execution| {
                overall.partial_cmp(&execution.progress()) != Some(std::cmp::Ordering::Greater)
            },
            |execution| execution.set_progress(overall).map_err(RuntimeError::from),
            record,
        )
        .map(drop)
    }

    /// Read-modify-write of an execution under the gate; see
    /// [`Shared::update_execution_then`] and, for `record`,
    /// [`Shared::execution_progress`] (the record is written anyway unless
    /// the execution is running: the cache keeps only a running one). When
    /// `unchanged` says of the current state that `change` would leave it as
    /// it is, nothing is copied or written.
    fn change_execution<F>(
        &self,
        id: &str,
        unchanged: impl FnOnce(&WorkflowExecution) -> bool,
        change: F,
        record: bool,
    ) -> Result<(Arc<WorkflowExecution>, Option<Commit>), RuntimeError>
    where
        F: FnOnce(&mut WorkflowExecution) -> Result<(), RuntimeError>,
    {
        let _gate = self
            .exec_gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = self
            .latest_execution(id)?
            .ok_or_else(|| RuntimeError::execution_not_found(id))?;
        if unchanged(&before) {
            return Ok((before, None));
        }
        let mut execution = WorkflowExecution::clone(&before);
        change(&mut execution)?;
        if execution == *before {
            return Ok((before, None));
        }
        let execution = Arc::new(execution);
        let record = record || execution.status() != crate::model::TaskStatus::Running;
        let forget = self
            .pending
            .insert_with(id.to_owned(), Arc::clone(&execution), record);
        // Without its record the write is empty: the forget runs with the writes gathered
        // around it.
        let executions = if record {
            vec![Arc::clone(&execution)]
        } else {
            Vec::new()
        };
        let commit = self.tasks.bus().commit_then(
            Changes {
                executions,
                ..Changes::default()
            },
            Vec::new(),
            Some(forget),
        );
        Ok((execution, Some(commit)))
    }

    /// `execution` as read from the store, or the newer durable state that
    /// progress left in memory (see [`Shared::execution_progress`]).
    pub(crate) fn durable_state(&self, execution: WorkflowExecution) -> WorkflowExecution {
        match self.pending.get_committed(&execution.id) {
            Some(newer) => WorkflowExecution::clone(&newer),
            None => execution,
        }
    }

    /// The newest state of an execution record: the one waiting for its
    /// commit, else the stored one.
    pub(crate) fn latest_execution(
        &self,
        id: &str,
    ) -> Result<Option<Arc<WorkflowExecution>>, RuntimeError> {
        match self.pending.get(id) {
            Some(execution) => Ok(Some(execution)),
            None => Ok(self.store.get_execution(id)?.map(Arc::new)),
        }
    }

    /// A runtime event, or `None` (logged) when its fields are invalid.
    pub(crate) fn runtime_event_value(
        &self,
        category: EventCategory,
        level: LogLevel,
        event_type: &str,
        message: String,
        data: JsonObject,
        error_type: Option<String>,
    ) -> Option<RuntimeEvent> {
        match RuntimeEvent::new(category, event_type, message) {
            Ok(event) => {
                let mut event = event.with_level(level);
                event.data = data;
                event.source_module = Some("executor".into());
                if let Some(error_type) = error_type {
                    event.error_message = Some(event.message.clone());
                    event.error_type = Some(error_type);
                }
                Some(event)
            }
            Err(error) => {
                tracing::error!(%error, event_type, "runtime event not built");
                None
            }
        }
    }

    /// Publishes (and logs) a runtime event.
    pub(crate) fn runtime_event(
        &self,
        category: EventCategory,
        level: LogLevel,
        event_type: &str,
        message: String,
        data: JsonObject,
        context: EventContext,
    ) {
        if let Some(mut event) =
            self.runtime_event_value(category, level, event_type, message, data, None)
        {
            event.task_id.clone_from(&context.task_id);
            event.workflow_id.clone_from(&context.workflow_id);
            self.tasks.bus().publish_runtime(event, context);
        }
    }

    /// Publishes (and logs) a performance metric.
    pub(crate) fn metric(
        &self,
        name: &str,
        value: f64,
        unit: &str,
        context: EventContext,
        tags: &[(&str, &str)],
    ) {
        match PerformanceMetric::new(name, value, unit) {
            Ok(mut metric) => {
                metric.task_id.clone_from(&context.task_id);
                metric.workflow_id.clone_from(&context.workflow_id);
                if let Some(execution) = &context.execution_id {
                    metric.tags.insert("execution_id".into(), execution.clone());
                }
                for (key, value) in tags {
                    metric.tags.insert((*key).to_owned(), (*value).to_owned());
                }
                self.tasks.bus().publish_metric(metric, context);
            }
            Err(error) => tracing::debug!(%error, name, "metric not published"),
        }
    }

    /// Remembers an execution's duration (the last 32) for the retry-after hint.
    pub(crate) fn record_duration(&self, seconds: f64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == 32 {
            recent.remove(0);
        }
        recent.push(seconds);
    }

    /// How long a client refused for a full queue should wait: the mean
    /// recent duration over the backends up, from 1 to 60 seconds.
    pub(super) fn retry_after(&self) -> Duration {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let mean = if recent.is_empty() {
            5.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        };
        let up = self
            .pool
            .backends()
            .iter()
            .filter(|b| b.read_state(|state| state.up))
            .count()
            .max(1) as f64;
        Duration::from_secs_f64((mean / up).clamp(1.0, 60.0))
    }
}
