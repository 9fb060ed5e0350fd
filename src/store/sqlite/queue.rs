//! The writer thread's queue of commands: a deque under a lock and two
//! condition variables. std's channel wakes a waiting receiver while it still
//! holds the lock of its list of waiters; where the woken thread runs at once
//! on the waker's CPU (a small VM's scheduler does that), the writer ran its
//! whole batch there and, back at the queue, found that lock still held by
//! the preempted sender: a futex wait, a futex wake and two more context
//! switches per write. Here a sender wakes the writer after letting go of the
//! lock (or, inside a hold of wakes, leaves the wake to the hold: see
//! `Sender::send_owing_wake`), and the writer takes every command waiting in
//! one go.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// What both ends share.
struct Shared<T> {
    /// The queue and who waits on it.
    state: Mutex<State<T>>,
    /// Signalled when an item comes (or the last sender goes) while the
    /// receiver waits.
    ready: Condvar,
    /// Signalled when room is made (or the receiver goes) while a sender waits.
    room: Condvar,
    /// Most items queued; a sender waits for room beyond it.
    capacity: usize,
}

/// The queue's state, under `Shared::state`.
struct State<T> {
    /// Queued items, oldest first.
    items: VecDeque<T>,
    /// Senders alive.
    senders: usize,
    /// Whether the receiver is alive.
    open: bool,
    /// Whether the receiver waits and nobody has signalled it yet.
    waiting: bool,
    /// Senders waiting for room.
    blocked: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Queues items for the receiver; cloned for each sending thread.
pub(super) struct Sender<T>(Arc<Shared<T>>);

/// Takes the queued items (one receiver).
pub(super) struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `capacity` items (at least one).
pub(super) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            open: true,
            waiting: false,
            blocked: 0,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        capacity: capacity.max(1),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T: Send + 'static> Sender<T> {
    /// Queues `item`, waiting while the queue is full; gives it back when the
    /// receiver is gone.
    pub(super) fn send(&self, item: T) -> Result<(), T> {
        self.queue(item, false)
    }

    /// [`send`](Self::send), but while this thread holds the wakes
    /// ([`hold_wakes`](crate::store::hold_wakes)) a waiting receiver is not woken: the wake
    /// is owed to the hold. The receiver stays marked waiting meanwhile, so that another
    /// sender's item wakes it at once (the owed wake then does nothing).
    pub(super) fn send_owing_wake(&self, item: T) -> Result<(), T> {
        self.queue(item, true)
    }

    /// Queues `item` unless the queue is full or the receiver is gone (then
    /// gives it back).
    pub(super) fn try_send(&self, item: T) -> Result<(), T> {
        let state = self.0.lock();
        if state.items.len() >= self.0.capacity {
            return Err(item);
        }
        self.push(state, item, false)
    }

    fn queue(&self, item: T, may_owe: bool) -> Result<(), T> {
        let mut state = self.0.lock();
        while state.open && state.items.len() >= self.0.capacity {
            // A receiver still waiting behind a full queue had its wake owed to a hold
            // (this thread's own, whose items filled it): woken now, or the wait is forever.
            if std::mem::replace(&mut state.waiting, false) {
                self.0.ready.notify_one();
            }
            state.blocked += 1;
            state = self
                .0
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.blocked -= 1;
        }
        self.push(state, item, may_owe)
    }

    /// Queues `item` and wakes a waiting receiver, after letting go of the lock; with
    /// `may_owe`, inside this thread's hold of wakes, the wake is owed to the hold instead.
    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T, may_owe: bool) -> Result<(), T> {
        if !state.open {
            return Err(item);
        }
        state.items.push_back(item);
        if !state.waiting {
            return Ok(());
        }
        if may_owe && crate::store::wakes::holding() {
            drop(state);
            let shared = Arc::clone(&self.0);
            if let Err(wake) = crate::store::wakes::owe(Box::new(move || shared.wake())) {
                wake();
            }
            return Ok(());
        }
        state.waiting = false;
        drop(state);
        // After the lock is let go, so that the woken receiver finds it free.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Shared<T> {
    /// Wakes the receiver if it still waits and nobody signalled it yet.
    fn wake(&self) {
        let wake = std::mem::replace(&mut self.lock().waiting, false);
        if wake {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
impl<T> Sender<T> {
    /// Whether the receiver waits for a signal now.
    pub(super) fn receiver_waits(&self) -> bool {
        self.0.lock().waiting
    }

    /// Items queued now.
    pub(super) fn queued(&self) -> usize {
        self.0.lock().items.len()
    }

    /// Returns once the receiver waits (panics after ten seconds).
    pub(super) fn until_receiver_waits(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.receiver_waits() {
            assert!(
                std::time::Instant::now() < deadline,
                "the receiver never waited"
            );
            std::thread::yield_now();
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        let wake = state.senders == 0 && std::mem::replace(&mut state.waiting, false);
        drop(state);
        if wake {
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits until an item is queued, then moves the queued items (at most
    /// `max`, at least one) into `into`, oldest first. False, with nothing
    /// moved, once the queue is empty and every sender is gone.
    pub(super) fn recv_into(&self, into: &mut Vec<T>, max: usize) -> bool {
        let mut state = self.0.lock();
        while state.items.is_empty() {
            if state.senders == 0 {
                return false;
            }
            // Until signalled: neither a spurious wake-up nor an item queued with its wake
            // owed ends the wait.
            state.waiting = true;
            while state.waiting {
                state = self
                    .0
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        state.waiting = false;
        let take = state.items.len().min(max.max(1));
        into.extend(state.items.drain(..take));
        self.made_room(state);
        true
    }

    /// The oldest queued item, if any, without waiting.
    #[cfg(test)]
    pub(super) fn try_recv(&self) -> Option<T> {
        let mut state = self.0.lock();
        let item = state.items.pop_front();
        self.made_room(state);
        item
    }

    /// Wakes the senders waiting for room, after letting go of the lock.
    fn made_room(&self, state: MutexGuard<'_, State<T>>) {
        let wake = state.blocked > 0;
        drop(state);
        if wake {
            self.0.room.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open = false;
        let items = std::mem::take(&mut state.items);
        let wake = state.blocked > 0;
        drop(state);
        // Dropped outside the lock: an item's drop may send again.
        drop(items);
        if wake {
            self.0.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::bounded;

    #[test]
    fn items_come_out_in_order_in_batches_of_at_most_max() {
        let (tx, rx) = bounded(8);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let mut got = Vec::new();
        assert!(rx.recv_into(&mut got, 3));
        assert_eq!(got, [0, 1, 2]);
        assert!(rx.recv_into(&mut got, 3));
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_sender_going() {
        let (tx, rx) = bounded(8);
        let other = tx.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while rx.recv_into(&mut got, 8) {}
            got
        });
        std::thread::sleep(Duration::from_millis(20));
        tx.send(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        other.send(2).unwrap();
        drop(tx);
        std::thread::sleep(Duration::from_millis(20));
        // One sender is left: the receiver still waits.
        assert!(!reader.is_finished());
        drop(other);
        assert_eq!(reader.join().unwrap(), [1, 2]);
    }

    /// A receiver on a thread of its own, passing each batch it takes on.
    fn receiving(rx: super::Receiver<i32>) -> std::sync::mpsc::Receiver<Vec<i32>> {
        let (batches, taken) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            while rx.recv_into(&mut got, 8) {
                if batches.send(std::mem::take(&mut got)).is_err() {
                    break;
                }
            }
        });
        taken
    }

    #[test]
    fn an_item_sent_in_a_hold_of_wakes_is_taken_once_the_owed_wake_is_given() {
        let (tx, rx) = bounded(8);
        let taken = receiving(rx);
        tx.until_receiver_waits();
        let hold = crate::store::hold_wakes();
        tx.send_owing_wake(1).unwrap();
        tx.send_owing_wake(2).unwrap();
        let owed = hold.release();
        assert!(!owed.is_empty());
        // Queued, and the receiver not woken: it waits until signalled.
        assert!(tx.receiver_waits());
        assert_eq!(tx.queued(), 2);
        drop(owed);
        assert_eq!(taken.recv_timeout(Duration::from_secs(10)).unwrap(), [1, 2]);
        // Outside a hold it wakes the receiver itself.
        tx.until_receiver_waits();
        tx.send_owing_wake(3).unwrap();
        assert_eq!(taken.recv_timeout(Duration::from_secs(10)).unwrap(), [3]);
    }

    #[test]
    fn another_senders_item_wakes_a_receiver_whose_wake_is_owed() {
        let (tx, rx) = bounded(8);
        let taken = receiving(rx);
        tx.until_receiver_waits();
        let hold = crate::store::hold_wakes();
        tx.send_owing_wake(1).unwrap();
        let other = tx.clone();
        std::thread::spawn(move || other.send(2).unwrap())
            .join()
            .unwrap();
        assert_eq!(taken.recv_timeout(Duration::from_secs(10)).unwrap(), [1, 2]);
        // The owed wake, given later, finds nothing queued: the receiver waits on, and the
        // next item still wakes it.
        tx.until_receiver_waits();
        drop(hold.release());
        tx.send(3).unwrap();
        assert_eq!(taken.recv_timeout(Duration::from_secs(10)).unwrap(), [3]);
    }

    #[test]
    fn a_hold_that_fills_the_queue_wakes_the_receiver_for_room() {
        let (tx, rx) = bounded(2);
        let taken = receiving(rx);
        tx.until_receiver_waits();
        let hold = crate::store::hold_wakes();
        tx.send_owing_wake(1).unwrap();
        tx.send_owing_wake(2).unwrap();
        // Full, with the receiver's wake owed: the third send wakes it and waits for room.
        tx.send_owing_wake(3).unwrap();
        drop(hold.release());
        let mut got: Vec<i32> = Vec::new();
        while got.len() < 3 {
            got.extend(taken.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn a_full_queue_holds_the_sender_until_there_is_room() {
        let (tx, rx) = bounded(2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(3));
        let sender = std::thread::spawn(move || {
            tx.send(3).unwrap();
            tx
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!sender.is_finished());
        assert_eq!(rx.try_recv(), Some(1));
        let tx = sender.join().unwrap();
        let mut got = Vec::new();
        assert!(rx.recv_into(&mut got, 8));
        assert_eq!(got, [2, 3]);
        // Once the receiver is gone, nothing is queued and a waiting sender
        // gets its item back.
        tx.send(4).unwrap();
        tx.send(5).unwrap();
        let sender = std::thread::spawn(move || tx.send(6));
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert_eq!(sender.join().unwrap(), Err(6));
    }
}
