//! The settler: the task that wakes the [`EventBus::settled`](super::EventBus::settled) calls
//! from their own runtime's thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::{Inner, spawn_once};

/// The store's writer learns of a commit on its own thread. Woken from there, each call
/// waiting in `settled` was a wake-up from another thread, which tokio's current-thread
/// scheduler runs only after the tasks its own thread woke: the first call answered, woke its
/// connection (queued on the runtime's thread, so ahead of the other calls) and the connection
/// wrote that answer alone, then the next call answered, and so on. The writer wakes this one
/// task instead, and it wakes every waiting call from the runtime's thread, in one turn: their
/// connections run after the last of them and write their answers together. Started on the
/// runtime of the first call that waits; while it does not run (no runtime yet, or its runtime
/// shut down) the writer wakes the calls itself.
pub(super) struct Settler {
    /// The bus (not kept alive by the settler).
    pub(super) bus: Weak<Inner>,
    /// Wakes the settler: a write settled while calls wait, or the bus is gone.
    pub(super) wake: Notify,
    /// Whether the settler task runs.
    pub(super) started: AtomicBool,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settler")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Settler {
    /// A settler of `bus`, not started.
    pub(super) fn new(bus: Weak<Inner>) -> Self {
        Self {
            bus,
            wake: Notify::new(),
            started: AtomicBool::new(false),
        }
    }

    /// Starts the settler on the current tokio runtime, if it does not run yet and there is
    /// one.
    pub(super) fn start(self: &Arc<Self>) {
        spawn_once(&self.started, || {
            let running = Running(Arc::clone(self));
            async move { running.0.run().await }
        });
    }

    /// Wakes the calls waiting in `settled` on `bus`: through the task when it runs, else
    /// from this thread. Called after `bus.settled` moved.
    pub(super) fn wake_waiters(&self, bus: &Inner) {
        if self.started.load(Ordering::SeqCst) {
            self.wake.notify_one();
        } else {
            bus.settled_moved.notify_waiters();
        }
    }

    async fn run(&self) {
        loop {
            self.wake.notified().await;
            let Some(bus) = self.bus.upgrade() else {
                return;
            };
            bus.settled_moved.notify_waiters();
        }
    }
}

/// The running settler task's hold on it: when the task ends or is dropped with its runtime,
/// the writer goes back to waking the calls itself, and the calls waiting now are woken to
/// look again (a write may have settled after the task last ran).
struct Running(Arc<Settler>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.started.store(false, Ordering::SeqCst);
        if let Some(bus) = self.0.bus.upgrade() {
            bus.settled_moved.notify_waiters();
        }
    }
}
