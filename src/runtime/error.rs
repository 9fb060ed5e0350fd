//! The runtime's error type: everything a caller of the runtime can be told.
//! It knows nothing of gRPC; `api::status` maps it onto status codes.

use std::time::Duration;

use crate::model::{TransitionError, ValidationError};
use crate::store::StoreError;

/// The seed's error classes, sent to clients as `google.rpc.ErrorInfo.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The seed's base `RuntimeError`: something went wrong inside the runtime.
    Runtime,
    /// The seed's `TaskError`.
    Task,
    /// The seed's `WorkflowError`.
    Workflow,
    /// The seed's `ValidationError`.
    Validation,
    /// The seed's `ConfigurationError`.
    Configuration,
}

impl ErrorClass {
    /// The seed's class name, e.g. `TaskError`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "RuntimeError",
            Self::Task => "TaskError",
            Self::Workflow => "WorkflowError",
            Self::Validation => "ValidationError",
            Self::Configuration => "ConfigurationError",
        }
    }
}

/// What kind of object an error is about; names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A task.
    Task,
    /// A registered workflow.
    Workflow,
    /// A workflow execution.
    Execution,
}

impl ObjectKind {
    /// Lowercase name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Workflow => "workflow",
            Self::Execution => "execution",
        }
    }

    /// The error class errors about this kind of object belong to.
    pub fn class(self) -> ErrorClass {
        match self {
            Self::Task => ErrorClass::Task,
            Self::Workflow | Self::Execution => ErrorClass::Workflow,
        }
    }
}

/// Every way a runtime operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Input broke a validation rule; carries every violated field.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// No object with that id (and version).
    #[error("{} {id}{} not found", kind.as_str(), version.as_deref().map(|v| format!(" version {v}")).unwrap_or_default())]
    NotFound {
        /// What was looked up.
        kind: ObjectKind,
        /// Its id.
        id: String,
        /// The version asked for, if any.
        version: Option<String>,
    },
    /// An idempotency key or id/version was reused with a different body.
    #[error("{} {id} already exists: {reason}", kind.as_str())]
    AlreadyExists {
        /// What already exists.
        kind: ObjectKind,
        /// Its id.
        id: String,
        /// Why the request conflicts with it.
        reason: String,
    },
    /// A task status change the state machine forbids.
    #[error("task {task_id}: {source}")]
    IllegalTransition {
        /// The task.
        task_id: String,
        /// Which transition was refused.
        source: TransitionError,
    },
    /// The object is in a state that does not allow the operation.
    #[error("{} {id}: {reason}", kind.as_str())]
    FailedPrecondition {
        /// What the operation was on.
        kind: ObjectKind,
        /// Its id.
        id: String,
        /// Why it cannot be done now.
        reason: String,
    },
    /// Admission control refused the work; try again after `retry_after`.
    #[error("{what} is full, retry after {retry_after:?}")]
    ResourceExhausted {
        /// What is full ("task queue").
        what: String,
        /// When trying again makes sense.
        retry_after: Duration,
    },
    /// A resume point that is no longer retained (events before `oldest` are gone).
    #[error("sequence {after} is no longer retained; the oldest event kept is {oldest}")]
    OutOfRange {
        /// The sequence asked to resume after.
        after: u64,
        /// The oldest sequence still kept (0 when none).
        oldest: u64,
    },
    /// A resume point newer than the newest event: this runtime never
    /// published it (a typo, or a sequence from a store that was replaced).
    #[error(
        "sequence {after} has not been published; the newest event is {newest} (resume after it, or omit after_sequence to start from now)"
    )]
    SequenceAhead {
        /// The sequence asked to resume after.
        after: u64,
        /// The newest sequence published.
        newest: u64,
    },
    /// The server is draining: an open stream ends; resume after
    /// `last_sequence` once it (or another replica) is back.
    #[error("the server is shutting down; resume after sequence {last_sequence}")]
    StreamClosed {
        /// The last sequence the stream passed (delivered or filtered out).
        last_sequence: u64,
    },
    /// A subscriber fell further behind than the retained history: resume
    /// after `last_sequence`, which every delivered event precedes or equals.
    #[error(
        "the subscriber fell behind the retained events; resume after sequence {last_sequence}"
    )]
    SubscriberBehind {
        /// The last sequence the subscriber was given (or that its filter skipped).
        last_sequence: u64,
    },
    /// The runtime is shutting down or a dependency is unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The store failed; details are logged, not sent to clients.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RuntimeError {
    /// The seed's error class this error belongs to.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Validation(_) => ErrorClass::Validation,
            Self::NotFound { kind, .. }
            | Self::AlreadyExists { kind, .. }
            | Self::FailedPrecondition { kind, .. } => kind.class(),
            Self::IllegalTransition { .. } => ErrorClass::Task,
            Self::ResourceExhausted { .. }
            | Self::Unavailable(_)
            | Self::Store(_)
            | Self::OutOfRange { .. }
            | Self::SequenceAhead { .. }
            | Self::StreamClosed { .. }
            | Self::SubscriberBehind { .. } => ErrorClass::Runtime,
        }
    }

    /// Shorthand for a missing task.
    pub fn task_not_found(id: &str) -> Self {
        Self::NotFound {
            kind: ObjectKind::Task,
            id: id.to_owned(),
            version: None,
        }
    }

    /// Shorthand for a missing execution.
    pub fn execution_not_found(id: &str) -> Self {
        Self::NotFound {
            kind: ObjectKind::Execution,
            id: id.to_owned(),
            version: None,
        }
    }

    /// Shorthand for a missing workflow (version).
    pub fn workflow_not_found(id: &str, version: Option<&str>) -> Self {
        Self::NotFound {
            kind: ObjectKind::Workflow,
            id: id.to_owned(),
            version: version.map(str::to_owned),
        }
    }
}
