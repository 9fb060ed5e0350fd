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
//! waking the relay. (Not several events from outside the runtime: each send
//! could wake its thread again; see `Inner::announce`.) Events are
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

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Notify, broadcast};

use crate::model::events::{AUDIT_EVENT_TYPE, AuditEvent};
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
        self.relay.subscribers.fetch_sub(1, Ordering::SeqCst);
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
    /// sent, so that they go out in sequence order; it holds the emptied
    /// inbox of the last send, swapped for the full one, so that the inbox
    /// keeps its allocation.
    sending: Mutex<Vec<Arc<SharedEvent>>>,
    /// The task that sends what the inbox holds.
    relay: Arc<Relay>,
    /// Most events kept in memory.
    capacity: usize,
    /// Where every event is written (for catch-up beyond the window).
    store: Option<Arc<dyn Store>>,
    /// Writes handed to the store so far (numbered under `next`, in the
    /// order the store commits them).
    handed: AtomicU64,
    /// How far the handed writes have been committed, and how many wait to
    /// hear of it.
    settled: Mutex<Settled>,
    /// Wakes [`EventBus::settled`]'s waiters when `settled` moves; notified
    /// only while one waits (a write with nobody waiting takes one lock), by
    /// the settler when it runs.
    settled_moved: Notify,
    /// The task that notifies `settled_moved` from the waiters' runtime.
    settler: Arc<Settler>,
    /// Deferrable writes not handed to the store yet (see
    /// [`EventBus::deferrable_batch`]), gathered into one.
    held: Mutex<Option<Write>>,
    /// Whether `held` holds a write: read on every write without the lock.
    holding: AtomicBool,
    /// Counts the holds begun (changed under `held`'s lock): a hold's timer
    /// releases only the write held since it began, not a later one.
    holds: AtomicU64,
    /// Whether deferrable writes are held at all: only in front of a store
    /// that prefers fewer writes (`Store::prefers_fewer_writes`).
    hold_writes: bool,
    /// Whether `Published::retired` holds events to free.
    retired: AtomicBool,
}

/// How far the writes handed to the store have been committed: they commit
/// in the order they were handed, so one number says it.
#[derive(Debug, Default)]
struct Settled {
    /// Every write up to this number has committed or failed.
    through: u64,
    /// The number of the last write that failed (0: none).
    failed_at: u64,
    /// How many [`EventBus::settled`] calls wait for a later write.
    waiting: usize,
}

/// Counts one [`EventBus::settled`] call in `Settled::waiting` until it
/// returns or is dropped.
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting -= 1;
    }
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
    /// Records that write `number` committed (or failed), and wakes the
    /// [`EventBus::settled`] calls waiting, if any.
    fn settle(&self, number: u64, failed: bool) {
        let waiting = {
            let mut settled = self.settled.lock().unwrap_or_else(PoisonError::into_inner);
            settled.through = settled.through.max(number);
            if failed {
                settled.failed_at = number;
            }
            settled.waiting > 0
        };
        if waiting {
            self.settler.wake_waiters(self);
        }
    }

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
            // Read after the window took the events: a subscription that
            // counts itself later reads them there.
            let subscribers = self.relay.subscribers.load(Ordering::SeqCst);
            if subscribers == 0 {
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
            // relay to do it, for one event, or for several on a thread of the
            // runtime (where a wake only schedules the subscriber's task). On
            // another thread (the store's writer) each send may wake the
            // runtime's thread, which takes the CPU and runs the subscriber
            // before the next send: one wake of the relay hands it them all.
            // Only with nothing in the relay's hands (its inbox empty and no
            // send of it under way), so that order holds.
            if subscribers <= DIRECT_SUBSCRIBERS
                && (events.len() == 1 || tokio::runtime::Handle::try_current().is_ok())
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
        let mut sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(
            &mut *sending,
            &mut self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .inbox,
        );
        for event in sending.drain(..) {
            // No subscriber is not an error.
            let _ = self.live.send(event);
        }
    }
}

/// Spawns the task `task` makes on the current tokio runtime, if `started` is not set yet and
/// there is a runtime, and sets `started` (the relay's and the settler's start). The task is
/// not tracked: it holds nothing but the bus's wake-up, and ends with the bus.
fn spawn_once<F>(started: &AtomicBool, task: impl FnOnce() -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if started.load(Ordering::SeqCst) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if started
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        runtime.spawn(task());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The relay and the settler end once they find the bus gone.
        self.relay.wake.notify_one();
        self.settler.wake.notify_one();
    }
}

mod commit;
mod relay;
mod settler;
mod writes;

pub(crate) use commit::After;
pub use commit::Commit;
use commit::CommitState;
use relay::Relay;
use settler::Settler;
pub(crate) use writes::Batch;
use writes::{BATCH, Gathered, Numbered, Waiter, Write, flush_thread_batch, gather};

#[cfg(test)]
mod tests;

/// A JSON object written as its JSON text, for a log field (as the API writes it).
struct JsonText<'a>(&'a crate::model::JsonObject);

impl std::fmt::Display for JsonText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::model::json_text::object_text(self.0))
    }
}

/// Logs a runtime event's line at `level` (`event_type` through `Display`, as a text line has
/// always written it: unquoted).
fn log_event(
    level: LogLevel,
    event_type: &str,
    data: &dyn std::fmt::Display,
    message: &dyn std::fmt::Display,
) {
    match level {
        LogLevel::Debug => tracing::debug!(event_type = %event_type, %data, "{message}"),
        LogLevel::Info => tracing::info!(event_type = %event_type, %data, "{message}"),
        LogLevel::Warning => tracing::warn!(event_type = %event_type, %data, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(event_type = %event_type, %data, "{message}")
        }
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
                sending: Mutex::new(Vec::new()),
                relay: Arc::new(Relay {
                    bus: bus.clone(),
                    wake: Notify::new(),
                    started: AtomicBool::new(false),
                    subscribers: AtomicUsize::new(0),
                }),
                capacity: capacity.max(1),
                store,
                handed: AtomicU64::new(0),
                held: Mutex::new(None),
                holding: AtomicBool::new(false),
                holds: AtomicU64::new(0),
                hold_writes,
                retired: AtomicBool::new(false),
                settled: Mutex::new(Settled::default()),
                settled_moved: Notify::new(),
                settler: Arc::new(Settler::new(bus.clone())),
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
        let state = Arc::new(CommitState::default());
        let last_sequence = self.hand(changes, events, vec![(after, Arc::clone(&state))]);
        Commit {
            last_sequence,
            state,
            bus: self.inner.hold_writes.then(|| Arc::clone(&self.inner)),
        }
    }

    /// Numbers `events` (now, or when the thread's batch is handed over) and
    /// hands them with `changes` to the store as one write, which tells
    /// `waiters` its outcome; returns the last sequence (0 inside a batch).
    fn hand(
        &self,
        changes: Changes,
        events: Vec<(EventPayload, EventContext)>,
        waiters: Vec<Waiter>,
    ) -> u64 {
        self.inner.free_retired();
        let now = Utc::now();
        let events: Vec<Numbered> = events
            .into_iter()
            .map(|(payload, context)| (payload, context, now))
            .collect();
        let write = Write {
            changes,
            events,
            waiters,
        };
        match gather(&self.inner, write) {
            None => 0,
            Some(write) => self.inner.write(write),
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
        let mut waiting = None;
        let failed_at = loop {
            // Made before the check: a write that settles after it wakes this.
            let moved = self.inner.settled_moved.notified();
            {
                let mut settled = self
                    .inner
                    .settled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if settled.through >= target {
                    break settled.failed_at;
                }
                if waiting.is_none() {
                    settled.waiting += 1;
                    waiting = Some(Waiting(&self.inner));
                }
            }
            self.inner.settler.start();
            moved.await;
        };
        drop(waiting);
        if target > 0 && failed_at >= target {
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

    /// Whether the writes this thread's open batch gathered so far (not yet
    /// handed to the store) create execution `id`. A write made on this thread
    /// now joins them, and a batch is handed over and stored whole, as one
    /// atomic write: it becomes durable together with that creation, neither
    /// before nor after it.
    pub(crate) fn gathering_creation_of(&self, id: &str) -> bool {
        writes::gathering_creation_of(&self.inner, id)
    }

    /// Hands the writes gathered so far in this thread's batch to the store
    /// now; the batch stays open. Called before answering a caller who will
    /// wait for what was written.
    pub(crate) fn flush_batch(&self) {
        flush_thread_batch();
    }

    /// Writes one event on its own and announces it once durable, without
    /// waiting; returns its sequence. Nobody can wait for it, so it carries
    /// no [`Commit`]'s state.
    fn publish(&self, payload: EventPayload, context: EventContext) -> u64 {
        self.hand(Changes::default(), vec![(payload, context)], Vec::new())
    }

    /// Publishes a task event about a task with `context`.
    pub fn publish_task(&self, event: TaskEvent, context: EventContext) -> u64 {
        self.publish(EventPayload::Task(event), context)
    }

    /// Publishes a runtime event, and logs it at its level.
    pub fn publish_runtime(&self, event: RuntimeEvent, context: EventContext) -> u64 {
        // Formatted only when the line is written: a runtime event below the
        // log level costs no copy.
        log_event(
            event.level,
            &event.event_type,
            &JsonText(&event.data),
            &event.message,
        );
        self.publish(EventPayload::Runtime(Box::new(event)), context)
    }

    /// Publishes an audit event, and logs it at its level as the runtime event it stands for
    /// (its message and data written only when the line is: not for a call that succeeded,
    /// under `log_level = "warning"`).
    pub fn publish_audit(&self, event: AuditEvent, context: EventContext) -> u64 {
        log_event(
            event.level,
            AUDIT_EVENT_TYPE,
            &event.data_text(),
            &event.message(),
        );
        self.publish(EventPayload::Audit(Box::new(event)), context)
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
        // Counted before its receiver exists (see `announce`).
        self.inner.relay.subscribers.fetch_add(1, Ordering::SeqCst);
        LiveEvents {
            rx: self.inner.live.subscribe(),
            relay: Arc::clone(&self.inner.relay),
        }
    }

    /// Whether a publish now reaches live subscribers through the relay
    /// (more of them than the publisher wakes itself): each is woken among
    /// many by the same send.
    pub(crate) fn relays(&self) -> bool {
        self.inner.relay.subscribers.load(Ordering::Relaxed) > DIRECT_SUBSCRIBERS
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
