//! The messages between the executor's tasks: [`Msg`], what the handle, the
//! attempts, the probers and timers send the actor, with its payloads
//! ([`Outcome`], [`Found`]); and [`Control`], what the actor sends a running
//! attempt.
//!
//! Imports point down only, to [`failure`](super::failure), the scheduler's
//! ids and the model: every task of the executor imports this module, and it
//! imports none of them.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::model::{JsonObject, Task, WorkflowExecution};
use crate::runtime::RuntimeError;
use crate::runtime::scheduler::{BackendId, DeviceReport, ExecutionId};
use crate::store::NewExecutionRecord;

use super::failure::Failure;

/// Node id -> its NODE task id, in the prompt's order.
pub(crate) type NodeTasks = indexmap::IndexMap<String, String>;

/// A new execution as the handle hands it to the actor: what the actor
/// would otherwise read back from the store, and the record itself when the
/// actor is to store it.
pub(crate) struct Admitted {
    /// The execution record as stored.
    pub(crate) execution: Arc<WorkflowExecution>,
    /// Its root task as stored.
    pub(crate) root: Arc<Task>,
    /// The record to store, when the handle has not stored it (a submission
    /// without an idempotency key: the actor's write of the turn stores it
    /// with what the turn does to it, one commit).
    pub(crate) unstored: Option<NewExecutionRecord>,
    /// The node classes it needs.
    pub(crate) required: Vec<String>,
    /// The prompt's JSON text, as stored (posted as it is; held while it waits for a later
    /// dispatch).
    pub(crate) prompt: bytes::Bytes,
}

/// What the actor made of a submitted execution in the turn that admitted
/// it, as it answers the handle: the record and tasks as that turn left them
/// (PENDING, QUEUED or dispatched), and the queue position.
pub(crate) struct Submitted {
    /// The execution record.
    pub(crate) execution: Option<WorkflowExecution>,
    /// Its root task and NODE tasks (in the prompt's order).
    pub(crate) tasks: Vec<Task>,
    /// Queued executions ahead of it.
    pub(crate) position: Option<u32>,
}

/// Inputs of the actor.
pub(crate) enum Msg {
    /// A stored execution to admit.
    Submit {
        /// The execution, already stored, with what admitting it needs.
        admitted: Box<Admitted>,
        /// Answered at the end of the turn, its writes handed over.
        reply: oneshot::Sender<Submitted>,
    },
    /// Cancel an execution.
    Cancel {
        /// The execution.
        execution_id: String,
        /// Why, as the client gave it.
        reason: Option<String>,
        /// Answered once the cancel is decided (not necessarily confirmed).
        reply: oneshot::Sender<()>,
    },
    /// Run a FAILED execution again (RetryTask).
    Retry {
        /// The execution.
        execution_id: String,
        /// Whether it was admitted again.
        reply: oneshot::Sender<Result<(), RuntimeError>>,
    },
    /// Where an execution is in the queue.
    Position {
        /// The execution.
        execution_id: String,
        /// Queued executions ahead of it; `None` when it is not queued.
        reply: oneshot::Sender<Option<u32>>,
    },
    /// A backend answers, with its node classes.
    BackendUp {
        /// The backend.
        backend: BackendId,
        /// Its node classes, from `/object_info`.
        classes: Vec<String>,
    },
    /// A backend's devices, as its `/system_stats` reported them.
    BackendDevices {
        /// The backend.
        backend: BackendId,
        /// Device types and GPU memory.
        report: DeviceReport,
    },
    /// A backend stopped answering.
    BackendDown {
        /// The backend.
        backend: BackendId,
    },
    /// An attempt's prompt was accepted.
    Posted {
        /// The execution.
        sched: ExecutionId,
        /// The attempt reporting.
        attempt: u64,
        /// The prompt id the backend answered.
        prompt_id: String,
        /// The ComfyUI client id it was posted under.
        client_id: String,
    },
    /// An attempt's prompt started executing.
    Started {
        /// The execution.
        sched: ExecutionId,
        /// The attempt reporting.
        attempt: u64,
    },
    /// An attempt ended.
    Finished {
        /// The execution.
        sched: ExecutionId,
        /// The attempt reporting.
        attempt: u64,
        /// How it ended.
        outcome: Outcome,
        /// The NODE tasks this attempt left ended (terminal): the actor
        /// does not read them again to settle the execution's nodes.
        ended: HashSet<String>,
    },
    /// A take-back ended: `taken` when the prompt left the backend's queue.
    TakeBackDone {
        /// The execution.
        sched: ExecutionId,
        /// The attempt taken back.
        attempt: u64,
        /// Whether the prompt left the backend's queue.
        taken: bool,
    },
    /// A retry's back-off elapsed.
    RetryDue {
        /// The execution.
        sched: ExecutionId,
        /// The attempt that failed (a newer one makes this stale).
        attempt: u64,
    },
    /// Where a backend has the prompt of an execution recovered after a
    /// restart of the runtime.
    Reconciled {
        /// The execution.
        sched: ExecutionId,
        /// Its attempt count when the backend was asked.
        attempt: u64,
        /// What the backend knows.
        found: Found,
    },
}

/// What a backend knows of a recovered execution's prompt.
pub(crate) enum Found {
    /// It ended; its outcome (artifacts downloaded).
    Ended(Outcome),
    /// It runs there now.
    Running,
    /// It waits in the backend's queue.
    Pending,
    /// The backend has no record of it (it restarted too).
    Unknown,
    /// The backend could not be asked.
    Unreachable,
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The prompt succeeded and its artifacts are on disk.
    Success {
        /// Outputs per node.
        outputs: JsonObject,
        /// Artifact paths.
        artifacts: Vec<String>,
    },
    /// The prompt was interrupted: by our cancel, or by someone else.
    Interrupted,
    /// It failed; the failure says whether to retry.
    Failed(Failure),
}

/// Requests from the actor to a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Interrupt the prompt (it was cancelled).
    Interrupt,
}
