//! `SqliteStore`: the durable embedded store, one SQLite file in WAL mode.
//!
//! Writes go to one writer thread that owns the only write connection. It
//! takes every write queued while its previous commit ran and commits them in
//! one transaction (group commit), each inside its own savepoint so that one
//! failing write does not undo the others; a write returns only once that
//! transaction has committed. Reads use a small pool of read-only connections,
//! which WAL lets run beside the writer. Domain objects are kept as JSON text
//! (numbers stay exact: serde_json's `arbitrary_precision`) beside the columns
//! that listings filter and order on.
//!
//! An advisory lock on `<file>.lock` keeps a second process off the same file.
//! Compaction (retention) runs through the writer in small steps, on request or
//! from a background thread owned by the store. The store keeps data; it never
//! drives execution.
//!
//! Where things are: `options` (how a store is opened), `schema` (tables and
//! migrations), `connections` (the lock file, the write connection's pragmas,
//! the read pool), `writer` (the writer thread and group commit) and `queue`
//! (its queue of commands), one module per kind of record with its rows,
//! writes and reads (`tasks`, `executions`, `workflows`, `events`, `meta`),
//! `query` and `codec` (listing queries, JSON columns, error mapping),
//! `compaction` (retention) and `background` (the periodic threads). This
//! file holds `SqliteStore` itself: opening, closing, and the `Store` impl,
//! which only routes each call to its record's module.

mod background;
mod codec;
mod compaction;
mod connections;
mod events;
mod executions;
mod gathered_wal;
mod meta;
mod options;
mod query;
mod queue;
mod schema;
mod tasks;
#[cfg(test)]
mod test_support;
mod workflows;
mod writer;

pub use compaction::{CompactionReport, RetentionPolicy};
pub use options::SqliteOptions;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::{
    Changes, Committed, CreateOutcome, ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey,
    NewExecutionRecord, Page, Store, StoreError, TaskFilter, WorkflowCursor, WorkflowFilter,
};
use crate::model::events::Event;
use crate::model::{Task, WorkflowDefinition, WorkflowExecution};
use background::{Periodic, report_wal_frames, spawn_checkpointer};
use compaction::{compact, spawn_compactor};
use connections::{Readers, lock, open_writer};
use events::last_event_sequence;
use schema::migrate;
use writer::{Command, WRITE_QUEUE, submit, writer_loop};

/// A durable `Store` in one SQLite file.
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// Writes for the writer thread.
    commands: queue::Sender<Command>,
    /// The writer thread; taken when the store is dropped.
    writer: Option<JoinHandle<()>>,
    /// Transactions the writer committed since open.
    commits: Arc<AtomicU64>,
    /// Writes the writer has run, freed by the next [`Store::write`]'s caller,
    /// the thread that made them (rows the writer built are freed there).
    retired: Arc<Mutex<Vec<Handed>>>,
    /// Whether the writer thread waits for a write (see [`Store::write`]).
    writer_idle: Arc<AtomicBool>,
    /// The background compaction, when asked for; stopped first on drop.
    compactor: Option<Periodic>,
    /// The background WAL checkpoints; stopped before the writer on drop.
    checkpointer: Option<Periodic>,
    /// Idle read-only connections.
    readers: Readers,
    /// Holds the advisory lock on `<path>.lock` for the store's lifetime;
    /// declared last so it is released after every connection closed.
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating when missing) the store at `path` with default
    /// options and no background compaction.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating when missing) the store at `path`: creates the
    /// directory, takes the lock, sets the pragmas and migrates the schema. A
    /// locked, corrupt or unwritable store is an error naming the path.
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| {
                fail(format!(
                    "cannot create directory {}: {error}",
                    dir.display()
                ))
            })?;
        }
        let lock = lock(path).map_err(fail)?;
        let mut conn = open_writer(path, options.synchronous).map_err(fail)?;
        let frames = report_wal_frames(&mut conn).map_err(fail)?;
        migrate(&mut conn).map_err(fail)?;
        let readers = Readers::new(path);
        // A read proves the read-only connections work too (the -shm file).
        readers
            .with(last_event_sequence)
            .map_err(|error| fail(error.to_string()))?;

        let (commands, queue) = queue::bounded(WRITE_QUEUE);
        // At least the newest event stays, so its sequence is never reused.
        let max_events = i64::try_from(options.max_events.max(1)).unwrap_or(i64::MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let writer_idle = Arc::new(AtomicBool::new(false));
        let idle = Arc::clone(&writer_idle);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&conn, &queue, max_events, &counter, &idle))
            .map_err(|error| fail(format!("cannot start the writer thread: {error}")))?;
        let mut store = Self {
            path: path.to_path_buf(),
            commands,
            writer: Some(writer),
            commits,
            retired: Arc::default(),
            writer_idle,
            compactor: None,
            checkpointer: None,
            readers,
            _lock: lock,
        };
        store.checkpointer = Some(
            spawn_checkpointer(path, store.commands.clone(), frames)
                .map_err(|error| fail(format!("cannot start checkpoints: {error}")))?,
        );
        if let Some((interval, policy)) = options.compaction {
            // On failure the store drops here, stopping its writer.
            store.compactor = Some(
                spawn_compactor(store.commands.clone(), interval, policy, path)
                    .map_err(|error| fail(format!("cannot start compaction: {error}")))?,
            );
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions committed since open: against the number of writes, it
    /// shows how well commits are grouped.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Deletes what `policy` no longer keeps, as of now.
    pub fn compact(&self, policy: &RetentionPolicy) -> Result<CompactionReport, StoreError> {
        self.compact_at(policy, Utc::now())
    }

    /// Deletes what `policy` no longer keeps, as of `now`. Runs through the
    /// writer in small steps, so writes go on in between.
    pub fn compact_at(
        &self,
        policy: &RetentionPolicy,
        now: DateTime<Utc>,
    ) -> Result<CompactionReport, StoreError> {
        compact(&self.commands, policy, now)
    }

    fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        submit(&self.commands, work)
    }

    fn read<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.readers.with(work)
    }

    /// [`read`](Self::read) in one read transaction: what `work` reads is of
    /// one moment, and the WAL index's read lock is taken once, not once per
    /// statement.
    fn read_together<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.readers.with(|conn| {
            conn.prepare_cached("BEGIN")?.execute([])?;
            let read = work(conn);
            // A read transaction: ending it cannot lose anything, and the
            // connection goes back to the pool outside any transaction.
            let ended = conn
                .prepare_cached("COMMIT")
                .and_then(|mut end| end.execute([]));
            let read = read?;
            ended?;
            Ok(read)
        })
    }
}

/// A write as handed to the writer thread.
enum Handed {
    /// Its rows, built by the caller.
    Rows(ChangeRows),
    /// Its changes, for the writer to build the rows of.
    Changes(Changes),
}

/// [`Changes`] as rows, ready for the writer thread.
struct ChangeRows {
    /// New executions.
    new_executions: Vec<executions::NewExecutionRows>,
    /// New NODE tasks and the execution they belong to.
    new_tasks: Option<(String, Vec<tasks::TaskRow>)>,
    /// Replaced tasks.
    tasks: Vec<tasks::TaskRow>,
    /// Replaced executions.
    executions: Vec<executions::ExecutionRow>,
    /// Appended events.
    events: Vec<events::EventRow>,
}

impl ChangeRows {
    fn new(changes: &Changes) -> Result<Self, StoreError> {
        // An execution admitted in this write is usually changed in it too
        // (queued, or dispatched at once): its rows are inserted as they end
        // up, instead of inserted and then updated (one row and one JSON
        // encoding each, not two). The last change of an id wins.
        let created_tasks: HashSet<&str> = changes
            .new_executions
            .iter()
            .flat_map(|new| new.tasks.iter().map(|task| task.id.as_str()))
            .collect();
        let created_executions: HashSet<&str> = changes
            .new_executions
            .iter()
            .map(|new| new.execution.id.as_str())
            .collect();
        let mut task_changes: HashMap<&str, &Task> = HashMap::new();
        for task in &changes.tasks {
            if created_tasks.contains(task.id.as_str()) {
                task_changes.insert(&task.id, task);
            }
        }
        let mut execution_changes: HashMap<&str, &WorkflowExecution> = HashMap::new();
        for execution in &changes.executions {
            if created_executions.contains(execution.id.as_str()) {
                execution_changes.insert(&execution.id, execution);
            }
        }
        Ok(Self {
            new_executions: changes
                .new_executions
                .iter()
                .map(|new| {
                    executions::NewExecutionRows::as_changed(
                        new,
                        execution_changes.get(new.execution.id.as_str()).copied(),
                        |id| task_changes.get(id).copied(),
                    )
                })
                .collect::<Result<_, _>>()?,
            new_tasks: changes
                .new_execution_tasks
                .as_ref()
                .map(|(id, new)| {
                    new.iter()
                        .map(|task| tasks::TaskRow::new(task))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|rows| (id.clone(), rows))
                })
                .transpose()?,
            tasks: changes
                .tasks
                .iter()
                .filter(|task| !task_changes.contains_key(task.id.as_str()))
                .map(|task| tasks::TaskRow::new(task))
                .collect::<Result<_, _>>()?,
            executions: changes
                .executions
                .iter()
                .filter(|execution| !execution_changes.contains_key(execution.id.as_str()))
                .map(|execution| executions::ExecutionRow::bare(execution))
                .collect::<Result<_, _>>()?,
            events: changes
                .events
                .iter()
                .map(|event| events::EventRow::new(event))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs the rows' statements inside the writer's transaction; an unknown
    /// task or execution fails the whole write.
    fn apply(&self, conn: &Connection) -> Result<(), StoreError> {
        for new in &self.new_executions {
            new.insert(conn)?;
        }
        if let Some((execution_id, rows)) = &self.new_tasks {
            for row in rows {
                tasks::insert_task(conn, row, Some(execution_id))?;
            }
        }
        for row in &self.tasks {
            if !tasks::update_task(conn, row)? {
                return Err(StoreError::Unavailable(format!(
                    "task {} is not stored",
                    row.id
                )));
            }
        }
        for row in &self.executions {
            if !executions::update_execution(conn, row)? {
                return Err(StoreError::Unavailable(format!(
                    "execution {} is not stored",
                    row.id
                )));
            }
        }
        for row in &self.events {
            events::insert_event(conn, row)?;
        }
        Ok(())
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(compactor) = self.compactor.take() {
            compactor.stop();
        }
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
        // Readers close first, so that the writer's connection is the last
        // one: closing it checkpoints the WAL into the file and removes it.
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.clear();
        }
        // Nothing else can submit now: `drop` has the store to itself.
        let _ = self.commands.send(Command::Stop);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store for SqliteStore {
    fn create_task(
        &self,
        task: Task,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        tasks::create(self, task, idempotency)
    }

    fn put_task(&self, task: &Task) -> Result<bool, StoreError> {
        tasks::put(self, task)
    }

    fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        tasks::get(self, id)
    }

    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, StoreError> {
        tasks::child_ids(self, parent_id)
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, StoreError> {
        tasks::list(self, filter, after, limit)
    }

    fn create_execution(
        &self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<ExecutionCreateOutcome, StoreError> {
        executions::create(self, new, idempotency)
    }

    fn add_execution_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        executions::add_tasks(self, execution_id, tasks)
    }

    fn execution_for_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        executions::for_key(self, key)
    }

    fn put_execution(&self, execution: &WorkflowExecution) -> Result<bool, StoreError> {
        executions::put(self, execution)
    }

    fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
        executions::get(self, id)
    }

    fn root_and_children(&self, root_id: &str) -> Result<Vec<Task>, StoreError> {
        self.read_together(|conn| tasks::root_and_children_on(conn, root_id))
    }

    fn execution_with_tasks(
        &self,
        id: &str,
    ) -> Result<Option<(WorkflowExecution, Vec<Task>)>, StoreError> {
        executions::with_tasks(self, id)
    }

    fn execution_prompt(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        executions::prompt(self, id)
    }

    fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, StoreError> {
        executions::of_task(self, task_id)
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WorkflowExecution, u64>, StoreError> {
        executions::list(self, filter, after, limit)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        meta::get(self, key)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        meta::set(self, key, value)
    }

    fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        events::append(self, event)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        events::after(self, after, limit)
    }

    fn write(&self, changes: Changes, committed: Committed) {
        let done =
            std::mem::take(&mut *self.retired.lock().unwrap_or_else(PoisonError::into_inner));
        drop(done);
        // The rows (JSON encoded) are built by whichever thread is free: an
        // idle writer builds them after its wake-up while the caller goes
        // on; a busy one finds them built when it comes to this write, its
        // previous commit and this encoding having run side by side.
        // A write whose rows cannot be built still goes through the queue, so
        // that its failure is told in order, after the writes before it.
        let handed = if self.writer_idle.load(Ordering::Relaxed) {
            Ok(Handed::Changes(changes))
        } else {
            ChangeRows::new(&changes).map(Handed::Rows)
        };
        let retired = Arc::clone(&self.retired);
        writer::defer(
            &self.commands,
            move |conn| {
                let handed = handed?;
                let applied = match &handed {
                    Handed::Rows(rows) => rows.apply(conn),
                    Handed::Changes(changes) => {
                        ChangeRows::new(changes).and_then(|rows| rows.apply(conn))
                    }
                };
                retired
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(handed);
                applied
            },
            committed,
        );
    }

    fn prefers_fewer_writes(&self) -> bool {
        // A commit each: WAL frames, a wake of the writer thread and back.
        true
    }

    fn last_event_sequence(&self) -> Result<u64, StoreError> {
        self.read(last_event_sequence)
    }

    fn insert_workflow(
        &self,
        workflow: WorkflowDefinition,
    ) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError> {
        workflows::insert(self, workflow)
    }

    fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        workflows::get(self, id, version)
    }

    fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError> {
        workflows::list(self, filter, after, limit)
    }

    fn delete_workflow(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, StoreError> {
        workflows::delete(self, id, version)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Barrier, mpsc};
    use std::time::{Duration, Instant};

    use super::test_support::{all_task_names, open_error, temp_store};
    use super::{Handed, SqliteStore};
    use crate::store::Changes;
    use crate::store::conformance::{
        created, created_execution, event, key, new_execution, task, workflow,
    };
    use crate::store::{CreateOutcome, ExecutionFilter, Store, TaskFilter};

    #[test]
    fn reopening_keeps_everything_and_sequences_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/store.db");
        let (first, execution, page_cursor) = {
            let store = SqliteStore::open(&path).unwrap();
            let first = created(store.create_task(task("first"), key("tk", "fp")).unwrap());
            created(store.create_task(task("second"), None).unwrap());
            let execution = created_execution(
                store
                    .create_execution(new_execution("wf", &["tag"], 2), key("ek", "fp"))
                    .unwrap(),
            );
            for sequence in 1..=3 {
                store.append_event(&event(sequence)).unwrap();
            }
            store
                .insert_workflow(workflow("w", "1.0.0", &[]))
                .unwrap()
                .unwrap();
            store.set_meta("instance", "abc").unwrap();
            let page = store.list_tasks(&TaskFilter::default(), None, 2).unwrap();
            (first, execution, page.next)
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_task(&first.id).unwrap().as_ref(), Some(&first));
        assert!(matches!(
            store.create_task(task("dup"), key("tk", "fp")).unwrap(),
            CreateOutcome::Existing {
                same_body: true,
                ..
            }
        ));
        assert_eq!(
            store.get_execution(&execution.id).unwrap().as_ref(),
            Some(&execution)
        );
        assert!(store.execution_prompt(&execution.id).unwrap().is_some());
        assert_eq!(
            store.execution_for_key("ek").unwrap(),
            Some(("fp".to_owned(), execution.id.clone()))
        );
        assert_eq!(
            store
                .list_executions(&ExecutionFilter::default(), None, 10)
                .unwrap()
                .items,
            [execution]
        );
        assert_eq!(store.last_event_sequence().unwrap(), 3);
        assert_eq!(store.events_after(1, 10).unwrap().len(), 2);
        store.append_event(&event(4)).unwrap();
        assert_eq!(store.last_event_sequence().unwrap(), 4);
        assert!(store.get_workflow("w", None).unwrap().is_some());
        assert_eq!(store.meta("instance").unwrap().as_deref(), Some("abc"));
        // Creation order and cursors handed out before the restart hold.
        created(store.create_task(task("after restart"), None).unwrap());
        assert_eq!(
            all_task_names(&store),
            [
                "first",
                "second",
                "root",
                "node 0",
                "node 1",
                "after restart"
            ]
        );
        let rest = store
            .list_tasks(&TaskFilter::default(), page_cursor, 10)
            .unwrap();
        assert_eq!(rest.items.len(), 4);
    }

    #[test]
    fn an_unwritable_location_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory that cannot be created: a file stands in its way.
        let blocker = dir.path().join("data");
        std::fs::write(&blocker, "a file, not a directory").unwrap();
        let path = blocker.join("store.db");
        let message = open_error(&path);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("cannot create directory"), "{message}");

        // A read-only directory, where permissions apply (not to root).
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("read-only");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(locked.join("probe"), "x").is_err() {
            let path = locked.join("store.db");
            let message = open_error(&path);
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Keeps the writer busy in a batch of its own until the returned barrier
    /// is waited on (once).
    fn hold_writer(store: &SqliteStore) -> Arc<Barrier> {
        let (started, held) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (job_started, job_held) = (Arc::clone(&started), Arc::clone(&held));
        super::writer::defer(
            &store.commands,
            move |_| {
                job_started.wait();
                job_held.wait();
                Ok(())
            },
            Box::new(|_| {}),
        );
        started.wait();
        held
    }

    /// Waits until the writer waits for work.
    fn wait_idle(store: &SqliteStore) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.writer_idle.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "the writer never became idle");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Hands `store` a write of the event `sequence`; `told` gets the
    /// sequence and whether it committed.
    fn write_event(store: &SqliteStore, told: &mpsc::Sender<(u64, bool)>, sequence: u64) {
        let told = told.clone();
        Store::write(
            store,
            Changes {
                events: vec![Arc::new(event(sequence))],
                ..Changes::default()
            },
            Box::new(move |result| told.send((sequence, result.is_ok())).unwrap()),
        );
    }

    #[test]
    fn a_write_is_encoded_by_whichever_thread_is_free() {
        let (_dir, store) = temp_store();
        let (told, outcomes) = mpsc::channel();
        let handed = || {
            let retired = store.retired.lock().unwrap();
            retired
                .iter()
                .map(|handed| matches!(handed, Handed::Rows(_)))
                .collect::<Vec<_>>()
        };
        // An idle writer gets the changes and encodes them itself.
        wait_idle(&store);
        write_event(&store, &told, 1);
        assert_eq!(outcomes.recv().unwrap(), (1, true));
        assert_eq!(handed(), [false]);
        // A busy one finds the rows built by the caller.
        let held = hold_writer(&store);
        write_event(&store, &told, 2);
        held.wait();
        assert_eq!(outcomes.recv().unwrap(), (2, true));
        // The first write's changes were freed by the second write's caller.
        assert_eq!(handed(), [true]);
        let sequences: Vec<u64> = store
            .events_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, [1, 2]);
    }

    #[test]
    fn a_write_in_a_hold_of_wakes_commits_once_the_wake_is_given() {
        let (_dir, store) = temp_store();
        let (told, outcomes) = mpsc::channel();
        store.commands.until_receiver_waits();
        let hold = crate::store::hold_wakes();
        write_event(&store, &told, 1);
        let owed = hold.release();
        assert!(!owed.is_empty());
        // Queued for the writer, which sleeps on until the wake it is owed.
        assert_eq!(store.commands.queued(), 1);
        assert!(store.commands.receiver_waits());
        drop(owed);
        assert_eq!(outcomes.recv().unwrap(), (1, true));
        // A write some thread waits for wakes the writer even in a hold.
        store.commands.until_receiver_waits();
        let _hold = crate::store::hold_wakes();
        let count = store.write(|conn| {
            Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })?)
        });
        assert_eq!(count.unwrap(), 1);
    }

    #[test]
    fn a_write_that_cannot_be_encoded_fails_in_its_turn() {
        let (_dir, store) = temp_store();
        let (told, outcomes) = mpsc::channel();
        // A sequence the events table cannot hold: its row cannot be built.
        let unstorable = u64::MAX;
        // Built by the caller (the writer busy) and by the writer (idle).
        let held = hold_writer(&store);
        write_event(&store, &told, 1);
        write_event(&store, &told, unstorable);
        held.wait();
        wait_idle(&store);
        write_event(&store, &told, 2);
        write_event(&store, &told, unstorable);
        let told: Vec<(u64, bool)> = outcomes.iter().take(4).collect();
        assert_eq!(
            told,
            [
                (1, true),
                (unstorable, false),
                (2, true),
                (unstorable, false)
            ]
        );
    }
}
