//! Writes handed to the store but not yet committed: the newest state of
//! each object changed since its last commit. Read-modify-write goes
//! through it (the store alone could answer with an older state while a
//! write is queued); each entry is dropped once its write committed, unless
//! a newer write of the same object has come since.
//!
//! It is also the cache of *live* objects: an entry whose committed state
//! passes the `keep` test (a running execution, a task of one) stays after
//! its commit, so the executor's steps read it from memory instead of the
//! store; it goes once a state that fails the test (an end) has committed.
//! Every change of a task or execution record goes through here, so a kept
//! entry is never older than the store. It may be newer: a running node's
//! progress step is written as its event alone, its record brought up to
//! date by the next write that changes more (see `executor::attempt`), and
//! readers of durable state (GetTask, GetExecution, the lists) take the
//! kept state over the record ([`PendingWrites::get_committed`]). Dropping
//! an entry therefore loses at most such a step's progress in the record
//! (its event has it); that bounds the cache at [`MAX_KEPT`].

use std::collections::hash_map::Entry as MapEntry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::model::FastMap;

/// Most committed entries kept as live; past it they are all dropped (and
/// read from the store again).
const MAX_KEPT: usize = 65_536;

/// One object's newest state.
struct Entry<T> {
    /// The number of the write that set it.
    number: u64,
    /// The state.
    value: T,
    /// Its write committed (it stays only because it is live).
    committed: bool,
    /// Its write left the object's record alone (events only): once committed, the record is
    /// older than `value`.
    unwritten: bool,
    /// While `value`'s write is queued: the state before it when that one was committed and
    /// unwritten (what a reader of durable state sees meanwhile; the record is older).
    durable: Option<T>,
}

/// The entries and how many of them are committed.
struct Entries<T> {
    by_id: FastMap<String, Entry<T>>,
    committed: usize,
    /// States whose entry went when their write committed, to be freed by the next
    /// [`PendingWrites::insert`]. A commit is announced on the store's writer thread; a state
    /// freed there goes back, chunk by chunk, to the allocator arena of the thread that made
    /// it, taking that arena's lock against the thread allocating in it: the two threads
    /// queued on malloc's lock (futex waits and wakes) several times per durable submit.
    retired: Vec<T>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Self {
            by_id: FastMap::default(),
            committed: 0,
            retired: Vec::new(),
        }
    }
}

/// See the module docs. `T` is a task or an execution, keyed by id.
pub(crate) struct PendingWrites<T> {
    /// Id -> its newest state.
    entries: Arc<Mutex<Entries<T>>>,
    /// The next write number.
    next: AtomicU64,
    /// Whether a committed state is live (stays cached).
    keep: fn(&T) -> bool,
}

impl<T> Default for PendingWrites<T> {
    fn default() -> Self {
        Self::keeping(|_| false)
    }
}

impl<T> PendingWrites<T> {
    /// Pending writes that also keep each committed state passing `keep`.
    pub(crate) fn keeping(keep: fn(&T) -> bool) -> Self {
        Self {
            entries: Arc::default(),
            next: AtomicU64::new(0),
            keep,
        }
    }
}

impl<T: Clone + Send + 'static> PendingWrites<T> {
    /// The state written last for `id`, when its write has not committed yet.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .get(id)
            .map(|entry| entry.value.clone())
    }

    /// The newest durable state of `id` when it is newer than the object's record: the state
    /// a write that left the record alone (a running node's progress step, see
    /// [`PendingWrites::insert_with`]) committed. `None`: the record is the newest durable
    /// state.
    pub(crate) fn get_committed(&self, id: &str) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.by_id.get(id)?;
        if entry.committed {
            entry.unwritten.then(|| entry.value.clone())
        } else {
            entry.durable.clone()
        }
    }

    /// Records that `value` was handed to the store as the state of `id`;
    /// the returned closure, run once that write committed (or failed),
    /// forgets it unless a newer write came since.
    pub(crate) fn insert(&self, id: String, value: T) -> Box<dyn FnOnce() + Send> {
        self.insert_with(id, value, true)
    }

    /// [`PendingWrites::insert`]; with `record` false the write leaves the object's record
    /// alone (it carries events only): `value` is then newer than the record once that write
    /// committed, and is kept (when live) until a write of the record replaces it.
    pub(crate) fn insert_with(
        &self,
        id: String,
        value: T,
        record: bool,
    ) -> Box<dyn FnOnce() + Send> {
        let unwritten = !record;
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let retired = {
            let mut guard = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let entries = &mut *guard;
            let mut retired = std::mem::take(&mut entries.retired);
            let fresh = Entry {
                number,
                value,
                committed: false,
                unwritten,
                durable: None,
            };
            match entries.by_id.entry(id.clone()) {
                MapEntry::Vacant(slot) => {
                    slot.insert(fresh);
                }
                MapEntry::Occupied(mut slot) => {
                    let old = std::mem::replace(slot.get_mut(), fresh);
                    if old.committed {
                        entries.committed -= 1;
                    }
                    // The newest durable state newer than the record stays readable until
                    // this write commits.
                    slot.get_mut().durable = match old {
                        Entry {
                            committed: true,
                            unwritten: true,
                            value,
                            ..
                        } => Some(value),
                        Entry {
                            committed: true,
                            value,
                            ..
                        } => {
                            retired.push(value);
                            None
                        }
                        Entry { value, durable, .. } => {
                            retired.push(value);
                            durable
                        }
                    };
                }
            }
            retired
        };
        // Freed here, on the thread that makes the states, outside the lock.
        drop(retired);
        let entries = Arc::clone(&self.entries);
        let keep = self.keep;
        Box::new(move || {
            let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = entries.by_id.get_mut(&id) else {
                return;
            };
            if entry.number != number {
                return;
            }
            if keep(&entry.value) {
                entry.committed = true;
                let durable = entry.durable.take();
                entries.retired.extend(durable);
                entries.committed += 1;
                if entries.committed > MAX_KEPT {
                    entries.by_id.retain(|_, entry| !entry.committed);
                    entries.committed = 0;
                }
            } else if let Some(entry) = entries.by_id.remove(&id) {
                entries.retired.push(entry.value);
                entries.retired.extend(entry.durable);
            }
        })
    }

    /// How many writes are waiting for their commit.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::PendingWrites;

    #[test]
    fn an_entry_lives_until_its_newest_write_committed() {
        let pending = PendingWrites::default();
        let first = pending.insert("a".into(), 1);
        let second = pending.insert("a".into(), 2);
        assert_eq!(pending.get("a"), Some(2));
        first();
        assert_eq!(pending.get("a"), Some(2), "a newer write is still queued");
        second();
        assert_eq!(pending.get("a"), None);
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn a_live_state_stays_after_its_commit_until_a_state_that_is_not_live_commits() {
        let pending = PendingWrites::keeping(|value: &i32| *value < 10);
        pending.insert("a".into(), 1)();
        assert_eq!(pending.get("a"), Some(1), "live: kept after its commit");
        let end = pending.insert("a".into(), 10);
        assert_eq!(pending.get("a"), Some(10));
        end();
        assert_eq!(pending.get("a"), None, "ended: read from the store again");
        pending.insert("b".into(), 2)();
        let newer = pending.insert("b".into(), 3);
        assert_eq!(pending.get("b"), Some(3));
        newer();
        assert_eq!(pending.get("b"), Some(3));
    }

    #[test]
    fn a_state_whose_record_was_left_alone_is_read_as_durable_until_a_record_write_commits() {
        let pending = PendingWrites::keeping(|value: &i32| *value < 10);
        pending.insert("a".into(), 1)();
        assert_eq!(pending.get_committed("a"), None, "the record has it");
        let step = pending.insert_with("a".into(), 2, false);
        assert_eq!(pending.get_committed("a"), None, "not durable yet");
        step();
        assert_eq!(pending.get_committed("a"), Some(2), "newer than the record");
        let next = pending.insert_with("a".into(), 3, false);
        assert_eq!(pending.get_committed("a"), Some(2), "the last durable one");
        next();
        assert_eq!(pending.get_committed("a"), Some(3));
        let record = pending.insert("a".into(), 4);
        assert_eq!(
            pending.get_committed("a"),
            Some(3),
            "until the record commits"
        );
        record();
        assert_eq!(pending.get_committed("a"), None, "the record has it");
        assert_eq!(pending.get("a"), Some(4), "still live");
        pending.insert_with("a".into(), 5, false)();
        let end = pending.insert("a".into(), 10);
        end();
        assert_eq!(pending.get_committed("a"), None);
        assert_eq!(pending.get("a"), None, "ended: read from the store again");
    }

    #[test]
    fn kept_entries_are_bounded() {
        let pending = PendingWrites::keeping(|_: &usize| true);
        for i in 0..=super::MAX_KEPT {
            pending.insert(i.to_string(), i)();
        }
        assert_eq!(
            pending.len(),
            0,
            "past the bound every committed entry goes"
        );
        let waiting = pending.insert("x".into(), 1);
        pending.insert("y".into(), 2)();
        assert_eq!(pending.len(), 2);
        waiting();
        assert_eq!(pending.get("x"), Some(1));
    }
}
