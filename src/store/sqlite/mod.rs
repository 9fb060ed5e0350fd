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

use std::fmt::Display;
use std::fs::{File, OpenOptions, TryLockError};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    CreateOutcome, ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey, NewExecutionRecord,
    Page, Store, StoreError, TaskFilter, WorkflowCursor, WorkflowFilter, version_key,
};
use crate::config::{Config, StoreConfig, StoreSynchronous};
use crate::model::events::Event;
use crate::model::{Task, TaskStatus, WorkflowDefinition, WorkflowExecution};

/// The schema, one migration per entry, applied in order; `schema_version`
/// holds how many have run. Never edit an entry: append a new one.
const MIGRATIONS: [&str; 1] = [r"
CREATE TABLE tasks (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT, -- creation order, the listing cursor
    id           TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,
    task_type    TEXT NOT NULL,
    parent_id    TEXT,
    execution_id TEXT,                              -- set for an execution's root and node tasks
    tags         TEXT NOT NULL,                     -- JSON array, mirrored in task_tags
    updated_ms   INTEGER NOT NULL,                  -- updated_at (else created_at), for retention
    body         TEXT NOT NULL                      -- the task as JSON
);
CREATE INDEX tasks_by_status ON tasks (status, seq);
CREATE INDEX tasks_by_parent ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_by_execution ON tasks (execution_id) WHERE execution_id IS NOT NULL;
CREATE TABLE task_tags (
    tag      TEXT NOT NULL,
    task_seq INTEGER NOT NULL,
    PRIMARY KEY (tag, task_seq)
) WITHOUT ROWID;
CREATE INDEX task_tags_by_task ON task_tags (task_seq);
CREATE TABLE task_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    task_id     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX task_keys_by_task ON task_keys (task_id);
CREATE TABLE executions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    root_task_id TEXT,
    updated_ms   INTEGER NOT NULL,
    body         TEXT NOT NULL,                     -- the execution as JSON, tasks empty
    prompt       BLOB NOT NULL                      -- the ComfyUI prompt JSON
);
CREATE INDEX executions_by_status ON executions (status, seq);
CREATE INDEX executions_by_workflow ON executions (workflow_id, seq);
CREATE TABLE execution_keys (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    execution_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX execution_keys_by_execution ON execution_keys (execution_id);
CREATE TABLE events (
    sequence     INTEGER PRIMARY KEY,
    timestamp_ms INTEGER NOT NULL,
    body         TEXT NOT NULL
);
CREATE TABLE workflows (
    id      TEXT NOT NULL,
    major   INTEGER NOT NULL,                       -- version_key, order-preserving as i64
    minor   INTEGER NOT NULL,
    patch   INTEGER NOT NULL,
    version TEXT NOT NULL,
    tags    TEXT NOT NULL,                          -- JSON array
    body    TEXT NOT NULL,                          -- the workflow record as JSON
    UNIQUE (id, major, minor, patch)
);
CREATE TABLE meta (                                 -- values the runtime keeps about itself
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE store_state (                          -- the store's own counters
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"];

/// `store_state` key: the highest event sequence ever deleted, so that sequences
/// continue without reuse even when compaction removed every event.
const EVENT_HIGH_WATER: &str = "event_high_water";

/// Writes waiting for the writer thread; a full queue blocks the caller.
const WRITE_QUEUE: usize = 1024;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 8;
/// How long a connection waits on a lock held elsewhere (a checkpoint).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The WAL file is truncated back to this size after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Prepared statements cached per connection.
const STATEMENT_CACHE: usize = 64;
/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// Creation sequence numbers scanned by one compaction step, which holds the
/// writer: small enough that submissions barely notice it.
const COMPACTION_WINDOW: i64 = 5_000;
/// Events deleted by one compaction step.
const COMPACTION_EVENTS: u64 = 10_000;
/// The background compaction's first run comes this soon after open (or
/// after one interval, when shorter), so short-lived processes compact too.
const FIRST_COMPACTION_DELAY: Duration = Duration::from_secs(60);

/// How a `SqliteStore` is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    /// How far a commit waits for the disk.
    pub synchronous: StoreSynchronous,
    /// Most events kept; each append deletes the ones that fall out.
    pub max_events: u64,
    /// Background compaction: how often, and what it removes. `None`: only
    /// when [`SqliteStore::compact`] is called.
    pub compaction: Option<(Duration, RetentionPolicy)>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: StoreSynchronous::Normal,
            max_events: 1_000_000,
            compaction: None,
        }
    }
}

impl SqliteOptions {
    /// The options `[store]` asks for, background compaction included.
    pub fn from_config(config: &Config) -> Self {
        let store = &config.store;
        Self {
            synchronous: store.synchronous,
            max_events: store.max_events,
            compaction: Some((
                store.compaction_interval(),
                RetentionPolicy::from_config(store),
            )),
        }
    }
}

/// What compaction removes.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    /// Finished (completed, failed, cancelled) executions with their tasks,
    /// and finished stand-alone tasks, are deleted this long after they last
    /// changed. A task is kept while one of its children is.
    pub finished: Duration,
    /// Events older than this are deleted.
    pub events: Duration,
    /// Most events kept; the oldest beyond it are deleted.
    pub max_events: u64,
}

impl RetentionPolicy {
    /// The policy `[store]` asks for.
    pub fn from_config(store: &StoreConfig) -> Self {
        Self {
            finished: store.retention(),
            events: store.retention(),
            max_events: store.max_events,
        }
    }
}

/// What one compaction deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Executions deleted.
    pub executions: u64,
    /// Tasks deleted (those of the deleted executions included).
    pub tasks: u64,
    /// Events deleted.
    pub events: u64,
}

impl CompactionReport {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A durable `Store` in one SQLite file.
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// Writes for the writer thread.
    commands: SyncSender<Command>,
    /// The writer thread; taken when the store is dropped.
    writer: Option<JoinHandle<()>>,
    /// Transactions the writer committed since open.
    commits: Arc<AtomicU64>,
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
        migrate(&mut conn).map_err(fail)?;
        let readers = Readers::new(path);
        // A read proves the read-only connections work too (the -shm file).
        readers
            .with(last_event_sequence)
            .map_err(|error| fail(error.to_string()))?;

        let (commands, queue) = mpsc::sync_channel(WRITE_QUEUE);
        // At least the newest event stays, so its sequence is never reused.
        let max_events = i64::try_from(options.max_events.max(1)).unwrap_or(i64::MAX);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&conn, &queue, max_events, &counter))
            .map_err(|error| fail(format!("cannot start the writer thread: {error}")))?;
        let mut store = Self {
            path: path.to_path_buf(),
            commands,
            writer: Some(writer),
            commits,
            compactor: None,
            checkpointer: None,
            readers,
            _lock: lock,
        };
        store.checkpointer = Some(
            spawn_checkpointer(path)
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

/// The (fingerprint, body) an idempotency key points to, by `sql` (which
/// selects those two columns for the key `?1`).
fn keyed_body(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(sql)?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
}

impl Store for SqliteStore {
    fn create_task(
        &self,
        task: Task,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateOutcome, StoreError> {
        let row = TaskRow::new(&task)?;
        self.write(move |conn| {
            if let Some(key) = &idempotency {
                let existing = keyed_body(
                    conn,
                    "SELECT k.fingerprint, t.body FROM task_keys k
                     JOIN tasks t ON t.id = k.task_id WHERE k.key = ?1",
                    &key.key,
                )?;
                if let Some((fingerprint, body)) = existing {
                    return Ok(CreateOutcome::Existing {
                        task: decode("task with idempotency key", &key.key, &body)?,
                        same_body: fingerprint == key.fingerprint,
                    });
                }
            }
            insert_task(conn, &row, None)?;
            if let Some(key) = &idempotency {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO task_keys (key, fingerprint, task_id)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key.key, key.fingerprint, row.id])?;
            }
            Ok(CreateOutcome::Created(task))
        })
    }

    fn put_task(&self, task: &Task) -> Result<bool, StoreError> {
        let row = TaskRow::new(task)?;
        self.write(move |conn| {
            let found: Option<(i64, String)> = conn
                .prepare_cached("SELECT seq, tags FROM tasks WHERE id = ?1")?
                .query_row([&row.id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((seq, old_tags)) = found else {
                return Ok(false);
            };
            conn.prepare_cached(
                "UPDATE tasks SET status = ?2, task_type = ?3, parent_id = ?4, tags = ?5,
                 updated_ms = ?6, body = ?7 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                row.status,
                row.task_type,
                row.parent_id,
                row.tags_json,
                row.updated_ms,
                row.body
            ])?;
            if old_tags != row.tags_json {
                conn.prepare_cached("DELETE FROM task_tags WHERE task_seq = ?1")?
                    .execute([seq])?;
                insert_tags(conn, seq, &row.tags)?;
            }
            Ok(true)
        })
    }

    fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.read(|conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM tasks WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            body.map(|body| decode("task", id, &body)).transpose()
        })
    }

    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT id FROM tasks WHERE parent_id = ?1 ORDER BY seq")?;
            let ids = statement
                .query_map([parent_id], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
    }

    fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<Task, u64>, StoreError> {
        let mut query = Query::new("SELECT seq, body FROM tasks WHERE seq > ?", cursor(after));
        query.any_of("status", filter.statuses.iter().map(|s| s.as_str()));
        query.any_of("task_type", filter.types.iter().map(|t| t.as_str()));
        if let Some(parent) = &filter.parent_id {
            query.and("parent_id = ?", parent.as_str());
        }
        for tag in &filter.tags {
            query.and(
                "EXISTS (SELECT 1 FROM task_tags g WHERE g.tag = ? AND g.task_seq = tasks.seq)",
                tag.as_str(),
            );
        }
        self.read(|conn| query.page(conn, "seq", limit, "task"))
    }

    fn create_execution(
        &self,
        new: NewExecutionRecord,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<ExecutionCreateOutcome, StoreError> {
        let NewExecutionRecord {
            mut execution,
            tasks,
            prompt,
        } = new;
        execution.tasks = Vec::new();
        let row = ExecutionRow::new(&execution)?;
        let tasks = tasks
            .iter()
            .map(TaskRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.write(move |conn| {
            if let Some(key) = &idempotency {
                let existing = keyed_body(
                    conn,
                    "SELECT k.fingerprint, e.body FROM execution_keys k
                     JOIN executions e ON e.id = k.execution_id WHERE k.key = ?1",
                    &key.key,
                )?;
                if let Some((fingerprint, body)) = existing {
                    return Ok(ExecutionCreateOutcome::Existing {
                        execution: decode("execution with idempotency key", &key.key, &body)?,
                        same_body: fingerprint == key.fingerprint,
                    });
                }
            }
            for task in &tasks {
                insert_task(conn, task, Some(&row.id))?;
            }
            if let Some(key) = &idempotency {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO execution_keys (key, fingerprint, execution_id)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key.key, key.fingerprint, row.id])?;
            }
            conn.prepare_cached(
                "INSERT INTO executions
                 (id, status, workflow_id, root_task_id, updated_ms, body, prompt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                row.id,
                row.status,
                row.workflow_id,
                row.root_task_id,
                row.updated_ms,
                row.body,
                prompt.as_ref()
            ])?;
            Ok(ExecutionCreateOutcome::Created(execution))
        })
    }

    fn add_execution_tasks(&self, execution_id: &str, tasks: &[Task]) -> Result<(), StoreError> {
        let rows = tasks
            .iter()
            .map(TaskRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let execution_id = execution_id.to_owned();
        self.write(move |conn| {
            for row in &rows {
                insert_task(conn, row, Some(&execution_id))?;
            }
            Ok(())
        })
    }

    fn execution_for_key(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT fingerprint, execution_id FROM execution_keys WHERE key = ?1",
                )?
                .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?)
        })
    }

    fn put_execution(&self, execution: &WorkflowExecution) -> Result<bool, StoreError> {
        let row = if execution.tasks.is_empty() {
            ExecutionRow::new(execution)?
        } else {
            let mut bare = execution.clone();
            bare.tasks = Vec::new();
            ExecutionRow::new(&bare)?
        };
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE executions SET status = ?2, workflow_id = ?3, root_task_id = ?4,
                     updated_ms = ?5, body = ?6 WHERE id = ?1",
                )?
                .execute(params![
                    row.id,
                    row.status,
                    row.workflow_id,
                    row.root_task_id,
                    row.updated_ms,
                    row.body
                ])?;
            Ok(changed > 0)
        })
    }

    fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
        self.read(|conn| {
            let body: Option<String> = conn
                .prepare_cached("SELECT body FROM executions WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            body.map(|body| decode("execution", id, &body)).transpose()
        })
    }

    fn execution_prompt(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        self.read(|conn| {
            let prompt: Option<Vec<u8>> = conn
                .prepare_cached("SELECT prompt FROM executions WHERE id = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?;
            Ok(prompt.map(Bytes::from))
        })
    }

    fn execution_of_task(&self, task_id: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            let execution: Option<Option<String>> = conn
                .prepare_cached("SELECT execution_id FROM tasks WHERE id = ?1")?
                .query_row([task_id], |row| row.get(0))
                .optional()?;
            Ok(execution.flatten())
        })
    }

    fn list_executions(
        &self,
        filter: &ExecutionFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<WorkflowExecution, u64>, StoreError> {
        let mut query = Query::new(
            "SELECT e.seq, e.body FROM executions e WHERE e.seq > ?",
            cursor(after),
        );
        query.any_of("e.status", filter.statuses.iter().map(|s| s.as_str()));
        if let Some(workflow_id) = &filter.workflow_id {
            query.and("e.workflow_id = ?", workflow_id.as_str());
        }
        for tag in &filter.tags {
            query.and(
                "EXISTS (SELECT 1 FROM tasks r JOIN task_tags g ON g.task_seq = r.seq
                 WHERE r.id = e.root_task_id AND g.tag = ?)",
                tag.as_str(),
            );
        }
        self.read(|conn| query.page(conn, "e.seq", limit, "execution"))
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?)
        })
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| {
            conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
                .execute([key, value])?;
            Ok(())
        })
    }

    fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        let sequence = to_i64(event.sequence, "event sequence")?;
        let timestamp_ms = event.timestamp.timestamp_millis();
        let body = encode("event", sequence, event)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO events (sequence, timestamp_ms, body) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![sequence, timestamp_ms, body])?;
            Ok(())
        })
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT sequence, body FROM events WHERE sequence > ?1 ORDER BY sequence LIMIT ?2",
            )?;
            let mut rows = statement.query(params![after, limit])?;
            let mut events = Vec::new();
            while let Some(row) = rows.next()? {
                let sequence: i64 = row.get(0)?;
                events.push(decode("event", sequence, row.get_ref(1)?.as_str()?)?);
            }
            Ok(events)
        })
    }

    fn last_event_sequence(&self) -> Result<u64, StoreError> {
        self.read(last_event_sequence)
    }

    fn insert_workflow(
        &self,
        workflow: WorkflowDefinition,
    ) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError> {
        let key = VersionColumns::of(&workflow.version);
        let what = format!("workflow {} version {}", workflow.id, workflow.version);
        let body = encode("workflow", &what, &workflow.to_record())?;
        let tags = encode("workflow", &what, &workflow.tags)?;
        self.write(move |conn| {
            let existing: Option<String> = conn
                .prepare_cached(
                    "SELECT body FROM workflows
                     WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                )?
                .query_row(
                    params![workflow.id, key.major, key.minor, key.patch],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(body) = existing {
                return Ok(Err(decode("workflow", &what, &body)?));
            }
            conn.prepare_cached(
                "INSERT INTO workflows (id, major, minor, patch, version, tags, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                workflow.id,
                key.major,
                key.minor,
                key.patch,
                workflow.version,
                tags,
                body
            ])?;
            Ok(Ok(workflow))
        })
    }

    fn get_workflow(
        &self,
        id: &str,
        version: Option<&str>,
    ) -> Result<Option<WorkflowDefinition>, StoreError> {
        self.read(|conn| {
            let body: Option<String> = match version {
                Some(version) => {
                    let key = VersionColumns::of(version);
                    conn.prepare_cached(
                        "SELECT body FROM workflows
                         WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                    )?
                    .query_row(params![id, key.major, key.minor, key.patch], |row| {
                        row.get(0)
                    })
                    .optional()?
                }
                None => conn
                    .prepare_cached(
                        "SELECT body FROM workflows WHERE id = ?1
                         ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
                    )?
                    .query_row([id], |row| row.get(0))
                    .optional()?,
            };
            body.map(|body| decode("workflow", id, &body)).transpose()
        })
    }

    fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<&WorkflowCursor>,
        limit: usize,
    ) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError> {
        let mut sql = String::from("SELECT w.id, w.tags, w.body FROM workflows w WHERE 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(cursor) = after {
            let key = VersionColumns::of(&cursor.version);
            sql.push_str(" AND (w.id, w.major, w.minor, w.patch) > (?, ?, ?, ?)");
            args.extend([
                Value::Text(cursor.id.clone()),
                Value::Integer(key.major),
                Value::Integer(key.minor),
                Value::Integer(key.patch),
            ]);
        }
        if !filter.all_versions {
            sql.push_str(
                " AND NOT EXISTS (SELECT 1 FROM workflows n WHERE n.id = w.id
                  AND (n.major, n.minor, n.patch) > (w.major, w.minor, w.patch))",
            );
        }
        sql.push_str(" ORDER BY w.id, w.major, w.minor, w.patch");
        self.read(|conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(args))?;
            let mut items: Vec<WorkflowDefinition> = Vec::new();
            let mut more = false;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let tags: Vec<String> = decode("workflow tags of", &id, row.get_ref(1)?.as_str()?)?;
                if !filter.tags.iter().all(|tag| tags.contains(tag)) {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(decode("workflow", &id, row.get_ref(2)?.as_str()?)?);
            }
            let next = if more {
                items.last().map(|w| WorkflowCursor {
                    id: w.id.clone(),
                    version: w.version.clone(),
                })
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    fn delete_workflow(&self, id: &str, version: Option<&str>) -> Result<Vec<String>, StoreError> {
        let id = id.to_owned();
        let key = version.map(VersionColumns::of);
        self.write(move |conn| {
            let (select, delete) = match key {
                Some(_) => (
                    "SELECT version FROM workflows
                     WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                    "DELETE FROM workflows
                     WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                ),
                None => (
                    "SELECT version FROM workflows WHERE id = ?1 ORDER BY major, minor, patch",
                    "DELETE FROM workflows WHERE id = ?1",
                ),
            };
            let mut args = vec![Value::Text(id)];
            if let Some(key) = key {
                args.extend([
                    Value::Integer(key.major),
                    Value::Integer(key.minor),
                    Value::Integer(key.patch),
                ]);
            }
            let versions = conn
                .prepare_cached(select)?
                .query_map(rusqlite::params_from_iter(&args), |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            conn.prepare_cached(delete)?
                .execute(rusqlite::params_from_iter(&args))?;
            Ok(versions)
        })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Unavailable(format!("sqlite: {error}"))
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(error: rusqlite::types::FromSqlError) -> Self {
        StoreError::Corrupt(format!("unexpected column type: {error}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// A task encoded for its row, built on the caller's thread so that the
/// writer only runs SQL.
struct TaskRow {
    id: String,
    status: &'static str,
    task_type: &'static str,
    parent_id: Option<String>,
    tags: Vec<String>,
    tags_json: String,
    updated_ms: i64,
    body: String,
}

impl TaskRow {
    fn new(task: &Task) -> Result<Self, StoreError> {
        Ok(Self {
            id: task.id.clone(),
            status: task.status().as_str(),
            task_type: task.task_type.as_str(),
            parent_id: task.parent_id.clone(),
            tags: task.tags.iter().cloned().collect(),
            tags_json: encode("task", &task.id, &task.tags)?,
            updated_ms: task
                .updated_at
                .unwrap_or(task.created_at)
                .timestamp_millis(),
            body: encode("task", &task.id, task)?,
        })
    }
}

fn insert_task(
    conn: &Connection,
    row: &TaskRow,
    execution_id: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO tasks (id, status, task_type, parent_id, execution_id, tags, updated_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.id,
        row.status,
        row.task_type,
        row.parent_id,
        execution_id,
        row.tags_json,
        row.updated_ms,
        row.body
    ])?;
    insert_tags(conn, conn.last_insert_rowid(), &row.tags)
}

fn insert_tags(conn: &Connection, seq: i64, tags: &[String]) -> Result<(), StoreError> {
    let mut statement =
        conn.prepare_cached("INSERT INTO task_tags (tag, task_seq) VALUES (?1, ?2)")?;
    for tag in tags {
        statement.execute(params![tag, seq])?;
    }
    Ok(())
}

/// An execution encoded for its row (its `tasks` already emptied).
struct ExecutionRow {
    id: String,
    status: &'static str,
    workflow_id: String,
    root_task_id: Option<String>,
    updated_ms: i64,
    body: String,
}

impl ExecutionRow {
    fn new(execution: &WorkflowExecution) -> Result<Self, StoreError> {
        Ok(Self {
            id: execution.id.clone(),
            status: execution.status().as_str(),
            workflow_id: execution.workflow_id.clone(),
            root_task_id: execution.root_task_id.clone(),
            updated_ms: execution
                .updated_at
                .unwrap_or(execution.created_at)
                .timestamp_millis(),
            body: encode("execution", &execution.id, execution)?,
        })
    }
}

/// A workflow version's `version_key` as SQLite integers. Flipping the top
/// bit maps u64 order onto i64 order, so versions past `i64::MAX` still sort.
#[derive(Debug, Clone, Copy)]
struct VersionColumns {
    major: i64,
    minor: i64,
    patch: i64,
}

impl VersionColumns {
    fn of(version: &str) -> Self {
        // The cast reinterprets the bits on purpose (see the type's comment).
        let ordered = |part: u64| (part ^ (1 << 63)) as i64;
        let (major, minor, patch) = version_key(version);
        Self {
            major: ordered(major),
            minor: ordered(minor),
            patch: ordered(patch),
        }
    }
}

/// A listing's SQL and arguments, built from a filter.
struct Query {
    sql: String,
    args: Vec<Value>,
}

impl Query {
    fn new(select: &str, after: i64) -> Self {
        Self {
            sql: select.to_owned(),
            args: vec![Value::Integer(after)],
        }
    }

    /// `AND <condition>` with one text argument.
    fn and(&mut self, condition: &str, arg: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
        self.args.push(Value::Text(arg.to_owned()));
    }

    /// `AND column IN (...)`, nothing when `values` is empty.
    fn any_of<'a>(&mut self, column: &str, values: impl Iterator<Item = &'a str>) {
        let before = self.args.len();
        self.args.extend(values.map(|v| Value::Text(v.to_owned())));
        let count = self.args.len() - before;
        if count > 0 {
            let marks = vec!["?"; count].join(", ");
            self.sql.push_str(&format!(" AND {column} IN ({marks})"));
        }
    }

    /// Runs the listing: rows of (creation sequence, JSON body) in sequence
    /// order, at most `limit`, with the cursor of the last when more follow.
    fn page<T: DeserializeOwned>(
        mut self,
        conn: &Connection,
        order: &str,
        limit: usize,
        what: &str,
    ) -> Result<Page<T, u64>, StoreError> {
        if limit == 0 {
            // As in MemoryStore: an empty page has no cursor to resume from.
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.sql.push_str(&format!(" ORDER BY {order} LIMIT ?"));
        self.args.push(Value::Integer(
            i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
        ));
        let mut statement = conn.prepare_cached(&self.sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(self.args))?;
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last = 0;
        let mut more = false;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode(what, format!("#{seq}"), row.get_ref(1)?.as_str()?)?);
            last = seq;
        }
        Ok(Page {
            items,
            next: more.then(|| u64::try_from(last).unwrap_or(0)),
        })
    }
}

/// A listing cursor as a creation sequence: rows after it. Sequences start
/// at 1, so no cursor means "after 0".
fn cursor(after: Option<u64>) -> i64 {
    after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX))
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Unavailable(format!("{what} {value} is too large to store")))
}

fn encode(what: &str, key: impl Display, value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Unavailable(format!("cannot encode {what} {key}: {error}")))
}

fn decode<T: DeserializeOwned>(what: &str, key: impl Display, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body)
        .map_err(|error| StoreError::Corrupt(format!("{what} {key}: {error}")))
}

fn last_event_sequence(conn: &Connection) -> Result<u64, StoreError> {
    let last: i64 = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(sequence) FROM events), 0),
                        COALESCE((SELECT value FROM store_state WHERE key = ?1), 0))",
        )?
        .query_row([EVENT_HIGH_WATER], |row| row.get(0))?;
    Ok(u64::try_from(last).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

/// Takes the advisory lock on `<path>.lock`, held as long as the file is open.
fn lock(path: &Path) -> Result<File, String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| format!("cannot create lock file {}: {error}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(format!(
            "it is in use by another process (lock file {} is held); stop that process or \
             choose another data directory",
            lock_path.display()
        )),
        Err(TryLockError::Error(error)) => {
            Err(format!("cannot lock {}: {error}", lock_path.display()))
        }
    }
}

fn open_writer(path: &Path, synchronous: StoreSynchronous) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let setup = || -> rusqlite::Result<String> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Only takes effect while the file has no table yet, i.e. when new.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(
            None,
            "synchronous",
            match synchronous {
                StoreSynchronous::Normal => "NORMAL",
                StoreSynchronous::Full => "FULL",
            },
        )?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        // Checkpoints run on their own thread (`spawn_checkpointer`): on the
        // writer, the fsync of an automatic checkpoint stalled every write
        // queued behind it for milliseconds.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(mode)
    };
    let mode = setup().map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "cannot use write-ahead logging (journal mode stays {mode})"
        ));
    }
    if conn.is_readonly("main").map_err(|e| e.to_string())? {
        return Err("the file is read-only".into());
    }
    Ok(conn)
}

/// Applies the migrations the file has not seen, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(|e| e.to_string())?;
    let found: Option<i64> = tx
        .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
        .optional()
        .map_err(|e| e.to_string())?;
    let current = found.unwrap_or(0);
    let known = MIGRATIONS.len();
    let applied = usize::try_from(current).unwrap_or(usize::MAX);
    if applied > known {
        return Err(format!(
            "its schema version {current} is newer than this build knows ({known}); \
             run a newer comfy-reality"
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .map_err(|e| format!("migration to schema version {}: {e}", index + 1))?;
    }
    let latest = i64::try_from(known).unwrap_or(i64::MAX);
    if found.is_some() {
        tx.execute("UPDATE schema_version SET version = ?1", [latest])
    } else {
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [latest])
    }
    .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// Idle read-only connections; a read takes one (opening one when none is
/// idle) and gives it back.
struct Readers {
    /// The database file.
    path: PathBuf,
    /// Connections not in use.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let idle = self
            .idle
            .lock()
            .map_err(|_| StoreError::Unavailable("store reader pool lock poisoned".into()))?
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = work(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// What the writer thread is asked to do.
enum Command {
    /// Run one write in the next batch.
    Write(Box<dyn WriteJob>),
    /// Finish the current batch and exit.
    Stop,
}

/// One write, run by the writer thread inside a batch's transaction.
trait WriteJob: Send {
    /// Runs the write; false when it failed (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Hands the outcome to the waiting caller: its own error, or else the
    /// batch's (`commit`), or its value once the batch committed.
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

/// A write and the channel its caller waits on.
struct Job<R, F> {
    /// The work; taken when it runs.
    work: Option<F>,
    /// What the work returned, held until the batch commits.
    outcome: Option<Result<R, StoreError>>,
    /// Where the caller waits.
    reply: SyncSender<Result<R, StoreError>>,
}

impl<R, F> WriteJob for Job<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let outcome = match self.work.take() {
            // A panicking write fails alone; the writer thread lives on.
            Some(work) => std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
                .unwrap_or_else(|_| Err(StoreError::Unavailable("a store write panicked".into()))),
            None => Err(StoreError::Unavailable("a store write ran twice".into())),
        };
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), &str>) {
        let outcome = match (self.outcome, commit) {
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(reason)) => Err(StoreError::Unavailable(format!(
                "the write was not committed: {reason}"
            ))),
            (None, Ok(())) => Err(StoreError::Unavailable("a store write never ran".into())),
        };
        // The caller blocks until this reply; it is gone only if it panicked.
        let _ = self.reply.send(outcome);
    }
}

/// Sends `work` to the writer and waits until its batch committed.
fn submit<R, F>(commands: &SyncSender<Command>, work: F) -> Result<R, StoreError>
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
{
    let stopped = || StoreError::Unavailable("the store writer has stopped".into());
    let (reply, answer) = mpsc::sync_channel(1);
    commands
        .send(Command::Write(Box::new(Job {
            work: Some(work),
            outcome: None,
            reply,
        })))
        .map_err(|_| stopped())?;
    answer.recv().map_err(|_| stopped())?
}

/// Runs batches until told to stop: waits for one write, takes every write
/// queued behind it, commits them together, then answers them all.
fn writer_loop(
    conn: &Connection,
    commands: &Receiver<Command>,
    max_events: i64,
    commits: &AtomicU64,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
    let mut stop = false;
    while !stop {
        match commands.recv() {
            Ok(Command::Write(job)) => batch.push(job),
            Ok(Command::Stop) | Err(_) => break,
        }
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(Command::Write(job)) => batch.push(job),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let committed = run_batch(conn, &mut batch, max_events);
        match &committed {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                tracing::error!(%reason, writes = batch.len(), "store batch not committed");
            }
        }
        let commit = committed.as_ref().map(|_| ()).map_err(String::as_str);
        for job in batch.drain(..) {
            job.finish(commit);
        }
    }
}

fn run_batch(
    conn: &Connection,
    batch: &mut [Box<dyn WriteJob>],
    max_events: i64,
) -> Result<(), String> {
    // Cached statements: these run several times per commit, and parsing
    // them each time was a visible part of a commit's cost.
    let run = |sql: &str| -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    run("BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    let applied = if let [job] = batch {
        // Alone in its transaction, a failed write rolls the whole
        // transaction back; no savepoint is needed.
        if job.run(conn) {
            trim_events(conn, max_events).and_then(|()| run("COMMIT"))
        } else {
            run("ROLLBACK")
        }
    } else {
        batch
            .iter_mut()
            .try_for_each(|job| {
                run("SAVEPOINT job")?;
                if job.run(conn) {
                    run("RELEASE job")
                } else {
                    run("ROLLBACK TO job")?;
                    run("RELEASE job")
                }
            })
            .and_then(|()| trim_events(conn, max_events))
            .and_then(|()| run("COMMIT"))
    };
    applied.map_err(|error| {
        // Some errors (disk full, I/O) already rolled the transaction back.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        error.to_string()
    })
}

/// Keeps at most `max_events` events: once per batch, a range delete at the
/// low end of the table that usually removes as many rows as the batch added.
fn trim_events(conn: &Connection, max_events: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM events WHERE sequence <= (SELECT MAX(sequence) FROM events) - ?1",
    )?
    .execute([max_events])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------------------------

/// The statuses retention may delete, as an SQL list.
fn finished_statuses() -> String {
    TaskStatus::ALL
        .iter()
        .filter(|status| status.is_terminal())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `now - age` in unix milliseconds; `None` when before the calendar's start.
fn cutoff_ms(now: DateTime<Utc>, age: Duration) -> Option<i64> {
    let age = TimeDelta::from_std(age).ok()?;
    now.checked_sub_signed(age).map(|t| t.timestamp_millis())
}

fn compact(
    commands: &SyncSender<Command>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<CompactionReport, StoreError> {
    let mut report = CompactionReport::default();
    if let Some(cutoff) = cutoff_ms(now, policy.finished) {
        let finished = finished_statuses();
        let mut from = 0;
        loop {
            let sql = finished.clone();
            let (executions, tasks, next) = submit(commands, move |conn| {
                compact_executions(conn, &sql, cutoff, from)
            })?;
            report.executions += executions;
            report.tasks += tasks;
            let Some(next) = next else { break };
            from = next;
        }
        let mut from = 0;
        loop {
            let sql = finished.clone();
            let (tasks, next) = submit(commands, move |conn| {
                compact_tasks(conn, &sql, cutoff, from)
            })?;
            report.tasks += tasks;
            let Some(next) = next else { break };
            from = next;
        }
    }
    let keep = i64::try_from(policy.max_events).unwrap_or(i64::MAX);
    let event_cutoff = cutoff_ms(now, policy.events);
    loop {
        let deleted = submit(commands, move |conn| {
            compact_events(conn, keep, event_cutoff)
        })?;
        report.events += deleted;
        if deleted < COMPACTION_EVENTS {
            break;
        }
    }
    if !report.is_empty() {
        // Hands the freed pages back to the file system (auto_vacuum is incremental).
        submit(commands, |conn| {
            conn.execute_batch("PRAGMA incremental_vacuum")?;
            Ok(())
        })?;
    }
    Ok(report)
}

/// One step: finished executions older than the cutoff among creation
/// sequences (from, from + window], with their tasks and keys. Returns the
/// executions and tasks deleted and where the next step starts, if anywhere.
fn compact_executions(
    conn: &Connection,
    finished: &str,
    cutoff: i64,
    from: i64,
) -> Result<(u64, u64, Option<i64>), StoreError> {
    let to = from.saturating_add(COMPACTION_WINDOW);
    let doomed = conn
        .prepare_cached(&format!(
            "SELECT seq, id FROM executions WHERE seq > ?1 AND seq <= ?2
             AND status IN ({finished}) AND updated_ms < ?3"
        ))?
        .query_map(params![from, to, cutoff], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = 0;
    for (seq, id) in &doomed {
        conn.prepare_cached(
            "DELETE FROM task_tags WHERE task_seq IN
             (SELECT seq FROM tasks WHERE execution_id = ?1)",
        )?
        .execute([id])?;
        conn.prepare_cached(
            "DELETE FROM task_keys WHERE task_id IN
             (SELECT id FROM tasks WHERE execution_id = ?1)",
        )?
        .execute([id])?;
        tasks += conn
            .prepare_cached("DELETE FROM tasks WHERE execution_id = ?1")?
            .execute([id])? as u64;
        conn.prepare_cached("DELETE FROM execution_keys WHERE execution_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM executions WHERE seq = ?1")?
            .execute([seq])?;
    }
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM executions", [], |row| {
        row.get(0)
    })?;
    Ok((doomed.len() as u64, tasks, (to < last).then_some(to)))
}

/// One step: finished stand-alone tasks (not part of an execution) older
/// than the cutoff among creation sequences (from, from + window], unless a
/// child of theirs is kept.
fn compact_tasks(
    conn: &Connection,
    finished: &str,
    cutoff: i64,
    from: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let to = from.saturating_add(COMPACTION_WINDOW);
    let doomed = conn
        .prepare_cached(&format!(
            "SELECT t.seq, t.id FROM tasks t WHERE t.seq > ?1 AND t.seq <= ?2
             AND t.execution_id IS NULL AND t.status IN ({finished}) AND t.updated_ms < ?3
             AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = t.id
                 AND NOT (c.status IN ({finished}) AND c.updated_ms < ?3))"
        ))?
        .query_map(params![from, to, cutoff], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (seq, id) in &doomed {
        conn.prepare_cached("DELETE FROM task_tags WHERE task_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM task_keys WHERE task_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
            .execute([seq])?;
    }
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |row| {
        row.get(0)
    })?;
    Ok((doomed.len() as u64, (to < last).then_some(to)))
}

/// One step: deletes up to a chunk of events beyond `keep` or older than
/// the cutoff, after recording the highest sequence so it is never reused.
fn compact_events(conn: &Connection, keep: i64, cutoff: Option<i64>) -> Result<u64, StoreError> {
    let Some(max): Option<i64> =
        conn.query_row("SELECT MAX(sequence) FROM events", [], |row| row.get(0))?
    else {
        return Ok(0);
    };
    conn.prepare_cached(
        "INSERT INTO store_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![EVENT_HIGH_WATER, max])?;
    // Every sequence below `below` goes.
    let mut below = max.saturating_sub(keep).saturating_add(1);
    if let Some(cutoff) = cutoff {
        let first_recent: Option<i64> = conn
            .prepare_cached(
                "SELECT sequence FROM events WHERE timestamp_ms >= ?1 ORDER BY sequence LIMIT 1",
            )?
            .query_row([cutoff], |row| row.get(0))
            .optional()?;
        below = below.max(first_recent.unwrap_or(max.saturating_add(1)));
    }
    let deleted = conn
        .prepare_cached(
            "DELETE FROM events WHERE sequence IN
             (SELECT sequence FROM events WHERE sequence < ?1 ORDER BY sequence LIMIT ?2)",
        )?
        .execute(params![below, COMPACTION_EVENTS as i64])?;
    Ok(deleted as u64)
}

/// A background thread that runs a step every interval until stopped
/// (compaction, WAL checkpoints).
struct Periodic {
    /// Dropping it wakes the thread, which then exits.
    stop: SyncSender<()>,
    /// The thread.
    thread: JoinHandle<()>,
}

impl Periodic {
    /// Runs `step` after `first`, then every `every`, on a thread named `name`.
    fn spawn(
        name: &str,
        first: Duration,
        every: Duration,
        mut step: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut wait = first;
                loop {
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    wait = every;
                    step();
                }
            })?;
        Ok(Self { stop, thread })
    }

    /// Wakes the thread, waits for it to finish its current step and exit.
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Background compaction: retention in small steps through the writer.
fn spawn_compactor(
    commands: SyncSender<Command>,
    interval: Duration,
    policy: RetentionPolicy,
    path: &Path,
) -> std::io::Result<Periodic> {
    let path = path.to_path_buf();
    let first = interval.min(FIRST_COMPACTION_DELAY);
    Periodic::spawn("store-compaction", first, interval, move || {
        match compact(&commands, &policy, Utc::now()) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => tracing::info!(
                path = %path.display(),
                executions = report.executions,
                tasks = report.tasks,
                events = report.events,
                "store compacted"
            ),
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "store compaction failed; trying again at the next interval"
            ),
        }
    })
}

/// Background WAL checkpoints on their own connection (PASSIVE: they never
/// block the writer or readers), so commits stay cheap and the WAL small.
fn spawn_checkpointer(path: &Path) -> Result<Periodic, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let path = path.to_path_buf();
    Periodic::spawn(
        "store-checkpoint",
        CHECKPOINT_INTERVAL,
        CHECKPOINT_INTERVAL,
        move || {
            if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(path = %path.display(), %error, "WAL checkpoint failed");
            }
        },
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use chrono::TimeDelta;

    use super::*;
    use crate::model::TaskType;
    use crate::store::conformance::{
        created, created_execution, event, key, new_execution, task, task_with, workflow,
    };
    use crate::store::{ExecutionFilter, TaskFilter, WorkflowFilter};

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("store.db")).expect("opens");
        (dir, store)
    }

    fn open_error(path: &Path) -> String {
        match SqliteStore::open(path) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(error @ StoreError::Open { .. }) => error.to_string(),
            Err(other) => panic!("expected an open error, got {other:?}"),
        }
    }

    /// A task moved to `status` (through Queued and Running as needed) and
    /// last changed `age` ago.
    fn aged(mut task: Task, status: TaskStatus, age: TimeDelta) -> Task {
        for step in [TaskStatus::Queued, TaskStatus::Running, status] {
            if task.status() != status {
                task.transition(step).expect("a legal transition");
            }
        }
        task.updated_at = Some(Utc::now() - age);
        task
    }

    fn all_task_names(store: &SqliteStore) -> Vec<String> {
        store
            .list_tasks(&TaskFilter::default(), None, 1000)
            .unwrap()
            .items
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

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
    fn the_file_is_in_wal_mode_with_incremental_vacuum() {
        let (dir, store) = temp_store();
        // A read leaves a read connection in the pool when the store closes.
        let made = created(store.create_task(task("t"), None).unwrap());
        assert!(store.get_task(&made.id).unwrap().is_some());
        drop(store);
        // A clean close folds the WAL back into the file.
        assert!(!dir.path().join("store.db-wal").exists());
        let conn = Connection::open(dir.path().join("store.db")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let vacuum: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(vacuum, 2, "incremental");
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn synchronous_follows_the_options() {
        for (synchronous, expected) in [(StoreSynchronous::Normal, 1), (StoreSynchronous::Full, 2)]
        {
            let dir = tempfile::tempdir().unwrap();
            let options = SqliteOptions {
                synchronous,
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open_with(&dir.path().join("store.db"), options).unwrap();
            let level: i64 = store
                .write(|conn| Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(level, expected, "{synchronous}");
        }
    }

    #[test]
    fn a_second_open_of_the_same_file_fails_naming_it() {
        let (dir, store) = temp_store();
        let path = dir.path().join("store.db");
        let message = open_error(&path);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("in use by another process"), "{message}");
        // The first store is untouched, and the lock goes with it.
        created(store.create_task(task("still works"), None).unwrap());
        drop(store);
        let store = SqliteStore::open(&path).expect("opens once the first is gone");
        assert_eq!(all_task_names(&store), ["still works"]);
    }

    #[test]
    fn a_file_that_is_not_a_database_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        std::fs::write(
            &path,
            "this is not an SQLite database, it is a text file\n".repeat(20),
        )
        .unwrap();
        let message = open_error(&path);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a database"), "{message}");
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

    #[test]
    fn a_newer_schema_is_refused() {
        let (dir, store) = temp_store();
        drop(store);
        let path = dir.path().join("store.db");
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        let message = open_error(&path);
        assert!(message.contains("schema version 99"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn concurrent_writers_see_their_writes_on_return() {
        const THREADS: usize = 8;
        const WRITES: usize = 100;
        let (_dir, store) = temp_store();
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (store, barrier) = (&store, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..WRITES {
                        let made = created(
                            store
                                .create_task(
                                    task(&format!("t{thread}-{i}")),
                                    key(&format!("{thread}-{i}"), "fp"),
                                )
                                .unwrap(),
                        );
                        // Committed before the call returned: another
                        // connection reads it at once.
                        assert_eq!(store.get_task(&made.id).unwrap(), Some(made.clone()));
                        let mut running = made;
                        running.transition(TaskStatus::Queued).unwrap();
                        assert!(store.put_task(&running).unwrap());
                        let read = store.get_task(&running.id).unwrap().unwrap();
                        assert_eq!(read.status(), TaskStatus::Queued);
                    }
                });
            }
        });
        let names = all_task_names(&store);
        assert_eq!(names.len(), THREADS * WRITES);
        // Each thread's tasks list in the order it created them.
        for thread in 0..THREADS {
            let prefix = format!("t{thread}-");
            let mine: Vec<&String> = names.iter().filter(|n| n.starts_with(&prefix)).collect();
            let expected: Vec<String> = (0..WRITES).map(|i| format!("{prefix}{i}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
        let writes = (THREADS * WRITES * 2) as u64;
        let commits = store.commit_count();
        assert!(commits <= writes);
        println!(
            "group commit: {writes} writes in {commits} transactions ({:.2} writes per commit)",
            writes as f64 / commits as f64
        );
    }

    /// A write built for `run_batch` directly, with its reply channel.
    fn job<R: Send + 'static>(
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> (Box<dyn WriteJob>, Receiver<Result<R, StoreError>>) {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            work: Some(work),
            outcome: None,
            reply,
        };
        (Box::new(job), answer)
    }

    #[test]
    fn a_failing_write_does_not_undo_the_others_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut conn = open_writer(&path, StoreSynchronous::Normal).unwrap();
        migrate(&mut conn).unwrap();
        let insert = |name: &'static str, fail: bool| {
            let row = TaskRow::new(&task(name)).unwrap();
            job(move |conn| {
                insert_task(conn, &row, None)?;
                if fail {
                    return Err(StoreError::Unavailable("this write fails".into()));
                }
                Ok(name)
            })
        };
        let panics = job(|_conn: &Connection| -> Result<(), StoreError> { panic!("a bug") });
        let (jobs, answers): (Vec<_>, Vec<_>) = [
            insert("kept-1", false),
            insert("undone", true),
            insert("kept-2", false),
        ]
        .into_iter()
        .unzip();
        let mut batch = jobs;
        batch.push(panics.0);
        run_batch(&conn, &mut batch, 1000).expect("the batch commits");
        for job in batch {
            job.finish(Ok(()));
        }
        let outcomes: Vec<_> = answers.iter().map(|a| a.recv().unwrap()).collect();
        assert_eq!(outcomes[0].as_ref().ok(), Some(&"kept-1"));
        assert!(outcomes[1].is_err());
        assert_eq!(outcomes[2].as_ref().ok(), Some(&"kept-2"));
        assert!(panics.1.recv().unwrap().is_err());
        let mut names = conn.prepare("SELECT body FROM tasks ORDER BY seq").unwrap();
        let names: Vec<String> = names
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|body| serde_json::from_str::<Task>(&body.unwrap()).unwrap().name)
            .collect();
        assert_eq!(names, ["kept-1", "kept-2"]);
    }

    #[test]
    fn compaction_removes_only_finished_work_past_retention() {
        let (_dir, store) = temp_store();
        let old = TimeDelta::days(31);
        let recent = TimeDelta::days(29);
        let put = |task: Task, key_name: Option<&str>| {
            created(
                store
                    .create_task(task, key_name.and_then(|k| key(k, "fp")))
                    .unwrap(),
            )
        };
        // Stand-alone tasks.
        put(
            aged(task("old done"), TaskStatus::Completed, old),
            Some("old-key"),
        );
        put(
            aged(task("recent done"), TaskStatus::Completed, recent),
            None,
        );
        put(aged(task("old running"), TaskStatus::Running, old), None);
        let parent = put(aged(task("old parent"), TaskStatus::Failed, old), None);
        put(
            aged(
                task_with("old child", TaskType::Node, &[], Some(&parent.id)),
                TaskStatus::Cancelled,
                old,
            ),
            None,
        );
        let busy = put(aged(task("busy parent"), TaskStatus::Completed, old), None);
        put(
            aged(
                task_with("live child", TaskType::Node, &[], Some(&busy.id)),
                TaskStatus::Running,
                old,
            ),
            None,
        );
        // Executions: each with a root and one node.
        let execution = |status: TaskStatus, age: TimeDelta, key_name: &str| {
            let mut new = new_execution(key_name, &[], 1);
            let tasks = std::mem::take(&mut new.tasks);
            new.tasks = tasks
                .into_iter()
                .map(|t| aged(t, TaskStatus::Completed, age))
                .collect();
            for step in [TaskStatus::Queued, TaskStatus::Running, status] {
                if new.execution.status() != status {
                    new.execution.transition(step).unwrap();
                }
            }
            new.execution.updated_at = Some(Utc::now() - age);
            created_execution(store.create_execution(new, key(key_name, "fp")).unwrap())
        };
        let gone = execution(TaskStatus::Completed, old, "old-done");
        let kept_recent = execution(TaskStatus::Failed, recent, "recent-failed");
        let kept_running = execution(TaskStatus::Running, old, "old-running");
        // Events: 1..=6 old, 7..=10 recent.
        for sequence in 1..=10 {
            let mut event = event(sequence);
            if sequence <= 6 {
                event.timestamp = Utc::now() - old;
            }
            store.append_event(&event).unwrap();
        }

        let policy = RetentionPolicy {
            finished: Duration::from_secs(30 * 86_400),
            events: Duration::from_secs(30 * 86_400),
            max_events: 3,
        };
        let report = store.compact(&policy).unwrap();
        assert_eq!(
            report,
            CompactionReport {
                executions: 1,
                tasks: 2 + 3,
                events: 7,
            }
        );
        assert_eq!(
            all_task_names(&store),
            [
                "recent done",
                "old running",
                "busy parent",
                "live child",
                "root",
                "node 0",
                "root",
                "node 0",
            ]
        );
        assert_eq!(store.get_execution(&gone.id).unwrap(), None);
        assert_eq!(store.execution_prompt(&gone.id).unwrap(), None);
        assert_eq!(store.execution_for_key("old-done").unwrap(), None);
        let left: Vec<String> = store
            .list_executions(&ExecutionFilter::default(), None, 10)
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, [kept_recent.id, kept_running.id]);
        assert_eq!(
            store
                .events_after(0, 100)
                .unwrap()
                .iter()
                .map(|e| e.sequence)
                .collect::<Vec<_>>(),
            [8, 9, 10]
        );
        // The key of a deleted task is free again.
        assert!(matches!(
            store
                .create_task(task("new"), key("old-key", "fp"))
                .unwrap(),
            CreateOutcome::Created(_)
        ));
        // Nothing more to do the second time.
        assert_eq!(store.compact(&policy).unwrap(), CompactionReport::default());
        // Workflows are never compacted.
        store
            .insert_workflow(workflow("w", "1.0.0", &[]))
            .unwrap()
            .unwrap();
        store.compact(&policy).unwrap();
        assert_eq!(
            store
                .list_workflows(&WorkflowFilter::default(), None, 10)
                .unwrap()
                .items
                .len(),
            1
        );
    }

    #[test]
    fn event_sequences_continue_after_every_event_was_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            for sequence in 1..=5 {
                let mut event = event(sequence);
                event.timestamp = Utc::now() - TimeDelta::days(60);
                store.append_event(&event).unwrap();
            }
            let policy = RetentionPolicy {
                finished: Duration::from_secs(86_400),
                events: Duration::from_secs(86_400),
                max_events: 100,
            };
            assert_eq!(store.compact(&policy).unwrap().events, 5);
            assert!(store.events_after(0, 10).unwrap().is_empty());
            assert_eq!(store.last_event_sequence().unwrap(), 5);
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.last_event_sequence().unwrap(), 5);
    }

    #[test]
    fn events_beyond_max_events_are_dropped_as_they_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            max_events: 3,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("store.db"), options).unwrap();
        for sequence in 1..=7 {
            store.append_event(&event(sequence)).unwrap();
        }
        let kept: Vec<u64> = store
            .events_after(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(kept, [5, 6, 7]);
        assert_eq!(store.last_event_sequence().unwrap(), 7);
    }

    #[test]
    fn background_compaction_runs_and_stops_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RetentionPolicy {
            finished: Duration::from_secs(86_400),
            events: Duration::from_secs(86_400),
            max_events: 1000,
        };
        let options = SqliteOptions {
            compaction: Some((Duration::from_millis(10), policy)),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("store.db"), options).unwrap();
        created(
            store
                .create_task(
                    aged(task("old"), TaskStatus::Completed, TimeDelta::days(2)),
                    None,
                )
                .unwrap(),
        );
        created(store.create_task(task("fresh"), None).unwrap());
        // Polls for the background thread's work; no assertion on how long it took.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while all_task_names(&store) != ["fresh"] {
            assert!(
                std::time::Instant::now() < deadline,
                "the old task was never compacted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Dropping the store stops the thread (the test would hang otherwise).
        drop(store);
    }
}
