//! A write handed to the store, and waiting for it to be durable.

use std::sync::{Arc, Mutex, PoisonError};

use super::Inner;
use super::writes::flush_thread_batch;
use crate::store::StoreError;

/// A write handed to the store by [`EventBus::commit`](super::EventBus::commit). Dropping it does not
/// cancel the write; [`Commit::wait`] (blocking) or [`Commit::committed`]
/// (async) waits until it is durable.
#[must_use = "a commit is either waited for or dropped on purpose"]
pub struct Commit {
    /// The sequence of the last event of the write (of the bus's last event
    /// when the write had none); 0 for a write gathered into a `Batch`,
    /// whose events are numbered when the batch is handed over.
    pub last_sequence: u64,
    /// Where the outcome arrives.
    pub(super) state: Arc<CommitState>,
    /// The bus, which hands over a held write its waiter would otherwise wait
    /// for; `None` when it holds none (see `Inner::hold_writes`), so that a
    /// publish does not touch the bus's reference count.
    pub(super) bus: Option<Arc<Inner>>,
}

/// The outcome of one write, and who waits for it.
#[derive(Default)]
pub(super) struct CommitState {
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
    pub(super) fn finish(&self, result: Result<(), StoreError>) {
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
    /// open on this thread is handed to the store first (the write may be in it),
    /// and the store's writer woken if this thread holds its wake back.
    pub fn wait(self) -> Result<(), StoreError> {
        flush_thread_batch();
        if let Some(bus) = &self.bus {
            bus.release_held();
        }
        crate::store::wakes::give_owed();
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
