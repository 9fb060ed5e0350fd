//! How writes reach the store: numbered and handed over in sequence order,
//! gathered in a thread's batch, or held back a while when nobody waits.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use chrono::{DateTime, Utc};

use super::commit::{After, CommitState};
use super::{Event, EventContext, EventPayload, HOLD_AT_MOST, Inner, SharedEvent};
use crate::store::{Changes, StoreError};

/// An event not numbered yet, with the time it was made.
pub(super) type Numbered = (EventPayload, EventContext, DateTime<Utc>);

/// Who waits for one write: its `after` and its commit's state.
pub(super) type Waiter = (Option<After>, Arc<CommitState>);

impl Inner {
    /// Holds a deferrable write back: it is handed to the store in front of
    /// the next write, when someone waits for it, or after [`HOLD_AT_MOST`],
    /// whichever comes first. Written at once when the store's writes are
    /// cheap (the memory store: nothing to save) or outside a Tokio runtime
    /// (no timer).
    pub(super) fn hold(self: &Arc<Self>, write: Write) {
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
                let hold = self.holds.fetch_add(1, Ordering::Relaxed) + 1;
                let bus = Arc::downgrade(self);
                runtime.spawn(async move {
                    tokio::time::sleep(HOLD_AT_MOST).await;
                    if let Some(bus) = bus.upgrade() {
                        bus.release_hold(hold);
                    }
                });
            }
        }
    }

    /// A hold's time is up: hands its write to the store, unless it went
    /// already and a later hold began, which its own timer releases (a
    /// sequence of jobs holds one after the other: the timer of one cut the
    /// next one's hold short, a commit of its own for a part of its reports).
    fn release_hold(self: &Arc<Self>, hold: u64) {
        let write = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if self.holds.load(Ordering::Relaxed) != hold {
                return;
            }
            self.holding.store(false, Ordering::Release);
            held.take()
        };
        if let Some(write) = write {
            self.write(write);
        }
    }

    /// Hands the held write, if any, to the store now.
    pub(super) fn release_held(self: &Arc<Self>) {
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
    pub(super) fn write(self: &Arc<Self>, write: Write) -> u64 {
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
                    EventPayload::Audit(event) => event.sequence = sequence,
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
                inner.settle(number, result.is_err());
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
pub(super) struct Write {
    pub(super) changes: Changes,
    pub(super) events: Vec<Numbered>,
    pub(super) waiters: Vec<Waiter>,
}

impl Write {
    /// Whether there is nothing in it: no change, no event and nobody
    /// waiting (a publish has no waiter, a commit may have no change).
    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty() && self.events.is_empty() && self.changes.is_empty()
    }

    /// Whether `later` can be added to this write: a write carries the new
    /// tasks of one execution at most.
    pub(super) fn can_absorb(&self, later: &Write) -> bool {
        self.changes.new_execution_tasks.is_none() || later.changes.new_execution_tasks.is_none()
    }

    /// Adds `later` after what this write holds (see [`Write::can_absorb`]);
    /// a task or execution it holds already is replaced by its later state.
    pub(super) fn absorb(&mut self, later: Write) {
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
pub(super) struct Gathered {
    /// The bus they belong to (another bus's writes are not gathered).
    bus: Arc<Inner>,
    /// What was gathered so far.
    write: Write,
    /// Whether nobody waits for the batch's writes: they are held back a
    /// while (see [`EventBus::deferrable_batch`](super::EventBus::deferrable_batch)).
    deferrable: bool,
}

impl Gathered {
    pub(super) fn new(bus: Arc<Inner>, deferrable: bool) -> Self {
        Self {
            bus,
            write: Write::default(),
            deferrable,
        }
    }

    /// Takes what was gathered, leaving the batch open and empty; None when
    /// empty. The flag: whether the batch is deferrable.
    fn take(&mut self) -> Option<(Arc<Inner>, Write, bool)> {
        if self.write.is_empty() {
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
    pub(super) static BATCH: RefCell<Option<Gathered>> = const { RefCell::new(None) };
}

/// Adds one write to this thread's open batch of `bus`; gives it back when
/// there is none (it is then written at once).
pub(super) fn gather(bus: &Arc<Inner>, write: Write) -> Option<Write> {
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

/// Whether this thread's open batch of `bus` gathered the creation of execution `id`.
pub(super) fn gathering_creation_of(bus: &Arc<Inner>, id: &str) -> bool {
    BATCH.with(|batch| {
        batch.borrow().as_ref().is_some_and(|gathered| {
            Arc::ptr_eq(&gathered.bus, bus)
                && gathered
                    .write
                    .changes
                    .new_executions
                    .iter()
                    .any(|record| record.execution.id == id)
        })
    })
}

/// Hands this thread's gathered writes to the store (the batch stays open).
pub(super) fn flush_thread_batch() {
    let taken = BATCH.with(|batch| batch.borrow_mut().as_mut().and_then(Gathered::take));
    match taken {
        Some((bus, write, true)) => bus.hold(write),
        Some((bus, write, false)) => {
            bus.write(write);
        }
        None => {}
    }
}

/// An open batch (see [`EventBus::batch`](super::EventBus::batch)); dropping it hands what was gathered to the store.
#[must_use = "the batch closes when this guard drops"]
pub(crate) struct Batch {
    /// Whether this guard opened the batch (an inner guard leaves it to the outer one).
    pub(super) owner: bool,
}

impl Batch {
    /// Makes the batch deferrable, or not (see [`EventBus::deferrable_batch`](super::EventBus::deferrable_batch)),
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
