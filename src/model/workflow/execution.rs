//! One run of a workflow ([`WorkflowExecution`]): its status and progress,
//! which follow the task state machine and [0, 1], its tasks, outputs,
//! artifacts and metrics, and the record a store keeps of it.
//!
//! Imports only the task model; nothing of the workflow's graph.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::task::{Task, TaskMetrics, TaskStatus};
use crate::model::{
    JsonObject, ValidationError, check_non_negative, check_progress, index_path, key_path,
    validate_id, validate_json_object,
};

/// A status change the state machine forbids, for an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal workflow execution transition from {from} to {to}")]
pub struct ExecutionTransitionError {
    /// The execution's status when the change was asked for.
    pub from: TaskStatus,
    /// The status asked for.
    pub to: TaskStatus,
}

/// What a caller supplies to start an execution record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewExecution {
    /// The execution's id; `None` makes a fresh UUID v4.
    pub id: Option<String>,
    /// The workflow being run.
    pub workflow_id: String,
    /// The ComfyUI client id the prompt was posted under; `None` (empty) until
    /// the execution is first dispatched: it is the backend socket's, and the
    /// backend is chosen at dispatch.
    pub client_id: Option<String>,
    /// The task that drives the whole run.
    pub root_task_id: Option<String>,
    /// Run configuration.
    pub config: JsonObject,
    /// Environment variables for the run.
    pub environment: BTreeMap<String, String>,
    /// The registered version that runs; `None` for an inline workflow.
    pub workflow_version: Option<String>,
}

/// Every field of an execution in plain form: what a store persists and hands
/// back to [`WorkflowExecution::restore`]. Also its serde shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// See [`WorkflowExecution::id`].
    pub id: String,
    /// See [`WorkflowExecution::workflow_id`].
    pub workflow_id: String,
    /// See [`WorkflowExecution::client_id`].
    pub client_id: String,
    /// See [`WorkflowExecution::status`].
    pub status: TaskStatus,
    /// See [`WorkflowExecution::progress`].
    pub progress: f64,
    /// See [`WorkflowExecution::root_task_id`].
    pub root_task_id: Option<String>,
    /// See [`WorkflowExecution::tasks`].
    pub tasks: Vec<Task>,
    /// See [`WorkflowExecution::outputs`].
    pub outputs: JsonObject,
    /// See [`WorkflowExecution::artifacts`].
    pub artifacts: Vec<String>,
    /// See [`WorkflowExecution::total_duration_seconds`].
    pub total_duration_seconds: Option<f64>,
    /// See [`WorkflowExecution::node_metrics`].
    pub node_metrics: BTreeMap<String, TaskMetrics>,
    /// See [`WorkflowExecution::config`].
    pub config: JsonObject,
    /// See [`WorkflowExecution::environment`].
    pub environment: BTreeMap<String, String>,
    /// See [`WorkflowExecution::created_at`].
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// See [`WorkflowExecution::updated_at`].
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub updated_at: Option<DateTime<Utc>>,
    /// See [`WorkflowExecution::workflow_version`].
    #[serde(default)]
    pub workflow_version: Option<String>,
    /// See [`WorkflowExecution::backend`].
    #[serde(default)]
    pub backend: Option<String>,
    /// See [`WorkflowExecution::prompt_id`].
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// See [`WorkflowExecution::ownership`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<crate::model::Ownership>,
}

/// One run of a workflow (the seed's `WorkflowExecution`). Status and
/// progress are private and follow the task state machine and [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ExecutionRecord")]
pub struct WorkflowExecution {
    /// Unique id (a UUID v4 unless the creator chose one).
    pub id: String,
    /// The workflow being run.
    pub workflow_id: String,
    /// The ComfyUI client id the prompt was posted under (the backend socket's);
    /// empty until the execution is first dispatched, and it changes if a retry
    /// runs on another backend.
    pub client_id: String,
    /// Where the run is; see [`WorkflowExecution::transition`].
    status: TaskStatus,
    /// Fraction done in [0, 1]; see [`WorkflowExecution::set_progress`].
    progress: f64,
    /// The task that drives the whole run.
    pub root_task_id: Option<String>,
    /// The run's tasks.
    pub tasks: Vec<Task>,
    /// Outputs by node id, as the backend reported them.
    pub outputs: JsonObject,
    /// Paths or URLs of produced files.
    pub artifacts: Vec<String>,
    /// Wall time of the whole run, in seconds.
    pub total_duration_seconds: Option<f64>,
    /// Metrics by node id.
    pub node_metrics: BTreeMap<String, TaskMetrics>,
    /// Run configuration.
    pub config: JsonObject,
    /// Environment variables for the run.
    pub environment: BTreeMap<String, String>,
    /// When the run was created.
    #[serde(serialize_with = "crate::model::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the run last changed.
    #[serde(serialize_with = "crate::model::timestamp::serialize_option")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The registered version that runs; `None` for an inline workflow (not in the seed).
    pub workflow_version: Option<String>,
    /// The backend the current or last attempt went to (not in the seed).
    pub backend: Option<String>,
    /// The ComfyUI prompt id of the current or last attempt (not in the seed).
    pub prompt_id: Option<String>,
    /// Who created it (not in the seed); `None` for work created without authentication.
    pub ownership: Option<crate::model::Ownership>,
}

impl WorkflowExecution {
    /// Validates `new` and builds a pending execution with progress 0.
    pub fn new(new: NewExecution) -> Result<Self, ValidationError> {
        let execution = WorkflowExecution {
            id: new.id.unwrap_or_else(crate::model::new_id),
            workflow_id: new.workflow_id,
            client_id: new.client_id.unwrap_or_default(),
            status: TaskStatus::Pending,
            progress: 0.0,
            root_task_id: new.root_task_id,
            tasks: Vec::new(),
            outputs: JsonObject::new(),
            artifacts: Vec::new(),
            total_duration_seconds: None,
            node_metrics: BTreeMap::new(),
            config: new.config,
            environment: new.environment,
            created_at: Utc::now(),
            updated_at: None,
            workflow_version: new.workflow_version,
            backend: None,
            prompt_id: None,
            ownership: None,
        };
        execution.validate()?;
        Ok(execution)
    }

    /// Rebuilds an execution in any status from a record, checking every rule.
    pub fn restore(record: ExecutionRecord) -> Result<Self, ValidationError> {
        let execution = WorkflowExecution {
            id: record.id,
            workflow_id: record.workflow_id,
            client_id: record.client_id,
            status: record.status,
            progress: record.progress,
            root_task_id: record.root_task_id,
            tasks: record.tasks,
            outputs: record.outputs,
            artifacts: record.artifacts,
            total_duration_seconds: record.total_duration_seconds,
            node_metrics: record.node_metrics,
            config: record.config,
            environment: record.environment,
            created_at: record.created_at,
            updated_at: record.updated_at,
            workflow_version: record.workflow_version,
            backend: record.backend,
            prompt_id: record.prompt_id,
            ownership: record.ownership,
        };
        execution.validate()?;
        Ok(execution)
    }

    /// The execution as a plain record (for a store).
    pub fn to_record(&self) -> ExecutionRecord {
        ExecutionRecord {
            id: self.id.clone(),
            workflow_id: self.workflow_id.clone(),
            client_id: self.client_id.clone(),
            status: self.status,
            progress: self.progress,
            root_task_id: self.root_task_id.clone(),
            tasks: self.tasks.clone(),
            outputs: self.outputs.clone(),
            artifacts: self.artifacts.clone(),
            total_duration_seconds: self.total_duration_seconds,
            node_metrics: self.node_metrics.clone(),
            config: self.config.clone(),
            environment: self.environment.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            workflow_version: self.workflow_version.clone(),
            backend: self.backend.clone(),
            prompt_id: self.prompt_id.clone(),
            ownership: self.ownership.clone(),
        }
    }

    /// Checks every rule: ids, progress in [0, 1], a finite non-negative
    /// duration, valid tasks and node metrics, JSON objects, non-empty
    /// environment names.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = ValidationError::new();
        errors.absorb(validate_id("id", &self.id));
        errors.absorb(validate_id("workflow_id", &self.workflow_id));
        if !self.client_id.is_empty() {
            errors.absorb(validate_id("client_id", &self.client_id));
        }
        if let Some(root) = &self.root_task_id {
            errors.absorb(validate_id("root_task_id", root));
        }
        errors.absorb(check_progress("progress", self.progress));
        check_non_negative(
            &mut errors,
            "total_duration_seconds",
            self.total_duration_seconds,
        );
        for (i, task) in self.tasks.iter().enumerate() {
            if let Err(e) = task.validate() {
                errors.extend(e.prefixed(&index_path("tasks", i)));
            }
        }
        for (node, metrics) in &self.node_metrics {
            if let Err(e) = metrics.validate() {
                errors.extend(e.prefixed(&key_path("node_metrics", node)));
            }
        }
        errors.absorb(validate_json_object("outputs", &self.outputs));
        errors.absorb(validate_json_object("config", &self.config));
        if self.environment.keys().any(|k| k.trim().is_empty()) {
            errors.push("environment", "variable names must not be empty");
        }
        errors.into_result()
    }

    /// Where the run is.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Fraction done, in [0, 1].
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// The status is terminal.
    pub fn is_complete(&self) -> bool {
        self.status.is_terminal()
    }

    /// How many tasks are complete (terminal), as the seed counts them.
    pub fn completed_tasks(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_complete()).count()
    }

    /// How many tasks failed.
    pub fn failed_tasks(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.status() == TaskStatus::Failed)
            .count()
    }

    /// Sets `updated_at` to now, never moving it backwards.
    pub fn touch(&mut self) {
        let floor = self.updated_at.unwrap_or(self.created_at);
        self.updated_at = Some(Utc::now().max(floor));
    }

    /// Moves to `to` if the task state machine allows it
    /// ([`TaskStatus::can_transition_to`]); entering Completed sets progress
    /// to 1. Touches the execution.
    pub fn transition(&mut self, to: TaskStatus) -> Result<(), ExecutionTransitionError> {
        if !self.status.can_transition_to(to) {
            return Err(ExecutionTransitionError {
                from: self.status,
                to,
            });
        }
        self.status = to;
        if to == TaskStatus::Completed {
            self.progress = 1.0;
        }
        self.touch();
        Ok(())
    }

    /// Sets progress; NaN or outside [0, 1] is an error on `progress`.
    pub fn set_progress(&mut self, progress: f64) -> Result<(), ValidationError> {
        check_progress("progress", progress)?;
        self.progress = progress;
        self.touch();
        Ok(())
    }
}

impl TryFrom<ExecutionRecord> for WorkflowExecution {
    type Error = ValidationError;

    fn try_from(record: ExecutionRecord) -> Result<Self, Self::Error> {
        Self::restore(record)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::task::{NewTask, TaskType};

    fn execution() -> WorkflowExecution {
        WorkflowExecution::new(NewExecution {
            workflow_id: "wf".into(),
            ..NewExecution::default()
        })
        .unwrap()
    }

    fn task_with(status: TaskStatus) -> Task {
        let mut record = Task::new(NewTask::new("t", TaskType::Node))
            .unwrap()
            .to_record();
        record.status = status;
        Task::restore(record).unwrap()
    }

    #[test]
    fn execution_defaults_and_counts() {
        let mut ex = execution();
        assert_eq!(ex.status(), TaskStatus::Pending);
        assert_eq!(ex.progress(), 0.0);
        assert!(uuid::Uuid::parse_str(&ex.id).is_ok());
        assert_eq!(ex.client_id, "", "no client id before the first dispatch");
        assert_eq!((ex.completed_tasks(), ex.failed_tasks()), (0, 0));
        ex.tasks = TaskStatus::ALL.iter().map(|&s| task_with(s)).collect();
        ex.tasks.push(task_with(TaskStatus::Failed));
        // completed = terminal (completed, failed x2, cancelled); failed = 2.
        assert_eq!(ex.completed_tasks(), 4);
        assert_eq!(ex.failed_tasks(), 2);
        assert!(ex.validate().is_ok());
    }

    #[test]
    fn execution_state_and_progress() {
        let mut ex = execution();
        let e = ex.set_progress(1.5).unwrap_err();
        assert!(e.has_field("progress"));
        assert!(ex.updated_at.is_none());
        ex.set_progress(0.5).unwrap();
        assert!(ex.updated_at.is_some());
        assert_eq!(
            ex.transition(TaskStatus::Retrying),
            Err(ExecutionTransitionError {
                from: TaskStatus::Pending,
                to: TaskStatus::Retrying
            })
        );
        ex.transition(TaskStatus::Running).unwrap();
        ex.transition(TaskStatus::Completed).unwrap();
        assert!(ex.is_complete());
        assert_eq!(ex.progress(), 1.0);
        assert!(ex.transition(TaskStatus::Running).is_err());
        let first = ex.updated_at;
        ex.touch();
        assert!(ex.updated_at >= first);
    }

    #[test]
    fn execution_validation_rules() {
        type Edit = fn(&mut ExecutionRecord);
        let cases: Vec<(&str, Edit, Option<&str>)> = vec![
            ("valid", |_| {}, None),
            (
                "empty workflow",
                |r| r.workflow_id = String::new(),
                Some("workflow_id"),
            ),
            (
                "empty client",
                |r| r.client_id = " ".into(),
                Some("client_id"),
            ),
            ("empty id", |r| r.id = String::new(), Some("id")),
            (
                "empty root",
                |r| r.root_task_id = Some(String::new()),
                Some("root_task_id"),
            ),
            ("progress", |r| r.progress = -0.5, Some("progress")),
            ("progress nan", |r| r.progress = f64::NAN, Some("progress")),
            (
                "duration",
                |r| r.total_duration_seconds = Some(-1.0),
                Some("total_duration_seconds"),
            ),
            (
                "node metrics",
                |r| {
                    r.node_metrics.insert(
                        "3".into(),
                        TaskMetrics {
                            cpu_time: Some(-2.0),
                            ..TaskMetrics::default()
                        },
                    );
                },
                Some(r#"node_metrics["3"].cpu_time"#),
            ),
            (
                "task",
                |r| {
                    let mut t = Task::new(NewTask::new("t", TaskType::Node)).unwrap();
                    t.name = String::new();
                    r.tasks = vec![t];
                },
                Some("tasks[0].name"),
            ),
            (
                "env",
                |r| {
                    r.environment.insert(String::new(), "v".into());
                },
                Some("environment"),
            ),
            (
                "config",
                |r| {
                    r.config.insert(String::new(), json!(1));
                },
                Some("config"),
            ),
        ];
        for (label, edit, want) in cases {
            let mut record = execution().to_record();
            edit(&mut record);
            match (WorkflowExecution::restore(record), want) {
                (Ok(_), None) => {}
                (Err(e), Some(field)) => assert!(e.has_field(field), "{label}: {e}"),
                (got, want) => panic!("{label}: got {got:?}, want error on {want:?}"),
            }
        }
        let e = WorkflowExecution::new(NewExecution::default()).unwrap_err();
        assert!(e.has_field("workflow_id"));
        let mut ex = execution();
        ex.set_progress(0.25).unwrap();
        let text = serde_json::to_string(&ex).unwrap();
        assert_eq!(
            serde_json::from_str::<WorkflowExecution>(&text).unwrap(),
            ex
        );
    }
}
