//! The counters of one backend socket ([`SocketCounters`]), bumped by the socket task and the
//! router, and read as a [`CountersSnapshot`] for metrics.
//!
//! Relaxed atomics only: the counters are monotonic and read for metrics, so nothing may use them
//! to synchronise or to decide what the socket does.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one backend socket, for metrics. All monotonic; each field is described on
/// [`CountersSnapshot`].
#[derive(Debug, Default)]
pub struct SocketCounters {
    pub(super) connects: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) client_id_changes: AtomicU64,
    pub(super) messages: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) events_dropped: AtomicU64,
    pub(super) reconciliations: AtomicU64,
    pub(super) lost: AtomicU64,
}

impl SocketCounters {
    /// Adds one to `counter`.
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            connects: read(&self.connects),
            reconnects: read(&self.reconnects),
            disconnects: read(&self.disconnects),
            client_id_changes: read(&self.client_id_changes),
            messages: read(&self.messages),
            malformed: read(&self.malformed),
            events_dropped: read(&self.events_dropped),
            reconciliations: read(&self.reconciliations),
            lost: read(&self.lost),
        }
    }
}

/// A copy of [`SocketCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    /// Successful connections, the first included.
    pub connects: u64,
    /// Successful connections after the first.
    pub reconnects: u64,
    /// Connections that ended (dropped by the server, broken, or replaced for silence).
    pub disconnects: u64,
    /// Times the clientId changed because an old socket's close could not be confirmed.
    pub client_id_changes: u64,
    /// Text and binary frames received.
    pub messages: u64,
    /// Frames that could not be parsed.
    pub malformed: u64,
    /// Non-terminal events dropped or coalesced for slow watchers.
    pub events_dropped: u64,
    /// Reconciliation passes (each covers one or more prompts).
    pub reconciliations: u64,
    /// Prompts reported `Lost`.
    pub lost: u64,
}
