//! The relay: the task that wakes the live subscribers, off the publisher's thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, Weak};

use tokio::sync::Notify;

use super::{Inner, spawn_once};

/// The relay: one task that moves announced events from the inbox to the
/// live channel, so that waking every parked subscriber is its work and not
/// the publisher's. Started on the runtime of the first subscriber that
/// waits; it ends when the bus is dropped (or its runtime shuts down, and
/// then publishers send by themselves again).
pub(super) struct Relay {
    /// The bus (not kept alive by the relay).
    pub(super) bus: Weak<Inner>,
    /// Wakes the relay: events wait in the inbox, or the bus is gone.
    pub(super) wake: Notify,
    /// Whether the relay task runs.
    pub(super) started: AtomicBool,
    /// Live subscriptions ([`super::LiveEvents`] not dropped yet). Announcing
    /// reads it instead of the live channel's receiver count, which takes
    /// the channel's lock (the one every parked subscriber took to park).
    pub(super) subscribers: AtomicUsize,
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
    pub(super) fn start(self: &Arc<Self>) {
        spawn_once(&self.started, || {
            let running = Running(Arc::clone(self));
            async move { running.0.run().await }
        });
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
