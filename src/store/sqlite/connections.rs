//! The SQLite store's connections: the advisory lock that keeps a second
//! process off the file, the one write connection and its pragmas, and the
//! pool of read-only connections. It opens connections; it runs no writes
//! (the writer does) and knows no records.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::gathered_wal;
use crate::config::StoreSynchronous;
use crate::store::StoreError;

/// Read connections kept open between reads.
pub(super) const MAX_IDLE_READERS: usize = 8;
/// How long a connection waits on a lock held elsewhere (a checkpoint).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The WAL file is truncated back to this size after a checkpoint; twice the
/// size at which the WAL restarts (see `background::WAL_RESTART_BYTES`).
pub(super) const JOURNAL_SIZE_LIMIT: i64 = 128 * 1024 * 1024;
/// Prepared statements cached per connection.
pub(super) const STATEMENT_CACHE: usize = 64;

/// Takes the advisory lock on `<path>.lock`, held as long as the file is open.
pub(super) fn lock(path: &Path) -> Result<File, String> {
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

pub(super) fn open_writer(
    path: &Path,
    synchronous: StoreSynchronous,
) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match synchronous {
        // Its WAL frames written a commit at a time (see `gathered_wal`): with
        // `synchronous = NORMAL` a commit's frames are written without a sync
        // between them. FULL syncs each commit, which costs far more than the
        // writes, and may split a frame around a sync: the platform's VFS.
        StoreSynchronous::Normal => {
            let vfs = gathered_wal::register().map_err(|code| {
                format!("cannot register the WAL-gathering VFS (SQLite error {code})")
            })?;
            Connection::open_with_flags_and_vfs(path, flags, vfs)
        }
        StoreSynchronous::Full => Connection::open_with_flags(path, flags),
    }
    .map_err(|e| e.to_string())?;
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
        // Each write in a group commit runs in its own savepoint, whose
        // statement journal (the pages to roll back to) SQLite otherwise keeps
        // in a temporary file: a pair of pwrite calls per page a write
        // touched. It is never needed after the transaction, crash or not.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        plan_once(&conn)?;
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

/// Idle read-only connections; a read takes one (opening one when none is
/// idle) and gives it back.
pub(super) struct Readers {
    /// The database file.
    path: PathBuf,
    /// Connections not in use.
    pub(super) idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn with<R>(
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
        plan_once(&conn)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }
}

/// Plans a statement once, not again for each value bound to it. Without the
/// query planner's stability guarantee, SQLite compares the values bound to a
/// statement with its terms while it plans, and a statement with a parameter
/// in its WHERE clause and an ORDER BY (an execution's node tasks, `WHERE
/// parent_id = ?1 ORDER BY seq`; a subscriber's replay, `WHERE sequence > ?1
/// ORDER BY sequence LIMIT ?2`; every listing) is compiled again whenever
/// another value is bound: a parse and a plan, tens of microseconds, at each
/// such read. The plans stay the same: the schema keeps no statistics for
/// the values to matter.
fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, StatementStatus};

    use crate::config::StoreSynchronous;
    use crate::model::Task;
    use crate::store::Store;
    use crate::store::conformance::{created, task};
    use crate::store::sqlite::schema::MIGRATIONS;
    use crate::store::sqlite::test_support::{all_task_names, open_error, temp_store};
    use crate::store::sqlite::{SqliteOptions, SqliteStore};

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

    /// A statement with an equality on a parameter and an ORDER BY is compiled
    /// once, whatever values are bound to it (see `plan_once`); the reads of an
    /// execution's tasks bind another id each time.
    #[test]
    fn reads_with_another_bound_value_are_not_compiled_again() {
        const CHILDREN: &str = "SELECT id FROM tasks WHERE parent_id = ?1 ORDER BY seq";
        let (_dir, store) = temp_store();
        let parents: Vec<Task> = (0..3)
            .map(|i| created(store.create_task(task(&format!("p{i}")), None).unwrap()))
            .collect();
        for parent in &parents {
            let mut child = task("child");
            child.parent_id = Some(parent.id.clone());
            store.create_task(child, None).unwrap();
        }
        for _ in 0..3 {
            for parent in &parents {
                assert_eq!(store.child_ids(&parent.id).unwrap().len(), 1);
            }
        }
        let (runs, compiled_again) = store
            .readers
            .with(|conn| {
                let statement = conn.prepare_cached(CHILDREN)?;
                Ok((
                    statement.get_status(StatementStatus::Run),
                    statement.get_status(StatementStatus::RePrepare),
                ))
            })
            .unwrap();
        assert_eq!(
            runs, 9,
            "the reads ran on the pooled connection's cached statement"
        );
        assert_eq!(
            compiled_again, 0,
            "compiled again {compiled_again} times in {runs} runs"
        );
        // The writer's connection plans the same way.
        let writer = store
            .write(|conn| {
                let mut statement = conn.prepare(CHILDREN)?;
                for parent in ["a", "b", "c"] {
                    statement.query([parent])?.next()?;
                }
                Ok(statement.get_status(StatementStatus::RePrepare))
            })
            .unwrap();
        assert_eq!(writer, 0);
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
}
