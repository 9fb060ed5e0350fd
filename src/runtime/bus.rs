//! The event bus: every task event, runtime event and performance metric is
//! numbered here with one global, strictly increasing sequence, written to
//! the store together with the state change it describes, and, once that
//! write is durable, kept in a bounded in-memory window and broadcast to
//! live subscribers. A subscriber therefore never hears of a change that a
//! crash could still undo.
//!
//! [`EventBus::commit`] numbers the events and hands the change and its
//! events to the store as one write without waiting for it; the store's
//! writer commits whatever is queued together (group commit) and announces
//! each write's events in order. Callers that answer a client wait for the
//! commit ([`Commit::wait`]); the executor does not.
//!
//! Announcing costs the same with one subscriber or a thousand: it pushes
//! the events into the window and into the relay's inbox, and wakes the
//! relay (one task, started by the first subscriber that waits). The relay
//! sends them on the live channel (tokio `broadcast`), which wakes every
//! receiver parked waiting: that work, one wake per waiting subscriber, is
//! off the publisher's thread (the actor's, or a request's). With a few
//! subscribers (at most `DIRECT_SUBSCRIBERS`) and nothing in the relay's
//! hands, the publisher sends them itself: a wake or two costs less than
//! waking the relay. Events are
//! shared, never copied per subscriber: each is a [`SharedEvent`], which
//! also keeps the event's wire encoding once the first subscriber made it.
//! The window and the live channel are bounded; a subscriber that falls
//! behind the live channel catches up from the window, then from the store
//! (see [`crate::runtime::events`]).
//!
//! **Batches.** The executor makes several changes in one step (an actor
//! turn, one ComfyUI message): each a task or execution write with its
//! events. Inside a `Batch` (opened with `EventBus::batch` around such a
//! synchronous step) those writes are gathered on the thread and handed to
//! the store as one write when the batch closes, so a step costs one commit
//! instead of one per change. Their events are numbered then, still in
//! order. Nothing waits inside a batch: [`Commit::wait`] hands the thread's
//! batch over first, and the actor hands it over before it answers a caller.
//!
//! **Held writes.** What a running prompt reports (its node tasks, progress,
//! the root's "executing on" note) is written in a deferrable batch
//! (`EventBus::deferrable_batch`): nobody waits for it, so the bus holds it
//! back, up to `HOLD_AT_MOST`, gathering what comes meanwhile, and hands it
//! to the store in front of the next write, when someone waits
//! ([`Commit::wait`], [`EventBus::settled`]), or when the time is up. A fast
//! prompt's reports then share the commit of its end instead of costing one
//! each; subscribers hear of node progress at most that much later, and of
//! nothing before it is durable. Writes still commit in the order they were
//! made, and a held write is numbered when it is handed over.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast, watch};

pub use crate::model::events::{Event, EventContext, EventPayload};
use crate::model::{LogLevel, PerformanceMetric, RuntimeEvent, TaskEvent};
use crate::store::{Changes, Store, StoreError};

/// Events kept in memory for resumption by default.
pub const DEFAULT_HISTORY: usize = 8_192;
/// Events a live subscriber may fall behind before it lags and catches up
/// from history; also the most events that wait in the relay's inbox before
/// the publisher sends them itself.
const LIVE_CAPACITY: usize = 4096;
/// Most live subscribers the publisher wakes itself (see `Inner::announce`).
const DIRECT_SUBSCRIBERS: usize = 4;
/// Longest a deferrable write is held back before it is handed to the store
/// (see [`EventBus::deferrable_batch`]): how late, at most, a subscriber hears
/// of a running prompt's node progress.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(4);

/// An announced event as its readers share it: the event, and its wire
/// encoding once a reader made it, so that a thousand subscribers encode it
/// once. Reads as the [`Event`] it holds.
#[derive(Debug)]
pub struct SharedEvent {
    /// The event (the `Arc` the store was handed).
    event: Arc<Event>,
    /// The event's encoding for subscribers, made by the first one that sends
    /// it. The bus never reads it: its format belongs to whoever encodes (the
    /// API layer, which stores a protobuf `Event`).
    encoded: OnceLock<Bytes>,
}

impl SharedEvent {
    /// `event`, not yet encoded.
    pub fn new(event: Arc<Event>) -> Self {
        Self {
            event,
            encoded: OnceLock::new(),
        }
    }

    /// The event.
    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    /// The event's encoding: made by `encode` on the first call, the same
    /// bytes on every later one (whatever `encode` they pass, so every caller
    /// must encode the same way).
    pub fn encoded(&self, encode: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.encoded.get_or_init(|| encode(&self.event)).clone()
    }
}

impl Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event == other.event
    }
}

/// One live subscription of [`EventBus::subscribe`]: a broadcast receiver
/// that the subscriber gauge follows from open to drop (not only when an
/// event happens to be published).
#[derive(Debug)]
pub struct LiveEvents {
    /// The receiving end of the bus's live channel.
    rx: broadcast::Receiver<Arc<SharedEvent>>,
    /// The relay that feeds the channel; started by the first wait.
    relay: Arc<Relay>,
}

impl LiveEvents {
    /// The next live event; see [`broadcast::Receiver::recv`]. The first
    /// wait on the bus starts its relay on the current runtime.
    pub async fn recv(&mut self) -> Result<Arc<SharedEvent>, broadcast::error::RecvError> {
        self.relay.start();
        self.rx.recv().await
    }

    /// The next live event if one is waiting; see [`broadcast::Receiver::try_recv`].
    pub fn try_recv(&mut self) -> Result<Arc<SharedEvent>, broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for LiveEvents {
    fn drop(&mut self) {
        crate::telemetry::metrics::event_subscriber_closed();
    }
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The next sequence number. Held while a write is handed to the store,
    /// so that the store commits (and so announces) in sequence order.
    next: Mutex<u64>,
    /// What has been announced: the window, the last sequence, the inbox.
    published: Mutex<Published>,
    /// Live subscribers.
    live: broadcast::Sender<Arc<SharedEvent>>,
    /// Held by whoever moves events from the inbox to `live`, until they are
    /// sent, so that they go out in sequence order.
    sending: Mutex<()>,
    /// The task that sends what the inbox holds.
    relay: Arc<Relay>,
    /// Most events kept in memory.
    capacity: usize,
    /// Where every event is written (for catch-up beyond the window).
    store: Option<Arc<dyn Store>>,
    /// Writes handed to the store so far (numbered under `next`, in the
    /// order the store commits them).
    handed: AtomicU64,
    /// How far the handed writes have been committed.
    settled: watch::Sender<Settled>,
    /// Deferrable writes not handed to the store yet (see
    /// [`EventBus::deferrable_batch`]), gathered into one.
    held: Mutex<Option<Write>>,
    /// Whether `held` holds a write: read on every write without the lock.
    holding: AtomicBool,
    /// Whether deferrable writes are held at all: only in front of a store
    /// that prefers fewer writes (`Store::prefers_fewer_writes`).
    hold_writes: bool,
    /// Whether `Published::retired` holds events to free.
    retired: AtomicBool,
}

/// How far the writes handed to the store have been committed: they commit
/// in the order they were handed, so one number says it.
#[derive(Debug, Clone, Copy, Default)]
struct Settled {
    /// Every write up to this number has committed or failed.
    through: u64,
    /// The number of the last write that failed (0: none).
    failed_at: u64,
}

/// Events announced so far.
struct Published {
    /// The sequence of the last event announced (0 when none).
    last: u64,
    /// The newest announced events, oldest first.
    window: VecDeque<Arc<SharedEvent>>,
    /// Announced events the relay has not sent to live subscribers yet,
    /// oldest first.
    inbox: Vec<Arc<SharedEvent>>,
    /// Events that left the window, freed by the next commit's caller: with a
    /// store, events are announced on its writer thread, and an event freed
    /// there goes back to the allocator arena of the thread that made it,
    /// contending for that arena's lock with the thread allocating in it.
    retired: Vec<Arc<SharedEvent>>,
}

impl Inner {
    /// Puts committed events in the window and hands them to live
    /// subscribers, under one lock so that both see sequence order: into the
    /// relay's inbox when the relay runs (sending them itself when the relay
    /// is that far behind), else straight into the live channel.
    fn announce(&self, events: &[Arc<SharedEvent>]) {
        {
            let mut published = self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for event in events {
                if published.window.len() == self.capacity
                    && let Some(old) = published.window.pop_front()
                {
                    published.retired.push(old);
                    self.retired.store(true, Ordering::Release);
                }
                published.window.push_back(Arc::clone(event));
                published.last = event.sequence;
                crate::telemetry::metrics::event_published(event.kind());
            }
            // Nobody to tell: a subscriber that comes later reads the window.
            if self.live.receiver_count() == 0 {
                return;
            }
            if !self.relay.started.load(Ordering::Acquire) {
                for event in events {
                    // No subscriber is not an error.
                    let _ = self.live.send(Arc::clone(event));
                }
                return;
            }
            // A few subscribers: waking them here costs less than waking the
            // relay to do it. Only with nothing in the relay's hands (its inbox
            // empty and no send of it under way), so that order holds.
            if self.live.receiver_count() <= DIRECT_SUBSCRIBERS
                && published.inbox.is_empty()
                && let Ok(_sending) = self.sending.try_lock()
            {
                for event in events {
                    // No subscriber is not an error.
                    let _ = self.live.send(Arc::clone(event));
                }
                return;
            }
            published.inbox.extend(events.iter().cloned());
            if published.inbox.len() <= LIVE_CAPACITY {
                drop(published);
                self.relay.wake.notify_one();
                return;
            }
        }
        self.send_inbox();
    }

    /// Frees, on this thread and outside the lock, the events that left the
    /// window since the last call.
    fn free_retired(&self) {
        if !self.retired.swap(false, Ordering::AcqRel) {
            return;
        }
        let retired = std::mem::take(
            &mut self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retired,
        );
        drop(retired);
    }

    /// Sends what the inbox holds to live subscribers.
    fn send_inbox(&self) {
        let _sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        let events = std::mem::take(
            &mut self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .inbox,
        );
        for event in events {
            // No subscriber is not an error.
            let _ = self.live.send(event);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The relay ends once it finds the bus gone.
        self.relay.wake.notify_one();
    }
}

/// The relay: one task that moves announced events from the inbox to the
/// live channel, so that waking every parked subscriber is its work and not
/// the publisher's. Started on the runtime of the first subscriber that
/// waits; it ends when the bus is dropped (or its runtime shuts down, and
/// then publishers send by themselves again).
struct Relay {
    /// The bus (not kept alive by the relay).
    bus: Weak<Inner>,
    /// Wakes the relay: events wait in the inbox, or the bus is gone.
    wake: Notify,
    /// Whether the relay task runs.
    started: AtomicBool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts the relay on the current tokio runtime, if it does not run yet
    /// and there is one.
    fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .started
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let running = Running(Arc::clone(self));
            // Not tracked: it holds nothing but the bus's wake-up, and ends
            // with the bus.
            runtime.spawn(async move { running.0.run().await });
        }
    }

    async fn run(&self) {
        loop {
            self.wake.notified().await;
            // Let the tasks already woken run first: the call whose write
            // carried these events answers its caller before the relay wakes
            // every subscriber (with one async thread, a thousand deliveries
            // would otherwise go ahead of that answer).
            tokio::task::yield_now().await;
            let Some(bus) = self.bus.upgrade() else {
                return;
            };
            bus.send_inbox();
        }
    }
}

/// The running relay task's hold on it: when the task ends or is dropped with
/// its runtime, publishers go back to sending by themselves.
struct Running(Arc<Relay>);

impl Drop for Running {
    fn drop(&mut self) {
        let Some(bus) = self.0.bus.upgrade() else {
            return;
        };
        let _sending = bus.sending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut published = bus.published.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.started.store(false, Ordering::Release);
        // Under the lock: whatever a publisher sends from now on goes after.
        for event in std::mem::take(&mut published.inbox) {
            let _ = bus.live.send(event);
        }
    }
}

/// A write handed to the store by [`EventBus::commit`]. Dropping it does not
/// cancel the write; [`Commit::wait`] (blocking) or [`Commit::committed`]
/// (async) waits until it is durable.
#[must_use = "a commit is either waited for or dropped on purpose"]
pub struct Commit {
    /// The sequence of the last event of the write (of the bus's last event
    /// when the write had none); 0 for a write gathered into a `Batch`,
    /// whose events are numbered when the batch is handed over.
    pub last_sequence: u64,
    /// Where the outcome arrives.
    state: Arc<CommitState>,
    /// The bus, which hands over a held write its waiter would otherwise wait
    /// for; `None` when it holds none (see `Inner::hold_writes`), so that a
    /// publish does not touch the bus's reference count.
    bus: Option<Arc<Inner>>,
}

/// The outcome of one write, and who waits for it.
#[derive(Default)]
struct CommitState {
    /// The outcome (set once, when the store committed or failed) and
    /// whether a thread is parked on `done` for it.
    outcome: Mutex<Outcome>,
    /// Wakes a blocking waiter.
    done: std::sync::Condvar,
    /// Wakes an async waiter (a permit is kept when nobody waits yet).
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct Outcome {
    result: Option<Result<(), StoreError>>,
    /// A blocking waiter is parked: `finish` must wake it. Most writes have
    /// none (an async waiter, or nobody), and a condvar's notify is a
    /// syscall even when nobody sleeps on it.
    parked: bool,
}

impl CommitState {
    fn finish(&self, result: Result<(), StoreError>) {
        let parked = {
            let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
            outcome.result = Some(result);
            outcome.parked
        };
        if parked {
            self.done.notify_all();
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Option<Result<(), StoreError>> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .result
            .take()
    }
}

impl Commit {
    /// Blocks until the write is durable and its events announced. A batch
    /// open on this thread is handed to the store first (the write may be in it).
    pub fn wait(self) -> Result<(), StoreError> {
        flush_thread_batch();
        if let Some(bus) = &self.bus {
            bus.release_held();
        }
        let mut outcome = self
            .state
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(result) = outcome.result.take() {
                return result;
            }
            outcome.parked = true;
            outcome = self
                .state
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits, without blocking a thread, until the write is durable and its
    /// events announced.
    pub async fn committed(self) -> Result<(), StoreError> {
        if let Some(bus) = &self.bus {
            bus.release_held();
        }
        loop {
            if let Some(result) = self.state.take() {
                return result;
            }
            self.state.notify.notified().await;
        }
    }
}

/// Runs once a write committed (or failed), before its events are announced.
pub(crate) type After = Box<dyn FnOnce() + Send>;

/// An event not numbered yet, with the time it was made.
type Numbered = (EventPayload, EventContext, DateTime<Utc>);

/// Who waits for one write: its `after` and its commit's state.
type Waiter = (Option<After>, Arc<CommitState>);

impl Inner {
    /// Holds a deferrable write back: it is handed to the store in front of
    /// the next write, when someone waits for it, or after [`HOLD_AT_MOST`],
    /// whichever comes first. Written at once when the store's writes are
    /// cheap (the memory store: nothing to save) or outside a Tokio runtime
    /// (no timer).
    fn hold(self: &Arc<Self>, write: Write) {
        if !self.hold_writes {
            self.write(write);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.write(write);
            return;
        };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.as_mut() {
            Some(into) if into.can_absorb(&write) => into.absorb(write),
            Some(_) => {
                // Two writes that cannot be one (see `Write::can_absorb`):
                // the earlier goes to the store first.
                drop(held);
                self.release_held();
                self.hold(write);
            }
            None => {
                *held = Some(write);
                self.holding.store(true, Ordering::Release);
                let bus = Arc::downgrade(self);
                runtime.spawn(async move {
                    tokio::time::sleep(HOLD_AT_MOST).await;
                    if let Some(bus) = bus.upgrade() {
                        bus.release_held();
                    }
                });
            }
        }
    }

    /// Hands the held write, if any, to the store now.
    fn release_held(self: &Arc<Self>) {
        if let Some(held) = self.take_held() {
            self.write(held);
        }
    }

    fn take_held(&self) -> Option<Write> {
        if !self.holding.load(Ordering::Acquire) {
            return None;
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        self.holding.store(false, Ordering::Release);
        held.take()
    }

    /// Numbers `events`, hands `changes` with them to the store as one write
    /// (or announces them at once without a store), and tells every waiter
    /// the outcome, in order; a held write goes in front of it. Returns the
    /// last sequence.
    fn write(self: &Arc<Self>, write: Write) -> u64 {
        let write = match self.take_held() {
            Some(mut held) if held.can_absorb(&write) => {
                held.absorb(write);
                held
            }
            Some(held) => {
                self.write(held);
                write
            }
            None => write,
        };
        let Write {
            mut changes,
            events,
            waiters,
        } = write;
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let events: Vec<Arc<SharedEvent>> = events
            .into_iter()
            .map(|(mut payload, context, timestamp)| {
                let sequence = *next;
                *next += 1;
                match &mut payload {
                    EventPayload::Task(event) => event.sequence = sequence,
                    EventPayload::Runtime(event) => event.sequence = sequence,
                    EventPayload::Metric(_) => {}
                }
                Arc::new(SharedEvent::new(Arc::new(Event {
                    sequence,
                    timestamp,
                    payload,
                    context,
                })))
            })
            .collect();
        let last_sequence = *next - 1;
        let Some(store) = &self.store else {
            // Announced under the lock, so that events go out in sequence order.
            finish(waiters, &Ok(()), || self.announce(&events));
            drop(next);
            return last_sequence;
        };
        changes.events = events.iter().map(|e| Arc::clone(e.event())).collect();
        let number = self.handed.fetch_add(1, Ordering::AcqRel) + 1;
        let inner = Arc::clone(self);
        // Handed over under the lock: the store commits in sequence order.
        store.write(
            changes,
            Box::new(move |result: Result<(), StoreError>| {
                if let Err(error) = &result {
                    let first = events.first().map(|e| e.sequence);
                    tracing::error!(%error, ?first, "a state change was not stored; its events stay in the in-memory window");
                }
                finish(waiters, &result, || inner.announce(&events));
                inner.settled.send_modify(|settled| {
                    settled.through = settled.through.max(number);
                    if result.is_err() {
                        settled.failed_at = number;
                    }
                });
            }),
        );
        drop(next);
        last_sequence
    }
}

/// Runs every waiter's `after`, then `announce`, then tells each waiter `result`.
fn finish(waiters: Vec<Waiter>, result: &Result<(), StoreError>, announce: impl FnOnce()) {
    let mut states = Vec::with_capacity(waiters.len());
    for (after, state) in waiters {
        if let Some(after) = after {
            after();
        }
        states.push(state);
    }
    announce();
    for state in states {
        state.finish(result.clone());
    }
}

/// One write for the store: changes, their events (not numbered yet) and who waits for it.
#[derive(Default)]
struct Write {
    changes: Changes,
    events: Vec<Numbered>,
    waiters: Vec<Waiter>,
}

impl Write {
    /// Whether `later` can be added to this write: a write carries the new
    /// tasks of one execution at most.
    fn can_absorb(&self, later: &Write) -> bool {
        self.changes.new_execution_tasks.is_none() || later.changes.new_execution_tasks.is_none()
    }

    /// Adds `later` after what this write holds (see [`Write::can_absorb`]);
    /// a task or execution it holds already is replaced by its later state.
    fn absorb(&mut self, later: Write) {
        let Write {
            changes:
                Changes {
                    new_executions,
                    new_execution_tasks,
                    tasks,
                    executions,
                    events: _,
                },
            events,
            waiters,
        } = later;
        self.changes.new_executions.extend(new_executions);
        if new_execution_tasks.is_some() {
            self.changes.new_execution_tasks = new_execution_tasks;
        }
        // A task or an execution changed again is stored once, as it is now.
        for task in tasks {
            match self.changes.tasks.iter_mut().find(|t| t.id == task.id) {
                Some(earlier) => *earlier = task,
                None => self.changes.tasks.push(task),
            }
        }
        for execution in executions {
            match self
                .changes
                .executions
                .iter_mut()
                .find(|e| e.id == execution.id)
            {
                Some(earlier) => *earlier = execution,
                None => self.changes.executions.push(execution),
            }
        }
        self.events.extend(events);
        self.waiters.extend(waiters);
    }
}

/// Writes gathered in a thread's open batch.
struct Gathered {
    /// The bus they belong to (another bus's writes are not gathered).
    bus: Arc<Inner>,
    /// What was gathered so far.
    write: Write,
    /// Whether nobody waits for the batch's writes: they are held back a
    /// while (see [`EventBus::deferrable_batch`]).
    deferrable: bool,
}

impl Gathered {
    fn new(bus: Arc<Inner>, deferrable: bool) -> Self {
        Self {
            bus,
            write: Write::default(),
            deferrable,
        }
    }

    /// Takes what was gathered, leaving the batch open and empty; None when
    /// empty. The flag: whether the batch is deferrable.
    fn take(&mut self) -> Option<(Arc<Inner>, Write, bool)> {
        if self.write.waiters.is_empty() {
            return None;
        }
        Some((
            Arc::clone(&self.bus),
            std::mem::take(&mut self.write),
            self.deferrable,
        ))
    }
}

thread_local! {
    /// This thread's open batch, if any.
    static BATCH: RefCell<Option<Gathered>> = const { RefCell::new(None) };
}

/// Adds one write to this thread's open batch of `bus`; gives it back when
/// there is none (it is then written at once).
fn gather(bus: &Arc<Inner>, write: Write) -> Option<Write> {
    // A second set of new execution tasks cannot share the write: hand the
    // batch over first.
    let must_flush = BATCH.with(|batch| {
        batch.borrow().as_ref().is_some_and(|gathered| {
            Arc::ptr_eq(&gathered.bus, bus) && !gathered.write.can_absorb(&write)
        })
    });
    if must_flush {
        flush_thread_batch();
    }
    BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        match batch.as_mut() {
            Some(gathered) if Arc::ptr_eq(&gathered.bus, bus) => {
                gathered.write.absorb(write);
                None
            }
            _ => Some(write),
        }
    })
}

/// Hands this thread's gathered writes to the store (the batch stays open).
fn flush_thread_batch() {
    let taken = BATCH.with(|batch| batch.borrow_mut().as_mut().and_then(Gathered::take));
    match taken {
        Some((bus, write, true)) => bus.hold(write),
        Some((bus, write, false)) => {
            bus.write(write);
        }
        None => {}
    }
}

/// An open batch (see [`EventBus::batch`]); dropping it hands what was gathered to the store.
#[must_use = "the batch closes when this guard drops"]
pub(crate) struct Batch {
    /// Whether this guard opened the batch (an inner guard leaves it to the outer one).
    owner: bool,
}

impl Batch {
    /// Makes the batch deferrable, or not (see [`EventBus::deferrable_batch`]),
    /// for what it hands over from now on. Does nothing on an inner guard.
    pub(crate) fn set_deferrable(&self, deferrable: bool) {
        if !self.owner {
            return;
        }
        BATCH.with(|batch| {
            if let Some(gathered) = batch.borrow_mut().as_mut() {
                gathered.deferrable = deferrable;
            }
        });
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        flush_thread_batch();
        BATCH.with(|batch| batch.borrow_mut().take());
    }
}

/// A JSON object written as its JSON text, for a log field.
struct JsonText<'a>(&'a crate::model::JsonObject);

impl std::fmt::Display for JsonText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY, None)
    }
}

impl EventBus {
    /// A bus that keeps the newest `capacity` events (at least 1) in memory
    /// and writes every event to `store`. Sequence numbers continue after the
    /// store's last event.
    pub fn new(capacity: usize, store: Option<Arc<dyn Store>>) -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let hold_writes = store.as_ref().is_some_and(|s| s.prefers_fewer_writes());
        let last = store
            .as_ref()
            .and_then(|s| s.last_event_sequence().ok())
            .unwrap_or(0);
        Self {
            inner: Arc::new_cyclic(|bus| Inner {
                next: Mutex::new(last + 1),
                published: Mutex::new(Published {
                    last,
                    window: VecDeque::new(),
                    inbox: Vec::new(),
                    retired: Vec::new(),
                }),
                live,
                sending: Mutex::new(()),
                relay: Arc::new(Relay {
                    bus: bus.clone(),
                    wake: Notify::new(),
                    started: AtomicBool::new(false),
                }),
                capacity: capacity.max(1),
                store,
                handed: AtomicU64::new(0),
                held: Mutex::new(None),
                holding: AtomicBool::new(false),
                hold_writes,
                retired: AtomicBool::new(false),
                settled: watch::Sender::new(Settled::default()),
            }),
        }
    }

    /// Writes `changes` and the `events` they emit as one atomic step, and
    /// announces the events (window, live subscribers) once that step is
    /// durable, in sequence order. Returns at once; see [`Commit::wait`].
    /// Events get their sequence numbers here, in the order given.
    pub fn commit(&self, changes: Changes, events: Vec<(EventPayload, EventContext)>) -> Commit {
        self.commit_then(changes, events, None)
    }

    /// [`EventBus::commit`]; `after` runs once the write committed (or
    /// failed), before its events are announced.
    pub(crate) fn commit_then(
        &self,
        changes: Changes,
        events: Vec<(EventPayload, EventContext)>,
        after: Option<After>,
    ) -> Commit {
        self.inner.free_retired();
        let state = Arc::new(CommitState::default());
        let now = Utc::now();
        let events: Vec<Numbered> = events
            .into_iter()
            .map(|(payload, context)| (payload, context, now))
            .collect();
        let write = Write {
            changes,
            events,
            waiters: vec![(after, Arc::clone(&state))],
        };
        let last_sequence = match gather(&self.inner, write) {
            None => 0,
            Some(write) => self.inner.write(write),
        };
        Commit {
            last_sequence,
            state,
            bus: self.inner.hold_writes.then(|| Arc::clone(&self.inner)),
        }
    }

    /// Waits until every write handed to the store so far has committed and
    /// its events are announced, so that what a caller is told next can no
    /// longer be undone by a crash. Writes nothing itself: it waits for the
    /// last write handed over (writes commit in order), and fails when that
    /// write or a later one failed. A batch open on this thread is handed
    /// over first.
    pub async fn settled(&self) -> Result<(), StoreError> {
        flush_thread_batch();
        if self.inner.store.is_none() {
            return Ok(());
        }
        self.inner.release_held();
        let target = self.inner.handed.load(Ordering::Acquire);
        let mut settled = self.inner.settled.subscribe();
        // The sender lives as long as the bus, which `self` holds.
        let reached = settled
            .wait_for(|settled| settled.through >= target)
            .await
            .map(|settled| *settled)
            .map_err(|_| StoreError::Unavailable("the event bus has stopped".into()))?;
        if target > 0 && reached.failed_at >= target {
            return Err(StoreError::Unavailable(
                "a write before this answer was not committed".into(),
            ));
        }
        Ok(())
    }

    /// Opens a batch on this thread (see the module docs): until the returned
    /// guard drops, this bus's writes made on this thread are gathered and
    /// then handed to the store as one. A batch already open on the thread
    /// stays the one (the inner guard does nothing).
    pub(crate) fn batch(&self) -> Batch {
        self.open_batch(false)
    }

    /// [`EventBus::batch`] for writes nobody waits for (a running prompt's
    /// reports): what it gathered is held back up to [`HOLD_AT_MOST`] and
    /// handed to the store together with the writes that come meanwhile, as
    /// one write: a fast prompt's reports cost one commit, not one each. It
    /// is handed over at once when someone waits ([`Commit::wait`],
    /// [`EventBus::settled`]) and in front of any other write, so writes
    /// still commit in the order they were made. Inside an open batch, that
    /// batch stays the one, as it is.
    pub(crate) fn deferrable_batch(&self) -> Batch {
        self.open_batch(true)
    }

    fn open_batch(&self, deferrable: bool) -> Batch {
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            if batch.is_some() {
                return Batch { owner: false };
            }
            *batch = Some(Gathered::new(Arc::clone(&self.inner), deferrable));
            Batch { owner: true }
        })
    }

    /// Hands the writes gathered so far in this thread's batch to the store
    /// now; the batch stays open. Called before answering a caller who will
    /// wait for what was written.
    pub(crate) fn flush_batch(&self) {
        flush_thread_batch();
    }

    /// Writes one event on its own and announces it once durable, without
    /// waiting; returns its sequence.
    fn publish(&self, payload: EventPayload, context: EventContext) -> u64 {
        self.commit(Changes::default(), vec![(payload, context)])
            .last_sequence
    }

    /// Publishes a task event about a task with `context`.
    pub fn publish_task(&self, event: TaskEvent, context: EventContext) -> u64 {
        self.publish(EventPayload::Task(event), context)
    }

    /// Publishes a runtime event, and logs it at its level.
    pub fn publish_runtime(&self, event: RuntimeEvent, context: EventContext) -> u64 {
        // Formatted only when the line is written: a runtime event below the
        // log level (an audit event under `log_level = "warning"`) costs no copy.
        let data = JsonText(&event.data);
        match event.level {
            LogLevel::Debug => {
                tracing::debug!(event_type = %event.event_type, %data, "{}", event.message);
            }
            LogLevel::Info => {
                tracing::info!(event_type = %event.event_type, %data, "{}", event.message);
            }
            LogLevel::Warning => {
                tracing::warn!(event_type = %event.event_type, %data, "{}", event.message);
            }
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(event_type = %event.event_type, %data, "{}", event.message);
            }
        }
        self.publish(EventPayload::Runtime(event), context)
    }

    /// Publishes a performance metric, and logs it at debug level.
    pub fn publish_metric(&self, metric: PerformanceMetric, context: EventContext) -> u64 {
        tracing::debug!(
            metric = %metric.name,
            value = metric.value,
            unit = %metric.unit,
            task_id = metric.task_id.as_deref().unwrap_or(""),
            "performance metric"
        );
        self.publish(EventPayload::Metric(metric), context)
    }

    /// A live subscription to events published from now on. The
    /// `comfy_reality_event_subscribers` gauge counts it from now until it is
    /// dropped.
    pub fn subscribe(&self) -> LiveEvents {
        crate::telemetry::metrics::event_subscriber_opened();
        LiveEvents {
            rx: self.inner.live.subscribe(),
            relay: Arc::clone(&self.inner.relay),
        }
    }

    /// How many live subscriptions exist.
    pub fn subscribers(&self) -> usize {
        self.inner.live.receiver_count()
    }

    /// Events with a sequence above `after`, oldest first, at most `limit`:
    /// from the in-memory window, else from the store. `Err(oldest)` when the
    /// event right after `after` is no longer kept anywhere (`oldest` is the
    /// oldest sequence still kept, 0 when none).
    pub fn history_after(&self, after: u64, limit: usize) -> Result<Vec<Arc<SharedEvent>>, u64> {
        let (window_oldest, last) = {
            let state = self
                .inner
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let last = state.last;
            match state.window.front() {
                Some(front) if front.sequence <= after + 1 => {
                    let skip = state.window.partition_point(|e| e.sequence <= after);
                    return Ok(state
                        .window
                        .iter()
                        .skip(skip)
                        .take(limit)
                        .cloned()
                        .collect());
                }
                Some(front) => (front.sequence, last),
                None => (0, last),
            }
        };
        if after >= last {
            return Ok(Vec::new());
        }
        let Some(store) = &self.inner.store else {
            return Err(window_oldest);
        };
        match store.events_after(after, limit) {
            Ok(events) if events.first().is_some_and(|e| e.sequence == after + 1) => Ok(events
                .into_iter()
                .map(|e| Arc::new(SharedEvent::new(Arc::new(e))))
                .collect()),
            Ok(events) => Err(events.first().map_or(window_oldest, |e| e.sequence)),
            Err(error) => {
                tracing::error!(%error, "stored events could not be read");
                Err(window_oldest)
            }
        }
    }

    /// The sequence number of the last event announced (0 when none).
    pub fn last_sequence(&self) -> u64 {
        self.inner
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskEventType;
    use crate::store::MemoryStore;

    fn task_event(i: u64) -> TaskEvent {
        TaskEvent::new(format!("t{i}"), TaskEventType::Created)
    }

    /// A bus on a fresh SQLite store (kept with its directory).
    fn sqlite_bus() -> (tempfile::TempDir, Arc<crate::store::SqliteStore>, EventBus) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let bus = EventBus::new(64, Some(Arc::clone(&store) as Arc<dyn Store>));
        (dir, store, bus)
    }

    /// One task event (task `t{i}`) in a write of its own, or in the thread's open batch.
    fn publish(bus: &EventBus, i: u64) -> Commit {
        bus.commit(
            Changes::default(),
            vec![(EventPayload::Task(task_event(i)), EventContext::default())],
        )
    }

    /// An event as (sequence, task id; empty for other events).
    fn numbered(event: &Event) -> (u64, String) {
        match &event.payload {
            EventPayload::Task(t) => (event.sequence, t.task_id.clone()),
            _ => (event.sequence, String::new()),
        }
    }

    /// The stored events as (sequence, task id).
    fn stored_order(store: &crate::store::SqliteStore) -> Vec<(u64, String)> {
        store
            .events_after(0, 100)
            .unwrap()
            .iter()
            .map(numbered)
            .collect()
    }

    #[test]
    fn a_batch_is_one_store_write_with_its_events_in_order() {
        let (_dir, store, bus) = sqlite_bus();
        let before = store.commit_count();
        let commits: Vec<Commit> = {
            let _batch = bus.batch();
            let inner = bus.batch();
            let commits = (0..3).map(|i| publish(&bus, i)).collect();
            drop(inner);
            assert_eq!(
                bus.last_sequence(),
                0,
                "nothing is handed over inside the batch"
            );
            commits
        };
        for commit in commits {
            commit.wait().unwrap();
        }
        assert_eq!(store.commit_count() - before, 1, "one write for the batch");
        assert_eq!(
            stored_order(&store),
            [(1, "t0".into()), (2, "t1".into()), (3, "t2".into())]
        );
        // Waiting inside a batch hands it over first instead of waiting forever.
        let _batch = bus.batch();
        publish(&bus, 9).wait().unwrap();
        assert_eq!(bus.last_sequence(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn deferrable_writes_are_held_and_go_out_in_front_of_the_next_write() {
        let (_dir, store, bus) = sqlite_bus();
        for i in 0..3 {
            let _batch = bus.deferrable_batch();
            drop(publish(&bus, i));
        }
        assert!(bus.inner.holding.load(Ordering::Acquire), "held");
        assert_eq!(
            bus.inner.handed.load(Ordering::Acquire),
            0,
            "nothing handed over"
        );
        // The next write (nobody waits in a deferrable batch, but this one is waited
        // for) takes the held ones with it, in front: one commit, in order.
        publish(&bus, 3).committed().await.unwrap();
        assert_eq!(store.commit_count(), 1, "one write for all four");
        assert_eq!(
            stored_order(&store),
            [
                (1, "t0".into()),
                (2, "t1".into()),
                (3, "t2".into()),
                (4, "t3".into())
            ]
        );
        assert_eq!(bus.last_sequence(), 4, "announced");
    }

    #[tokio::test(start_paused = true)]
    async fn two_held_writes_that_cannot_be_one_go_out_in_order() {
        let (_dir, _store, bus) = sqlite_bus();
        // Each carries an execution's new tasks, which a write holds for one execution only.
        for (i, execution) in [(0, "e0"), (1, "e1")] {
            let _batch = bus.deferrable_batch();
            drop(bus.commit(
                Changes {
                    new_execution_tasks: Some((execution.into(), Vec::new())),
                    ..Changes::default()
                },
                vec![(EventPayload::Task(task_event(i)), EventContext::default())],
            ));
        }
        assert_eq!(
            bus.inner.handed.load(Ordering::Acquire),
            1,
            "the earlier handed over"
        );
        assert!(bus.inner.holding.load(Ordering::Acquire), "the later held");
        // Whatever the store made of them, they were numbered in the order they were made.
        let _ = bus.settled().await;
        let order: Vec<(u64, String)> = bus
            .history_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| numbered(e))
            .collect();
        assert_eq!(order, [(1, "t0".into()), (2, "t1".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_write_goes_out_on_its_own_after_a_while() {
        let (_dir, store, bus) = sqlite_bus();
        {
            let _batch = bus.deferrable_batch();
            drop(publish(&bus, 0));
        }
        tokio::time::sleep(HOLD_AT_MOST / 2).await;
        assert!(bus.inner.holding.load(Ordering::Acquire), "still held");
        tokio::time::sleep(HOLD_AT_MOST).await;
        assert!(
            !bus.inner.holding.load(Ordering::Acquire),
            "handed over by the timer"
        );
        assert_eq!(bus.inner.handed.load(Ordering::Acquire), 1);
        bus.settled().await.unwrap();
        assert_eq!(stored_order(&store), [(1, "t0".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_held_write_hands_it_over() {
        use futures_util::FutureExt as _;
        let (_dir, store, bus) = sqlite_bus();
        let commit = {
            let _batch = bus.deferrable_batch();
            publish(&bus, 0)
        };
        assert!(bus.inner.holding.load(Ordering::Acquire));
        // Its first poll hands it over; no time has passed for the timer.
        let _ = commit.committed().now_or_never();
        assert!(!bus.inner.holding.load(Ordering::Acquire));
        // settled() too: the held write is one it waits for.
        {
            let _batch = bus.deferrable_batch();
            drop(publish(&bus, 1));
        }
        bus.settled().await.unwrap();
        assert_eq!(stored_order(&store), [(1, "t0".into()), (2, "t1".into())]);
    }

    #[test]
    fn a_task_changed_twice_in_one_write_is_stored_once_as_it_is_now() {
        let task = |name: &str| {
            let mut new = crate::model::NewTask::new(name, crate::model::TaskType::Node);
            new.id = Some("t1".into());
            crate::model::Task::new(new).unwrap()
        };
        let write = |changed: Vec<crate::model::Task>| Write {
            changes: Changes {
                tasks: changed.into_iter().map(Arc::new).collect(),
                ..Changes::default()
            },
            ..Write::default()
        };
        let mut merged = write(vec![task("first")]);
        merged.absorb(write(vec![task("second")]));
        let names: Vec<&str> = merged
            .changes
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["second"]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_front_of_the_memory_store_nothing_is_held() {
        let bus = EventBus::new(16, Some(Arc::new(MemoryStore::new()) as Arc<dyn Store>));
        {
            let _batch = bus.deferrable_batch();
            drop(publish(&bus, 0));
        }
        assert!(!bus.inner.holding.load(Ordering::Acquire));
        assert_eq!(bus.last_sequence(), 1, "written and announced at once");
    }

    #[test]
    fn without_a_tokio_runtime_a_deferrable_batch_is_written_at_once() {
        let (_dir, store, bus) = sqlite_bus();
        let commit = {
            let _batch = bus.deferrable_batch();
            publish(&bus, 0)
        };
        assert!(!bus.inner.holding.load(Ordering::Acquire));
        commit.wait().unwrap();
        assert_eq!(stored_order(&store), [(1, "t0".into())]);
    }

    #[tokio::test]
    async fn settled_waits_for_every_write_handed_over_and_writes_nothing() {
        let (_dir, store, bus) = sqlite_bus();
        // Nothing handed over yet: nothing to wait for, and nothing written.
        bus.settled().await.unwrap();
        assert_eq!(store.commit_count(), 0);
        for round in 1..=20u64 {
            // Dropped: only settled() waits for these.
            for i in 0..5 {
                drop(publish(&bus, i));
            }
            bus.settled().await.unwrap();
            let last = round * 5;
            assert_eq!(store.last_event_sequence().unwrap(), last, "stored");
            assert_eq!(
                bus.history_after(last - 1, 1).unwrap().len(),
                1,
                "announced"
            );
        }
        let commits = store.commit_count();
        bus.settled().await.unwrap();
        assert_eq!(store.commit_count(), commits, "settled writes nothing");
        // A batch open on this thread is handed over, not waited on forever.
        let _batch = bus.batch();
        drop(publish(&bus, 7));
        bus.settled().await.unwrap();
        assert_eq!(store.last_event_sequence().unwrap(), 101);
    }

    #[tokio::test]
    async fn numbers_keeps_and_broadcasts_in_order() {
        let bus = EventBus::new(3, None);
        let mut live = bus.subscribe();
        for i in 0..5 {
            assert_eq!(
                bus.publish_task(task_event(i), EventContext::default()),
                i + 1
            );
        }
        for i in 1..=5 {
            assert_eq!(live.recv().await.unwrap().sequence, i);
        }
        let kept = bus.history_after(2, 10).unwrap();
        assert_eq!(
            kept.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        // Without a store, what left the window is gone.
        assert_eq!(bus.history_after(0, 10).unwrap_err(), 3);
        assert!(bus.history_after(5, 10).unwrap().is_empty());
        assert_eq!(bus.last_sequence(), 5);
    }

    /// A subscriber of `bus` parked in `recv` on `runtime` (which starts the
    /// relay), reading `n` events; gives their sequences.
    fn parked_reader(
        runtime: &tokio::runtime::Runtime,
        bus: &EventBus,
        n: usize,
    ) -> tokio::task::JoinHandle<Vec<u64>> {
        let mut parked = bus.subscribe();
        let reader = runtime.spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < n {
                seen.push(parked.recv().await.unwrap().sequence);
            }
            seen
        });
        runtime.block_on(tokio::task::yield_now());
        reader
    }

    #[test]
    fn publishing_leaves_the_waking_to_the_relay() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bus = EventBus::new(16, None);
        let waiter = parked_reader(&runtime, &bus, 3);
        let mut watcher = bus.subscribe();
        // More subscribers than the publisher wakes by itself.
        let _others: Vec<_> = (0..DIRECT_SUBSCRIBERS).map(|_| bus.subscribe()).collect();
        for i in 0..3 {
            bus.publish_task(task_event(i), EventContext::default());
        }
        // Announced (the window has them) but not sent: the publisher only
        // handed them to the relay, which has not run yet.
        assert_eq!(bus.last_sequence(), 3);
        assert!(matches!(
            watcher.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        assert_eq!(runtime.block_on(waiter).unwrap(), [1, 2, 3]);
        for i in 1..=3 {
            assert_eq!(watcher.try_recv().unwrap().sequence, i);
        }
        // Once the relay's runtime is gone, publishers send by themselves.
        drop(runtime);
        bus.publish_task(task_event(4), EventContext::default());
        assert_eq!(watcher.try_recv().unwrap().sequence, 4);
    }

    #[test]
    fn a_few_subscribers_are_sent_to_by_the_publisher_in_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bus = EventBus::new(16, None);
        let waiter = parked_reader(&runtime, &bus, 4);
        let mut watcher = bus.subscribe();
        bus.publish_task(task_event(0), EventContext::default());
        // Sent at once, without the relay running.
        assert_eq!(watcher.try_recv().unwrap().sequence, 1);
        // Past the limit the relay takes over; back under it, the publisher
        // waits until the relay has sent what it holds, so order holds.
        let others: Vec<_> = (0..DIRECT_SUBSCRIBERS).map(|_| bus.subscribe()).collect();
        bus.publish_task(task_event(1), EventContext::default());
        drop(others);
        bus.publish_task(task_event(2), EventContext::default());
        assert!(matches!(
            watcher.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        runtime.block_on(tokio::task::yield_now());
        runtime.block_on(tokio::task::yield_now());
        bus.publish_task(task_event(3), EventContext::default());
        assert_eq!(runtime.block_on(waiter).unwrap(), [1, 2, 3, 4]);
        for i in 2..=4 {
            assert_eq!(watcher.try_recv().unwrap().sequence, i);
        }
    }

    #[test]
    fn many_subscribers_get_every_event_in_order_from_publishing_threads() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let bus = EventBus::new(64, None);
        let readers: Vec<_> = (0..50)
            .map(|_| {
                let mut live = bus.subscribe();
                runtime.spawn(async move {
                    let mut seen = Vec::new();
                    while seen.len() < 2_000 {
                        match live.recv().await {
                            Ok(event) => seen.push(event.sequence),
                            Err(error) => panic!("{error}"),
                        }
                    }
                    seen
                })
            })
            .collect();
        // Two threads outside the runtime publish 1,000 each (fewer than the
        // live channel holds, so nobody lags).
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for i in 0..1_000 {
                        bus.publish_task(task_event(i), EventContext::default());
                    }
                });
            }
        });
        let everything: Vec<u64> = (1..=2_000).collect();
        for reader in readers {
            assert_eq!(runtime.block_on(reader).unwrap(), everything);
        }
    }

    #[test]
    fn a_shared_event_is_encoded_once() {
        let bus = EventBus::new(4, None);
        bus.publish_task(task_event(1), EventContext::default());
        let first = bus.history_after(0, 1).unwrap().remove(0);
        let again = bus.history_after(0, 1).unwrap().remove(0);
        let mut encodings = 0;
        let mut encode = |event: &Event| {
            encodings += 1;
            Bytes::from(event.sequence.to_string())
        };
        assert_eq!(first.encoded(&mut encode), "1");
        assert_eq!(again.encoded(&mut encode), "1");
        assert_eq!(encodings, 1, "the window hands out the same shared event");
    }

    #[test]
    fn the_store_serves_what_left_the_window_and_numbering_continues() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let bus = EventBus::new(2, Some(Arc::clone(&store)));
        for i in 0..6 {
            bus.publish_task(task_event(i), EventContext::default());
        }
        let events = bus.history_after(0, 4).unwrap();
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        match &events[0].payload {
            EventPayload::Task(event) => assert_eq!(event.sequence, 1),
            other => panic!("{other:?}"),
        }
        let again = EventBus::new(2, Some(store));
        assert_eq!(again.last_sequence(), 6);
        assert_eq!(
            again.publish_task(task_event(9), EventContext::default()),
            7
        );
    }
}
