//! What the scheduler hands back to its caller: the actions to carry out,
//! the outcomes of cancels and take-backs, and the views its queries return
//! (locations, backend states, stranded executions). Plain values; nothing
//! here changes the scheduler's state.

use std::sync::Arc;

#[cfg(doc)] // Only the doc links name it.
use super::Scheduler;
use super::ids::{BackendId, ExecutionId, RequiredClasses};
use crate::model::TaskPriority;

/// Something the executor must do now, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// POST the execution's prompt to the backend (never with `front`).
    /// A POST that fails is reported with [`Scheduler::prompt_finished`].
    Dispatch {
        /// The execution.
        id: ExecutionId,
        /// The backend to send it to.
        backend: BackendId,
    },
    /// Delete the execution from the backend's queue, then report
    /// [`Scheduler::taken_back`] or, if it had already started,
    /// [`Scheduler::take_back_failed`].
    TakeBack {
        /// The execution.
        id: ExecutionId,
        /// The backend whose queue holds it.
        backend: BackendId,
    },
    /// Interrupt the execution's running prompt (it was cancelled while
    /// running); report [`Scheduler::prompt_finished`] when it ends.
    Interrupt {
        /// The execution.
        id: ExecutionId,
        /// The backend running it.
        backend: BackendId,
    },
}

impl Action {
    /// The execution the action is about.
    pub fn id(&self) -> ExecutionId {
        match *self {
            Self::Dispatch { id, .. } | Self::TakeBack { id, .. } | Self::Interrupt { id, .. } => {
                id
            }
        }
    }

    /// The backend the action is about.
    pub fn backend(&self) -> BackendId {
        match *self {
            Self::Dispatch { backend, .. }
            | Self::TakeBack { backend, .. }
            | Self::Interrupt { backend, .. } => backend,
        }
    }
}

/// What [`Scheduler::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is gone: the caller marks it cancelled now.
    Removed,
    /// The scheduler does not hold it (finished, already cancelled or never
    /// submitted): cancelling it is not an error.
    NotFound,
    /// It waits in a backend's queue; a [`Action::TakeBack`] is (or was
    /// already) on its way. [`Scheduler::taken_back`] then forgets it, or
    /// [`Scheduler::take_back_failed`] turns into an [`Action::Interrupt`].
    TakingBack {
        /// The backend holding it.
        backend: BackendId,
    },
    /// It is running; an [`Action::Interrupt`] is (or was already) on its way
    /// and [`Scheduler::prompt_finished`] frees its slot.
    Interrupting {
        /// The backend running it.
        backend: BackendId,
    },
}

/// What [`Scheduler::taken_back`] did with the execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakenBackOutcome {
    /// It is queued again at its original place.
    Requeued,
    /// Its cancel had been requested: the scheduler forgot it and the caller
    /// marks it cancelled.
    Cancelled,
}

/// An execution that was on a backend when it went down; the scheduler has
/// forgotten it and the executor reconciles it (history check, retry, fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphaned {
    /// The execution.
    pub id: ExecutionId,
    /// Whether it had been reported started.
    pub started: bool,
    /// Whether its cancel had been requested.
    pub cancel_requested: bool,
}

/// Where the scheduler holds an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the runtime's queue.
    Queued {
        /// Its priority.
        priority: TaskPriority,
    },
    /// Dispatched to a backend, not reported started.
    Waiting {
        /// The backend.
        backend: BackendId,
        /// Whether a take-back of it is in flight.
        taking_back: bool,
    },
    /// Running on a backend.
    Running {
        /// The backend.
        backend: BackendId,
    },
}

/// One backend as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// Whether it is up (eligible for new work).
    pub up: bool,
    /// The execution it reported started, if any.
    pub running: Option<ExecutionId>,
    /// Executions dispatched to it and not started, in its queue's order.
    pub waiting: Vec<ExecutionId>,
    /// The execution whose preemption take-back is in flight, if any.
    pub preempting: Option<ExecutionId>,
}

impl BackendStatus {
    /// Running plus waiting.
    pub fn load(&self) -> usize {
        usize::from(self.running.is_some()) + self.waiting.len()
    }
}

/// Queued executions that no up backend can run, grouped by what they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    /// The classes they require.
    pub required: RequiredClasses,
    /// Required classes that no up backend has at all (empty when each class
    /// exists somewhere but no single backend has them all).
    pub missing: Vec<Arc<str>>,
    /// Whether some known backend that is down now could run them (so waiting
    /// for it may help).
    pub runnable_by_down_backend: bool,
    /// The executions, in queue order.
    pub ids: Vec<ExecutionId>,
}
