//! The task registry: creates client-reported tasks, applies the progress and
//! status they report through the task state machine, cancels and retries.
//! Every read-modify-write of a task runs under one write gate, so two
//! concurrent updates of one task cannot lose each other's changes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::mpsc;

use crate::model::{
    DependencyType, JsonObject, NewTask, Task, TaskDependency, TaskEvent, TaskEventType,
    TaskPriority, TaskStatus, TaskType, ValidationError,
};
use crate::store::{
    Changes, CreateOutcome, IdempotencyKey, NewExecutionRecord, Page, Store, StoreError, TaskFilter,
};

use super::bus::{After, Commit, EventBus, EventContext, EventPayload};
use super::fingerprint::Fingerprint;
use super::pending::PendingWrites;
use super::{ObjectKind, RuntimeError};
use crate::model::FastMap;

/// Most tasks one CancelTask call cancels, its own descendants included;
/// bounds the work of one call on a pathological tree.
pub const MAX_CANCEL_CASCADE: usize = 10_000;

/// The metadata keys of a NODE task that its events carry in their data.
const NODE_IDENTITY: [&str; 2] = ["node_id", "class_type"];

/// A validated CreateTask request, in domain terms.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskRequest {
    /// Task name (validated by the model).
    pub name: String,
    /// Task type; the seed's default is NODE.
    pub task_type: TaskType,
    /// Priority; the seed's default is NORMAL.
    pub priority: TaskPriority,
    /// Ids of tasks this one requires.
    pub dependencies: Vec<String>,
    /// Free-form metadata.
    pub metadata: JsonObject,
    /// Optional description.
    pub description: Option<String>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Retries allowed.
    pub max_retries: u32,
    /// Time limit in seconds.
    pub timeout_seconds: Option<f64>,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// Who creates it; `None` without authentication. Its `request_id` is scoped to the
    /// tenant.
    pub ownership: Option<crate::model::Ownership>,
}

impl NewTaskRequest {
    fn fingerprint(&self) -> String {
        let mut fp = Fingerprint::default()
            .field(self.name.as_bytes())
            .field(self.task_type.as_str().as_bytes())
            .field(self.priority.as_str().as_bytes());
        for dep in &self.dependencies {
            fp = fp.field(dep.as_bytes());
        }
        fp = fp
            .field(
                serde_json::Value::Object(self.metadata.clone())
                    .to_string()
                    .as_bytes(),
            )
            .field(self.description.as_deref().unwrap_or("\0none").as_bytes());
        for tag in &self.tags {
            fp = fp.field(tag.as_bytes());
        }
        fp.field(self.parent_id.as_deref().unwrap_or("\0none").as_bytes())
            .field(&self.max_retries.to_le_bytes())
            .field(&self.timeout_seconds.unwrap_or(-1.0).to_le_bytes())
            .finish()
    }
}

/// What a client reports about a task it performs; `None` leaves a field as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressUpdate {
    /// Completion fraction.
    pub progress: Option<f64>,
    /// What the task is doing now.
    pub progress_message: Option<String>,
    /// New status.
    pub status: Option<TaskStatus>,
    /// Result (any JSON value).
    pub result: Option<serde_json::Value>,
    /// Error message (only with FAILED).
    pub error: Option<String>,
    /// Error class (only with FAILED).
    pub error_type: Option<String>,
}

/// What a task's events are about: the execution and workflow named in its
/// metadata (set on an execution's tasks), its tags, whether it is a node.
pub(crate) fn task_context(task: &Task) -> EventContext {
    let text = |key: &str| {
        task.metadata
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    EventContext {
        task_id: Some(task.id.clone()),
        execution_id: text("execution_id"),
        workflow_id: text("workflow_id"),
        tags: task.tags.iter().cloned().collect(),
        node: task.task_type == TaskType::Node,
    }
}

/// Waits for every write in `commits`, blocking the thread (for calls that
/// run on a blocking thread); the first failure is returned.
fn wait_all(commits: Vec<Commit>) -> Result<(), RuntimeError> {
    let mut first = Ok(());
    for commit in commits {
        if let Err(error) = commit.wait()
            && first.is_ok()
        {
            first = Err(error.into());
        }
    }
    first
}

/// [`wait_all`] without holding the thread: the async thread serves other
/// calls meanwhile, and the writes of calls waiting together commit together.
async fn committed_all(commits: Vec<Commit>) -> Result<(), RuntimeError> {
    let mut first = Ok(());
    for commit in commits {
        if let Err(error) = commit.committed().await
            && first.is_ok()
        {
            first = Err(error.into());
        }
    }
    first
}

/// See the module docs.
pub struct TaskRegistry {
    /// Where tasks live.
    store: Arc<dyn Store>,
    /// Serialises read-modify-write of tasks; held only around synchronous
    /// store calls, never across an await, and never while waiting for a
    /// commit.
    write_gate: Mutex<()>,
    /// Task states handed to the store whose write has not committed yet;
    /// read-modify-write and the executor read through it. Each state is
    /// shared with its write (`Changes::tasks`), not copied for it.
    pending: PendingWrites<Arc<Task>>,
    /// Where every task event goes.
    bus: EventBus,
    /// Told the id of every task that reaches a terminal state (the
    /// executor resolves dependencies from it).
    ended: OnceLock<mpsc::UnboundedSender<String>>,
    /// Task id -> the tasks that declared they block it (BLOCKS dependencies).
    holds: Mutex<FastMap<String, Vec<String>>>,
    /// Task id -> the tasks waiting for it to end, with how they wait
    /// (a hold is recorded as OPTIONAL: the held task waits for any end).
    dependents: Mutex<FastMap<String, Vec<(String, DependencyType)>>>,
}

impl TaskRegistry {
    /// A registry over `store` that publishes to `bus`.
    pub fn new(store: Arc<dyn Store>, bus: EventBus) -> Self {
        Self {
            store,
            write_gate: Mutex::new(()),
            pending: PendingWrites::keeping(|task: &Arc<Task>| task_is_live(task)),
            bus,
            ended: OnceLock::new(),
            holds: Mutex::new(FastMap::default()),
            dependents: Mutex::new(FastMap::default()),
        }
    }

    /// Rebuilds the dependency indices from the store's unfinished tasks
    /// (after a restart: only tasks still waiting need them).
    pub(crate) fn rebuild_indices(&self) -> Result<(), RuntimeError> {
        let filter = TaskFilter {
            statuses: vec![
                TaskStatus::Pending,
                TaskStatus::Queued,
                TaskStatus::Running,
                TaskStatus::Retrying,
            ],
            ..TaskFilter::default()
        };
        let mut after = None;
        loop {
            let page = self.store.list_tasks(&filter, after, 1000)?;
            for task in &page.items {
                for dep in &task.dependencies {
                    match dep.dependency_type {
                        DependencyType::Blocks => {
                            self.add_hold(&dep.task_id, &task.id);
                            self.add_dependent(&task.id, &dep.task_id, DependencyType::Optional);
                        }
                        kind => self.add_dependent(&dep.task_id, &task.id, kind),
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Records that `waiter` waits for `dependency` to end, as `kind`.
    pub(crate) fn add_dependent(&self, dependency: &str, waiter: &str, kind: DependencyType) {
        self.dependents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(dependency.to_owned())
            .or_default()
            .push((waiter.to_owned(), kind));
    }

    /// The tasks waiting for `dependency`, with how they wait, forgotten from the index: called
    /// once `dependency` ended, when each of them is resolved (released, cancelled, or left to
    /// read the dependency's state when it is admitted). A task that waits for it from then on
    /// (after a retry of it) is added anew. Without this the index kept every dependency ever
    /// declared until the next restart.
    pub(crate) fn take_dependents(&self, dependency: &str) -> Vec<(String, DependencyType)> {
        self.dependents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(dependency)
            .unwrap_or_default()
    }

    /// How many tasks the dependency index holds waiters for.
    #[cfg(test)]
    pub(crate) fn indexed_dependencies(&self) -> usize {
        self.dependents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The ids `task` waits for: its REQUIRES and OPTIONAL dependencies and
    /// the tasks holding it.
    pub(crate) fn waits_on(&self, task: &Task) -> Vec<String> {
        let mut ids: Vec<String> = task
            .dependencies
            .iter()
            .filter(|dep| dep.dependency_type != DependencyType::Blocks)
            .map(|dep| dep.task_id.clone())
            .collect();
        ids.extend(self.holders(&task.id));
        ids
    }

    /// The store the registry writes to.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// Routes "task ended" notices to `sender` (set once, by the executor).
    pub(crate) fn set_ended_sender(&self, sender: mpsc::UnboundedSender<String>) {
        let _ = self.ended.set(sender);
    }

    /// Records that `blocker` holds `target` until `blocker` ends.
    pub(crate) fn add_hold(&self, target: &str, blocker: &str) {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target.to_owned())
            .or_default()
            .push(blocker.to_owned());
    }

    /// The tasks that hold `target` (BLOCKS dependencies declared on it).
    pub(crate) fn holders(&self, target: &str) -> Vec<String> {
        self.holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .cloned()
            .unwrap_or_default()
    }

    /// What `task` still waits for: REQUIRES dependencies not COMPLETED,
    /// OPTIONAL ones not ended, and tasks holding it that have not ended;
    /// each as "<id> (<reason>)".
    pub(crate) fn unmet_dependencies(&self, task: &Task) -> Result<Vec<String>, RuntimeError> {
        let mut unmet = Vec::new();
        for dep in &task.dependencies {
            let status = self.latest(&dep.task_id)?.map(|t| t.status());
            match dep.dependency_type {
                DependencyType::Requires if status != Some(TaskStatus::Completed) => {
                    unmet.push(format!("{} (required, not completed)", dep.task_id));
                }
                DependencyType::Optional if !status.is_some_and(TaskStatus::is_terminal) => {
                    unmet.push(format!("{} (optional, not ended)", dep.task_id));
                }
                _ => {}
            }
        }
        for holder in self.holders(&task.id) {
            let status = self.latest(&holder)?.map(|t| t.status());
            if !status.is_some_and(TaskStatus::is_terminal) {
                unmet.push(format!("{holder} (blocks this task, not ended)"));
            }
        }
        Ok(unmet)
    }

    /// The event for `task` having entered its status, with its message.
    fn transition_event(task: &Task) -> Option<TaskEvent> {
        let mut event = TaskEvent::for_transition(task)?;
        event.source = Some("runtime".into());
        event.message = task.error.clone().or_else(|| task.progress_message.clone());
        let identity = Self::node_identity(task);
        event.data = Self::event_data(task, 1 + usize::from(task.error_type.is_some()), &identity);
        if let Some(error_type) = &task.error_type {
            event.data.insert(
                "error_type".into(),
                serde_json::Value::from(error_type.clone()),
            );
        }
        event.data.insert(
            "status".into(),
            serde_json::Value::from(task.status().as_str()),
        );
        Self::add_lineage(task, identity, &mut event);
        Some(event)
    }

    /// A NODE task's events say which node it is (`node_id`, `class_type`),
    /// so that a watcher needs no lookup: the values in `task`'s metadata
    /// (none for other tasks), looked up once for an event.
    fn node_identity(task: &Task) -> [(&'static str, Option<&serde_json::Value>); 2] {
        NODE_IDENTITY.map(|key| (key, task.metadata.get(key)))
    }

    /// Adds to an event's data what every event of `task` carries after its
    /// own entries: the task's `parent_id`, then its
    /// [`node_identity`](Self::node_identity).
    fn add_lineage(
        task: &Task,
        identity: [(&'static str, Option<&serde_json::Value>); 2],
        event: &mut TaskEvent,
    ) {
        if let Some(parent) = &task.parent_id {
            event
                .data
                .insert("parent_id".into(), serde_json::Value::from(parent.clone()));
        }
        for (key, value) in identity {
            if let Some(value) = value {
                event.data.insert(key.into(), value.clone());
            }
        }
    }

    /// An empty `data` for an event of `task` with room for exactly its
    /// entries: `own` of the event's own, then `parent_id` and the node's
    /// `identity` when the task has them. Events are kept (the bus's window,
    /// the memory store), and a map grown an entry at a time has room for up
    /// to twice what it holds (a one-entry map, three entries of 104 bytes).
    fn event_data(
        task: &Task,
        own: usize,
        identity: &[(&'static str, Option<&serde_json::Value>); 2],
    ) -> JsonObject {
        let identity = identity.iter().filter(|(_, value)| value.is_some()).count();
        JsonObject::with_capacity(own + usize::from(task.parent_id.is_some()) + identity)
    }

    /// Stores `task` (changed from `before`) and announces it: a transition
    /// event when its status changed, else a progress event when its progress
    /// or message changed; a "task ended" notice when it became terminal.
    /// The task and its event are one write; the caller decides whether to
    /// wait for it (a client's call does, the executor does not).
    fn save(&self, task: &Task, before: &Task) -> Commit {
        self.save_with(Arc::new(task.clone()), before, None, true)
    }

    /// [`TaskRegistry::save`], with `extra` merged into the data of a
    /// progress event (a node's step `value` and `max`). With `record`
    /// false and only the progress changed on a live task, the write carries
    /// the event alone: the task's record stays as it is, its new state is
    /// kept in `pending` (read by the next change and by readers of durable
    /// state, see [`PendingWrites::get_committed`]) and stored by the
    /// task's next write.
    fn save_with(
        &self,
        task: Arc<Task>,
        before: &Task,
        extra: Option<&JsonObject>,
        record: bool,
    ) -> Commit {
        let record = record || task.status() != before.status() || !task_is_live(&task);
        // At most one event: a transition, else a change of progress.
        let event = if task.status() != before.status() {
            Self::transition_event(&task)
        } else if task.progress() != before.progress()
            || task.progress_message != before.progress_message
        {
            let mut event = TaskEvent::new(task.id.clone(), TaskEventType::Progress);
            event.source = Some("runtime".into());
            event.message = task.progress_message.clone();
            let identity = Self::node_identity(&task);
            event.data = Self::event_data(&task, 1 + extra.map_or(0, JsonObject::len), &identity);
            event
                .data
                .insert("progress".into(), serde_json::Value::from(task.progress()));
            Self::add_lineage(&task, identity, &mut event);
            if let Some(extra) = extra {
                for (key, value) in extra {
                    event.data.insert(key.clone(), value.clone());
                }
            }
            Some(event)
        } else {
            None
        };
        // The event's context made for it alone (not made for a write without an event).
        let events = event.map_or_else(Vec::new, |event| {
            vec![(EventPayload::Task(event), task_context(&task))]
        });
        let forget = self
            .pending
            .insert_with(task.id.clone(), Arc::clone(&task), record);
        let tasks = if record {
            vec![Arc::clone(&task)]
        } else {
            Vec::new()
        };
        let commit = self.bus.commit_then(
            Changes {
                tasks,
                ..Changes::default()
            },
            events,
            Some(forget),
        );
        if task.status() != before.status() && task.status().is_terminal() {
            crate::telemetry::metrics::task_finished(
                task.task_type.as_str(),
                task.status().as_str(),
                task.metrics.duration_seconds(),
            );
            if let Some(ended) = self.ended.get() {
                let _ = ended.send(task.id.clone());
            }
        }
        commit
    }

    /// Remembers `task` as just stored (by a write the caller waited for),
    /// so that the next read-modify-write starts from it, not from the
    /// store; the returned closure forgets it unless a newer write came since.
    pub(crate) fn remember(&self, task: &Arc<Task>) -> Box<dyn FnOnce() + Send> {
        self.pending.insert(task.id.clone(), Arc::clone(task))
    }

    /// The newest state of a task: the one waiting for its commit, else the
    /// stored one. The executor and read-modify-write read through this.
    pub(crate) fn latest(&self, id: &str) -> Result<Option<Arc<Task>>, RuntimeError> {
        match self.pending.get(id) {
            Some(task) => Ok(Some(task)),
            None => Ok(self.store.get_task(id)?.map(Arc::new)),
        }
    }

    /// [`TaskRegistry::latest`], NOT_FOUND when there is none.
    fn latest_or_not_found(&self, id: &str) -> Result<Arc<Task>, RuntimeError> {
        self.latest(id)?
            .ok_or_else(|| RuntimeError::task_not_found(id))
    }

    /// Read-modify-write of one task under the write gate: `change` edits it,
    /// then it is stored and announced (see [`TaskRegistry::save`]). When
    /// `change` fails nothing is stored.
    pub(crate) fn update<F>(&self, id: &str, change: F) -> Result<(), RuntimeError>
    where
        F: FnOnce(&mut Task) -> Result<(), RuntimeError>,
    {
        self.update_with_event_data(id, change, None, true)
    }

    /// [`TaskRegistry::update`]; when it produces a progress event, `extra`
    /// is merged into the event's data. With `record` false a change of
    /// progress alone is written as its event, the record left for the
    /// task's next write (see [`TaskRegistry::save_with`]).
    pub(crate) fn update_with_event_data<F>(
        &self,
        id: &str,
        change: F,
        extra: Option<&JsonObject>,
        record: bool,
    ) -> Result<(), RuntimeError>
    where
        F: FnOnce(&mut Task) -> Result<(), RuntimeError>,
    {
        let _gate = self.gate()?;
        let before = self.latest_or_not_found(id)?;
        let mut task = Task::clone(&before);
        change(&mut task)?;
        if task != *before {
            // The executor does not wait: the write commits with others,
            // and its event is announced once it has.
            drop(self.save_with(Arc::new(task), &before, extra, record));
        }
        Ok(())
    }

    /// Stores the NODE tasks of an execution and their CREATED events as
    /// one write, without waiting for it (they are read through
    /// [`TaskRegistry::latest`] until it commits).
    pub(crate) fn create_execution_tasks(&self, execution_id: &str, tasks: Vec<Arc<Task>>) {
        let (forget, events) = self.creating(&tasks);
        drop(self.bus.commit_then(
            Changes {
                new_execution_tasks: Some((execution_id.to_owned(), tasks)),
                ..Changes::default()
            },
            events,
            Some(Box::new(move || forget.into_iter().for_each(|f| f()))),
        ));
    }

    /// Stores a new execution with its tasks and their CREATED events as
    /// one write, without waiting for it (the tasks are read through
    /// [`TaskRegistry::latest`] until it commits; `after` runs then too).
    pub(crate) fn create_execution(&self, record: NewExecutionRecord, after: After) {
        let (forget, events) = self.creating(&record.tasks);
        drop(self.bus.commit_then(
            Changes {
                new_executions: vec![record],
                ..Changes::default()
            },
            events,
            Some(Box::new(move || {
                forget.into_iter().for_each(|f| f());
                after();
            })),
        ));
    }

    /// What a write creating `tasks` carries besides them: their pending
    /// states, read until it commits (the returned calls forget them), and their
    /// CREATED events; the tasks are counted as submitted.
    fn creating(&self, tasks: &[Arc<Task>]) -> (Vec<After>, Vec<(EventPayload, EventContext)>) {
        let forget = tasks
            .iter()
            .map(|task| self.pending.insert(task.id.clone(), Arc::clone(task)))
            .collect();
        let events = tasks
            .iter()
            .map(|task| {
                crate::telemetry::metrics::task_submitted(task.task_type.as_str());
                (
                    EventPayload::Task(Self::created_event(task)),
                    task_context(task),
                )
            })
            .collect();
        (forget, events)
    }

    /// A task's CREATED event.
    fn created_event(task: &Task) -> TaskEvent {
        let mut event = TaskEvent::new(task.id.clone(), TaskEventType::Created);
        event.source = Some("runtime".into());
        let identity = Self::node_identity(task);
        event.data = Self::event_data(task, 1, &identity);
        event.data.insert(
            "type".into(),
            serde_json::Value::from(task.task_type.as_str()),
        );
        Self::add_lineage(task, identity, &mut event);
        event
    }

    /// Announces tasks just stored by someone else (an execution's tasks):
    /// one CREATED event each.
    pub(crate) fn announce_created(&self, tasks: &[Task]) {
        for task in tasks {
            crate::telemetry::metrics::task_submitted(task.task_type.as_str());
        }
        let events = tasks
            .iter()
            .map(|task| {
                (
                    EventPayload::Task(Self::created_event(task)),
                    task_context(task),
                )
            })
            .collect();
        drop(self.bus.commit(Changes::default(), events));
    }

    fn gate(&self) -> Result<MutexGuard<'_, ()>, RuntimeError> {
        self.write_gate
            .lock()
            .map_err(|_| StoreError::Unavailable("task write gate poisoned".into()).into())
    }

    /// Creates a task in PENDING. Dependencies and the parent must exist.
    /// Blocks until the store committed it (a write of its own): call it off
    /// the async thread, as `Runtime::create_task` does.
    pub fn create(&self, request: NewTaskRequest) -> Result<Task, RuntimeError> {
        let fingerprint = request.fingerprint();
        let mut violations = ValidationError::default();
        let gate = self.gate()?;
        if let Some(parent) = &request.parent_id
            && self.store.get_task(parent)?.is_none()
        {
            violations.push("parent_id", format!("task {parent} not found"));
        }
        for (i, dep) in request.dependencies.iter().enumerate() {
            if dep.trim().is_empty() {
                violations.push(format!("dependencies[{i}]"), "must not be empty");
            } else if self.store.get_task(dep)?.is_none() {
                violations.push(
                    format!("dependencies[{i}]"),
                    format!("task {dep} not found"),
                );
            }
        }
        let task = Task::new(NewTask {
            id: None,
            task_type: request.task_type,
            name: request.name.clone(),
            priority: request.priority,
            description: request.description.clone(),
            tags: request.tags.iter().cloned().collect(),
            parent_id: request.parent_id.clone(),
            dependencies: request
                .dependencies
                .iter()
                .map(|id| TaskDependency {
                    task_id: id.clone(),
                    dependency_type: DependencyType::Requires,
                })
                .collect(),
            max_retries: request.max_retries,
            timeout_seconds: request.timeout_seconds,
            metadata: request.metadata.clone(),
        });
        let task = match task {
            Ok(task) if violations.is_empty() => task,
            Ok(_) => return Err(violations.into()),
            Err(mut model_violations) => {
                model_violations.violations.extend(violations.violations);
                return Err(model_violations.into());
            }
        };
        let mut task = task;
        task.ownership = request.ownership.clone();
        let key = request.request_id.map(|key| IdempotencyKey {
            key: super::executor::scoped_key(&key, request.ownership.as_ref()),
            fingerprint,
        });
        match self.store.create_task(task, key)? {
            CreateOutcome::Created(task) => {
                tracing::info!(task_id = %task.id, name = ?task.name, "task created");
                for dep in &task.dependencies {
                    self.add_dependent(&dep.task_id, &task.id, dep.dependency_type);
                }
                self.announce_created(std::slice::from_ref(&task));
                // A dependency that already failed or was cancelled can never
                // complete: the new task is cancelled at once, as it would
                // have been had it existed when the dependency ended.
                for dep in &task.dependencies {
                    if let Some(ended) = self.latest(&dep.task_id)?
                        && matches!(ended.status(), TaskStatus::Failed | TaskStatus::Cancelled)
                    {
                        let mut task = task.clone();
                        let reason = format!(
                            "required dependency {} is {}",
                            dep.task_id,
                            ended.status().as_str()
                        );
                        let commits = self.cancel_tree(&mut task, Some(reason))?;
                        drop(gate);
                        wait_all(commits)?;
                        return Ok(task);
                    }
                }
                Ok(task)
            }
            CreateOutcome::Existing {
                task,
                same_body: true,
            } => Ok(task),
            CreateOutcome::Existing {
                task,
                same_body: false,
            } => Err(RuntimeError::AlreadyExists {
                kind: ObjectKind::Task,
                id: task.id,
                reason: "request_id was used before with a different request".into(),
            }),
        }
    }

    /// One task, as durable: its record, or the newer state a running
    /// node's progress step left in memory (a step writes its event alone).
    pub fn get(&self, id: &str) -> Result<Task, RuntimeError> {
        if let Some(task) = self.pending.get_committed(id) {
            return Ok(Arc::unwrap_or_clone(task));
        }
        self.store
            .get_task(id)?
            .ok_or_else(|| RuntimeError::task_not_found(id))
    }

    /// `tasks` read from the store, each replaced by the newer durable state
    /// a progress step left in memory, if any.
    pub(crate) fn durable_states(&self, tasks: &mut [Task]) {
        for task in tasks {
            if let Some(newer) = self.pending.get_committed(&task.id) {
                *task = Arc::unwrap_or_clone(newer);
            }
        }
    }

    /// A page of tasks in creation order.
    pub fn list(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, RuntimeError> {
        let mut page = self.store.list_tasks(filter, after, limit)?;
        self.durable_states(&mut page.items);
        Ok(page)
    }

    /// Applies a client's report to its task; answers once it is durable,
    /// without holding the thread while its write commits.
    pub async fn update_progress(
        &self,
        id: &str,
        update: ProgressUpdate,
    ) -> Result<Task, RuntimeError> {
        let (task, commit) = self.apply_progress(id, update)?;
        commit.committed().await?;
        Ok(Arc::unwrap_or_clone(task))
    }

    /// [`TaskRegistry::update_progress`] up to its write, under the write gate.
    fn apply_progress(
        &self,
        id: &str,
        update: ProgressUpdate,
    ) -> Result<(Arc<Task>, Commit), RuntimeError> {
        let failing = update.status == Some(TaskStatus::Failed);
        let mut violations = ValidationError::default();
        if update.error.is_some() && !failing {
            violations.push("error", "an error can only be reported with status FAILED");
        }
        if update.error_type.is_some() && !failing {
            violations.push(
                "error_type",
                "an error type can only be reported with status FAILED",
            );
        }
        if !violations.is_empty() {
            return Err(violations.into());
        }
        let gate = self.gate()?;
        let before = self.latest_or_not_found(id)?;
        let mut task = Task::clone(&before);
        if matches!(
            update.status,
            Some(TaskStatus::Queued | TaskStatus::Running | TaskStatus::Completed)
        ) && task.status() == TaskStatus::Pending
        {
            let unmet = self.unmet_dependencies(&task)?;
            if !unmet.is_empty() {
                return Err(RuntimeError::FailedPrecondition {
                    kind: ObjectKind::Task,
                    id: id.to_owned(),
                    reason: format!("task waits for its dependencies: {}", unmet.join(", ")),
                });
            }
        }
        if task.status().is_terminal() {
            return Err(RuntimeError::FailedPrecondition {
                kind: ObjectKind::Task,
                id: id.to_owned(),
                reason: format!(
                    "task is {} and can no longer change",
                    task.status().as_str()
                ),
            });
        }
        if let Some(progress) = update.progress {
            task.set_progress(progress)?;
        }
        if update.status == Some(TaskStatus::Retrying)
            && task.status() != TaskStatus::Retrying
            && !task.retries_left()
        {
            return Err(RuntimeError::FailedPrecondition {
                kind: ObjectKind::Task,
                id: id.to_owned(),
                reason: format!(
                    "no retries left ({} of {} used)",
                    task.retry_count, task.max_retries
                ),
            });
        }
        if let Some(status) = update.status.filter(|s| *s != task.status()) {
            task.transition(status)
                .map_err(|source| RuntimeError::IllegalTransition {
                    task_id: id.to_owned(),
                    source,
                })?;
        }
        if let Some(message) = update.progress_message {
            task.progress_message = Some(message);
        }
        if let Some(result) = update.result {
            task.result = Some(result);
        }
        if failing {
            task.error = update.error.or(task.error);
            task.error_type = update.error_type.or(task.error_type);
        }
        task.touch();
        let task = Arc::new(task);
        let commit = self.save_with(Arc::clone(&task), &before, None, true);
        drop(gate);
        Ok((task, commit))
    }

    /// Cancels a task and its unfinished descendants. A finished task is
    /// returned unchanged. All or nothing: a tree larger than
    /// [`MAX_CANCEL_CASCADE`] is refused before anything is cancelled.
    /// Answers once the cancellations are durable, without holding the thread.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<Task, RuntimeError> {
        let (task, commits) = self.cancel_now(id, reason)?;
        committed_all(commits).await?;
        Ok(task)
    }

    /// [`TaskRegistry::cancel`] for the executor's actor, which never waits for
    /// a commit (whoever answers a client about it waits for the store to
    /// settle): the cancellations are handed to the store, not waited for.
    pub(crate) fn cancel_unwaited(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<(), RuntimeError> {
        let (_, commits) = self.cancel_now(id, reason)?;
        drop(commits);
        Ok(())
    }

    /// [`TaskRegistry::cancel`] up to its writes, under the write gate.
    fn cancel_now(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<(Task, Vec<Commit>), RuntimeError> {
        let _gate = self.gate()?;
        let latest = self.latest_or_not_found(id)?;
        if latest.status().is_terminal() {
            return Ok((Arc::unwrap_or_clone(latest), Vec::new()));
        }
        let mut task = Arc::unwrap_or_clone(latest);
        let commits = self.cancel_tree(&mut task, reason)?;
        Ok((task, commits))
    }

    /// Cancels `task` (not terminal) and its unfinished descendants, under
    /// the gate the caller holds; returns the writes to wait for once the
    /// gate is released.
    fn cancel_tree(
        &self,
        task: &mut Task,
        reason: Option<String>,
    ) -> Result<Vec<Commit>, RuntimeError> {
        let id = task.id.clone();
        let mut descendants = Vec::new();
        let mut frontier = vec![task.id.clone()];
        while let Some(parent) = frontier.pop() {
            for child in self.store.child_ids(&parent)? {
                if descendants.len() == MAX_CANCEL_CASCADE {
                    return Err(RuntimeError::FailedPrecondition {
                        kind: ObjectKind::Task,
                        id: id.to_owned(),
                        reason: format!(
                            "task has more than {MAX_CANCEL_CASCADE} descendants; cancel its subtrees first"
                        ),
                    });
                }
                frontier.push(child.clone());
                descendants.push(child);
            }
        }
        let mut commits = vec![self.cancel_one(task, reason)?];
        for child_id in descendants {
            if let Some(child) = self.latest(&child_id)?
                && !child.status().is_terminal()
            {
                let mut child = Arc::unwrap_or_clone(child);
                commits.push(
                    self.cancel_one(&mut child, Some(format!("parent task {id} cancelled")))?,
                );
            }
        }
        Ok(commits)
    }

    fn cancel_one(&self, task: &mut Task, reason: Option<String>) -> Result<Commit, RuntimeError> {
        let before = task.clone();
        task.transition(TaskStatus::Cancelled).map_err(|source| {
            RuntimeError::IllegalTransition {
                task_id: task.id.clone(),
                source,
            }
        })?;
        if reason.is_some() {
            task.progress_message = reason;
        }
        let commit = self.save(task, &before);
        tracing::info!(task_id = %task.id, "task cancelled");
        Ok(commit)
    }

    /// Moves a failed task with retries left to RETRYING; answers once that
    /// is durable, without holding the thread.
    pub async fn retry(&self, id: &str) -> Result<Task, RuntimeError> {
        let (task, commit) = self.retry_now(id)?;
        commit.committed().await?;
        Ok(task)
    }

    /// [`TaskRegistry::retry`] up to its write, under the write gate: the
    /// write is handed to the store, not waited for.
    pub(crate) fn retry_now(&self, id: &str) -> Result<(Task, Commit), RuntimeError> {
        let _gate = self.gate()?;
        let before = self.latest_or_not_found(id)?;
        let mut task = Task::clone(&before);
        task.retry().map_err(|e| RuntimeError::FailedPrecondition {
            kind: ObjectKind::Task,
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let commit = self.save(&task, &before);
        Ok((task, commit))
    }
}

/// Whether a task stays cached after its write committed ([`PendingWrites`]): the tasks of
/// running executions, which the executor reads at each step, and running client-reported
/// tasks, whose every `UpdateTaskProgress` reads them. Queued work is not kept (a queue of a
/// million would be a million cached tasks).
fn task_is_live(task: &Task) -> bool {
    let status = task.status();
    !status.is_terminal()
        && match task.task_type {
            TaskType::Node => true,
            _ => status == TaskStatus::Running,
        }
}
