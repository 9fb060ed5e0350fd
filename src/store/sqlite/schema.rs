//! The SQLite store's schema: its tables, one migration per entry, and how a
//! file is brought up to date. It must not hold data logic: queries live with
//! their kind of record.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The schema, one migration per entry, applied in order; `schema_version`
/// holds how many have run. Never edit an entry: append a new one.
pub(super) const MIGRATIONS: [&str; 1] = [r"
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

/// Applies the migrations the file has not seen, in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use crate::store::sqlite::test_support::{open_error, temp_store};

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
}
