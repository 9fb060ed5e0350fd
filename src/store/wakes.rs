//! Writer wake-ups held back on one thread (see [`hold_wakes`]).
//!
//! A write handed to the SQLite store wakes its writer thread, and on a small machine the
//! woken writer runs at once, often in front of the thread that woke it or of whatever that
//! thread just set going. A caller with something more urgent to finish first (the executor's
//! actor: a fresh submission's POST to ComfyUI, which the job's latency waits for, where only
//! the submit's answer waits for the commit) holds the wakes while it hands its writes over,
//! and gives them once that is done. The writes are queued, in order, at once: only the wake
//! waits. Nothing may wait for a write inside a hold: [`Commit::wait`] gives the wakes owed so
//! far before it blocks.
//!
//! [`Commit::wait`]: crate::runtime::bus::Commit::wait

use std::cell::RefCell;
use std::marker::PhantomData;

/// A wake owed to a writer thread.
pub(crate) type Wake = Box<dyn FnOnce() + Send>;

thread_local! {
    /// The wakes owed while this thread holds them; `None` when it does not.
    static HELD: RefCell<Option<Vec<Wake>>> = const { RefCell::new(None) };
}

/// Until the returned guard is let go, a write this thread hands to a store
/// ([`Store::write`](super::Store::write)) is queued without waking the store's writer thread:
/// the wake is owed, and given when the [`OwedWakes`] that [`WakeHold::release`] returns is
/// dropped. A synchronous store write ([`SqliteStore`](super::SqliteStore)'s own, which waits
/// for its answer) and any other thread's write wake the writer as before (an owed wake then
/// finds it awake and does nothing); [`Commit::wait`](crate::runtime::bus::Commit::wait) gives
/// the wakes owed so far before it blocks. Inside a hold, another hold changes nothing. The
/// guard stays on its thread; dropped without [`release`](WakeHold::release), it gives the
/// wakes at once.
pub fn hold_wakes() -> WakeHold {
    let owner = HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.is_some() {
            return false;
        }
        *held = Some(Vec::new());
        true
    });
    WakeHold {
        owner,
        _thread: PhantomData,
    }
}

/// See [`hold_wakes`].
#[must_use = "the wakes are given when the hold ends"]
pub struct WakeHold {
    /// Whether this guard started the hold (an inner one leaves it to the outer).
    owner: bool,
    /// Not `Send`: the hold is this thread's.
    _thread: PhantomData<*const ()>,
}

impl WakeHold {
    /// Ends the hold; the wakes owed meanwhile are given when the result is dropped (at
    /// once, for an inner hold's: its outer hold still owes them).
    pub fn release(mut self) -> OwedWakes {
        OwedWakes(self.take())
    }

    fn take(&mut self) -> Vec<Wake> {
        if !std::mem::take(&mut self.owner) {
            return Vec::new();
        }
        HELD.with(|held| held.borrow_mut().take())
            .unwrap_or_default()
    }
}

impl Drop for WakeHold {
    fn drop(&mut self) {
        drop(OwedWakes(self.take()));
    }
}

/// Wakes owed to writer threads, given when this is dropped. May cross threads and awaits.
#[must_use = "the wakes are given when this is dropped"]
pub struct OwedWakes(Vec<Wake>);

impl OwedWakes {
    /// Whether no wake is owed (no write was handed to a writer that waited for one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for OwedWakes {
    fn drop(&mut self) {
        for wake in self.0.drain(..) {
            wake();
        }
    }
}

/// Gives the wakes owed to this thread's hold so far, now; the hold goes on. For whoever is
/// about to block on a write inside a hold.
pub(crate) fn give_owed() {
    let owed = HELD.with(|held| held.borrow_mut().as_mut().map(std::mem::take));
    drop(OwedWakes(owed.unwrap_or_default()));
}

/// Whether this thread holds the wakes now.
pub(crate) fn holding() -> bool {
    HELD.with(|held| held.borrow().is_some())
}

/// Owes `wake` to the hold of this thread; gives it back when the thread holds none.
pub(crate) fn owe(wake: Wake) -> Result<(), Wake> {
    HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(owed) => {
            owed.push(wake);
            Ok(())
        }
        None => Err(wake),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{hold_wakes, holding, owe};

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> super::Wake) {
        let count = Arc::new(AtomicUsize::new(0));
        let made = Arc::clone(&count);
        (count, move || {
            let count = Arc::clone(&made);
            Box::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
            })
        })
    }

    #[test]
    fn wakes_owed_in_a_hold_are_given_when_the_released_wakes_drop() {
        let (count, wake) = counter();
        assert!(!holding());
        assert!(owe(wake()).is_err(), "nothing is owed outside a hold");
        let hold = hold_wakes();
        assert!(holding());
        assert!(owe(wake()).is_ok());
        assert!(owe(wake()).is_ok());
        let owed = hold.release();
        assert!(!holding());
        assert!(!owed.is_empty());
        assert_eq!(count.load(Ordering::SeqCst), 0);
        drop(owed);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn wakes_given_inside_a_hold_are_given_once() {
        let (count, wake) = counter();
        let hold = hold_wakes();
        assert!(owe(wake()).is_ok());
        super::give_owed();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(holding(), "the hold goes on");
        let owed = hold.release();
        assert!(owed.is_empty());
        drop(owed);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_hold_dropped_unreleased_gives_its_wakes_at_once() {
        let (count, wake) = counter();
        {
            let _hold = hold_wakes();
            assert!(owe(wake()).is_ok());
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(!holding());
    }

    #[test]
    fn an_inner_hold_leaves_the_wakes_to_the_outer_one() {
        let (count, wake) = counter();
        let outer = hold_wakes();
        let inner = hold_wakes();
        assert!(owe(wake()).is_ok());
        let inner_owed = inner.release();
        assert!(inner_owed.is_empty());
        drop(inner_owed);
        assert!(holding(), "the outer hold goes on");
        assert_eq!(count.load(Ordering::SeqCst), 0);
        drop(outer.release());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
