//! Why an attempt of an execution failed ([`Failure`]) and the error classes
//! its tasks report ([`FailureKind`]).
//!
//! The bottom of the executor's imports: it imports nothing of the executor.
//! The attempts produce failures, the messages carry them, the actor decides
//! from `transient` whether to retry.

/// Why an attempt failed, and whether that class of failure is retried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    /// The class.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
    /// Whether a retry may succeed.
    pub transient: bool,
}

impl Failure {
    pub(crate) fn transient(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transient: true,
        }
    }

    pub(crate) fn permanent(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transient: false,
        }
    }
}

/// The error classes of failed executions (their tasks' `error_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// ComfyUI refused the prompt (400) or the request.
    Rejected,
    /// A node raised an exception.
    NodeExecution,
    /// The GPU ran out of memory (transient).
    OutOfMemory,
    /// The running time passed the execution's timeout.
    Timeout,
    /// The backend went silent about the prompt (transient).
    Stalled,
    /// The backend could not be reached or answered 5xx (transient).
    BackendUnavailable,
    /// The backend lost the prompt (transient).
    PromptLost,
    /// No backend can run the workflow.
    NoBackend,
    /// Interrupted by someone else than this runtime.
    Interrupted,
}

impl FailureKind {
    /// The `error_type` spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "ValidationError",
            Self::NodeExecution => "NodeExecutionError",
            Self::OutOfMemory => "OutOfMemoryError",
            Self::Timeout => "TimeoutError",
            Self::Stalled => "StalledError",
            Self::BackendUnavailable => "BackendUnavailableError",
            Self::PromptLost => "PromptLostError",
            Self::NoBackend => "NoBackendError",
            Self::Interrupted => "InterruptedError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureKind;
    use crate::telemetry::metrics::RETRY_ERROR_TYPES;

    /// Every class the retry counter can be labelled with exists at 0 from
    /// the first scrape, so the list there must name each one.
    #[test]
    fn the_retry_counter_starts_with_every_failure_class() {
        let all = [
            FailureKind::Rejected,
            FailureKind::NodeExecution,
            FailureKind::OutOfMemory,
            FailureKind::Timeout,
            FailureKind::Stalled,
            FailureKind::BackendUnavailable,
            FailureKind::PromptLost,
            FailureKind::NoBackend,
            FailureKind::Interrupted,
        ];
        for kind in all {
            // An exhaustive match: a new class fails to compile here until it
            // is added to `all` above.
            match kind {
                FailureKind::Rejected
                | FailureKind::NodeExecution
                | FailureKind::OutOfMemory
                | FailureKind::Timeout
                | FailureKind::Stalled
                | FailureKind::BackendUnavailable
                | FailureKind::PromptLost
                | FailureKind::NoBackend
                | FailureKind::Interrupted => {}
            }
            assert!(RETRY_ERROR_TYPES.contains(&kind.as_str()), "{kind:?}");
        }
        assert_eq!(RETRY_ERROR_TYPES.len(), all.len());
    }
}
