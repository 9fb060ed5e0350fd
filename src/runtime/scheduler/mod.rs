//! The execution scheduler: a pure, synchronous, deterministic state machine
//! that decides which queued workflow execution goes to which ComfyUI backend,
//! and when a waiting one must be taken back so a more urgent one goes first.
//!
//! It owns the runtime's queue of executions waiting for a backend, the view of
//! what each backend is running or holding in its own queue, and the
//! admission limits (`max_queue_len`, `max_concurrent_tasks`). The executor
//! drives it: it reports inputs ([`Scheduler::submit`], [`Scheduler::cancel`],
//! [`Scheduler::backend_up`], [`Scheduler::backend_down`],
//! [`Scheduler::prompt_started`], [`Scheduler::prompt_finished`],
//! [`Scheduler::taken_back`], [`Scheduler::take_back_failed`]) and, after every
//! input, calls [`Scheduler::next_actions`] and carries out the [`Action`]s.
//!
//! It must not do I/O, await, read clocks, spawn, log, or know tonic, the
//! generated protobuf types, the store or the ComfyUI client: it only decides.
//! It never uses ComfyUI's `front` flag: priority is kept by holding at most one
//! prompt in each backend's own queue and taking it back when needed.
//!
//! # Rules
//! - Order: CRITICAL before HIGH before NORMAL before LOW, first in first out
//!   within a level. The order key is `(priority desc, submit sequence asc)`; a
//!   taken-back execution keeps its sequence, so it returns to its original place.
//! - In flight (dispatched and not yet finished, taken back or lost with its
//!   backend) never exceeds `max_concurrent_tasks`.
//! - Each backend holds at most two of our executions: one running and one
//!   waiting in its own queue (an idle backend may receive both at once), so the
//!   GPU never idles between prompts.
//! - Backend choice: among up backends whose node classes include every class
//!   the execution requires and that are not held (`devices`: GPU disabled, or
//!   GPU memory above `gpu_memory_fraction`), the least loaded (running +
//!   waiting); ties go to the preferred device type (`prefer_gpu_types`), then
//!   the most free GPU memory, then the lowest [`BackendId`] (a stable order;
//!   with equal loads and no device reports the lowest id fills first, which
//!   keeps tests and replays deterministic).
//! - Preemption: when a queued execution cannot be placed and an eligible
//!   backend's waiting slot holds an execution of strictly lower priority, the
//!   least urgent such waiting execution is taken back ([`Action::TakeBack`]),
//!   at most one preemption take-back in flight per backend. Equal priorities
//!   never preempt each other (no churn within a level). When the executor
//!   confirms with [`Scheduler::taken_back`], the slot is free and the most
//!   urgent queued execution gets it. A take-back that fails
//!   ([`Scheduler::take_back_failed`]: it already started) is never retried.
//! - An execution no up backend can run stays queued; [`Scheduler::stranded`]
//!   reports it so the caller can fail it with a clear message.
//!
//! # Data structures and costs (n queued, G distinct required-class sets among
//! queued executions, B backends)
//! Queued executions are grouped by their [`RequiredClasses`]; each group keeps
//! a `BTreeSet<(Reverse(priority), seq, id)>` and the list of up backends able
//! to run it (recomputed only when a backend goes up or down, or a group is
//! created). An id index (`HashMap<ExecutionId, Entry>`) gives O(1) lookup.
//! A `BTreeSet` rather than per-priority `VecDeque`s with lazy cancellation:
//! a taken-back execution must re-enter at its original place, which a deque
//! cannot do cheaply, and eager removal keeps memory and depth counters exact
//! under mass cancellation. A queued execution costs one id-index entry (about
//! 50 bytes plus the map's slack) and one `BTreeSet` element (32 bytes plus
//! node slack), and shares its class set through an `Arc`: well under the
//! few hundred bytes budgeted, beyond its JSON (which the scheduler never holds).
//! - submit, cancel and taken-back re-entry: O(k + log n) (k = classes hashed to
//!   find the group), independent of how many are queued;
//! - each dispatch decision: O(G · B + log n), looking only at each group's
//!   head; in the common case (every backend has every class) G is 1 or a
//!   handful, so matching never scans the queue. Worst case: G distinct sets;
//! - preemption planning: at most B + G queued heads are looked at;
//! - backend up/down: O(G · B · k) to recompute eligibility;
//! - [`Scheduler::position`] and [`Scheduler::stranded`] are queries for
//!   metrics and tests and cost O(n) at worst.
//!
//! Every structure is bounded: the queue by `max_queue_len` (a taken-back
//! execution re-enters even when the queue is full, so it may exceed the bound
//! by at most one per backend), the in-flight set by `max_concurrent_tasks`, and
//! buffered actions by two per in-flight execution.
//!
//! # Where things are
//! `ids` (execution and backend ids, required classes, the submitted key),
//! `outcomes` (actions, outcomes and query views handed back), `admission`
//! (limits, refusals, submit and adopt), `queue` (order, groups, per-priority
//! counts, positions), `backends` (slots, eligibility, the reports from
//! backends), `devices` (device reports, the GPU policy, holds and the
//! placement order), `planning` (what to do next: dispatches and preemption). This
//! file holds the [`Scheduler`] itself, cancel, and where an execution is.

mod admission;
mod backends;
mod devices;
mod ids;
mod outcomes;
mod planning;
#[cfg(test)]
mod properties;
mod queue;
#[cfg(test)]
mod test_support;

pub use admission::{SchedulerConfig, SchedulerError};
pub use devices::{DeviceReport, GpuPolicy, Hold, HoldChange, Vram};
pub use ids::{BackendId, ExecutionId, ExecutionKey, RequiredClasses};
pub use outcomes::{
    Action, BackendStatus, CancelOutcome, Location, Orphaned, Stranded, TakenBackOutcome,
};

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::model::FastMap;
use crate::model::TaskPriority;
use backends::Backend;
use queue::{Group, QueueKey};

/// One execution the scheduler holds.
#[derive(Debug)]
struct Entry {
    /// Its priority.
    priority: TaskPriority,
    /// Its submit sequence number, kept across take-backs.
    seq: u64,
    /// Classes a backend must have.
    required: RequiredClasses,
    /// Queued or on a backend.
    place: Place,
}

impl Entry {
    fn key(&self, id: ExecutionId) -> QueueKey {
        (Reverse(self.priority), self.seq, id)
    }
}

/// Where an [`Entry`] is.
#[derive(Debug)]
enum Place {
    /// In our queue.
    Queued,
    /// Dispatched to a backend.
    OnBackend(OnBackend),
}

/// A dispatched execution's state.
#[derive(Debug, Clone, Copy)]
struct OnBackend {
    /// The backend it was sent to.
    backend: BackendId,
    /// Reported started.
    started: bool,
    /// A take-back (preemption or cancel) is in flight.
    taking_back: bool,
    /// A take-back failed once: it started, never try again.
    take_back_refused: bool,
    /// Its cancel was requested.
    cancel_requested: bool,
}

/// The scheduler; see the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    /// Limits.
    config: SchedulerConfig,
    /// The next submit sequence number.
    next_seq: u64,
    /// Every execution held, queued or dispatched.
    entries: FastMap<ExecutionId, Entry>,
    /// Queued executions by required classes; no group is empty.
    groups: FastMap<RequiredClasses, Group>,
    /// Every backend ever reported up or reporting its devices, by id.
    backends: BTreeMap<BackendId, Backend>,
    /// How devices and GPU memory steer placement.
    gpu: GpuPolicy,
    /// Queued executions per priority, indexed by [`TaskPriority::value`].
    queued: [usize; TaskPriority::ALL.len()],
    /// Dispatched and not finished, taken back or lost.
    in_flight: usize,
    /// Actions decided by inputs (cancel take-backs, interrupts), not yet
    /// returned by [`Scheduler::next_actions`].
    pending: Vec<Action>,
}

impl Scheduler {
    /// An empty scheduler with no backends.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            next_seq: 0,
            entries: FastMap::default(),
            groups: FastMap::default(),
            backends: BTreeMap::new(),
            gpu: GpuPolicy::default(),
            queued: [0; TaskPriority::ALL.len()],
            in_flight: 0,
            pending: Vec::new(),
        }
    }

    /// The limits it was built with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Cancels an execution wherever it is; idempotent.
    pub fn cancel(&mut self, id: ExecutionId) -> CancelOutcome {
        let Some(entry) = self.entries.get_mut(&id) else {
            return CancelOutcome::NotFound;
        };
        let on = match &mut entry.place {
            Place::Queued => {
                let key = entry.key(id);
                let required = entry.required.clone();
                self.entries.remove(&id);
                self.dequeue(key, &required);
                return CancelOutcome::Removed;
            }
            Place::OnBackend(on) => on,
        };
        let backend = on.backend;
        if !on.cancel_requested {
            on.cancel_requested = true;
            if on.taking_back {
                // The take-back already in flight will forget it.
            } else if !on.started && !on.take_back_refused {
                on.taking_back = true;
                self.pending.push(Action::TakeBack { id, backend });
            } else {
                self.pending.push(Action::Interrupt { id, backend });
            }
        }
        if on.taking_back {
            CancelOutcome::TakingBack { backend }
        } else {
            CancelOutcome::Interrupting { backend }
        }
    }

    /// Executions dispatched and not finished, taken back or lost.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Where `id` is, if the scheduler holds it.
    pub fn location(&self, id: ExecutionId) -> Option<Location> {
        let entry = self.entries.get(&id)?;
        Some(match entry.place {
            Place::Queued => Location::Queued {
                priority: entry.priority,
            },
            Place::OnBackend(on) if on.started => Location::Running {
                backend: on.backend,
            },
            Place::OnBackend(on) => Location::Waiting {
                backend: on.backend,
                taking_back: on.taking_back,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::TaskPriority;
    use crate::runtime::scheduler::test_support::{B0, dispatch, scheduler, submit, take_back, up};
    use crate::runtime::scheduler::{Action, CancelOutcome, ExecutionId, TakenBackOutcome};

    #[test]
    fn cancel_a_queued_execution() {
        let mut s = scheduler(100, 10);
        submit(&mut s, 1, TaskPriority::High);
        assert_eq!(s.cancel(ExecutionId(1)), CancelOutcome::Removed);
        assert_eq!(s.location(ExecutionId(1)), None);
        assert_eq!(s.queue_depth(TaskPriority::High), 0);
        assert_eq!(s.cancel(ExecutionId(1)), CancelOutcome::NotFound);
        up(&mut s, B0, &[]);
        assert_eq!(s.next_actions(), vec![]);
    }

    #[test]
    fn cancel_a_waiting_execution_takes_it_back() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        submit(&mut s, 2, TaskPriority::Normal);
        submit(&mut s, 3, TaskPriority::Normal);
        s.next_actions();
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        assert_eq!(
            s.cancel(ExecutionId(2)),
            CancelOutcome::TakingBack { backend: B0 }
        );
        assert_eq!(
            s.cancel(ExecutionId(2)),
            CancelOutcome::TakingBack { backend: B0 }
        );
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        assert_eq!(
            s.taken_back(B0, ExecutionId(2)),
            Ok(TakenBackOutcome::Cancelled)
        );
        assert_eq!(s.location(ExecutionId(2)), None);
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)]);
    }

    #[test]
    fn cancel_a_waiting_execution_that_started_interrupts_it() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        s.next_actions();
        assert_eq!(
            s.cancel(ExecutionId(1)),
            CancelOutcome::TakingBack { backend: B0 }
        );
        assert_eq!(s.next_actions(), vec![take_back(1, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        s.take_back_failed(B0, ExecutionId(1)).unwrap();
        assert_eq!(
            s.next_actions(),
            vec![Action::Interrupt {
                id: ExecutionId(1),
                backend: B0
            }]
        );
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn cancel_a_running_execution_frees_its_slot_when_it_ends() {
        let mut s = scheduler(100, 1);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        submit(&mut s, 2, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        assert_eq!(
            s.cancel(ExecutionId(1)),
            CancelOutcome::Interrupting { backend: B0 }
        );
        assert_eq!(
            s.cancel(ExecutionId(1)),
            CancelOutcome::Interrupting { backend: B0 }
        );
        assert_eq!(
            s.next_actions(),
            vec![Action::Interrupt {
                id: ExecutionId(1),
                backend: B0
            }]
        );
        assert_eq!(s.in_flight(), 1, "held until the backend confirms");
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(2, B0)]);
    }
}
