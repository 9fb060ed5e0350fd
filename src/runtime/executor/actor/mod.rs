//! The executor's actor: the one task that owns the scheduler and decides
//! every change of an execution's status. Inputs arrive as [`Msg`]s (from the
//! API handle, the attempts, the probers, timers) and as "task ended" notices
//! from the task registry (for dependencies); outputs are the scheduler's
//! actions (dispatch, take back, interrupt) carried out by spawned tasks.
//!
//! Imports point down only: to [`attempt`](super::attempt) (which it spawns)
//! and to [`messages`](super::messages), [`failure`](super::failure),
//! [`shared`](super::shared) and [`pool`](super::pool); the handle
//! (`executor/mod.rs`) imports this module, never the reverse.
//!
//! This file holds the actor's state, its loop and the dispatch of each
//! [`Msg`] to its handler, plus the small helpers every part uses. The
//! handlers are split by concern, each one more `impl Actor` block that
//! imports from this file and the executor's lower modules (never from
//! another part):
//!
//! - [`admission`]: loading an execution, waiting for its dependencies;
//! - [`dispatch`]: queueing, the scheduler's actions (dispatch, take back,
//!   interrupt), the attempts' "posted" and "started" reports;
//! - [`backends`]: backends going up and down;
//! - [`gpu`]: backends' devices and holds, the peak GPU memory of a running prompt;
//! - [`retry`]: retries with back-off, RetryTask;
//! - [`cancel`]: cancellation on request;
//! - [`endings`]: the end of an execution (completed, failed, cancelled);
//! - [`recovery`]: taking executions back after a restart of the runtime.

mod admission;
mod backends;
mod cancel;
mod dispatch;
mod endings;
mod gpu;
mod recovery;
mod retry;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{Task, TaskPriority, TaskStatus, TransitionError};
use crate::runtime::RuntimeError;
use crate::runtime::bus::{Batch, EventContext};
use crate::runtime::scheduler::{
    BackendId, ExecutionId, RequiredClasses, Scheduler, SchedulerConfig,
};
use crate::store::{OwedWakes, WakeHold};

use super::messages::{Control, Msg, NodeTasks};
use super::shared::Shared;
use crate::model::FastMap;

/// How an execution enters the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Just submitted: wait for dependencies, then queue.
    Fresh,
    /// A retry (manual, or RETRYING/QUEUED after a restart): queue now.
    Retry,
    /// RUNNING when the runtime stopped: hold until its backend answers.
    Recovering,
}

/// Where a live execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// PENDING: waiting for dependencies.
    WaitingDeps,
    /// In the scheduler (queued or on a backend).
    Scheduled,
    /// RETRYING: back-off running.
    RetryWait,
    /// RUNNING when the runtime stopped: waiting for its backend to say
    /// where the prompt is.
    Recovering,
}

/// The current attempt of a live execution.
struct Run {
    /// The backend it was handed to.
    backend: BackendId,
    /// The prompt id the server answered (set once posted).
    prompt_id: Option<String>,
    /// Requests to the attempt task (interrupt).
    control: mpsc::UnboundedSender<Control>,
    /// Stops the attempt task without a word to the backend.
    abandon: CancellationToken,
    /// A take-back was decided before the prompt was posted.
    take_back_pending: bool,
    /// The peak GPU memory of the backend's process since the prompt started.
    gpu_peak: Option<crate::gpu::ProcessPeak>,
}

/// An execution the actor holds (not terminal).
struct Live {
    /// The execution's id, shared with `Actor::by_id`'s key.
    id: Arc<str>,
    /// Its root task's id, shared with `Actor::by_root`'s key.
    root: Arc<str>,
    /// Its priority (its root task's).
    priority: crate::model::TaskPriority,
    /// The node classes a backend needs to run it.
    required: RequiredClasses,
    /// Node id -> its NODE task id (empty before the first dispatch).
    node_tasks: Arc<NodeTasks>,
    /// Its running-time limit.
    timeout: Duration,
    /// Where it is.
    phase: Phase,
    /// Dispatches so far; identifies the current attempt's reports.
    attempt: u64,
    /// Boxed: most live executions are queued, with no run.
    run: Option<Box<Run>>,
    /// Set when a cancel was requested, with its reason.
    cancel_reason: Option<String>,
    /// When it last entered the runtime's queue.
    queued_at: std::time::Instant,
    /// Its workflow.
    workflow_id: String,
    /// Its tags.
    tags: Vec<String>,
    /// For a recovered RUNNING execution: its backend's name and prompt id.
    recovered: Option<(String, String)>,
}

/// The actor's state: the scheduler and every execution not ended.
pub(crate) struct Actor {
    /// State shared with the handle and the attempts.
    shared: Arc<Shared>,
    /// Its own inbox, for the tasks it spawns to report back.
    tx: mpsc::UnboundedSender<Msg>,
    /// Where it spawns attempts, take-backs, timers and reconciliations.
    tracker: TaskTracker,
    /// Queue order, slots and backends (pure logic).
    scheduler: Scheduler,
    /// The executions it holds, by scheduler id. Boxed: a `Live` is over 200 bytes, and a
    /// table of them holds a bucket for each of its slots (twice the entries at most), every
    /// page of it touched: at a million queued, half a gigabyte, and each insert wrote its
    /// `Live` into a cold page of it.
    live: FastMap<ExecutionId, Box<Live>>,
    /// Execution id -> scheduler id.
    by_id: FastMap<Arc<str>, ExecutionId>,
    /// Root task id -> scheduler id (for dependencies).
    by_root: FastMap<Arc<str>, ExecutionId>,
    /// The next scheduler id.
    next_sched: u64,
    /// Starts reported before the prompt ahead of them on the backend was
    /// reported finished (their messages raced); applied after it finishes.
    deferred_starts: Vec<(ExecutionId, BackendId)>,
    /// One shared copy of each required-class list (see `intern`).
    interned: HashSet<RequiredClasses>,
    /// The empty NODE task map every never-dispatched execution shares.
    no_nodes: Arc<NodeTasks>,
    /// The encoded prompts of executions waiting for their first dispatch.
    held_prompts: HeldPrompts,
    /// The executions submitted in this turn, answered when it ends.
    answers: Vec<Answer>,
    /// The load as last published (see `publish_gauges`).
    published: PublishedLoad,
    /// While an attempt's end is handled: the NODE tasks it left ended, which
    /// settling the nodes skips instead of reading each from the store.
    ended_nodes: HashSet<String>,
    /// Whether this turn spawned an attempt that posts its prompt without waiting for a
    /// commit (its execution's creation is in the turn's write, or its prompt id could not be
    /// recorded): the store's writer is then woken after that post (see `end_turn`).
    posts_at_once: bool,
}

/// The priorities, in the order of [`LoadSnapshot::queued`] (CRITICAL first).
const PRIORITIES: [TaskPriority; 4] = [
    TaskPriority::Critical,
    TaskPriority::High,
    TaskPriority::Normal,
    TaskPriority::Low,
];

/// What `publish_gauges` last published; `None` before the first time.
#[derive(Default)]
struct PublishedLoad {
    queued: Option<[usize; PRIORITIES.len()]>,
    running: Option<usize>,
    on_backend: Vec<usize>,
}

/// The most bytes of encoded prompts the actor holds (see [`HeldPrompts`]): 8,192 prompts of
/// 1 KiB, a few hundred bytes per queued execution at 100,000 queued.
const HELD_PROMPT_BYTES: usize = 8 << 20;

/// The encoded prompts of executions submitted to this runtime, held from their submission
/// to their first dispatch (or their end), so that dispatching one that waited in the queue
/// does not read the store on the actor's thread. At most [`HELD_PROMPT_BYTES`] in all; a
/// prompt beyond it, a retry and an execution recovered after a restart are read from the
/// store when dispatched.
#[derive(Default)]
struct HeldPrompts {
    /// By execution.
    prompts: FastMap<ExecutionId, bytes::Bytes>,
    /// Their lengths added up.
    bytes: usize,
}

impl HeldPrompts {
    /// Holds `prompt` for `sched` when it fits in what is left of the budget.
    fn hold(&mut self, sched: ExecutionId, prompt: bytes::Bytes) {
        if self.bytes + prompt.len() > HELD_PROMPT_BYTES {
            return;
        }
        self.bytes += prompt.len();
        if let Some(replaced) = self.prompts.insert(sched, prompt) {
            self.bytes -= replaced.len();
        }
    }

    /// The prompt held for `sched`, no longer held.
    fn take(&mut self, sched: ExecutionId) -> Option<bytes::Bytes> {
        let prompt = self.prompts.remove(&sched)?;
        self.bytes -= prompt.len();
        Some(prompt)
    }
}

/// A submitted execution waiting for its answer at the end of the turn.
struct Answer {
    /// The execution.
    sched: ExecutionId,
    /// Its id.
    execution_id: String,
    /// Its root task's id.
    root_id: String,
    /// Forgets the states the handle stored (unless written again since).
    forget: [Box<dyn FnOnce() + Send>; 2],
    /// The waiting handle.
    reply: tokio::sync::oneshot::Sender<super::messages::Submitted>,
}

impl Actor {
    /// An actor with nothing admitted; it reports to itself through `tx` and
    /// spawns on `tracker`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<Msg>,
        tracker: TaskTracker,
    ) -> Self {
        let mut scheduler = Scheduler::new(SchedulerConfig {
            // Admission is bounded before the store write (Shared::backlog);
            // the scheduler never refuses a re-entry.
            max_queue_len: usize::MAX,
            max_concurrent_tasks: shared.settings.max_concurrent,
            backend_pipeline_depth: shared.settings.pipeline_depth,
        });
        scheduler.set_gpu_policy(shared.settings.gpu_policy.clone());
        Self {
            shared,
            tx,
            tracker,
            scheduler,
            live: FastMap::default(),
            by_id: FastMap::default(),
            by_root: FastMap::default(),
            next_sched: 1,
            deferred_starts: Vec::new(),
            interned: HashSet::new(),
            no_nodes: Arc::new(NodeTasks::new()),
            held_prompts: HeldPrompts::default(),
            answers: Vec::new(),
            published: PublishedLoad::default(),
            ended_nodes: HashSet::new(),
            posts_at_once: false,
        }
    }

    /// Takes back what the store says has not ended, then handles messages
    /// and "task ended" notices until `cancel` (or every sender is gone);
    /// the attempts still running are then abandoned.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut ended: mpsc::UnboundedReceiver<String>,
        cancel: CancellationToken,
    ) {
        {
            let _batch = self.shared.tasks.bus().batch();
            self.recover();
            self.publish_gauges();
        }
        loop {
            let turn = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(task_id) = ended.recv() => Turn::Ended(task_id),
                msg = rx.recv() => match msg {
                    Some(msg) => Turn::Message(msg),
                    None => break,
                },
            };
            // Submissions come in bursts: a connection's read hands over several calls, and
            // their tasks are ready behind the one that sent this. Letting them run first (a
            // yield comes back after the ready tasks and a poll of the I/O driver) puts their
            // submissions into this turn: one write, one commit and one scheduling pass for all
            // of them instead of one each. A lone submission loses the few microseconds of a
            // trip through the run queue.
            if matches!(&turn, Turn::Message(Msg::Submit { .. })) {
                tokio::task::yield_now().await;
            }
            // One turn's writes (and those of messages already waiting) are one store write.
            let batch = self.shared.tasks.bus().batch();
            // A turn of a running prompt's reports only: nobody waits for its writes.
            let mut reports_only = matches!(&turn, Turn::Message(msg) if is_report(msg));
            match turn {
                Turn::Ended(task_id) => self.task_ended(&task_id),
                Turn::Message(msg) => self.handle(msg),
            }
            for _ in 1..MAX_MESSAGES_PER_TURN {
                match rx.try_recv() {
                    Ok(msg) => {
                        reports_only &= is_report(&msg);
                        self.handle(msg);
                    }
                    Err(_) => break,
                }
            }
            self.pump();
            let owed = self.end_turn(batch, reports_only);
            if owed.as_ref().is_some_and(|owed| !owed.is_empty()) {
                // The attempts spawned in this turn post their prompts (see `end_turn`).
                tokio::task::yield_now().await;
            }
            drop(owed);
        }
        for live in self.live.values() {
            if let Some(run) = &live.run {
                run.abandon.cancel();
            }
        }
    }

    /// Ends a turn: answers its submissions and hands its writes to the store (`batch`
    /// closes). When the turn spawned attempts that post at once, the writes still go to the
    /// store in their order, but the store's writer thread is not woken yet: the wake is
    /// returned, for the caller to give after letting those attempts post their prompts.
    /// Woken first, on a small machine the writer took the CPU from this thread before the
    /// post was written, or from ComfyUI before it read it, for the length of a commit nobody
    /// waits for yet (a submit's answer does, and still goes once it is durable).
    fn end_turn(&mut self, batch: Batch, reports_only: bool) -> Option<OwedWakes> {
        let hold = std::mem::take(&mut self.posts_at_once).then(crate::store::hold_wakes);
        self.answer_submitted();
        self.publish_gauges();
        batch.set_deferrable(reports_only);
        drop(batch);
        hold.map(WakeHold::release)
    }

    /// Hands one message to its handler. A caller waiting for a reply gets it
    /// once the turn's writes so far are handed to the store (it then waits
    /// for them to be durable).
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit { admitted, reply } => self.admit_submitted(*admitted, reply),
            Msg::Cancel {
                execution_id,
                reason,
                reply,
            } => {
                self.cancel(&execution_id, reason);
                self.shared.tasks.bus().flush_batch();
                let _ = reply.send(());
            }
            Msg::Retry {
                execution_id,
                reply,
            } => {
                let retried = self.manual_retry(&execution_id);
                self.shared.tasks.bus().flush_batch();
                let _ = reply.send(retried);
            }
            Msg::Position {
                execution_id,
                reply,
            } => {
                let position = self
                    .by_id
                    .get(execution_id.as_str())
                    .and_then(|sched| self.scheduler.position(*sched))
                    .and_then(|p| u32::try_from(p).ok());
                let _ = reply.send(position);
            }
            Msg::BackendUp { backend, classes } => {
                let count = classes.len();
                self.scheduler.backend_up(backend, classes);
                self.backend_event(backend, true, format!("{count} node classes"));
                self.reconcile_on(backend);
                self.fail_unrunnable();
            }
            Msg::BackendDevices { backend, report } => self.backend_devices(backend, report),
            Msg::BackendDown { backend } => self.backend_down(backend),
            Msg::Posted {
                sched,
                attempt,
                prompt_id,
                client_id,
            } => self.posted(sched, attempt, prompt_id, client_id),
            Msg::Started { sched, attempt } => self.started(sched, attempt),
            Msg::Finished {
                sched,
                attempt,
                outcome,
                ended,
            } => self.finished(sched, attempt, outcome, ended),
            Msg::TakeBackDone {
                sched,
                attempt,
                taken,
            } => self.take_back_done(sched, attempt, taken),
            Msg::Reconciled {
                sched,
                attempt,
                found,
            } => self.reconciled(sched, attempt, found),
            Msg::RetryDue { sched, attempt } => {
                if let Some(live) = self.live.get(&sched)
                    && live.phase == Phase::RetryWait
                    && live.attempt == attempt
                {
                    self.enqueue(sched);
                }
            }
        }
    }

    /// Moves the root task and the execution record to `to`.
    fn set_status(&mut self, sched: ExecutionId, to: TaskStatus, message: Option<String>) {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        let id = live.id.clone();
        // The record first: the root task's event is what wakes watchers, and
        // they must then read the new status.
        if let Err(error) = self.shared.update_execution(&id, |execution| {
            if execution.status() != to {
                execution
                    .transition(to)
                    .map_err(|e| execution_transition(execution, &e))?;
            }
            Ok(())
        }) {
            tracing::error!(execution_id = %id, %error, "execution status not recorded");
        }
        self.update_root(sched, |task| {
            if task.status() != to {
                task.transition(to)
                    .map_err(|source| illegal(task, source))?;
            }
            if message.is_some() {
                task.progress_message = message;
            }
            Ok(())
        });
    }

    /// Why `sched` was cancelled: the reason its cancel gave, or the default one.
    fn cancel_reason(&self, sched: ExecutionId) -> String {
        live_reason(self.live.get(&sched).map(AsRef::as_ref))
    }

    /// What events about `sched` are about.
    fn context(&self, sched: ExecutionId) -> EventContext {
        self.live
            .get(&sched)
            .map_or_else(EventContext::default, |live| live_context(live))
    }

    /// Applies `change` to `sched`'s root task; a failure is logged.
    fn update_root<F>(&self, sched: ExecutionId, change: F)
    where
        F: FnOnce(&mut Task) -> Result<(), RuntimeError>,
    {
        let Some(live) = self.live.get(&sched) else {
            return;
        };
        if let Err(error) = self.shared.tasks.update(&live.root, change) {
            tracing::error!(execution_id = %live.id, %error, "root task not updated");
        }
    }
}

/// Whether `msg` reports how a running prompt goes (posted, started): what its
/// turn writes may be held back a while (see `EventBus::deferrable_batch`).
fn is_report(msg: &Msg) -> bool {
    matches!(msg, Msg::Posted { .. } | Msg::Started { .. })
}

/// What events about a live execution are about.
fn live_context(live: &Live) -> EventContext {
    EventContext {
        task_id: Some(live.root.to_string()),
        execution_id: Some(live.id.to_string()),
        workflow_id: Some(live.workflow_id.clone()).filter(|w| !w.is_empty()),
        tags: live.tags.clone(),
        node: false,
    }
}

/// The cancel reason of `live`, or the default one.
fn live_reason(live: Option<&Live>) -> String {
    live.and_then(|l| l.cancel_reason.clone())
        .unwrap_or_else(|| "cancelled on request".into())
}

/// The error for a status change the execution's state machine refused.
fn execution_transition(
    execution: &crate::model::WorkflowExecution,
    error: &crate::model::workflow::ExecutionTransitionError,
) -> RuntimeError {
    RuntimeError::FailedPrecondition {
        kind: crate::runtime::ObjectKind::Execution,
        id: execution.id.clone(),
        reason: error.to_string(),
    }
}

/// The error for a status change a task's state machine refused.
fn illegal(task: &Task, source: TransitionError) -> RuntimeError {
    RuntimeError::IllegalTransition {
        task_id: task.id.clone(),
        source,
    }
}

/// Messages an actor turn handles at most (the first and those already waiting).
const MAX_MESSAGES_PER_TURN: usize = 64;

/// What woke the actor.
enum Turn {
    /// A task of an execution ended.
    Ended(String),
    /// A message.
    Message(Msg),
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{HELD_PROMPT_BYTES, HeldPrompts};
    use crate::runtime::scheduler::ExecutionId;

    #[test]
    fn held_prompts_stay_within_their_budget_and_free_it_when_taken() {
        let mut held = HeldPrompts::default();
        let half = Bytes::from(vec![b'x'; HELD_PROMPT_BYTES / 2]);
        held.hold(ExecutionId(1), half.clone());
        held.hold(ExecutionId(2), half.clone());
        // Full: a third is not held, and its dispatch reads the store.
        held.hold(ExecutionId(3), Bytes::from_static(b"{}"));
        assert_eq!(held.take(ExecutionId(3)), None);
        assert_eq!(held.bytes, HELD_PROMPT_BYTES);
        // Taken once: the budget it used is free again.
        assert_eq!(held.take(ExecutionId(1)), Some(half.clone()));
        assert_eq!(held.take(ExecutionId(1)), None);
        assert_eq!(held.bytes, HELD_PROMPT_BYTES / 2);
        held.hold(ExecutionId(3), Bytes::from_static(b"{}"));
        assert_eq!(held.take(ExecutionId(3)), Some(Bytes::from_static(b"{}")));
        // Held again for the same execution: counted once.
        held.hold(ExecutionId(2), Bytes::from_static(b"{}"));
        assert_eq!(held.bytes, 2);
    }
}
