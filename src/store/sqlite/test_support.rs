//! Helpers shared by the SQLite store's unit tests; test builds only.

use std::path::Path;

use chrono::{TimeDelta, Utc};

use super::SqliteStore;
use crate::model::{Task, TaskStatus};
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::{Store, StoreError, TaskFilter};

/// A new store in a temporary directory, which lives as long as the first value.
pub(super) fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("opens");
    (dir, store)
}

/// The message of the error opening `path` gives; panics when it opens.
pub(super) fn open_error(path: &Path) -> String {
    match SqliteStore::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(error @ StoreError::Open { .. }) => error.to_string(),
        Err(other) => panic!("expected an open error, got {other:?}"),
    }
}

/// A task moved to `status` (through Queued and Running as needed) and
/// last changed `age` ago.
pub(super) fn aged(mut task: Task, status: TaskStatus, age: TimeDelta) -> Task {
    for step in [TaskStatus::Queued, TaskStatus::Running, status] {
        if task.status() != status {
            task.transition(step).expect("a legal transition");
        }
    }
    task.updated_at = Some(Utc::now() - age);
    task
}

/// The names of every stored task, in creation order.
pub(super) fn all_task_names(store: &SqliteStore) -> Vec<String> {
    store
        .list_tasks(&TaskFilter::default(), None, 1000)
        .unwrap()
        .items
        .into_iter()
        .map(|t| t.name)
        .collect()
}
