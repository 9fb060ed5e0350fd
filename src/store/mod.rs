//! The `Store` trait: where tasks, executions, events, idempotency keys and
//! registered workflows live, with its three implementations side by side:
//! `MemoryStore` (tests, throwaway runs), `SqliteStore` (durable, the
//! default) and `RedisStore` (durable in a Redis server, for replicas).
//! Implementations keep data; they never drive execution or decide state
//! changes (that is the runtime's job).

#[cfg(test)]
mod conformance;
mod memory;
mod redis;
mod sqlite;
pub(crate) mod wakes;

pub use memory::MemoryStore;
pub use redis::{LeaseHolder, RedisCandidate, RedisOptions, RedisStore};
pub use sqlite::{CompactionReport, RetentionPolicy, SqliteOptions, SqliteStore};
pub(crate) use wakes::{OwedWakes, WakeHold, hold_wakes};

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::model::events::Event;
use crate::model::{Task, TaskStatus, TaskType, WorkflowDefinition, WorkflowExecution};

/// Errors a store can raise.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store's internal state is unusable (e.g. a poisoned lock after a
    /// panic elsewhere); the message is for logs.
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    /// The store could not be opened at startup: locked by another process,
    /// not a database, unwritable, or written by a newer version.
    #[error("cannot open the store at {}: {reason}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong, for the operator.
        reason: String,
    },
    /// A stored row could not be read back into its domain type.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A store on another machine (Redis) cannot be reached now, or did not
    /// answer in time; the call may succeed when retried. A write that fails
    /// this way may or may not have been applied.
    #[error("the state store is unreachable: {0}")]
    Unreachable(String),
    /// This process no longer holds the store's lease: another runtime took
    /// it over, so this one must stop writing.
    #[error("this runtime lost its lease on the store: {0}")]
    Fenced(String),
}

impl StoreError {
    /// Whether the failure is the store being out of reach (or taken over),
    /// rather than a fault in this process or its data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Fenced(_))
    }
}

/// Which tasks a listing returns. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Only tasks in one of these states.
    pub statuses: Vec<TaskStatus>,
    /// Only tasks of one of these types.
    pub types: Vec<TaskType>,
    /// Only tasks that carry every one of these tags.
    pub tags: Vec<String>,
    /// Only children of this task.
    pub parent_id: Option<String>,
}

impl TaskFilter {
    /// Whether `task` passes the filter.
    pub fn matches(&self, task: &Task) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&task.status()))
            && (self.types.is_empty() || self.types.contains(&task.task_type))
            && self.tags.iter().all(|tag| task.tags.contains(tag))
            && self
                .parent_id
                .as_ref()
                .is_none_or(|parent| task.parent_id.as_ref() == Some(parent))
    }
}

/// Which workflows a listing returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    /// Only workflows that carry every one of these tags.
    pub tags: Vec<String>,
    /// Every version, instead of only the highest of each workflow id.
    pub all_versions: bool,
}

/// Position in the workflow listing: the last (id, version) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowCursor {
    /// Workflow id.
    pub id: String,
    /// Semver version.
    pub version: String,
}

/// One page of a listing and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Cursor of the last item when more items follow.
    pub next: Option<C>,
}

impl Page<WorkflowDefinition, WorkflowCursor> {
    /// A page of workflow versions; when `more` follow, the cursor is the last one's.
    pub fn of_workflows(items: Vec<WorkflowDefinition>, more: bool) -> Self {
        let next = more
            .then(|| items.last())
            .flatten()
            .map(|w| WorkflowCursor {
                id: w.id.clone(),
                version: w.version.clone(),
            });
        Self { items, next }
    }
}

/// What an idempotent create found.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The task was stored.
    Created(Task),
    /// The idempotency key was already used; `same_body` tells whether the
    /// earlier request had the same fingerprint.
    Existing {
        /// The task the key points to.
        task: Task,
        /// Whether the fingerprints match.
        same_body: bool,
    },
}

/// Which executions a listing returns. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionFilter {
    /// Only executions in one of these states.
    pub statuses: Vec<TaskStatus>,
    /// Only executions of this workflow.
    pub workflow_id: Option<String>,
    /// Only executions whose root task carries every one of these tags.
    pub tags: Vec<String>,
}

/// A new execution with everything created atomically beside it.
#[derive(Debug, Clone)]
pub struct NewExecutionRecord {
    /// The execution (its `tasks` field is not stored: tasks live as tasks).
    /// Shared, as the tasks are.
    pub execution: Arc<WorkflowExecution>,
    /// Its root task first, then one task per node. Shared: the runtime
    /// keeps the same states as the newest until the write commits.
    pub tasks: Vec<Arc<Task>>,
    /// The ComfyUI prompt to submit, as JSON bytes (overrides applied,
    /// filename prefixes rewritten).
    pub prompt: Bytes,
}

/// What an idempotent execution create found.
#[derive(Debug, Clone)]
pub enum ExecutionCreateOutcome {
    /// The execution and its tasks were stored.
    Created(WorkflowExecution),
    /// The idempotency key was already used; `same_body` tells whether the
    /// earlier request had the same fingerprint.
    Existing {
        /// The execution the key points to.
        execution: WorkflowExecution,
        /// Whether the fingerprints match.
        same_body: bool,
    },
}

/// An idempotency key and the fingerprint of the request body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The caller's key.
    pub key: String,
    /// A digest of the request body.
    pub fingerprint: String,
}

/// State changes and the events they emit, written as one atomic step by
/// [`Store::write`]: a task's transition and its event are never stored
/// one without the other.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New executions with their root tasks and prompts, stored first, like
    /// [`Store::create_execution`] without an idempotency key (a keyed
    /// create needs the store's answer and goes through that method).
    pub new_executions: Vec<NewExecutionRecord>,
    /// New tasks of an existing execution (its NODE tasks, created when it
    /// is first dispatched): the execution's id and the tasks, stored like
    /// [`Store::add_execution_tasks`] does.
    pub new_execution_tasks: Option<(String, Vec<Arc<Task>>)>,
    /// Tasks replaced (matched by id; an unknown id fails the write). Shared:
    /// the runtime keeps the same state as the newest until the write commits.
    pub tasks: Vec<Arc<Task>>,
    /// Executions replaced (matched by id; an unknown id fails the write),
    /// shared like `tasks`.
    pub executions: Vec<Arc<WorkflowExecution>>,
    /// Events appended, in increasing sequence order.
    pub events: Vec<Arc<Event>>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.new_executions.is_empty()
            && self.new_execution_tasks.is_none()
            && self.tasks.is_empty()
            && self.executions.is_empty()
            && self.events.is_empty()
    }
}

/// Told the outcome of a [`Store::write`] once it is durable (or failed).
pub type Committed = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Storage for the runtime's state. Methods are synchronous and short; each
/// is atomic on its own.
pub trait Store: Send + Sync + 'static {
    /// Stores a new task, unless `idempotency` names a key already used, in
    /// which case the earlier task is returned. Listing order is creation order.
    fn create_task(
        &self,
        task: Task,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError>;
    /// Replaces a stored task (matched by id); returns false when unknown.
    fn put_task(&self, task: &Task) -> Result<bool, StoreError>;
    /// One task by id.
    fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError>;
    /// The ids of the direct children of `parent_id`, in creation order.
    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, StoreError>;
    /// Tasks in creation order after the cursor (a creation sequence number).
    fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, StoreError>;

    /// Stores a new execution, its tasks and its prompt in one step, unless
    /// `idempotency` names a key already used for an execution, in which case
    /// the earlier execution is returned. Listing order is creation order.
    fn create_execution(
        &self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<ExecutionCreateOutcome, StoreError>;
    /// Stores more tasks of an existing execution (its NODE tasks, created
    /// when it is first dispatched), all or none; they then belong to it
    /// like the tasks given to `create_execution`.
    fn add_execution_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError>;
    /// The (fingerprint, execution id) an execution idempotency key was used with.
    fn execution_for_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Replaces a stored execution (matched by id); returns false when unknown.
    fn put_execution(&self, execution: &WorkflowExecution) -> Result<bool, StoreError>;
    /// One execution by id (its `tasks` empty: read them as tasks).
    fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>, StoreError>;
    /// The task `root_id` names, then its children in creation order: the
    /// tasks of an execution's view (none without a root). A store that can
    /// reads them together, as of one moment (SQLite: one read transaction
    /// instead of one per statement); by default, one at a time.
    fn root_and_children(&self, root_id: &str) -> Result<Vec<Task>, StoreError> {
        let mut tasks = Vec::new();
        tasks.extend(self.get_task(root_id)?);
        for child in self.child_ids(root_id)? {
            tasks.extend(self.get_task(&child)?);
        }
        Ok(tasks)
    }
    /// An execution (its `tasks` empty) with its root task first and then the
    /// root's children in creation order, as an execution's view shows them;
    /// `None` when there is no such execution. A store that can reads them
    /// together, as of one moment (SQLite: one read transaction instead of
    /// one per statement).
    fn execution_with_tasks(
        &self,
        id: &str,
    ) -> Result<Option<(WorkflowExecution, Vec<Task>)>, StoreError> {
        let Some(execution) = self.get_execution(id)? else {
            return Ok(None);
        };
        let tasks = match execution.root_task_id.as_deref() {
            Some(root_id) => self.root_and_children(root_id)?,
            None => Vec::new(),
        };
        Ok(Some((execution, tasks)))
    }
    /// The prompt JSON of an execution.
    fn execution_prompt(&self, id: &str) -> Result<Option<Bytes>, StoreError>;
    /// The execution a task (root or node) belongs to.
    fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, StoreError>;
    /// Executions in creation order after the cursor.
    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WorkflowExecution, u64>, StoreError>;

    /// A value the runtime keeps about itself (e.g. its instance id).
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a value the runtime keeps about itself.
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Appends a published event (sequence numbers strictly increase). A
    /// store may drop its oldest events to stay bounded.
    fn append_event(&self, event: &Event) -> Result<(), StoreError>;

    /// Writes `changes` as one atomic step without waiting for it: the call
    /// returns once the write is queued, and `committed` is told its outcome
    /// once it is durable. Writes commit in the order they were handed over,
    /// and their `committed` calls come in that order too (a durable store
    /// commits writes queued together in one transaction: group commit).
    /// Reads see a write only once it committed. `committed` may run on the
    /// caller's thread (before `write` returns) or on the store's own.
    fn write(&self, changes: Changes, committed: Committed);
    /// Whether each write costs something of its own (a commit, a round
    /// trip), so that writes nobody waits for are better handed over together
    /// (see `runtime::EventBus::deferrable_batch`). False: each write is cheap.
    fn prefers_fewer_writes(&self) -> bool {
        false
    }
    /// Stored events with a sequence above `after`, oldest first, at most `limit`.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// The sequence of the last stored event (0 when none).
    fn last_event_sequence(&self) -> Result<u64, StoreError>;

    /// Stores a workflow version; returns the existing one instead when that
    /// id and version are taken.
    fn insert_workflow(
        &self,
        workflow: WorkflowDefinition,
    ) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError>;
    /// One version of a workflow, or its highest version when `version` is None.
    fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<WorkflowDefinition>, StoreError>;
    /// Workflows ordered by id then version, after the cursor.
    fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError>;
    /// Deletes one version, or every version when `version` is None; returns
    /// the versions deleted (empty when nothing matched).
    fn delete_workflow(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// Whether the store can take reads and writes now (readiness asks each
    /// second). An embedded store always can; a remote one answers
    /// [`StoreError::Unreachable`] while it cannot be reached and
    /// [`StoreError::Fenced`] once another runtime took it over.
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Orders semver strings numerically ("1.10.0" after "1.9.0"); versions are
/// validated as x.y.z before they reach a store, anything else sorts first.
pub fn version_key(version: &str) -> (u64, u64, u64) {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
