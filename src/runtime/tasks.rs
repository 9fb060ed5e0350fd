//! The task registry: creates client-reported tasks, applies the progress and
//! status they report through the task state machine, cancels and retries.
//! Every read-modify-write of a task runs under one write gate, so two
//! concurrent updates of one task cannot lose each other's changes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{
    DependencyType, JsonObject, NewTask, Task, TaskDependency, TaskPriority, TaskStatus, TaskType,
    ValidationError,
};
use crate::store::{CreateOutcome, IdempotencyKey, Page, Store, StoreError, TaskFilter};

use super::fingerprint::Fingerprint;
use super::{ObjectKind, RuntimeError};

/// Most tasks one CancelTask call cancels, its own descendants included;
/// bounds the work of one call on a pathological tree.
const MAX_CANCEL_CASCADE: usize = 10_000;

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

/// See the module docs.
pub struct TaskRegistry {
    /// Where tasks live.
    store: Arc<dyn Store>,
    /// Serialises read-modify-write of tasks; held only around synchronous
    /// store calls, never across an await.
    write_gate: Mutex<()>,
}

impl TaskRegistry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            write_gate: Mutex::new(()),
        }
    }

    fn gate(&self) -> Result<MutexGuard<'_, ()>, RuntimeError> {
        self.write_gate
            .lock()
            .map_err(|_| StoreError::Unavailable("task write gate poisoned".into()).into())
    }

    /// Creates a task in PENDING. Dependencies and the parent must exist.
    pub fn create(&self, request: NewTaskRequest) -> Result<Task, RuntimeError> {
        let fingerprint = request.fingerprint();
        let mut violations = ValidationError::default();
        let _gate = self.gate()?;
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
        let key = request
            .request_id
            .map(|key| IdempotencyKey { key, fingerprint });
        match self.store.create_task(task, key)? {
            CreateOutcome::Created(task) => {
                tracing::info!(task_id = %task.id, name = ?task.name, "task created");
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

    /// One task.
    pub fn get(&self, id: &str) -> Result<Task, RuntimeError> {
        self.store
            .get_task(id)?
            .ok_or_else(|| RuntimeError::task_not_found(id))
    }

    /// A page of tasks in creation order.
    pub fn list(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, RuntimeError> {
        Ok(self.store.list_tasks(filter, after, limit)?)
    }

    /// Applies a client's report to its task.
    pub fn update_progress(&self, id: &str, update: ProgressUpdate) -> Result<Task, RuntimeError> {
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
        let _gate = self.gate()?;
        let mut task = self.get(id)?;
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
        self.put(&task)?;
        Ok(task)
    }

    /// Cancels a task and its unfinished descendants. A finished task is
    /// returned unchanged. All or nothing: a tree larger than
    /// [`MAX_CANCEL_CASCADE`] is refused before anything is cancelled.
    pub fn cancel(&self, id: &str, reason: Option<String>) -> Result<Task, RuntimeError> {
        let _gate = self.gate()?;
        let mut task = self.get(id)?;
        if task.status().is_terminal() {
            return Ok(task);
        }
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
        self.cancel_one(&mut task, reason)?;
        for child_id in descendants {
            if let Some(mut child) = self.store.get_task(&child_id)?
                && !child.status().is_terminal()
            {
                self.cancel_one(&mut child, Some(format!("parent task {id} cancelled")))?;
            }
        }
        Ok(task)
    }

    fn cancel_one(&self, task: &mut Task, reason: Option<String>) -> Result<(), RuntimeError> {
        task.transition(TaskStatus::Cancelled).map_err(|source| {
            RuntimeError::IllegalTransition {
                task_id: task.id.clone(),
                source,
            }
        })?;
        if reason.is_some() {
            task.progress_message = reason;
        }
        self.put(task)?;
        tracing::info!(task_id = %task.id, "task cancelled");
        Ok(())
    }

    /// Moves a failed task with retries left to RETRYING.
    pub fn retry(&self, id: &str) -> Result<Task, RuntimeError> {
        let _gate = self.gate()?;
        let mut task = self.get(id)?;
        task.retry().map_err(|e| RuntimeError::FailedPrecondition {
            kind: ObjectKind::Task,
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        self.put(&task)?;
        Ok(task)
    }

    fn put(&self, task: &Task) -> Result<(), RuntimeError> {
        if self.store.put_task(task)? {
            Ok(())
        } else {
            Err(RuntimeError::task_not_found(&task.id))
        }
    }
}
