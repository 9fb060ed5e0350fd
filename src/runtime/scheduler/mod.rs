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
//!   the execution requires, the least loaded (running + waiting), ties going
//!   to the lowest [`BackendId`] (a stable order; with equal loads the lowest id
//!   fills first, which keeps tests and replays deterministic).
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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, hash_map};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::model::TaskPriority;

/// Identifies one queued or dispatched execution; assigned by the caller and
/// unique among the executions the scheduler currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecutionId(pub u64);

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one ComfyUI backend of the pool; assigned by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u32);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The node class names an execution needs a backend to have: sorted, without
/// duplicates, shared behind an `Arc` so that every queued execution of the
/// same workflow costs one pointer. Equality and hashing go by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RequiredClasses(Arc<[Arc<str>]>);

impl RequiredClasses {
    /// The set of `classes` (sorted, duplicates removed).
    pub fn new<I, S>(classes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let mut classes: Vec<Arc<str>> = classes.into_iter().map(Into::into).collect();
        classes.sort_unstable();
        classes.dedup();
        Self(classes.into())
    }

    /// No requirement: any up backend can run it.
    pub fn none() -> Self {
        Self::default()
    }

    /// The class names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|class| &**class)
    }

    /// How many classes are required.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a backend with `classes` has every required class.
    fn satisfied_by(&self, classes: &HashSet<Arc<str>>) -> bool {
        self.0.iter().all(|class| classes.contains(class))
    }
}

/// What the caller submits: the execution and what the scheduler needs to
/// place it. The workflow JSON stays with the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionKey {
    /// The execution's id.
    pub id: ExecutionId,
    /// Its priority.
    pub priority: TaskPriority,
    /// Node classes a backend must have to run it.
    pub required: RequiredClasses,
}

/// The scheduler's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most executions waiting in the runtime's queue; a submit beyond it is
    /// refused with [`SchedulerError::QueueFull`].
    pub max_queue_len: usize,
    /// Most executions dispatched and not finished (running plus waiting in
    /// backends' own queues), the runtime's `max_concurrent_tasks`.
    pub max_concurrent_tasks: usize,
}

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

/// Why the scheduler refused an input. On error nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The queue holds `max_queue_len` executions; the API answers
    /// RESOURCE_EXHAUSTED and computes `retry-after` (the scheduler has no clock).
    #[error("execution queue is full ({capacity} queued)")]
    QueueFull {
        /// The configured `max_queue_len`.
        capacity: usize,
    },
    /// An execution with this id is already queued or dispatched.
    #[error("execution {0} is already scheduled")]
    AlreadyScheduled(ExecutionId),
    /// No backend with this id was ever reported up.
    #[error("backend {0} is unknown")]
    UnknownBackend(BackendId),
    /// The execution is not dispatched to that backend (it finished, was
    /// taken back, was lost with the backend, or never went there).
    #[error("execution {id} is not on backend {backend}")]
    NotOnBackend {
        /// The execution.
        id: ExecutionId,
        /// The backend named.
        backend: BackendId,
    },
    /// A backend runs its queue in order: `ahead` must be reported finished
    /// before `id` can start.
    #[error("execution {id} cannot start on backend {backend} before execution {ahead} ends")]
    StartedOutOfOrder {
        /// The execution reported started.
        id: ExecutionId,
        /// The backend.
        backend: BackendId,
        /// The execution ahead of it in that backend's queue.
        ahead: ExecutionId,
    },
    /// No take-back of that execution is in flight.
    #[error("no take-back of execution {id} is pending on backend {backend}")]
    NoTakeBackPending {
        /// The execution.
        id: ExecutionId,
        /// The backend named.
        backend: BackendId,
    },
}

/// Queue order: most urgent priority first, then submit order.
type QueueKey = (Reverse<TaskPriority>, u64, ExecutionId);

/// Slots of a backend: index 0 runs (or is about to), index 1 waits behind it.
const SLOTS_PER_BACKEND: usize = 2;

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

/// A backend's two slots; `back` is set only when `front` is.
#[derive(Debug, Default, Clone, Copy)]
struct Slots {
    /// Running, or the next to run.
    front: Option<ExecutionId>,
    /// Waiting behind `front` in the backend's own queue.
    back: Option<ExecutionId>,
}

impl Slots {
    fn len(&self) -> usize {
        usize::from(self.front.is_some()) + usize::from(self.back.is_some())
    }

    fn push(&mut self, id: ExecutionId) {
        if self.front.is_none() {
            self.front = Some(id);
        } else {
            self.back = Some(id);
        }
    }

    /// Removes `id`, moving the waiting one forward; whether it was there.
    fn remove(&mut self, id: ExecutionId) -> bool {
        if self.front == Some(id) {
            self.front = self.back.take();
            true
        } else if self.back == Some(id) {
            self.back = None;
            true
        } else {
            false
        }
    }

    fn iter(&self) -> impl Iterator<Item = ExecutionId> {
        self.front.into_iter().chain(self.back)
    }
}

/// A backend of the pool.
#[derive(Debug)]
struct Backend {
    /// Eligible for new work.
    up: bool,
    /// Node classes it has (as last reported up).
    classes: HashSet<Arc<str>>,
    /// What it holds of ours.
    slots: Slots,
    /// The execution a preemption take-back is in flight for.
    preempting: Option<ExecutionId>,
}

impl Backend {
    fn has_free_slot(&self) -> bool {
        self.up && self.slots.len() < SLOTS_PER_BACKEND
    }
}

/// Queued executions sharing one set of required classes.
#[derive(Debug)]
struct Group {
    /// Their order.
    queue: BTreeSet<QueueKey>,
    /// How many of them have each priority (indexed by its value), so a
    /// position is found without walking the queue.
    by_priority: [usize; 4],
    /// Up backends able to run them, by id.
    eligible: Vec<BackendId>,
}

impl Group {
    /// How many of its executions come before `key`: the more urgent ones
    /// by their counts, and those of the same priority by walking that
    /// priority's part of the queue from both ends at once, so the walk is
    /// as short as `key`'s distance to the nearer end (a recent submit sits
    /// near the back).
    fn count_before(&self, key: QueueKey) -> usize {
        let Reverse(priority) = key.0;
        let index = usize::from(priority.value());
        let more_urgent: usize = self.by_priority[index + 1..].iter().sum();
        let total = self.by_priority[index];
        let first = (key.0, 0, ExecutionId(0));
        let last = (key.0, u64::MAX, ExecutionId(u64::MAX));
        let in_group = usize::from(self.queue.contains(&key));
        let mut front = self.queue.range(first..key);
        let mut back = self
            .queue
            .range((Bound::Excluded(key), Bound::Included(last)))
            .rev();
        let (mut before, mut after) = (0, 0);
        loop {
            if front.next().is_none() {
                return more_urgent + before;
            }
            before += 1;
            if back.next().is_none() {
                return more_urgent + total - in_group - after;
            }
            after += 1;
        }
    }
}

/// Up backends that have every class in `required`, by id.
fn eligible_backends(
    backends: &BTreeMap<BackendId, Backend>,
    required: &RequiredClasses,
) -> Vec<BackendId> {
    backends
        .iter()
        .filter(|(_, backend)| backend.up && required.satisfied_by(&backend.classes))
        .map(|(id, _)| *id)
        .collect()
}

/// The scheduler; see the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    /// Limits.
    config: SchedulerConfig,
    /// The next submit sequence number.
    next_seq: u64,
    /// Every execution held, queued or dispatched.
    entries: HashMap<ExecutionId, Entry>,
    /// Queued executions by required classes; no group is empty.
    groups: HashMap<RequiredClasses, Group>,
    /// Every backend ever reported up, by id.
    backends: BTreeMap<BackendId, Backend>,
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
            entries: HashMap::new(),
            groups: HashMap::new(),
            backends: BTreeMap::new(),
            queued: [0; TaskPriority::ALL.len()],
            in_flight: 0,
            pending: Vec::new(),
        }
    }

    /// The limits it was built with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    // ----- inputs -----

    /// Admits an execution to the queue. Refused when the queue is full or
    /// the id is already held.
    pub fn submit(&mut self, key: ExecutionKey) -> Result<(), SchedulerError> {
        if self.entries.contains_key(&key.id) {
            return Err(SchedulerError::AlreadyScheduled(key.id));
        }
        if self.queued_len() >= self.config.max_queue_len {
            return Err(SchedulerError::QueueFull {
                capacity: self.config.max_queue_len,
            });
        }
        let seq = self.next_seq;
        // 2^64 submits never happen; saturating keeps this panic-free.
        self.next_seq = self.next_seq.saturating_add(1);
        self.enqueue((Reverse(key.priority), seq, key.id), &key.required);
        self.entries.insert(
            key.id,
            Entry {
                priority: key.priority,
                seq,
                required: key.required,
                place: Place::Queued,
            },
        );
        Ok(())
    }

    /// Takes in an execution that is already on `backend` (found there after
    /// a restart of the runtime): running when `started`, else waiting in the
    /// backend's queue. It counts as in flight (it may push the count past
    /// `max_concurrent_tasks` once, which only delays new dispatches). Refused
    /// when the backend is unknown or down, the id is held, or the backend's
    /// slots are full (the caller then stops the prompt and queues it anew).
    pub fn adopt(
        &mut self,
        key: ExecutionKey,
        backend: BackendId,
        started: bool,
    ) -> Result<(), SchedulerError> {
        if self.entries.contains_key(&key.id) {
            return Err(SchedulerError::AlreadyScheduled(key.id));
        }
        let known = self.backend(backend)?;
        if !known.up || known.slots.len() >= SLOTS_PER_BACKEND {
            return Err(SchedulerError::NotOnBackend {
                id: key.id,
                backend,
            });
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.entries.insert(
            key.id,
            Entry {
                priority: key.priority,
                seq,
                required: key.required,
                place: Place::OnBackend(OnBackend {
                    backend,
                    started,
                    taking_back: false,
                    take_back_refused: started,
                    cancel_requested: false,
                }),
            },
        );
        if let Some(known) = self.backends.get_mut(&backend) {
            if started && known.slots.front.is_some() {
                // The running one goes first; the one there waits behind it.
                known.slots.back = known.slots.front.take();
                known.slots.front = Some(key.id);
            } else {
                known.slots.push(key.id);
            }
        }
        self.in_flight += 1;
        Ok(())
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

    /// A backend answers with these node classes: it is up and eligible for
    /// the executions whose required classes it has. Reporting an up backend
    /// again replaces its classes and keeps what it holds.
    pub fn backend_up<I, S>(&mut self, backend: BackendId, classes: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let classes = classes.into_iter().map(Into::into).collect();
        match self.backends.get_mut(&backend) {
            Some(known) => {
                known.up = true;
                known.classes = classes;
            }
            None => {
                self.backends.insert(
                    backend,
                    Backend {
                        up: true,
                        classes,
                        slots: Slots::default(),
                        preempting: None,
                    },
                );
            }
        }
        self.refresh_eligibility();
    }

    /// A backend stopped answering: it gets nothing until
    /// [`Scheduler::backend_up`]. Returns what it held (front first), which
    /// the scheduler forgets. An unknown backend holds nothing.
    pub fn backend_down(&mut self, backend: BackendId) -> Vec<Orphaned> {
        let Some(known) = self.backends.get_mut(&backend) else {
            return Vec::new();
        };
        let was_up = known.up;
        known.up = false;
        known.preempting = None;
        let slots = std::mem::take(&mut known.slots);
        let mut orphaned = Vec::with_capacity(slots.len());
        for id in slots.iter() {
            if let Some(entry) = self.entries.remove(&id) {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.pending.retain(|action| action.id() != id);
                if let Place::OnBackend(on) = entry.place {
                    orphaned.push(Orphaned {
                        id,
                        started: on.started,
                        cancel_requested: on.cancel_requested,
                    });
                }
            }
        }
        if was_up {
            self.refresh_eligibility();
        }
        orphaned
    }

    /// The backend began running `id`, the first of ours in its queue.
    pub fn prompt_started(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        let front = self.backend(backend)?.slots.front;
        let on = self.on_backend_mut(backend, id)?;
        match front {
            Some(front) if front != id => Err(SchedulerError::StartedOutOfOrder {
                id,
                backend,
                ahead: front,
            }),
            _ => {
                on.started = true;
                Ok(())
            }
        }
    }

    /// `id` ended on the backend (success, failure, interrupt, or its POST
    /// failed); its slot is free. Retrying is the executor's decision (it
    /// submits again).
    pub fn prompt_finished(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        self.backend(backend)?;
        self.on_backend_mut(backend, id)?;
        self.remove_dispatched(backend, id);
        Ok(())
    }

    /// The executor deleted `id` from the backend's queue: it goes back into
    /// ours at its original place, or is forgotten if its cancel was requested.
    pub fn taken_back(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<TakenBackOutcome, SchedulerError> {
        self.backend(backend)?;
        let on = *self.on_backend_mut(backend, id)?;
        if !on.taking_back {
            return Err(SchedulerError::NoTakeBackPending { id, backend });
        }
        let Some(mut entry) = self.remove_dispatched(backend, id) else {
            // on_backend_mut just found it; remove_dispatched cannot miss it.
            return Err(SchedulerError::NotOnBackend { id, backend });
        };
        if on.cancel_requested {
            return Ok(TakenBackOutcome::Cancelled);
        }
        entry.place = Place::Queued;
        self.enqueue(entry.key(id), &entry.required);
        self.entries.insert(id, entry);
        Ok(TakenBackOutcome::Requeued)
    }

    /// The delete from the backend's queue failed because `id` had started:
    /// it stays there (and is interrupted if its cancel was requested).
    pub fn take_back_failed(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<(), SchedulerError> {
        self.backend(backend)?;
        let on = self.on_backend_mut(backend, id)?;
        if !on.taking_back {
            return Err(SchedulerError::NoTakeBackPending { id, backend });
        }
        on.taking_back = false;
        on.take_back_refused = true;
        let cancel_requested = on.cancel_requested;
        if cancel_requested {
            self.pending.push(Action::Interrupt { id, backend });
        }
        if let Some(known) = self.backends.get_mut(&backend)
            && known.preempting == Some(id)
        {
            known.preempting = None;
        }
        Ok(())
    }

    /// What to do now: buffered take-backs and interrupts, then dispatches to
    /// free slots in queue order, then preemption take-backs. Call after every
    /// input; calling it again with no input in between returns nothing new.
    pub fn next_actions(&mut self) -> Vec<Action> {
        let mut actions = std::mem::take(&mut self.pending);
        self.plan_dispatches(&mut actions);
        self.plan_take_backs(&mut actions);
        actions
    }

    // ----- queries -----

    /// Executions in the queue.
    pub fn queued_len(&self) -> usize {
        self.queued.iter().sum()
    }

    /// Executions in the queue at `priority`.
    pub fn queue_depth(&self, priority: TaskPriority) -> usize {
        self.queued[usize::from(priority.value())]
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

    /// How many queued executions go before `id` (0: next), if it is queued.
    /// O(position): for metrics and tests.
    pub fn position(&self, id: ExecutionId) -> Option<usize> {
        let entry = self.entries.get(&id)?;
        if !matches!(entry.place, Place::Queued) {
            return None;
        }
        let key = entry.key(id);
        Some(
            self.groups
                .values()
                .map(|group| group.count_before(key))
                .sum(),
        )
    }

    /// The first `limit` queued executions, in queue order.
    pub fn queued_in_order(&self, limit: usize) -> Vec<ExecutionId> {
        let mut cursors: Vec<_> = self
            .groups
            .values()
            .map(|group| group.queue.iter().peekable())
            .collect();
        let mut out = Vec::with_capacity(limit.min(self.queued_len()));
        while out.len() < limit {
            let next = cursors
                .iter_mut()
                .enumerate()
                .filter_map(|(index, cursor)| cursor.peek().map(|key| (**key, index)))
                .min();
            let Some(((_, _, id), index)) = next else {
                break;
            };
            out.push(id);
            if let Some(cursor) = cursors.get_mut(index) {
                cursor.next();
            }
        }
        out
    }

    /// Known backends, by id.
    pub fn backend_ids(&self) -> impl Iterator<Item = BackendId> + '_ {
        self.backends.keys().copied()
    }

    /// A backend's state, if it was ever reported up.
    pub fn backend_status(&self, backend: BackendId) -> Option<BackendStatus> {
        let known = self.backends.get(&backend)?;
        let mut status = BackendStatus {
            up: known.up,
            running: None,
            waiting: Vec::new(),
            preempting: known.preempting,
        };
        for id in known.slots.iter() {
            let started = matches!(
                self.entries.get(&id).map(|entry| &entry.place),
                Some(Place::OnBackend(OnBackend { started: true, .. }))
            );
            if started {
                status.running = Some(id);
            } else {
                status.waiting.push(id);
            }
        }
        Some(status)
    }

    /// Whether some known backend, up or down, has every class in `required`.
    /// `false` means no backend seen so far could ever run it.
    pub fn runnable_by_known_backend(&self, required: &RequiredClasses) -> bool {
        self.backends
            .values()
            .any(|backend| required.satisfied_by(&backend.classes))
    }

    /// Queued executions that no up backend can run, grouped by what they
    /// need, ordered by their most urgent execution. O(n) at worst.
    pub fn stranded(&self) -> Vec<Stranded> {
        let mut stranded: Vec<(QueueKey, Stranded)> = self
            .groups
            .iter()
            .filter(|(_, group)| group.eligible.is_empty())
            .filter_map(|(required, group)| {
                let first = *group.queue.first()?;
                let missing = required
                    .0
                    .iter()
                    .filter(|class| {
                        !self
                            .backends
                            .values()
                            .any(|backend| backend.up && backend.classes.contains(*class))
                    })
                    .cloned()
                    .collect();
                let runnable_by_down_backend = self
                    .backends
                    .values()
                    .any(|backend| !backend.up && required.satisfied_by(&backend.classes));
                Some((
                    first,
                    Stranded {
                        required: required.clone(),
                        missing,
                        runnable_by_down_backend,
                        ids: group.queue.iter().map(|(_, _, id)| *id).collect(),
                    },
                ))
            })
            .collect();
        stranded.sort_by_key(|(first, _)| *first);
        stranded.into_iter().map(|(_, group)| group).collect()
    }

    // ----- internals -----

    fn backend(&self, backend: BackendId) -> Result<&Backend, SchedulerError> {
        self.backends
            .get(&backend)
            .ok_or(SchedulerError::UnknownBackend(backend))
    }

    /// `id`'s dispatch state, if it is dispatched to `backend`.
    fn on_backend_mut(
        &mut self,
        backend: BackendId,
        id: ExecutionId,
    ) -> Result<&mut OnBackend, SchedulerError> {
        match self.entries.get_mut(&id).map(|entry| &mut entry.place) {
            Some(Place::OnBackend(on)) if on.backend == backend => Ok(on),
            _ => Err(SchedulerError::NotOnBackend { id, backend }),
        }
    }

    /// Frees `id`'s slot on `backend` and forgets it; returns its entry.
    fn remove_dispatched(&mut self, backend: BackendId, id: ExecutionId) -> Option<Entry> {
        if let Some(known) = self.backends.get_mut(&backend) {
            known.slots.remove(id);
            if known.preempting == Some(id) {
                known.preempting = None;
            }
        }
        let entry = self.entries.remove(&id)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pending.retain(|action| action.id() != id);
        Some(entry)
    }

    fn enqueue(&mut self, key: QueueKey, required: &RequiredClasses) {
        let group = match self.groups.entry(required.clone()) {
            hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            hash_map::Entry::Vacant(vacant) => vacant.insert(Group {
                queue: BTreeSet::new(),
                by_priority: [0; 4],
                eligible: eligible_backends(&self.backends, required),
            }),
        };
        if group.queue.insert(key) {
            let Reverse(priority) = key.0;
            group.by_priority[usize::from(priority.value())] += 1;
            self.queued[usize::from(priority.value())] += 1;
        }
    }

    fn dequeue(&mut self, key: QueueKey, required: &RequiredClasses) {
        let Some(group) = self.groups.get_mut(required) else {
            return;
        };
        if group.queue.remove(&key) {
            let Reverse(priority) = key.0;
            let count = &mut group.by_priority[usize::from(priority.value())];
            *count = count.saturating_sub(1);
            let depth = &mut self.queued[usize::from(priority.value())];
            *depth = depth.saturating_sub(1);
        }
        if group.queue.is_empty() {
            self.groups.remove(required);
        }
    }

    fn refresh_eligibility(&mut self) {
        for (required, group) in &mut self.groups {
            group.eligible = eligible_backends(&self.backends, required);
        }
    }

    /// Fills free slots, most urgent placeable execution first, each going to
    /// the least loaded eligible backend (ties: lowest id).
    fn plan_dispatches(&mut self, actions: &mut Vec<Action>) {
        while self.in_flight < self.config.max_concurrent_tasks {
            let mut best: Option<(QueueKey, BackendId)> = None;
            for group in self.groups.values() {
                let Some(head) = group.queue.first() else {
                    continue;
                };
                if best.is_some_and(|(key, _)| key <= *head) {
                    continue;
                }
                let target = group
                    .eligible
                    .iter()
                    .filter_map(|id| {
                        let backend = self.backends.get(id)?;
                        backend
                            .has_free_slot()
                            .then_some((backend.slots.len(), *id))
                    })
                    .min();
                if let Some((_, backend)) = target {
                    best = Some((*head, backend));
                }
            }
            let Some((key, backend)) = best else {
                break;
            };
            self.dispatch(key, backend, actions);
        }
    }

    fn dispatch(&mut self, key: QueueKey, backend: BackendId, actions: &mut Vec<Action>) {
        let (_, _, id) = key;
        let Some(required) = self.entries.get(&id).map(|entry| entry.required.clone()) else {
            return;
        };
        self.dequeue(key, &required);
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.place = Place::OnBackend(OnBackend {
                backend,
                started: false,
                taking_back: false,
                take_back_refused: false,
                cancel_requested: false,
            });
        }
        if let Some(known) = self.backends.get_mut(&backend) {
            known.slots.push(id);
        }
        self.in_flight += 1;
        actions.push(Action::Dispatch { id, backend });
    }

    /// Walks the queue in order; each execution that could not be placed
    /// claims a preemption take-back already in flight on one of its eligible
    /// backends, or else starts one on the eligible backend whose waiting
    /// execution is least urgent and of strictly lower priority. Each backend
    /// is claimed at most once, so at most one preemption is in flight per
    /// backend; a group is dropped at its first execution that finds nothing,
    /// since those behind it are no more urgent and need the same backends.
    fn plan_take_backs(&mut self, actions: &mut Vec<Action>) {
        let claimable = self.backends.values().filter(|backend| backend.up).count();
        let mut claimed: Vec<BackendId> = Vec::new();
        let mut victims: Vec<(BackendId, ExecutionId)> = Vec::new();
        let mut cursors: Vec<_> = self
            .groups
            .values()
            .map(|group| (group.queue.iter().peekable(), group.eligible.as_slice()))
            .collect();
        while claimed.len() < claimable {
            let next = cursors
                .iter_mut()
                .enumerate()
                .filter_map(|(index, (cursor, _))| cursor.peek().map(|key| (**key, index)))
                .min();
            let Some(((Reverse(priority), _, _), index)) = next else {
                break;
            };
            let Some((cursor, eligible)) = cursors.get_mut(index) else {
                break;
            };
            cursor.next();
            let in_flight = eligible.iter().find(|id| {
                !claimed.contains(id)
                    && self
                        .backends
                        .get(id)
                        .is_some_and(|backend| backend.preempting.is_some())
            });
            if let Some(backend) = in_flight {
                claimed.push(*backend);
                continue;
            }
            let victim = eligible
                .iter()
                .filter(|id| !claimed.contains(id))
                .filter_map(|backend_id| {
                    let backend = self.backends.get(backend_id)?;
                    if !backend.up || backend.preempting.is_some() {
                        return None;
                    }
                    let waiting = backend.slots.back?;
                    let entry = self.entries.get(&waiting)?;
                    let Place::OnBackend(on) = entry.place else {
                        return None;
                    };
                    let movable = !on.started
                        && !on.taking_back
                        && !on.take_back_refused
                        && !on.cancel_requested;
                    (movable && entry.priority < priority)
                        .then_some((entry.key(waiting), Reverse(*backend_id)))
                })
                .max();
            match victim {
                Some(((_, _, id), Reverse(backend))) => {
                    claimed.push(backend);
                    victims.push((backend, id));
                }
                None => {
                    // Drop this group: nothing behind its head can do better.
                    *cursor = std::collections::btree_set::Iter::default().peekable();
                }
            }
        }
        drop(cursors);
        for (backend, id) in victims {
            if let Some(Entry {
                place: Place::OnBackend(on),
                ..
            }) = self.entries.get_mut(&id)
            {
                on.taking_back = true;
            }
            if let Some(known) = self.backends.get_mut(&backend) {
                known.preempting = Some(id);
            }
            actions.push(Action::TakeBack { id, backend });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B0: BackendId = BackendId(0);
    const B1: BackendId = BackendId(1);
    const B2: BackendId = BackendId(2);

    fn scheduler(max_queue_len: usize, max_concurrent_tasks: usize) -> Scheduler {
        Scheduler::new(SchedulerConfig {
            max_queue_len,
            max_concurrent_tasks,
        })
    }

    fn key(id: u64, priority: TaskPriority) -> ExecutionKey {
        key_requiring(id, priority, &[])
    }

    fn key_requiring(id: u64, priority: TaskPriority, classes: &[&str]) -> ExecutionKey {
        ExecutionKey {
            id: ExecutionId(id),
            priority,
            required: RequiredClasses::new(classes.iter().copied()),
        }
    }

    fn up(s: &mut Scheduler, backend: BackendId, classes: &[&str]) {
        s.backend_up(backend, classes.iter().copied());
    }

    fn submit(s: &mut Scheduler, id: u64, priority: TaskPriority) {
        s.submit(key(id, priority)).unwrap();
    }

    fn dispatch(id: u64, backend: BackendId) -> Action {
        Action::Dispatch {
            id: ExecutionId(id),
            backend,
        }
    }

    fn take_back(id: u64, backend: BackendId) -> Action {
        Action::TakeBack {
            id: ExecutionId(id),
            backend,
        }
    }

    fn ids(raw: &[u64]) -> Vec<ExecutionId> {
        raw.iter().copied().map(ExecutionId).collect()
    }

    /// Finishes whatever runs first on `backend` and returns the ids then dispatched.
    fn finish_front(s: &mut Scheduler, backend: BackendId) -> Vec<u64> {
        let status = s.backend_status(backend).unwrap();
        let front = status.running.or(status.waiting.first().copied()).unwrap();
        s.prompt_finished(backend, front).unwrap();
        s.next_actions()
            .into_iter()
            .filter_map(|action| match action {
                Action::Dispatch { id, .. } => Some(id.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn adopted_executions_hold_their_backend_slots() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_queue_len: 10,
            max_concurrent_tasks: 4,
        });
        s.backend_up(BackendId(0), ["A"]);
        let key = |id| ExecutionKey {
            id: ExecutionId(id),
            priority: TaskPriority::Normal,
            required: RequiredClasses::none(),
        };
        s.adopt(key(1), BackendId(0), false).unwrap();
        s.adopt(key(2), BackendId(0), true).unwrap();
        let status = s.backend_status(BackendId(0)).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, [ExecutionId(1)]);
        assert!(s.adopt(key(3), BackendId(0), false).is_err());
        assert!(s.adopt(key(2), BackendId(0), false).is_err());
        // A queued one waits for the slots the adopted ones free.
        s.submit(key(3)).unwrap();
        assert!(s.next_actions().is_empty());
        s.prompt_finished(BackendId(0), ExecutionId(2)).unwrap();
        assert_eq!(
            s.next_actions(),
            [Action::Dispatch {
                id: ExecutionId(3),
                backend: BackendId(0)
            }]
        );
    }

    #[test]
    fn priority_order_with_one_backend_busy() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 100, Critical);
        submit(&mut s, 101, Critical);
        assert_eq!(s.next_actions(), vec![dispatch(100, B0), dispatch(101, B0)]);
        s.prompt_started(B0, ExecutionId(100)).unwrap();
        for (id, priority) in [(1, Low), (2, Normal), (3, High), (4, Critical), (5, Normal)] {
            submit(&mut s, id, priority);
            assert_eq!(s.next_actions(), vec![], "the backend is full");
        }
        assert_eq!(s.queued_in_order(10), ids(&[4, 3, 2, 5, 1]));
        assert_eq!(s.position(ExecutionId(4)), Some(0));
        assert_eq!(s.position(ExecutionId(1)), Some(4));
        assert_eq!(s.queue_depth(Normal), 2);
        let mut order: Vec<u64> = Vec::new();
        while s.in_flight() > 0 {
            order.extend(finish_front(&mut s, B0));
        }
        assert_eq!(order, vec![4, 3, 2, 5, 1]);
    }

    #[test]
    fn fifo_within_a_level() {
        use TaskPriority::*;
        let mut s = scheduler(100, 1);
        for (id, priority) in [(1, Normal), (2, Low), (3, Normal), (4, Low), (5, Normal)] {
            submit(&mut s, id, priority);
        }
        assert_eq!(s.next_actions(), vec![], "no backend yet");
        up(&mut s, B0, &[]);
        let mut order: Vec<u64> = Vec::new();
        loop {
            let dispatched: Vec<u64> = s
                .next_actions()
                .into_iter()
                .map(|action| action.id().0)
                .collect();
            order.extend(&dispatched);
            let Some(&last) = dispatched.last() else {
                break;
            };
            s.prompt_finished(B0, ExecutionId(last)).unwrap();
        }
        assert_eq!(order, vec![1, 3, 5, 2, 4]);
    }

    #[test]
    fn pipelining_keeps_exactly_one_waiting_per_backend() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        for id in 1..=4 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(1)));
        assert_eq!(status.waiting, ids(&[2]));
        assert_eq!(s.next_actions(), vec![]);
        // 1 ends: 2 moves up and 3 takes the waiting slot at once.
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)]);
        s.prompt_started(B0, ExecutionId(2)).unwrap();
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, ids(&[3]));
        assert_eq!(s.queued_in_order(10), ids(&[4]));
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn max_concurrent_caps_in_flight() {
        let mut s = scheduler(100, 2);
        for backend in [B0, B1, B2] {
            up(&mut s, backend, &[]);
        }
        for id in 1..=5 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B1)]);
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.queued_len(), 3);
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        // B1 and B2 are empty; the lowest id wins the tie.
        assert_eq!(s.next_actions(), vec![dispatch(3, B1)]);
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn two_backends_share_the_load() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for id in 1..=5 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(
            s.next_actions(),
            vec![
                dispatch(1, B0),
                dispatch(2, B1),
                dispatch(3, B0),
                dispatch(4, B1)
            ]
        );
        // B1 is now less loaded than B0.
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(5, B1)]);
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        submit(&mut s, 6, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(6, B0)]);
    }

    #[test]
    fn critical_takes_back_a_waiting_low_which_keeps_its_place() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        submit(&mut s, 3, Low);
        assert_eq!(s.next_actions(), vec![], "equal priority never preempts");
        submit(&mut s, 4, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        assert_eq!(
            s.location(ExecutionId(2)),
            Some(Location::Waiting {
                backend: B0,
                taking_back: true
            })
        );
        submit(&mut s, 5, Critical);
        assert_eq!(
            s.next_actions(),
            vec![],
            "one take-back in flight per backend"
        );
        assert_eq!(
            s.taken_back(B0, ExecutionId(2)),
            Ok(TakenBackOutcome::Requeued)
        );
        assert_eq!(s.next_actions(), vec![dispatch(4, B0)]);
        // 5 is as urgent as 4: no take-back of 4.
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(s.queued_in_order(10), ids(&[5, 2, 3]));
        assert_eq!(s.position(ExecutionId(2)), Some(1));
        let mut order: Vec<u64> = Vec::new();
        while s.in_flight() > 0 {
            order.extend(finish_front(&mut s, B0));
        }
        assert_eq!(order, vec![5, 2, 3]);
    }

    #[test]
    fn preemption_takes_back_the_least_urgent_waiting_one() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for (id, priority) in [(1, High), (2, High), (3, Normal), (4, Low)] {
            submit(&mut s, id, priority);
        }
        assert_eq!(
            s.next_actions(),
            vec![
                dispatch(1, B0),
                dispatch(2, B1),
                dispatch(3, B0),
                dispatch(4, B1)
            ]
        );
        submit(&mut s, 5, Critical);
        assert_eq!(s.next_actions(), vec![take_back(4, B1)]);
        submit(&mut s, 6, Critical);
        assert_eq!(s.next_actions(), vec![take_back(3, B0)]);
        submit(&mut s, 7, Critical);
        assert_eq!(s.next_actions(), vec![], "every backend has one in flight");
    }

    #[test]
    fn take_back_fails_when_it_already_started() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        s.next_actions();
        submit(&mut s, 3, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        // 1 ended and 2 started before the delete reached the backend.
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)]);
        s.prompt_started(B0, ExecutionId(2)).unwrap();
        s.take_back_failed(B0, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let status = s.backend_status(B0).unwrap();
        assert_eq!(status.running, Some(ExecutionId(2)));
        assert_eq!(status.waiting, ids(&[3]));
        assert_eq!(status.preempting, None);
        assert_eq!(
            s.take_back_failed(B0, ExecutionId(2)),
            Err(SchedulerError::NoTakeBackPending {
                id: ExecutionId(2),
                backend: B0
            })
        );
    }

    #[test]
    fn a_refused_take_back_is_not_retried() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        s.next_actions();
        submit(&mut s, 3, Critical);
        assert_eq!(s.next_actions(), vec![take_back(2, B0)]);
        // Reported failed before the finish of 1 arrives.
        s.take_back_failed(B0, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![]);
    }

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

    #[test]
    fn backend_down_returns_its_executions_and_is_skipped() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for id in 1..=4 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        s.next_actions();
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        s.cancel(ExecutionId(3));
        assert_eq!(
            s.backend_down(B0),
            vec![
                Orphaned {
                    id: ExecutionId(1),
                    started: true,
                    cancel_requested: false
                },
                Orphaned {
                    id: ExecutionId(3),
                    started: false,
                    cancel_requested: true
                },
            ]
        );
        assert_eq!(
            s.next_actions(),
            vec![],
            "the take-back of 3 went with its backend"
        );
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.backend_down(B0), vec![]);
        // The executor retries 1; B0 is skipped, B1 is full.
        submit(&mut s, 5, TaskPriority::Normal);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(
            s.prompt_finished(B0, ExecutionId(1)),
            Err(SchedulerError::NotOnBackend {
                id: ExecutionId(1),
                backend: B0
            })
        );
        s.prompt_finished(B1, ExecutionId(2)).unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(5, B1)]);
        up(&mut s, B0, &[]);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0)]);
    }

    #[test]
    fn class_requirements_route_to_a_capable_backend_or_stay_queued() {
        let mut s = scheduler(100, 10);
        up(&mut s, B0, &["A"]);
        up(&mut s, B1, &["A", "B"]);
        s.submit(key_requiring(1, TaskPriority::Normal, &["B"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(1, B1)]);
        s.submit(key_requiring(2, TaskPriority::Normal, &["A"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![dispatch(2, B0)], "least loaded");
        s.submit(key_requiring(3, TaskPriority::High, &["C", "A"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let needs_c = RequiredClasses::new(["A", "C"]);
        assert!(!s.runnable_by_known_backend(&needs_c));
        assert_eq!(
            s.stranded(),
            vec![Stranded {
                required: needs_c.clone(),
                missing: vec![Arc::from("C")],
                runnable_by_down_backend: false,
                ids: ids(&[3]),
            }]
        );
        s.backend_down(B1);
        s.submit(key_requiring(4, TaskPriority::Normal, &["B"]))
            .unwrap();
        assert_eq!(s.next_actions(), vec![]);
        let stranded = s.stranded();
        assert_eq!(stranded.len(), 2);
        assert_eq!(stranded[1].ids, ids(&[4]));
        assert!(stranded[1].runnable_by_down_backend);
        up(&mut s, B2, &["A", "C"]);
        assert_eq!(s.next_actions(), vec![dispatch(3, B2)]);
        assert_eq!(s.stranded().len(), 1);
    }

    #[test]
    fn a_full_queue_refuses_and_duplicates_are_refused() {
        let mut s = scheduler(2, 10);
        submit(&mut s, 1, TaskPriority::Low);
        submit(&mut s, 2, TaskPriority::Low);
        assert_eq!(
            s.submit(key(3, TaskPriority::Critical)),
            Err(SchedulerError::QueueFull { capacity: 2 })
        );
        assert_eq!(
            s.submit(key(1, TaskPriority::Low)),
            Err(SchedulerError::AlreadyScheduled(ExecutionId(1)))
        );
        s.cancel(ExecutionId(1));
        submit(&mut s, 3, TaskPriority::Critical);
        assert_eq!(s.queued_in_order(10), ids(&[3, 2]));
    }

    #[test]
    fn inconsistent_events_are_refused() {
        let mut s = scheduler(10, 10);
        up(&mut s, B0, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        submit(&mut s, 2, TaskPriority::Normal);
        s.next_actions();
        assert_eq!(
            s.prompt_started(B0, ExecutionId(2)),
            Err(SchedulerError::StartedOutOfOrder {
                id: ExecutionId(2),
                backend: B0,
                ahead: ExecutionId(1)
            })
        );
        assert_eq!(
            s.prompt_started(B1, ExecutionId(1)),
            Err(SchedulerError::UnknownBackend(B1))
        );
        assert_eq!(
            s.taken_back(B0, ExecutionId(1)),
            Err(SchedulerError::NoTakeBackPending {
                id: ExecutionId(1),
                backend: B0
            })
        );
        assert_eq!(
            s.location(ExecutionId(2)),
            Some(Location::Waiting {
                backend: B0,
                taking_back: false
            })
        );
    }

    mod properties {
        use std::collections::{BTreeMap, HashMap, HashSet};

        use proptest::prelude::*;

        use super::super::*;

        const CLASS_SETS: [&[&str]; 4] = [&[], &["A"], &["B"], &["A", "B"]];

        #[derive(Debug, Clone)]
        enum Op {
            Submit {
                priority: u8,
                required: usize,
                reuse: Option<usize>,
            },
            Cancel(usize),
            Up {
                backend: u32,
                classes: usize,
            },
            Down(u32),
            /// 0 started, 1 finished, 2 taken back, 3 take-back failed;
            /// `pick` chooses an id on the backend, or any id if out of range.
            Event {
                kind: u8,
                backend: u32,
                pick: usize,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..4, 0usize..4, proptest::option::weighted(0.2, 0usize..64))
                    .prop_map(|(priority, required, reuse)| Op::Submit { priority, required, reuse }),
                1 => (0usize..64).prop_map(Op::Cancel),
                2 => (0u32..3, prop_oneof![3 => Just(0usize), 1 => 0usize..4])
                    .prop_map(|(backend, classes)| Op::Up { backend, classes }),
                1 => (0u32..4).prop_map(Op::Down),
                8 => (0u8..4, 0u32..3, 0usize..8)
                    .prop_map(|(kind, backend, pick)| Op::Event { kind, backend, pick }),
            ]
        }

        /// What the test knows independently of the scheduler.
        #[derive(Default)]
        struct Model {
            /// Every id ever admitted.
            submitted: Vec<ExecutionId>,
            /// Order key and class set of each held id.
            keys: HashMap<ExecutionId, ((Reverse<TaskPriority>, u64), usize)>,
            /// Ids the scheduler must hold.
            live: HashSet<ExecutionId>,
            /// Next submit sequence.
            seq: u64,
            /// Known backends: up, class set index.
            backends: BTreeMap<u32, (bool, usize)>,
        }

        impl Model {
            fn eligible(&self, id: ExecutionId, backend: BackendId) -> bool {
                let required = CLASS_SETS[self.keys[&id].1];
                self.backends.get(&backend.0).is_some_and(|(up, classes)| {
                    *up && required.iter().all(|c| CLASS_SETS[*classes].contains(c))
                })
            }

            fn key(&self, id: ExecutionId) -> (Reverse<TaskPriority>, u64) {
                self.keys[&id].0
            }
        }

        fn apply(s: &mut Scheduler, m: &mut Model, op: &Op) {
            let before = format!("{s:?}");
            match *op {
                Op::Submit {
                    priority,
                    required,
                    reuse,
                } => {
                    let id = match reuse {
                        Some(pick) if !m.submitted.is_empty() => {
                            m.submitted[pick % m.submitted.len()]
                        }
                        _ => ExecutionId(m.submitted.len() as u64 + 1000),
                    };
                    let priority = TaskPriority::from_value(priority).unwrap();
                    let result = s.submit(ExecutionKey {
                        id,
                        priority,
                        required: RequiredClasses::new(CLASS_SETS[required].iter().copied()),
                    });
                    match result {
                        Ok(()) => {
                            assert!(m.live.insert(id));
                            if !m.submitted.contains(&id) {
                                m.submitted.push(id);
                            }
                            m.keys.insert(id, ((Reverse(priority), m.seq), required));
                            m.seq += 1;
                        }
                        Err(SchedulerError::AlreadyScheduled(_)) => {
                            assert!(m.live.contains(&id));
                            assert_eq!(before, format!("{s:?}"));
                        }
                        Err(SchedulerError::QueueFull { .. }) => {
                            assert!(s.queued_len() >= s.config().max_queue_len);
                            assert_eq!(before, format!("{s:?}"));
                        }
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
                Op::Cancel(pick) => {
                    let Some(&id) = m.submitted.get(pick % m.submitted.len().max(1)) else {
                        return;
                    };
                    match s.cancel(id) {
                        CancelOutcome::Removed => assert!(m.live.remove(&id)),
                        CancelOutcome::NotFound => assert!(!m.live.contains(&id)),
                        CancelOutcome::TakingBack { .. } | CancelOutcome::Interrupting { .. } => {
                            assert!(m.live.contains(&id));
                        }
                    }
                }
                Op::Up { backend, classes } => {
                    s.backend_up(BackendId(backend), CLASS_SETS[classes].iter().copied());
                    m.backends.insert(backend, (true, classes));
                }
                Op::Down(backend) => {
                    for orphan in s.backend_down(BackendId(backend)) {
                        assert!(m.live.remove(&orphan.id));
                    }
                    if let Some(known) = m.backends.get_mut(&backend) {
                        known.0 = false;
                    }
                }
                Op::Event {
                    kind,
                    backend,
                    pick,
                } => {
                    let backend = BackendId(backend);
                    let on_it: Vec<ExecutionId> = s
                        .backend_status(backend)
                        .map(|status| status.running.into_iter().chain(status.waiting).collect())
                        .unwrap_or_default();
                    let on_it_pick = if pick < 6 {
                        pick % on_it.len().max(1)
                    } else {
                        pick
                    };
                    let id = on_it.get(on_it_pick).copied().unwrap_or_else(|| {
                        m.submitted
                            .get(pick)
                            .copied()
                            .unwrap_or(ExecutionId(u64::MAX))
                    });
                    let result = match kind {
                        0 => s.prompt_started(backend, id),
                        1 => s.prompt_finished(backend, id).map(|()| {
                            assert!(m.live.remove(&id));
                        }),
                        2 => s.taken_back(backend, id).map(|outcome| {
                            if outcome == TakenBackOutcome::Cancelled {
                                assert!(m.live.remove(&id));
                            }
                        }),
                        _ => s.take_back_failed(backend, id),
                    };
                    if result.is_err() {
                        assert_eq!(before, format!("{s:?}"), "an error changes nothing");
                    }
                }
            }
        }

        fn check(s: &Scheduler, m: &Model, actions: &[Action]) {
            let config = *s.config();
            // Backends: at most one running and one more waiting; one preemption.
            let mut held = HashSet::new();
            let mut load = 0;
            for backend in s.backend_ids() {
                let status = s.backend_status(backend).unwrap();
                assert!(status.load() <= 2, "{backend}: {status:?}");
                if !status.up {
                    assert_eq!(status.load(), 0);
                }
                if let Some(running) = status.running {
                    assert_eq!(s.location(running), Some(Location::Running { backend }));
                    assert!(held.insert(running));
                }
                for &waiting in &status.waiting {
                    assert!(matches!(
                        s.location(waiting),
                        Some(Location::Waiting { backend: b, .. }) if b == backend
                    ));
                    assert!(held.insert(waiting), "{waiting} is in two places");
                }
                if let Some(preempting) = status.preempting {
                    // Held there; it may have started since (the take-back will fail).
                    assert!(
                        status.running == Some(preempting) || status.waiting.contains(&preempting)
                    );
                }
                load += status.load();
            }
            assert_eq!(s.in_flight(), load);
            assert!(s.in_flight() <= config.max_concurrent_tasks);

            // Every admitted id is in exactly one place, or nowhere once done.
            let queued = s.queued_in_order(usize::MAX);
            for (position, &id) in queued.iter().enumerate() {
                assert!(held.insert(id), "{id} is queued and elsewhere");
                assert_eq!(s.position(id), Some(position));
                let Reverse(priority) = m.key(id).0;
                assert_eq!(s.location(id), Some(Location::Queued { priority }));
            }
            assert_eq!(held, m.live);
            for id in &m.submitted {
                if !m.live.contains(id) {
                    assert_eq!(s.location(*id), None);
                }
            }
            for priority in TaskPriority::ALL {
                let depth = queued
                    .iter()
                    .filter(|id| m.key(**id).0 == Reverse(priority))
                    .count();
                assert_eq!(s.queue_depth(priority), depth);
            }
            // Queue order: priority, then submit order (kept across take-backs).
            for pair in queued.windows(2) {
                assert!(m.key(pair[0]) < m.key(pair[1]));
            }

            // Dispatches: in queue order, and nothing queued that could have
            // gone to the same backend is more urgent.
            let dispatched: Vec<(ExecutionId, BackendId)> = actions
                .iter()
                .filter_map(|action| match *action {
                    Action::Dispatch { id, backend } => Some((id, backend)),
                    _ => None,
                })
                .collect();
            for pair in dispatched.windows(2) {
                assert!(m.key(pair[0].0) < m.key(pair[1].0));
            }
            for &(id, backend) in &dispatched {
                assert!(m.eligible(id, backend), "{id} sent to incapable {backend}");
                for &q in &queued {
                    if m.eligible(q, backend) {
                        assert!(m.key(q) > m.key(id), "{q} passed over for {id}");
                    }
                }
            }
            // Work conserving: below the cap, nothing queued fits a free slot.
            if s.in_flight() < config.max_concurrent_tasks {
                for &q in &queued {
                    for backend in s.backend_ids() {
                        let free = s.backend_status(backend).unwrap().load() < 2;
                        assert!(!(free && m.eligible(q, backend)), "{q} fits {backend}");
                    }
                }
            }
            for action in actions {
                match *action {
                    Action::Dispatch { .. } => {}
                    Action::TakeBack { id, backend } => assert_eq!(
                        s.location(id),
                        Some(Location::Waiting {
                            backend,
                            taking_back: true
                        })
                    ),
                    Action::Interrupt { id, backend } => assert!(matches!(
                        s.location(id),
                        Some(Location::Running { backend: b } | Location::Waiting { backend: b, .. })
                            if b == backend
                    )),
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn invariants_hold_after_every_input(
                max_queue_len in prop_oneof![1 => 0usize..3, 4 => 3usize..12],
                max_concurrent_tasks in prop_oneof![1 => Just(0usize), 6 => 1usize..7],
                ops in proptest::collection::vec(op(), 1..80),
            ) {
                let mut s = Scheduler::new(SchedulerConfig { max_queue_len, max_concurrent_tasks });
                let mut m = Model::default();
                for op in &ops {
                    apply(&mut s, &mut m, op);
                    let actions = s.next_actions();
                    check(&s, &m, &actions);
                }
            }
        }
    }
}
