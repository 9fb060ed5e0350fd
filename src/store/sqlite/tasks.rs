//! Tasks in the SQLite store: their rows (tags mirrored in `task_tags`,
//! idempotency keys in `task_keys`), their writes and their reads. Deleting
//! finished tasks is compaction's job, not this module's.

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::codec::{decode, encode};
use super::query::{Query, cursor, keyed_body};
use crate::model::Task;
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::{CreateOutcome, IdempotencyKey, Page, StoreError, TaskFilter};

/// A task encoded for its row, built on the caller's thread so that the
/// writer only runs SQL.
pub(super) struct TaskRow {
    pub(super) id: String,
    status: &'static str,
    task_type: &'static str,
    parent_id: Option<String>,
    tags: Vec<String>,
    tags_json: String,
    updated_ms: i64,
    body: String,
}

impl TaskRow {
    pub(super) fn new(task: &Task) -> Result<Self, StoreError> {
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

pub(super) fn insert_task(
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

pub(super) fn insert_tags(conn: &Connection, seq: i64, tags: &[String]) -> Result<(), StoreError> {
    let mut statement =
        conn.prepare_cached("INSERT INTO task_tags (tag, task_seq) VALUES (?1, ?2)")?;
    for tag in tags {
        statement.execute(params![tag, seq])?;
    }
    Ok(())
}

/// [`Store::create_task`]: inserts the task, or returns the one its idempotency
/// key already names.
pub(super) fn create(
    store: &SqliteStore,
    task: Task,
    idempotency: Option<IdempotencyKey>,
) -> Result<CreateOutcome, StoreError> {
    let row = TaskRow::new(&task)?;
    store.write(move |conn| {
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

/// [`Store::put_task`]: replaces a stored task (its tags too); false when there
/// is none.
pub(super) fn put(store: &SqliteStore, task: &Task) -> Result<bool, StoreError> {
    let row = TaskRow::new(task)?;
    store.write(move |conn| update_task(conn, &row))
}

/// Replaces a stored task with `row`, inside the writer's transaction; false
/// when there is none.
pub(super) fn update_task(conn: &Connection, row: &TaskRow) -> Result<bool, StoreError> {
    let found: Option<(i64, String, String, Option<String>)> = conn
        .prepare_cached("SELECT seq, tags, status, parent_id FROM tasks WHERE id = ?1")?
        .query_row([&row.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((seq, old_tags, status, parent_id)) = found else {
        return Ok(false);
    };
    // An indexed column in the SET list rewrites its index entry even when
    // its value stays (a page in the WAL each): only those that changed.
    const UPDATE: [&str; 4] = [
        "UPDATE tasks SET task_type = ?3, tags = ?5, updated_ms = ?6, body = ?7 WHERE seq = ?1",
        "UPDATE tasks SET status = ?2, task_type = ?3, tags = ?5, updated_ms = ?6, body = ?7
         WHERE seq = ?1",
        "UPDATE tasks SET task_type = ?3, parent_id = ?4, tags = ?5, updated_ms = ?6, body = ?7
         WHERE seq = ?1",
        "UPDATE tasks SET status = ?2, task_type = ?3, parent_id = ?4, tags = ?5,
         updated_ms = ?6, body = ?7 WHERE seq = ?1",
    ];
    let changed = usize::from(status != row.status) | usize::from(parent_id != row.parent_id) << 1;
    conn.prepare_cached(UPDATE[changed])?.execute(params![
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
}

/// [`Store::get_task`].
pub(super) fn get(store: &SqliteStore, id: &str) -> Result<Option<Task>, StoreError> {
    store.read(|conn| get_on(conn, id))
}

/// [`Store::get_task`] on a reader's connection.
fn get_on(conn: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM tasks WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    body.map(|body| decode("task", id, &body)).transpose()
}

/// [`Store::root_and_children`] on a reader's connection: the root, then
/// its children (one query for their bodies).
pub(super) fn root_and_children_on(
    conn: &Connection,
    root_id: &str,
) -> Result<Vec<Task>, StoreError> {
    let mut tasks: Vec<Task> = get_on(conn, root_id)?.into_iter().collect();
    tasks.extend(children_on(conn, root_id)?);
    Ok(tasks)
}

/// The children of `parent_id` themselves, in creation order, on a reader's connection.
fn children_on(conn: &Connection, parent_id: &str) -> Result<Vec<Task>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT id, body FROM tasks WHERE parent_id = ?1 ORDER BY seq")?;
    let mut rows = statement.query([parent_id])?;
    let mut children = Vec::new();
    while let Some(row) = rows.next()? {
        let id = row.get_ref(0)?.as_str()?;
        children.push(decode("task", id, row.get_ref(1)?.as_str()?)?);
    }
    Ok(children)
}

/// [`Store::child_ids`], in creation order.
pub(super) fn child_ids(store: &SqliteStore, parent_id: &str) -> Result<Vec<String>, StoreError> {
    store.read(|conn| {
        let mut statement =
            conn.prepare_cached("SELECT id FROM tasks WHERE parent_id = ?1 ORDER BY seq")?;
        let ids = statement
            .query_map([parent_id], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    })
}

/// [`Store::list_tasks`]: one page in creation order.
pub(super) fn list(
    store: &SqliteStore,
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
    store.read(|conn| query.page(conn, "seq", limit, "task"))
}
