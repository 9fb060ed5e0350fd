//! Workflow executions in the SQLite store: their rows (kept without their
//! tasks, which are task rows tagged with the execution id; the prompt as a
//! blob, in the row or, past [`PROMPT_INLINE_BYTES`], in `execution_prompts`;
//! idempotency keys in `execution_keys`), their writes and their reads.
//! Deleting finished executions is compaction's job, not this module's.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::codec::{decode, encode};
use super::query::{Query, cursor, keyed_body};
use super::tasks::{TaskRow, insert_task};
use crate::model::{Task, WorkflowExecution};
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::{
    ExecutionCreateOutcome, ExecutionFilter, IdempotencyKey, NewExecutionRecord, Page, StoreError,
};

/// The largest prompt kept in its execution's row; a larger one is kept in `execution_prompts`,
/// under the row's `seq`, and the row's `prompt` is empty. Each change of an execution (its
/// state, backend, prompt id, outputs; its progress at most once a second while it runs) writes
/// its row again, whole when the row's length changes, as it nearly always does: a prompt past a
/// page's room (real workflows' often are, with their text prompts and dozens of nodes) would be
/// written again with it, its whole chain of overflow pages, where out of the row it is written
/// once. A small one costs nothing in the row (its page is written anyway), and a page of the
/// other table out of it. PostgreSQL's TOAST keeps values past about 2 KiB out of line alike.
pub(super) const PROMPT_INLINE_BYTES: usize = 2048;

/// An execution encoded for its row (its `tasks` already emptied).
pub(super) struct ExecutionRow {
    pub(super) id: String,
    status: &'static str,
    workflow_id: String,
    root_task_id: Option<String>,
    updated_ms: i64,
    body: String,
}

impl ExecutionRow {
    /// The row of `execution`, which is kept without its tasks.
    pub(super) fn bare(execution: &WorkflowExecution) -> Result<Self, StoreError> {
        if execution.tasks.is_empty() {
            Self::new(execution)
        } else {
            let mut bare = execution.clone();
            bare.tasks = Vec::new();
            Self::new(&bare)
        }
    }

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

/// [`Store::create_execution`]: inserts the execution with its tasks and prompt
/// in one write, or returns the one its idempotency key already names.
pub(super) fn create(
    store: &SqliteStore,
    new: NewExecutionRecord,
    idempotency: Option<IdempotencyKey>,
) -> Result<ExecutionCreateOutcome, StoreError> {
    let NewExecutionRecord {
        execution,
        tasks,
        prompt,
    } = new;
    let mut execution = Arc::unwrap_or_clone(execution);
    execution.tasks = Vec::new();
    let row = ExecutionRow::new(&execution)?;
    let tasks = tasks
        .iter()
        .map(|task| TaskRow::new(task))
        .collect::<Result<Vec<_>, _>>()?;
    store.write(move |conn| {
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
        insert(conn, &row, &tasks, &prompt)?;
        if let Some(key) = &idempotency {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO execution_keys (key, fingerprint, execution_id)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key.key, key.fingerprint, row.id])?;
        }
        Ok(ExecutionCreateOutcome::Created(execution))
    })
}

/// A new execution as rows: the execution's, its tasks', its prompt.
pub(super) struct NewExecutionRows {
    execution: ExecutionRow,
    tasks: Vec<TaskRow>,
    prompt: Bytes,
}

impl NewExecutionRows {
    /// The rows of `new` (its execution's `tasks` are not stored) as it
    /// stands after the same write changed it: the execution `changed` (when
    /// given) and each task `changed_task` names.
    pub(super) fn as_changed<'a>(
        new: &'a NewExecutionRecord,
        changed: Option<&'a WorkflowExecution>,
        changed_task: impl Fn(&str) -> Option<&'a Task>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            execution: ExecutionRow::bare(changed.unwrap_or(&new.execution))?,
            tasks: new
                .tasks
                .iter()
                .map(|task| TaskRow::new(changed_task(&task.id).unwrap_or(task)))
                .collect::<Result<_, _>>()?,
            prompt: new.prompt.clone(),
        })
    }

    /// Inserts them (inside the writer's transaction).
    pub(super) fn insert(&self, conn: &Connection) -> Result<(), StoreError> {
        insert(conn, &self.execution, &self.tasks, &self.prompt)
    }
}

/// Inserts an execution's row, its tasks' rows and its prompt.
fn insert(
    conn: &Connection,
    row: &ExecutionRow,
    tasks: &[TaskRow],
    prompt: &Bytes,
) -> Result<(), StoreError> {
    for task in tasks {
        insert_task(conn, task, Some(&row.id))?;
    }
    let inline = prompt.len() <= PROMPT_INLINE_BYTES;
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
        if inline { prompt.as_ref() } else { &[][..] }
    ])?;
    if !inline {
        // Under the `seq` of the row just inserted (its tasks went in first).
        conn.prepare_cached(
            "INSERT INTO execution_prompts (execution_seq, prompt)
             VALUES (last_insert_rowid(), ?1)",
        )?
        .execute([prompt.as_ref()])?;
    }
    Ok(())
}

/// [`Store::add_execution_tasks`].
pub(super) fn add_tasks(
    store: &SqliteStore,
    execution_id: &str,
    tasks: &[Task],
) -> Result<(), StoreError> {
    let rows = tasks
        .iter()
        .map(TaskRow::new)
        .collect::<Result<Vec<_>, _>>()?;
    let execution_id = execution_id.to_owned();
    store.write(move |conn| {
        for row in &rows {
            insert_task(conn, row, Some(&execution_id))?;
        }
        Ok(())
    })
}

/// [`Store::execution_for_key`]: the (fingerprint, execution id) an idempotency
/// key names.
pub(super) fn for_key(
    store: &SqliteStore,
    key: &str,
) -> Result<Option<(String, String)>, StoreError> {
    store.read(|conn| {
        Ok(conn
            .prepare_cached("SELECT fingerprint, execution_id FROM execution_keys WHERE key = ?1")?
            .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    })
}

/// [`Store::put_execution`]: replaces a stored execution (kept without its
/// tasks); false when there is none.
pub(super) fn put(store: &SqliteStore, execution: &WorkflowExecution) -> Result<bool, StoreError> {
    let row = ExecutionRow::bare(execution)?;
    store.write(move |conn| update_execution(conn, &row))
}

/// Replaces a stored execution with `row`, inside the writer's transaction;
/// false when there is none.
pub(super) fn update_execution(conn: &Connection, row: &ExecutionRow) -> Result<bool, StoreError> {
    let found: Option<(i64, String, String)> = conn
        .prepare_cached("SELECT seq, status, workflow_id FROM executions WHERE id = ?1")?
        .query_row([&row.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((seq, status, workflow_id)) = found else {
        return Ok(false);
    };
    // An indexed column in the SET list rewrites its index entry even when
    // its value stays (a page in the WAL each): only those that changed.
    const UPDATE: [&str; 4] = [
        "UPDATE executions SET root_task_id = ?4, updated_ms = ?5, body = ?6 WHERE seq = ?1",
        "UPDATE executions SET status = ?2, root_task_id = ?4, updated_ms = ?5, body = ?6
         WHERE seq = ?1",
        "UPDATE executions SET workflow_id = ?3, root_task_id = ?4, updated_ms = ?5, body = ?6
         WHERE seq = ?1",
        "UPDATE executions SET status = ?2, workflow_id = ?3, root_task_id = ?4,
         updated_ms = ?5, body = ?6 WHERE seq = ?1",
    ];
    let changed =
        usize::from(status != row.status) | usize::from(workflow_id != row.workflow_id) << 1;
    conn.prepare_cached(UPDATE[changed])?.execute(params![
        seq,
        row.status,
        row.workflow_id,
        row.root_task_id,
        row.updated_ms,
        row.body
    ])?;
    Ok(true)
}

/// [`Store::get_execution`].
pub(super) fn get(store: &SqliteStore, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
    store.read(|conn| get_on(conn, id))
}

/// [`Store::get_execution`] on a reader's connection.
fn get_on(conn: &Connection, id: &str) -> Result<Option<WorkflowExecution>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM executions WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    body.map(|body| decode("execution", id, &body)).transpose()
}

/// [`Store::execution_with_tasks`]: the execution, its root and the root's
/// children in one read transaction (the view a `WatchExecution` stream sends
/// at every change of the execution).
pub(super) fn with_tasks(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<(WorkflowExecution, Vec<Task>)>, StoreError> {
    store.read_together(|conn| {
        let Some(execution) = get_on(conn, id)? else {
            return Ok(None);
        };
        let tasks = match &execution.root_task_id {
            Some(root_id) => super::tasks::root_and_children_on(conn, root_id)?,
            None => Vec::new(),
        };
        Ok(Some((execution, tasks)))
    })
}

/// [`Store::execution_prompt`]: the ComfyUI prompt JSON it was created with.
pub(super) fn prompt(store: &SqliteStore, id: &str) -> Result<Option<Bytes>, StoreError> {
    store.read(|conn| {
        let prompt: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT COALESCE(p.prompt, e.prompt) FROM executions e
                 LEFT JOIN execution_prompts p ON p.execution_seq = e.seq WHERE e.id = ?1",
            )?
            .query_row([id], |row| row.get(0))
            .optional()?;
        Ok(prompt.map(Bytes::from))
    })
}

/// [`Store::execution_of_task`]: the execution a task belongs to, if any.
pub(super) fn of_task(store: &SqliteStore, task_id: &str) -> Result<Option<String>, StoreError> {
    store.read(|conn| {
        let execution: Option<Option<String>> = conn
            .prepare_cached("SELECT execution_id FROM tasks WHERE id = ?1")?
            .query_row([task_id], |row| row.get(0))
            .optional()?;
        Ok(execution.flatten())
    })
}

/// [`Store::list_executions`]: one page in creation order.
pub(super) fn list(
    store: &SqliteStore,
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
    store.read(|conn| query.page(conn, "e.seq", limit, "execution"))
}
