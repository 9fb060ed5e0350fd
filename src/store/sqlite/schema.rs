//! The SQLite store's schema: its tables, one migration per entry, and how a
//! file is brought up to date. It must not hold data logic: queries live with
//! their kind of record.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The schema, one migration per entry, applied in order; `schema_version`
/// holds how many have run. Never edit an entry: append a new one.
pub(super) const MIGRATIONS: [&str; 2] = [
    // 1: the tables.
    r"
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
",
    // 2: a prompt past 2 KiB out of the execution's row, written once, when the execution
    // is made (see `executions::PROMPT_INLINE_BYTES`; the 2048 here stays, whatever that
    // becomes). In the row it was part of the record that nearly each change of the
    // execution writes again: its whole chain of overflow pages. Moved for the executions
    // that can still change: a completed or cancelled one's row is not written again (a
    // failed one's is, by a retry), and its prompt may stay where it is.
    r"
CREATE TABLE execution_prompts (
    execution_seq INTEGER PRIMARY KEY,                 -- executions.seq
    prompt        BLOB NOT NULL                        -- the ComfyUI prompt JSON
);
INSERT INTO execution_prompts (execution_seq, prompt)
    SELECT seq, prompt FROM executions
    WHERE length(prompt) > 2048 AND status NOT IN ('completed', 'cancelled');
UPDATE executions SET prompt = x''
    WHERE seq IN (SELECT execution_seq FROM execution_prompts);
",
];

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
    use bytes::Bytes;
    use rusqlite::Connection;

    use super::MIGRATIONS;
    use crate::store::Store;
    use crate::store::conformance::{created_execution, new_execution};
    use crate::store::sqlite::SqliteStore;
    use crate::store::sqlite::test_support::{open_error, temp_store};

    /// The pages (WAL frames) that a change of execution `id`'s row writes: `updated_ms` and
    /// `body` set, as each change of an execution sets them, the body a byte longer (as nearly
    /// every change makes it longer or shorter: SQLite writes a record of the same length in
    /// place, only its pages that differ).
    fn pages_a_change_writes(conn: &Connection, id: &str) -> i64 {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(busy, 0, "the WAL did not start over");
        conn.execute(
            "UPDATE executions SET updated_ms = updated_ms + 1, body = body || ' ' WHERE id = ?1",
            [id],
        )
        .unwrap();
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .unwrap()
    }

    #[test]
    fn a_version_1_file_keeps_its_large_prompts_out_of_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        // Past a page's room: the prompt lies in a chain of overflow pages (16 of 4 KiB).
        let large = Bytes::from(vec![b'p'; 64 * 1024]);
        let finished_prompt = Bytes::from(vec![b'f'; 8 * 1024]);
        let (execution, small, finished) = {
            let store = SqliteStore::open(&path).unwrap();
            let mut new = new_execution("wf", &[], 1);
            new.prompt = large.clone();
            let execution = created_execution(store.create_execution(new, None).unwrap());
            let small = created_execution(
                store
                    .create_execution(new_execution("wf", &[], 1), None)
                    .unwrap(),
            );
            let mut new = new_execution("wf", &[], 1);
            new.prompt = finished_prompt.clone();
            let finished = created_execution(store.create_execution(new, None).unwrap());
            (execution, small, finished)
        };
        let small_prompt = new_execution("wf", &[], 1).prompt;
        // The file as version 1 left it: every prompt in its execution's row, where each
        // change of the execution wrote it again; one execution completed.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE executions SET prompt =
                 (SELECT prompt FROM execution_prompts WHERE execution_seq = seq)
                 WHERE seq IN (SELECT execution_seq FROM execution_prompts);
             DROP TABLE execution_prompts;
             UPDATE schema_version SET version = 1;",
        )
        .unwrap();
        conn.execute(
            "UPDATE executions SET status = 'completed' WHERE id = ?1",
            [&finished.id],
        )
        .unwrap();
        let before = pages_a_change_writes(&conn, &execution.id);
        assert!(before >= 16, "{before} pages");
        drop(conn);

        {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(
                store.execution_prompt(&execution.id).unwrap(),
                Some(large.clone())
            );
            assert_eq!(
                store.execution_prompt(&small.id).unwrap(),
                Some(small_prompt.clone())
            );
            assert_eq!(
                store.execution_prompt(&finished.id).unwrap(),
                Some(finished_prompt)
            );
            assert_eq!(
                store.get_execution(&execution.id).unwrap().as_ref(),
                Some(&execution)
            );
        }
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        // Only the large prompt of the execution that can still change moved: the small one
        // and the completed execution's stay in their rows.
        let out_of_rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM execution_prompts", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(out_of_rows, 1);
        let after = pages_a_change_writes(&conn, &execution.id);
        assert!(after <= 4, "{after} pages, {before} in version 1");
        drop(conn);

        // Through the store: the execution changed, its prompt as it was.
        let store = SqliteStore::open(&path).unwrap();
        let mut changed = store.get_execution(&execution.id).unwrap().unwrap();
        changed.set_progress(0.5).unwrap();
        changed.updated_at = Some(chrono::Utc::now());
        assert!(store.put_execution(&changed).unwrap());
        assert_eq!(store.execution_prompt(&execution.id).unwrap(), Some(large));
        assert_eq!(store.get_execution(&execution.id).unwrap(), Some(changed));
        assert_eq!(
            store.execution_prompt(&small.id).unwrap(),
            Some(small_prompt)
        );
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
}
