//! The internal event bus: every task event (created, queued, started,
//! progress, completed, failed, cancelled, retrying) is numbered here, kept in
//! a bounded history, and broadcast to live subscribers.
//!
//! Sequence numbers start at 1 and never repeat within a process; the history
//! keeps the newest `capacity` events so a subscriber can resume from a
//! sequence number it saw (the streaming API builds on this).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::model::TaskEvent;

/// Events kept for resumption by default.
pub const DEFAULT_HISTORY: usize = 65_536;
/// Events a slow live subscriber may fall behind before it lags.
const LIVE_CAPACITY: usize = 4096;

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The history and the next sequence number, under one lock so that the
    /// history is always in sequence order.
    state: Mutex<State>,
    /// Live subscribers.
    live: broadcast::Sender<Arc<TaskEvent>>,
    /// Most events kept.
    capacity: usize,
}

struct State {
    next: u64,
    history: VecDeque<Arc<TaskEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl EventBus {
    /// A bus that keeps the newest `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next: 1,
                    history: VecDeque::new(),
                }),
                live,
                capacity: capacity.max(1),
            }),
        }
    }

    /// Numbers `event`, keeps it and sends it to live subscribers; returns its
    /// sequence number.
    pub fn publish(&self, mut event: TaskEvent) -> u64 {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sequence = state.next;
        state.next += 1;
        event.sequence = sequence;
        let event = Arc::new(event);
        if state.history.len() == self.inner.capacity {
            state.history.pop_front();
        }
        state.history.push_back(Arc::clone(&event));
        // Sent under the lock so live subscribers see sequence order; no
        // subscriber is not an error.
        let _ = self.inner.live.send(event);
        sequence
    }

    /// A live subscription to events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TaskEvent>> {
        self.inner.live.subscribe()
    }

    /// Kept events with a sequence number above `after`, oldest first, at most
    /// `limit`, and the oldest sequence number still kept (0 when none).
    pub fn history_after(&self, after: u64, limit: usize) -> (Vec<Arc<TaskEvent>>, u64) {
        let state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let oldest = state.history.front().map_or(0, |e| e.sequence);
        let skip = state.history.partition_point(|e| e.sequence <= after);
        let events = state
            .history
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect();
        (events, oldest)
    }

    /// The sequence number of the last event published (0 when none).
    pub fn last_sequence(&self) -> u64 {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next
            - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskEventType;

    #[tokio::test]
    async fn numbers_keeps_and_broadcasts_in_order() {
        let bus = EventBus::new(3);
        let mut live = bus.subscribe();
        for i in 0..5 {
            assert_eq!(
                bus.publish(TaskEvent::new(format!("t{i}"), TaskEventType::Created)),
                i + 1
            );
        }
        for i in 1..=5 {
            assert_eq!(live.recv().await.unwrap().sequence, i);
        }
        let (kept, oldest) = bus.history_after(0, 10);
        assert_eq!(oldest, 3);
        assert_eq!(
            kept.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let (after, _) = bus.history_after(4, 10);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].task_id, "t4");
        assert_eq!(bus.last_sequence(), 5);
    }
}
