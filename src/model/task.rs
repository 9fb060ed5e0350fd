//! Tasks: `TaskStatus` and its state machine, priorities, types, dependencies,
//! metrics, the `Task` itself and its lifecycle events (`TaskEvent`).
//!
//! A task's status and progress are private: they change only through
//! [`Task::transition`], [`Task::retry`] and [`Task::set_progress`], so an
//! illegal state cannot be built. This module decides which transitions are
//! legal; it does not decide when to make them (that is the runtime's job).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    JsonObject, ValidationError, check_non_negative, check_progress, index_path, validate_id,
    validate_json_object, validate_name,
};

string_enum! {
    /// Task execution states (the seed's `TaskStatus`).
    pub enum TaskStatus("task status") {
        /// Created, not yet admitted to the queue.
        Pending => "pending",
        /// Waiting in the scheduler's queue for a backend.
        Queued => "queued",
        /// Submitted to a backend and executing.
        Running => "running",
        /// Finished successfully (terminal).
        Completed => "completed",
        /// Finished with an error (terminal, but may be retried).
        Failed => "failed",
        /// Stopped on request (terminal).
        Cancelled => "cancelled",
        /// Waiting to be run again after a failure.
        Retrying => "retrying",
    }
}

impl TaskStatus {
    /// Completed, Failed or Cancelled: the task is done (the seed's `is_terminal`).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Running or Retrying: the task is being worked on (the seed's `is_active`).
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Retrying)
    }

    /// Whether the state machine allows moving from `self` to `to`. Staying in
    /// the same state is not a transition and is never allowed.
    pub const fn can_transition_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, to),
            // Admitted to the scheduler's queue.
            (Pending, Queued)
            // Dispatched at once to an idle backend, skipping the queue.
            | (Pending, Running)
            // Nothing to execute (e.g. every node cached): done before it started.
            | (Pending, Completed)
            // Refused before queueing (backend rejected the prompt, a required
            // dependency failed).
            | (Pending, Failed)
            // Cancelled before it was queued.
            | (Pending, Cancelled)
            // A backend picked it up.
            | (Queued, Running)
            // The backend reported success without us seeing it start (fully
            // cached prompt, or the start message was missed on reconnect).
            | (Queued, Completed)
            // The backend rejected it at submission, or a dependency failed.
            | (Queued, Failed)
            // Cancelled while waiting.
            | (Queued, Cancelled)
            // Taken back out of the queue (its dependencies are not met after
            // all, or admission was revoked while draining) to be re-admitted.
            | (Queued, Pending)
            | (Running, Completed)
            | (Running, Failed)
            | (Running, Cancelled)
            // A transient failure (backend connection lost) with retries left.
            | (Running, Retrying)
            // The backend lost the prompt (restart, queue cleared) and it is put
            // back in the queue without counting as a retry.
            | (Running, Queued)
            // The back-off elapsed: back into the queue.
            | (Retrying, Queued)
            // The back-off elapsed and a backend is free: run again directly.
            | (Retrying, Running)
            // The retry could not even be attempted (deadline passed, no backend).
            | (Retrying, Failed)
            // Cancelled during the back-off.
            | (Retrying, Cancelled)
            // An explicit retry of a failed task (guarded by `Task::can_retry`).
            | (Failed, Retrying) // Completed and Cancelled are final: no edges out.
        )
    }
}

string_enum! {
    /// Task priority levels (the seed's `TaskPriority`, an int enum 0..=3).
    /// Ordered: `Critical > High > Normal > Low`.
    #[derive(PartialOrd, Ord, Default)]
    pub enum TaskPriority("task priority") {
        /// Runs when nothing else waits (seed value 0).
        Low = 0 => "low",
        /// The default (seed value 1).
        #[default]
        Normal = 1 => "normal",
        /// Ahead of normal work (seed value 2).
        High = 2 => "high",
        /// Ahead of everything (seed value 3).
        Critical = 3 => "critical",
    }
}

impl TaskPriority {
    /// The seed's integer value (0..=3).
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// The priority with the seed's integer value, if any.
    pub const fn from_value(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Low),
            1 => Some(Self::Normal),
            2 => Some(Self::High),
            3 => Some(Self::Critical),
            _ => None,
        }
    }
}

string_enum! {
    /// Kinds of task (the seed's `TaskType`).
    pub enum TaskType("task type") {
        /// Runs a whole ComfyUI workflow.
        Workflow => "workflow",
        /// Runs one node.
        Node => "node",
        /// Prepares inputs.
        Preprocessing => "preprocessing",
        /// Processes outputs.
        Postprocessing => "postprocessing",
        /// Internal housekeeping.
        System => "system",
        /// Removes temporary data.
        Cleanup => "cleanup",
    }
}

string_enum! {
    /// How a task depends on another (the seed's `Literal["requires", "blocks", "optional"]`).
    pub enum DependencyType("dependency type") {
        /// The other task must complete first.
        Requires => "requires",
        /// This task blocks the other one.
        Blocks => "blocks",
        /// Wait for the other task if it exists, but its failure does not matter.
        Optional => "optional",
    }
}

/// A dependency between tasks (the seed's `TaskDependency`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskDependency {
    /// The task depended on.
    pub task_id: String,
    /// How it is depended on.
    pub dependency_type: DependencyType,
}

/// Performance metrics for a task (the seed's `TaskMetrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// When the task first started running.
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub start_time: Option<DateTime<Utc>>,
    /// When the task last entered a terminal state.
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub end_time: Option<DateTime<Utc>>,
    /// CPU time used, in seconds.
    pub cpu_time: Option<f64>,
    /// Peak resident memory, in MiB.
    pub memory_peak_mb: Option<f64>,
    /// GPU memory used, in MiB.
    pub gpu_memory_mb: Option<f64>,
}

impl TaskMetrics {
    /// `end_time - start_time` in seconds, when both are known.
    pub fn duration_seconds(&self) -> Option<f64> {
        let (start, end) = (self.start_time?, self.end_time?);
        let delta = end - start;
        Some(delta.num_seconds() as f64 + f64::from(delta.subsec_nanos()) / 1e9)
    }

    /// Numbers are finite and not negative; `end_time` is not before `start_time`.
    /// Field paths are relative (`cpu_time`, `end_time`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        check_non_negative(&mut errors, "cpu_time", self.cpu_time);
        check_non_negative(&mut errors, "memory_peak_mb", self.memory_peak_mb);
        check_non_negative(&mut errors, "gpu_memory_mb", self.gpu_memory_mb);
        if let (Some(start), Some(end)) = (self.start_time, self.end_time)
            && end < start
        {
            errors.push("end_time", "must not be before start_time");
        }
        errors.into_result()
    }
}

/// A status change the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal task transition from {from} to {to}")]
pub struct TransitionError {
    /// The task's status when the change was asked for.
    pub from: TaskStatus,
    /// The status asked for.
    pub to: TaskStatus,
}

/// Why [`Task::retry`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    /// Only a failed task can be retried.
    #[error("task cannot be retried from status {status}: only failed tasks can")]
    NotFailed {
        /// The task's status.
        status: TaskStatus,
    },
    /// Every allowed retry was used.
    #[error("task has used all {max_retries} retries")]
    Exhausted {
        /// Retries already made.
        retry_count: u32,
        /// Retries allowed.
        max_retries: u32,
    },
}

/// What a caller supplies to create a task; everything else starts at the
/// seed's defaults (status pending, progress 0, no retries, fresh metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task's id; `None` makes a fresh UUID v4.
    pub id: Option<String>,
    /// What kind of task it is (the seed's `type`).
    pub task_type: TaskType,
    /// Scheduling priority.
    pub priority: TaskPriority,
    /// Human-readable name; stripped, must be non-empty.
    pub name: String,
    /// Longer description; stripped, empty becomes `None`.
    pub description: Option<String>,
    /// Labels; each is stripped and must be non-empty; duplicates collapse.
    pub tags: Vec<String>,
    /// The parent task, if any.
    pub parent_id: Option<String>,
    /// Tasks this one depends on.
    pub dependencies: Vec<TaskDependency>,
    /// How many times a failed task may be retried.
    pub max_retries: u32,
    /// Deadline for one run, in seconds; must be > 0 when set.
    pub timeout_seconds: Option<f64>,
    /// Free-form metadata.
    pub metadata: JsonObject,
}

impl NewTask {
    /// A task named `name` of type `task_type` with the seed's defaults.
    pub fn new(name: impl Into<String>, task_type: TaskType) -> Self {
        Self {
            id: None,
            task_type,
            priority: TaskPriority::Normal,
            name: name.into(),
            description: None,
            tags: Vec::new(),
            parent_id: None,
            dependencies: Vec::new(),
            max_retries: DEFAULT_MAX_RETRIES,
            timeout_seconds: None,
            metadata: JsonObject::new(),
        }
    }
}

impl Default for NewTask {
    /// An unnamed node task (the seed's `TaskCreateRequest` default type);
    /// set `name` before building it.
    fn default() -> Self {
        Self::new(String::new(), TaskType::Node)
    }
}

/// The seed's default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Every field of a task in plain form: what a store persists and hands back
/// to [`Task::restore`], which validates it. Also the serde shape of [`Task`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// See [`Task::id`].
    pub id: String,
    /// See [`Task::task_type`].
    pub task_type: TaskType,
    /// See [`Task::status`].
    pub status: TaskStatus,
    /// See [`Task::priority`].
    pub priority: TaskPriority,
    /// See [`Task::name`].
    pub name: String,
    /// See [`Task::description`].
    pub description: Option<String>,
    /// See [`Task::tags`].
    pub tags: BTreeSet<String>,
    /// See [`Task::parent_id`].
    pub parent_id: Option<String>,
    /// See [`Task::dependencies`].
    pub dependencies: Vec<TaskDependency>,
    /// See [`Task::progress`].
    pub progress: f64,
    /// See [`Task::progress_message`].
    pub progress_message: Option<String>,
    /// See [`Task::retry_count`].
    pub retry_count: u32,
    /// See [`Task::max_retries`].
    pub max_retries: u32,
    /// See [`Task::timeout_seconds`].
    pub timeout_seconds: Option<f64>,
    /// See [`Task::result`].
    pub result: Option<Value>,
    /// See [`Task::error`].
    pub error: Option<String>,
    /// See [`Task::error_type`].
    pub error_type: Option<String>,
    /// See [`Task::metrics`].
    pub metrics: TaskMetrics,
    /// See [`Task::metadata`].
    pub metadata: JsonObject,
    /// See [`Task::created_at`].
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// See [`Task::updated_at`].
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Who created it (not in the seed); `None` for work created without authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<super::ownership::Ownership>,
}

/// The core task model (the seed's `Task`).
///
/// Build one with [`Task::new`] (or [`Task::restore`] from a store). The
/// public fields carry no state-machine rules; after changing them directly,
/// call [`Task::touch`], and [`Task::validate`] if the change came from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TaskRecord")]
pub struct Task {
    /// Unique id (a UUID v4 unless the creator chose one).
    pub id: String,
    /// What kind of task it is (the seed's `type`).
    pub task_type: TaskType,
    /// Where the task is in its lifecycle; see [`Task::transition`].
    status: TaskStatus,
    /// Scheduling priority.
    pub priority: TaskPriority,
    /// Human-readable name, stripped, non-empty, at most 256 characters.
    pub name: String,
    /// Longer description.
    pub description: Option<String>,
    /// Labels for filtering; stripped and non-empty.
    pub tags: BTreeSet<String>,
    /// The parent task, if any.
    pub parent_id: Option<String>,
    /// Tasks this one depends on.
    pub dependencies: Vec<TaskDependency>,
    /// Fraction done, in [0, 1]; see [`Task::set_progress`].
    progress: f64,
    /// What the task is doing now.
    pub progress_message: Option<String>,
    /// Retries made so far.
    pub retry_count: u32,
    /// Retries allowed (default 3).
    pub max_retries: u32,
    /// Deadline for one run in seconds; > 0 when set.
    pub timeout_seconds: Option<f64>,
    /// What the task produced.
    pub result: Option<Value>,
    /// Why the task failed.
    pub error: Option<String>,
    /// The class of the failure (e.g. `TaskError`).
    pub error_type: Option<String>,
    /// Timing and resource use.
    pub metrics: TaskMetrics,
    /// Free-form metadata, set when the task is made and not changed after: shared by the
    /// task's copies (a task is copied on every change of its state; a NODE task's metadata
    /// was most of a copy's allocations). Change it with `Arc::make_mut`.
    pub metadata: Arc<JsonObject>,
    /// When the task was created.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the task last changed.
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Who created it (not in the seed); `None` for work created without authentication.
    pub ownership: Option<super::ownership::Ownership>,
}

impl Task {
    /// Validates `new` and builds a pending task with progress 0. Strings are
    /// stripped (the seed's `str_strip_whitespace`); every violation is reported.
    pub fn new(new: NewTask) -> Result<Task, ValidationError> {
        let mut errors = ValidationError::new();
        let name = errors
            .absorb(validate_name("name", &new.name))
            .unwrap_or_default();
        let tags = normalize_tags(&mut errors, &new.tags);
        let task = Task {
            id: new.id.unwrap_or_else(super::new_id),
            task_type: new.task_type,
            status: TaskStatus::Pending,
            priority: new.priority,
            name,
            description: strip_optional(new.description),
            tags,
            parent_id: new.parent_id,
            dependencies: new.dependencies,
            progress: 0.0,
            progress_message: None,
            retry_count: 0,
            max_retries: new.max_retries,
            timeout_seconds: new.timeout_seconds,
            result: None,
            error: None,
            error_type: None,
            metrics: TaskMetrics::default(),
            metadata: Arc::new(new.metadata),
            created_at: Utc::now(),
            updated_at: None,
            ownership: None,
        };
        task.check_common(&mut errors);
        errors.into_result()?;
        Ok(task)
    }

    /// Rebuilds a task in any status from a record (a store's copy), checking
    /// every rule [`Task::validate`] checks. Name and tags are stripped.
    pub fn restore(record: TaskRecord) -> Result<Task, ValidationError> {
        let mut errors = ValidationError::new();
        let name = errors
            .absorb(validate_name("name", &record.name))
            .unwrap_or_default();
        let tags = normalize_tags(
            &mut errors,
            &record.tags.iter().cloned().collect::<Vec<_>>(),
        );
        let task = Task {
            id: record.id,
            task_type: record.task_type,
            status: record.status,
            priority: record.priority,
            name,
            description: record.description,
            tags,
            parent_id: record.parent_id,
            dependencies: record.dependencies,
            progress: record.progress,
            progress_message: record.progress_message,
            retry_count: record.retry_count,
            max_retries: record.max_retries,
            timeout_seconds: record.timeout_seconds,
            result: record.result,
            error: record.error,
            error_type: record.error_type,
            metrics: record.metrics,
            metadata: Arc::new(record.metadata),
            created_at: record.created_at,
            updated_at: record.updated_at,
            ownership: record.ownership,
        };
        task.check_common(&mut errors);
        errors.into_result()?;
        Ok(task)
    }

    /// The task as a plain record (for a store).
    pub fn to_record(&self) -> TaskRecord {
        TaskRecord {
            id: self.id.clone(),
            task_type: self.task_type,
            status: self.status,
            priority: self.priority,
            name: self.name.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            parent_id: self.parent_id.clone(),
            dependencies: self.dependencies.clone(),
            progress: self.progress,
            progress_message: self.progress_message.clone(),
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            result: self.result.clone(),
            error: self.error.clone(),
            error_type: self.error_type.clone(),
            metrics: self.metrics.clone(),
            metadata: JsonObject::clone(&self.metadata),
            created_at: self.created_at,
            updated_at: self.updated_at,
            ownership: self.ownership.clone(),
        }
    }

    /// Checks every rule on the current values (useful after changing public
    /// fields from outside input).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        match validate_name("name", &self.name) {
            Ok(stripped) if stripped != self.name => {
                errors.push("name", "must not have surrounding whitespace");
            }
            Ok(_) => {}
            Err(e) => errors.extend(e),
        }
        let tags: Vec<String> = self.tags.iter().cloned().collect();
        let normalized = normalize_tags(&mut errors, &tags);
        if errors.is_empty() && normalized != self.tags {
            errors.push("tags", "must not have surrounding whitespace");
        }
        self.check_common(&mut errors);
        errors.into_result()
    }

    /// Rules shared by `new`, `restore` and `validate` (all but name and tags).
    fn check_common(&self, errors: &mut ValidationError) {
        errors.absorb(validate_id("id", &self.id));
        if let Some(parent) = &self.parent_id {
            errors.absorb(validate_id("parent_id", parent));
            if *parent == self.id {
                errors.push("parent_id", "task cannot be its own parent");
            }
        }
        for (i, dep) in self.dependencies.iter().enumerate() {
            let field = format!("{}.task_id", index_path("dependencies", i));
            errors.absorb(validate_id(&field, &dep.task_id));
            if dep.task_id == self.id {
                errors.push(field, "task cannot depend on itself");
            }
        }
        errors.absorb(check_progress("progress", self.progress));
        if let Some(t) = self.timeout_seconds
            && !(t.is_finite() && t > 0.0)
        {
            errors.push("timeout_seconds", "must be a finite number > 0");
        }
        if let Err(e) = self.metrics.validate() {
            errors.extend(e.prefixed("metrics"));
        }
        errors.absorb(validate_json_object("metadata", &self.metadata));
    }

    /// Where the task is in its lifecycle.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Fraction done, in [0, 1].
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// The status is terminal (the seed's `is_complete`).
    pub fn is_complete(&self) -> bool {
        self.status.is_terminal()
    }

    /// Failed with retries left (the seed's `can_retry`).
    pub fn can_retry(&self) -> bool {
        self.status == TaskStatus::Failed && self.retries_left()
    }

    /// `retry_count < max_retries`: entering Retrying is allowed.
    pub fn retries_left(&self) -> bool {
        self.retry_count < self.max_retries
    }

    /// Sets `updated_at` to now. Never moves it backwards (or before
    /// `created_at`), even if the wall clock does.
    pub fn touch(&mut self) {
        let floor = self.updated_at.unwrap_or(self.created_at);
        self.updated_at = Some(Utc::now().max(floor));
    }

    /// Moves to `to` if the state machine allows it (see
    /// [`TaskStatus::can_transition_to`]); entering Retrying also needs a
    /// retry left and counts one. Records `metrics.start_time` on the first
    /// entry into Running and `metrics.end_time` on entering a terminal state
    /// (cleared again when a failed task is retried); entering Completed sets
    /// progress to 1. Touches the task.
    pub fn transition(&mut self, to: TaskStatus) -> Result<(), TransitionError> {
        let from = self.status;
        if !from.can_transition_to(to) || (to == TaskStatus::Retrying && !self.retries_left()) {
            return Err(TransitionError { from, to });
        }
        self.touch();
        // touch() just set updated_at, never before any earlier timestamp of the task.
        let now = self.updated_at.unwrap_or(self.created_at);
        self.status = to;
        if to == TaskStatus::Retrying {
            self.retry_count += 1;
            // The error described the failed attempt; the new one starts clean.
            self.error = None;
            self.error_type = None;
        }
        if to == TaskStatus::Running && self.metrics.start_time.is_none() {
            self.metrics.start_time = Some(now);
        }
        if to.is_terminal() {
            let end = self.metrics.start_time.map_or(now, |start| now.max(start));
            self.metrics.end_time = Some(end);
        } else if from.is_terminal() {
            self.metrics.end_time = None;
        }
        if to == TaskStatus::Completed {
            self.progress = 1.0;
        }
        Ok(())
    }

    /// Retries a failed task: moves it to Retrying, counting one retry, and
    /// resets progress to 0. Refused unless [`Task::can_retry`].
    pub fn retry(&mut self) -> Result<(), RetryError> {
        if self.status != TaskStatus::Failed {
            return Err(RetryError::NotFailed {
                status: self.status,
            });
        }
        if !self.retries_left() {
            return Err(RetryError::Exhausted {
                retry_count: self.retry_count,
                max_retries: self.max_retries,
            });
        }
        // Failed -> Retrying is in the table and a retry is left, checked above.
        self.transition(TaskStatus::Retrying)
            .map_err(|e| RetryError::NotFailed { status: e.from })?;
        self.progress = 0.0;
        Ok(())
    }

    /// Sets progress; NaN or a value outside [0, 1] is an error on `progress`
    /// (the seed clamps in a validator, but its own test expects 1.5 to fail).
    pub fn set_progress(&mut self, progress: f64) -> Result<(), ValidationError> {
        check_progress("progress", progress)?;
        self.progress = progress;
        self.touch();
        Ok(())
    }

    /// Records the result and moves to Completed.
    pub fn complete(&mut self, result: Option<Value>) -> Result<(), TransitionError> {
        self.transition(TaskStatus::Completed)?;
        self.result = result;
        Ok(())
    }

    /// Records the error and moves to Failed.
    pub fn fail(
        &mut self,
        error: impl Into<String>,
        error_type: Option<String>,
    ) -> Result<(), TransitionError> {
        self.transition(TaskStatus::Failed)?;
        self.error = Some(error.into());
        self.error_type = error_type;
        Ok(())
    }
}

impl TryFrom<TaskRecord> for Task {
    type Error = ValidationError;

    fn try_from(record: TaskRecord) -> Result<Self, Self::Error> {
        Task::restore(record)
    }
}

impl From<&Task> for TaskRecord {
    fn from(task: &Task) -> Self {
        task.to_record()
    }
}

/// Strips and checks each tag (paths `tags[i]` by input position); returns the
/// valid ones as a set.
fn normalize_tags(errors: &mut ValidationError, tags: &[String]) -> BTreeSet<String> {
    tags.iter()
        .enumerate()
        .filter_map(|(i, tag)| errors.absorb(validate_name(&index_path("tags", i), tag)))
        .collect()
}

/// Strips an optional text; empty becomes `None` (proto3 sends "" for unset).
pub(crate) fn strip_optional(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

string_enum! {
    /// What happened to a task (the seed's `TaskEvent.event_type` literal).
    pub enum TaskEventType("task event type") {
        /// The task was created.
        Created => "created",
        /// The task entered the queue.
        Queued => "queued",
        /// The task started running.
        Started => "started",
        /// The task reported progress.
        Progress => "progress",
        /// The task completed.
        Completed => "completed",
        /// The task failed.
        Failed => "failed",
        /// The task was cancelled.
        Cancelled => "cancelled",
        /// The task is being retried.
        Retrying => "retrying",
    }
}

impl TaskEventType {
    /// The event announcing that a task entered `status`; `None` for Pending,
    /// whose only entry after creation (Queued -> Pending) has no seed event.
    pub const fn for_status(status: TaskStatus) -> Option<Self> {
        match status {
            TaskStatus::Pending => None,
            TaskStatus::Queued => Some(Self::Queued),
            TaskStatus::Running => Some(Self::Started),
            TaskStatus::Completed => Some(Self::Completed),
            TaskStatus::Failed => Some(Self::Failed),
            TaskStatus::Cancelled => Some(Self::Cancelled),
            TaskStatus::Retrying => Some(Self::Retrying),
        }
    }
}

/// An event in a task's lifecycle (the seed's `TaskEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Unique id (UUID v4).
    pub id: String,
    /// The task it is about.
    pub task_id: String,
    /// What happened.
    pub event_type: TaskEventType,
    /// When it happened.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub timestamp: DateTime<Utc>,
    /// Human-readable detail.
    pub message: Option<String>,
    /// Structured detail (e.g. progress value, node id).
    pub data: JsonObject,
    /// What emitted it (e.g. `executor`).
    pub source: Option<String>,
    /// Links events of one request or prompt together.
    pub correlation_id: Option<String>,
    /// Position in the event history, assigned by the event bus (0 until then).
    pub sequence: u64,
}

impl TaskEvent {
    /// An event of `event_type` for `task_id`, stamped now, with a fresh id.
    pub fn new(task_id: impl Into<String>, event_type: TaskEventType) -> Self {
        Self {
            id: super::new_id(),
            task_id: task_id.into(),
            event_type,
            timestamp: Utc::now(),
            message: None,
            data: JsonObject::new(),
            source: None,
            correlation_id: None,
            sequence: 0,
        }
    }

    /// The event for `task` having just entered its current status, if that
    /// status has one (see [`TaskEventType::for_status`]).
    pub fn for_transition(task: &Task) -> Option<Self> {
        TaskEventType::for_status(task.status()).map(|t| Self::new(task.id.clone(), t))
    }

    /// Checks ids and data: `id` and `task_id` are valid ids, `data` a valid object.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        errors.absorb(validate_id("id", &self.id));
        errors.absorb(validate_id("task_id", &self.task_id));
        errors.absorb(validate_json_object("data", &self.data));
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::TimeDelta;
    use serde_json::json;

    use super::*;
    use crate::model::MAX_JSON_DEPTH;

    fn task(name: &str) -> Task {
        Task::new(NewTask::new(name, TaskType::Node)).expect("valid task")
    }

    fn task_in(status: TaskStatus) -> Task {
        let mut record = task("t").to_record();
        record.status = status;
        Task::restore(record).expect("valid record")
    }

    /// The brief's table, written out independently of `can_transition_to`.
    fn allowed(from: TaskStatus) -> &'static [TaskStatus] {
        use TaskStatus::*;
        match from {
            Pending => &[Queued, Running, Completed, Failed, Cancelled],
            Queued => &[Running, Completed, Failed, Cancelled, Pending],
            Running => &[Completed, Failed, Cancelled, Retrying, Queued],
            Retrying => &[Queued, Running, Failed, Cancelled],
            Failed => &[Retrying],
            Completed | Cancelled => &[],
        }
    }

    #[test]
    fn seed_example() {
        let mut t = task("Test Task");
        assert_eq!(t.status(), TaskStatus::Pending);
        assert!((0.0..=1.0).contains(&t.progress()));
        let e = t.set_progress(1.5).unwrap_err();
        assert!(e.has_field("progress"), "{e}");
        assert_eq!(t.progress(), 0.0);
        assert!(!t.is_complete());
        t.transition(TaskStatus::Completed).unwrap();
        assert!(t.is_complete());
    }

    #[test]
    fn defaults_match_the_seed() {
        let t = task("x");
        assert!(uuid::Uuid::parse_str(&t.id).is_ok());
        assert_eq!(t.priority, TaskPriority::Normal);
        assert_eq!(t.max_retries, 3);
        assert_eq!(t.retry_count, 0);
        assert_eq!(t.progress(), 0.0);
        assert!(t.tags.is_empty() && t.dependencies.is_empty() && t.metadata.is_empty());
        assert_eq!(t.metrics, TaskMetrics::default());
        assert!(t.updated_at.is_none());
        assert!(t.result.is_none() && t.error.is_none() && t.error_type.is_none());
        assert_ne!(task("x").id, t.id);
        assert_eq!(NewTask::default().task_type, TaskType::Node);
    }

    #[test]
    fn every_pair_follows_the_transition_table() {
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let want = allowed(from).contains(&to);
                assert_eq!(from.can_transition_to(to), want, "{from} -> {to}");
                let mut t = task_in(from);
                let got = t.transition(to);
                if want {
                    assert!(got.is_ok(), "{from} -> {to}");
                    assert_eq!(t.status(), to);
                    assert!(t.updated_at.is_some());
                } else {
                    let e = got.unwrap_err();
                    assert_eq!(e, TransitionError { from, to });
                    assert_eq!(t.status(), from, "a refused transition changes nothing");
                    assert_eq!(t.updated_at, None);
                }
            }
            assert!(!from.can_transition_to(from), "{from} -> itself");
        }
    }

    #[test]
    fn transition_error_names_both_states() {
        let mut t = task_in(TaskStatus::Running);
        let e = t.transition(TaskStatus::Pending).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal task transition from running to pending"
        );
    }

    #[test]
    fn transitions_record_metrics() {
        let mut t = task("m");
        t.transition(TaskStatus::Queued).unwrap();
        assert!(t.metrics.start_time.is_none());
        t.transition(TaskStatus::Running).unwrap();
        let started = t.metrics.start_time.expect("start recorded");
        assert!(t.metrics.end_time.is_none());
        t.transition(TaskStatus::Queued).unwrap();
        t.transition(TaskStatus::Running).unwrap();
        assert_eq!(t.metrics.start_time, Some(started), "first start is kept");
        t.fail("boom", Some("TaskError".into())).unwrap();
        assert_eq!(t.error.as_deref(), Some("boom"));
        assert_eq!(t.error_type.as_deref(), Some("TaskError"));
        let end = t.metrics.end_time.expect("end recorded");
        assert!(end >= started);
        assert!(t.metrics.duration_seconds().is_some_and(|d| d >= 0.0));
        t.retry().unwrap();
        assert!(t.metrics.end_time.is_none(), "retrying clears the end");
        t.transition(TaskStatus::Running).unwrap();
        t.set_progress(0.4).unwrap();
        t.complete(Some(json!({"images": 1}))).unwrap();
        assert_eq!(t.progress(), 1.0);
        assert_eq!(t.result, Some(json!({"images": 1})));
        assert!(t.metrics.end_time.is_some());
        assert!(t.validate().is_ok());
        // Terminal with no start: end only.
        let mut c = task("c");
        c.transition(TaskStatus::Cancelled).unwrap();
        assert!(c.metrics.start_time.is_none() && c.metrics.end_time.is_some());
        assert_eq!(c.metrics.duration_seconds(), None);
    }

    #[test]
    fn retry_rules() {
        let mut t = task("r");
        assert_eq!(
            t.retry(),
            Err(RetryError::NotFailed {
                status: TaskStatus::Pending
            })
        );
        t.max_retries = 2;
        t.transition(TaskStatus::Running).unwrap();
        t.transition(TaskStatus::Failed).unwrap();
        assert!(t.can_retry());
        t.set_progress(0.7).unwrap();
        t.retry().unwrap();
        assert_eq!(t.status(), TaskStatus::Retrying);
        assert_eq!(t.retry_count, 1);
        assert_eq!(t.progress(), 0.0);
        assert!(!t.can_retry(), "only failed tasks can retry");
        // Running -> Retrying also counts a retry.
        t.transition(TaskStatus::Running).unwrap();
        t.transition(TaskStatus::Retrying).unwrap();
        assert_eq!(t.retry_count, 2);
        t.transition(TaskStatus::Failed).unwrap();
        assert!(!t.can_retry(), "2 of 2 used");
        assert_eq!(
            t.retry(),
            Err(RetryError::Exhausted {
                retry_count: 2,
                max_retries: 2
            })
        );
        assert_eq!(
            t.transition(TaskStatus::Retrying),
            Err(TransitionError {
                from: TaskStatus::Failed,
                to: TaskStatus::Retrying
            })
        );
        assert_eq!(t.status(), TaskStatus::Failed);
        let mut none = task("n");
        none.max_retries = 0;
        none.transition(TaskStatus::Running).unwrap();
        assert!(none.transition(TaskStatus::Retrying).is_err());
    }

    #[test]
    fn can_retry_table() {
        for status in TaskStatus::ALL {
            for (count, max, left) in [(0, 3, true), (2, 3, true), (3, 3, false), (0, 0, false)] {
                let mut t = task_in(status);
                t.retry_count = count;
                t.max_retries = max;
                assert_eq!(
                    t.can_retry(),
                    status == TaskStatus::Failed && left,
                    "{status} {count}/{max}"
                );
                assert_eq!(t.is_complete(), status.is_terminal());
            }
        }
    }

    #[test]
    fn status_predicates() {
        use TaskStatus::*;
        for s in TaskStatus::ALL {
            assert_eq!(s.is_terminal(), matches!(s, Completed | Failed | Cancelled));
            assert_eq!(s.is_active(), matches!(s, Running | Retrying));
            assert_eq!(TaskStatus::from_str(s.as_str()), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(TaskStatus::from_str("RUNNING").is_err());
        assert!(TaskStatus::from_str("").is_err());
    }

    #[test]
    fn set_progress_rules() {
        for (p, ok) in [
            (0.0, true),
            (0.25, true),
            (1.0, true),
            (1.5, false),
            (-0.01, false),
            (f64::NAN, false),
            (f64::NEG_INFINITY, false),
        ] {
            let mut t = task("p");
            let got = t.set_progress(p);
            assert_eq!(got.is_ok(), ok, "{p}");
            if ok {
                assert_eq!(t.progress(), p);
                assert!(t.updated_at.is_some());
            } else {
                assert!(got.unwrap_err().has_field("progress"));
                assert_eq!(t.progress(), 0.0);
                assert!(t.updated_at.is_none());
            }
        }
    }

    #[test]
    fn touch_updates_updated_at() {
        let mut t = task("t");
        assert!(t.updated_at.is_none());
        t.touch();
        let first = t.updated_at.expect("touched");
        assert!(first >= t.created_at);
        t.touch();
        assert!(t.updated_at.expect("touched") >= first);
        // A clock behind the last update never moves updated_at backwards.
        let future = Utc::now() + TimeDelta::days(1);
        t.updated_at = Some(future);
        t.touch();
        assert_eq!(t.updated_at, Some(future));
    }

    #[test]
    fn new_task_validation_rules() {
        type Edit = fn(&mut NewTask);
        let deep = {
            let mut v = json!(1);
            for _ in 0..MAX_JSON_DEPTH {
                v = json!([v]);
            }
            v
        };
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            ("empty name", |n| n.name = String::new(), Some("name")),
            ("blank name", |n| n.name = "  \t".into(), Some("name")),
            ("long name", |n| n.name = "n".repeat(257), Some("name")),
            (
                "blank tag",
                |n| n.tags = vec!["ok".into(), " ".into()],
                Some("tags[1]"),
            ),
            (
                "long tag",
                |n| n.tags = vec!["t".repeat(257)],
                Some("tags[0]"),
            ),
            ("empty id", |n| n.id = Some(String::new()), Some("id")),
            ("padded id", |n| n.id = Some(" x".into()), Some("id")),
            (
                "empty parent",
                |n| n.parent_id = Some(String::new()),
                Some("parent_id"),
            ),
            (
                "own parent",
                |n| {
                    n.id = Some("a".into());
                    n.parent_id = Some("a".into());
                },
                Some("parent_id"),
            ),
            (
                "empty dependency",
                |n| {
                    n.dependencies = vec![
                        TaskDependency {
                            task_id: "b".into(),
                            dependency_type: DependencyType::Requires,
                        },
                        TaskDependency {
                            task_id: String::new(),
                            dependency_type: DependencyType::Optional,
                        },
                    ]
                },
                Some("dependencies[1].task_id"),
            ),
            (
                "self dependency",
                |n| {
                    n.id = Some("a".into());
                    n.dependencies = vec![TaskDependency {
                        task_id: "a".into(),
                        dependency_type: DependencyType::Blocks,
                    }];
                },
                Some("dependencies[0].task_id"),
            ),
            (
                "zero timeout",
                |n| n.timeout_seconds = Some(0.0),
                Some("timeout_seconds"),
            ),
            (
                "negative timeout",
                |n| n.timeout_seconds = Some(-1.0),
                Some("timeout_seconds"),
            ),
            (
                "nan timeout",
                |n| n.timeout_seconds = Some(f64::NAN),
                Some("timeout_seconds"),
            ),
            (
                "inf timeout",
                |n| n.timeout_seconds = Some(f64::INFINITY),
                Some("timeout_seconds"),
            ),
            (
                "empty metadata key",
                |n| {
                    n.metadata.insert(String::new(), json!(1));
                },
                Some("metadata"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut new = NewTask::new("ok", TaskType::Workflow);
            edit(&mut new);
            match (Task::new(new), want) {
                (Ok(_), None) => {}
                (Err(e), Some(field)) => {
                    assert_eq!(e.len(), 1, "{label}: {e}");
                    assert!(e.has_field(field), "{label}: {e}");
                }
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        let mut new = NewTask::new("ok", TaskType::Node);
        new.metadata.insert("k".into(), deep);
        assert!(Task::new(new).unwrap_err().has_field("metadata"));
    }

    #[test]
    fn new_task_normalizes_strings_and_reports_everything() {
        let mut new = NewTask::new("  Render  ", TaskType::Workflow);
        new.tags = vec![" a ".into(), "a".into(), "b".into()];
        new.description = Some("  ".into());
        new.timeout_seconds = Some(30.0);
        let t = Task::new(new).unwrap();
        assert_eq!(t.name, "Render");
        assert_eq!(t.tags, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert_eq!(t.description, None);
        assert!(t.validate().is_ok());

        let mut bad = NewTask::new("", TaskType::Node);
        bad.timeout_seconds = Some(0.0);
        bad.tags = vec![String::new()];
        let e = Task::new(bad).unwrap_err();
        assert_eq!(e.len(), 3, "{e}");
        assert!(e.has_field("name") && e.has_field("timeout_seconds") && e.has_field("tags[0]"));
    }

    #[test]
    fn restore_and_validate_rules() {
        type Edit = fn(&mut TaskRecord);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            ("running", |r| r.status = TaskStatus::Running, None),
            ("progress high", |r| r.progress = 1.5, Some("progress")),
            ("progress nan", |r| r.progress = f64::NAN, Some("progress")),
            ("blank name", |r| r.name = " ".into(), Some("name")),
            (
                "blank tag",
                |r| {
                    r.tags.insert(String::new());
                },
                Some("tags[0]"),
            ),
            ("empty id", |r| r.id = String::new(), Some("id")),
            (
                "negative cpu",
                |r| r.metrics.cpu_time = Some(-1.0),
                Some("metrics.cpu_time"),
            ),
            (
                "nan memory",
                |r| r.metrics.memory_peak_mb = Some(f64::NAN),
                Some("metrics.memory_peak_mb"),
            ),
            (
                "inf gpu",
                |r| r.metrics.gpu_memory_mb = Some(f64::INFINITY),
                Some("metrics.gpu_memory_mb"),
            ),
            (
                "end before start",
                |r| {
                    let now = Utc::now();
                    r.metrics.start_time = Some(now);
                    r.metrics.end_time = Some(now - TimeDelta::seconds(1));
                },
                Some("metrics.end_time"),
            ),
            (
                "zero timeout",
                |r| r.timeout_seconds = Some(0.0),
                Some("timeout_seconds"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut record = task("ok").to_record();
            edit(&mut record);
            match (Task::restore(record.clone()), want) {
                (Ok(t), None) => {
                    assert_eq!(t.status(), record.status);
                    assert!(t.validate().is_ok());
                }
                (Err(e), Some(field)) => assert!(e.has_field(field), "{label}: {e}"),
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        let mut t = task("v");
        t.name = " v".into();
        assert!(t.validate().unwrap_err().has_field("name"));
        let mut t = task("v");
        t.tags.insert(" x".into());
        assert!(t.validate().unwrap_err().has_field("tags"));
    }

    #[test]
    fn serde_round_trip_validates() {
        let mut t = task("s");
        Arc::make_mut(&mut t.metadata).insert("seed".into(), json!(18446744073709551615u64));
        t.transition(TaskStatus::Running).unwrap();
        t.set_progress(0.5).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains("18446744073709551615"));
        let back: Task = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
        let bad = text.replace("\"progress\":0.5", "\"progress\":2.0");
        assert!(serde_json::from_str::<Task>(&bad).is_err());
    }

    #[test]
    fn metrics_duration() {
        let start = Utc::now();
        let cases = [
            (None, None, None),
            (Some(start), None, None),
            (None, Some(start), None),
            (Some(start), Some(start), Some(0.0)),
            (
                Some(start),
                Some(start + TimeDelta::milliseconds(1500)),
                Some(1.5),
            ),
            (
                Some(start),
                Some(start + TimeDelta::seconds(3600)),
                Some(3600.0),
            ),
        ];
        for (s, e, want) in cases {
            let m = TaskMetrics {
                start_time: s,
                end_time: e,
                ..TaskMetrics::default()
            };
            assert_eq!(m.duration_seconds(), want, "{s:?} {e:?}");
            assert!(m.validate().is_ok());
        }
    }

    #[test]
    fn priority_order_and_values() {
        use TaskPriority::*;
        assert!(Critical > High && High > Normal && Normal > Low);
        assert_eq!(TaskPriority::default(), Normal);
        for (p, v) in [(Low, 0), (Normal, 1), (High, 2), (Critical, 3)] {
            assert_eq!(p.value(), v);
            assert_eq!(TaskPriority::from_value(v), Some(p));
            assert_eq!(TaskPriority::from_str(p.as_str()), Ok(p));
        }
        assert_eq!(TaskPriority::from_value(4), None);
    }

    #[test]
    fn enum_strings_round_trip() {
        for t in TaskType::ALL {
            assert_eq!(TaskType::from_str(t.as_str()), Ok(t));
        }
        for d in DependencyType::ALL {
            assert_eq!(DependencyType::from_str(d.as_str()), Ok(d));
        }
        for e in TaskEventType::ALL {
            assert_eq!(TaskEventType::from_str(e.as_str()), Ok(e));
        }
        assert_eq!(
            serde_json::from_str::<DependencyType>("\"blocks\"").unwrap(),
            DependencyType::Blocks
        );
        assert!(serde_json::from_str::<TaskType>("\"Node\"").is_err());
    }

    #[test]
    fn event_type_for_status() {
        use TaskEventType as E;
        use TaskStatus as S;
        let cases = [
            (S::Pending, None),
            (S::Queued, Some(E::Queued)),
            (S::Running, Some(E::Started)),
            (S::Completed, Some(E::Completed)),
            (S::Failed, Some(E::Failed)),
            (S::Cancelled, Some(E::Cancelled)),
            (S::Retrying, Some(E::Retrying)),
        ];
        for (s, e) in cases {
            assert_eq!(TaskEventType::for_status(s), e, "{s}");
        }
        let mut t = task("e");
        t.transition(TaskStatus::Running).unwrap();
        let ev = TaskEvent::for_transition(&t).unwrap();
        assert_eq!(ev.event_type, E::Started);
        assert_eq!(ev.task_id, t.id);
        assert_eq!(ev.sequence, 0);
        assert!(ev.validate().is_ok());
        let mut bad = TaskEvent::new("", E::Created);
        bad.data.insert(String::new(), json!(null));
        let e = bad.validate().unwrap_err();
        assert!(e.has_field("task_id") && e.has_field("data"));
    }
}
