//! Writes handed to the store but not yet committed: the newest state of
//! each object changed since its last commit. Read-modify-write goes
//! through it (the store alone could answer with an older state while a
//! write is queued); each entry is dropped once its write committed, unless
//! a newer write of the same object has come since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// See the module docs. `T` is a task or an execution, keyed by id.
pub(crate) struct PendingWrites<T> {
    /// Id -> (write number, state written).
    entries: Arc<Mutex<HashMap<String, (u64, T)>>>,
    /// The next write number.
    next: AtomicU64,
}

impl<T> Default for PendingWrites<T> {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
            next: AtomicU64::new(0),
        }
    }
}

impl<T: Clone + Send + 'static> PendingWrites<T> {
    /// The state written last for `id`, when its write has not committed yet.
    pub(crate) fn get(&self, id: &str) -> Option<T> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|(_, value)| value.clone())
    }

    /// Records that `value` was handed to the store as the state of `id`;
    /// the returned closure, run once that write committed (or failed),
    /// forgets it unless a newer write came since.
    pub(crate) fn insert(&self, id: String, value: T) -> Box<dyn FnOnce() + Send> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), (number, value));
        let entries = Arc::clone(&self.entries);
        Box::new(move || {
            let mut entries = entries.lock().unwrap_or_else(PoisonError::into_inner);
            if entries.get(&id).is_some_and(|(n, _)| *n == number) {
                entries.remove(&id);
            }
        })
    }

    /// How many writes are waiting for their commit.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
}
