//! The SQLite store's writer thread and its group commit: every write queued
//! while the previous commit ran goes into one transaction, each inside its
//! own savepoint, and each caller is answered once that transaction
//! committed. It runs whatever write it is given; what the writes do belongs
//! to the record modules.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::connections::BUSY_TIMEOUT;
use super::queue::{Receiver, Sender};
use crate::store::StoreError;

/// Writes waiting for the writer thread; a full queue blocks the caller.
pub(super) const WRITE_QUEUE: usize = 1024;
/// Most writes committed in one transaction.
pub(super) const MAX_BATCH: usize = 1024;
/// How long a WAL restart waits for a reader still on the WAL (writes wait
/// meanwhile).
pub(super) const RESTART_WAIT: Duration = Duration::from_millis(100);
/// After a restart that a reader kept from finishing (a long backup, say),
/// how long restart requests are ignored, so that writes are not held up
/// again at every request.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// What the writer thread is asked to do.
pub(super) enum Command {
    /// Run one write in the next batch.
    Write(Box<dyn WriteJob>),
    /// After the current batch, checkpoint the whole WAL so that the next
    /// write starts it over (sent by the checkpointer when the WAL has grown
    /// past its bound; see `background::spawn_checkpointer`).
    RestartWal,
    /// Finish the current batch and exit.
    Stop,
}

/// One write, run by the writer thread inside a batch's transaction.
pub(super) trait WriteJob: Send {
    /// Runs the write; false when it failed (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Hands the outcome to the waiting caller: its own error, or else the
    /// batch's (`commit`), or its value once the batch committed.
    fn finish(self: Box<Self>, commit: Result<(), &str>);
}

/// A write and the channel its caller waits on.
pub(super) struct Job<R, F> {
    /// The work; taken when it runs.
    work: Option<F>,
    /// What the work returned, held until the batch commits.
    outcome: Option<Result<R, StoreError>>,
    /// Where the caller waits.
    reply: mpsc::SyncSender<Result<R, StoreError>>,
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

/// A write whose caller does not wait: `committed` is told the outcome once
/// its batch committed (on the writer thread, in queue order).
pub(super) struct Deferred<F> {
    /// The work; taken when it runs.
    work: Option<F>,
    /// The work's own failure, held until the batch ends.
    failed: Option<StoreError>,
    /// Told the outcome.
    committed: Option<crate::store::Committed>,
}

impl<F> WriteJob for Deferred<F>
where
    F: FnOnce(&Connection) -> Result<(), StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let outcome = match self.work.take() {
            Some(work) => std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
                .unwrap_or_else(|_| Err(StoreError::Unavailable("a store write panicked".into()))),
            None => Err(StoreError::Unavailable("a store write ran twice".into())),
        };
        self.failed = outcome.err();
        self.failed.is_none()
    }

    fn finish(mut self: Box<Self>, commit: Result<(), &str>) {
        let outcome = match (self.failed.take(), commit) {
            (Some(error), _) => Err(error),
            (None, Ok(())) => Ok(()),
            (None, Err(reason)) => Err(StoreError::Unavailable(format!(
                "the write was not committed: {reason}"
            ))),
        };
        if let Some(committed) = self.committed.take() {
            // A panicking callback must not take the writer thread with it.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| committed(outcome)));
        }
    }
}

/// Queues `work` without waiting; `committed` is told its outcome (at once,
/// on this thread, when the writer has stopped).
pub(super) fn defer<F>(commands: &Sender<Command>, work: F, committed: crate::store::Committed)
where
    F: FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
{
    let job = Box::new(Deferred {
        work: Some(work),
        failed: None,
        committed: Some(committed),
    });
    if let Err(Command::Write(job)) = commands.send_owing_wake(Command::Write(job)) {
        job.finish(Err("the store writer has stopped"));
    }
}

/// Sends `work` to the writer and waits until its batch committed.
pub(super) fn submit<R, F>(commands: &Sender<Command>, work: F) -> Result<R, StoreError>
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

/// Runs batches until told to stop (or every sender is gone): waits for a
/// write, takes every write queued with it, commits them together, then
/// answers them all. `idle` says whether it is waiting for a write.
pub(super) fn writer_loop(
    conn: &Connection,
    commands: &Receiver<Command>,
    max_events: i64,
    commits: &AtomicU64,
    idle: &AtomicBool,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
    let mut received = Vec::new();
    let mut restart = false;
    let mut restart_after = Instant::now();
    loop {
        idle.store(true, Ordering::Relaxed);
        let mut stop = !commands.recv_into(&mut received, MAX_BATCH);
        idle.store(false, Ordering::Relaxed);
        for command in received.drain(..) {
            match command {
                Command::Write(job) => batch.push(job),
                Command::RestartWal => restart = true,
                Command::Stop => {
                    stop = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            commit_batch(conn, &mut batch, max_events, commits);
        }
        if std::mem::take(&mut restart) && Instant::now() >= restart_after && !restart_wal(conn) {
            restart_after = Instant::now() + RESTART_BACKOFF;
        }
        if stop {
            break;
        }
    }
}

/// Commits `batch` as one transaction and answers every write in it.
fn commit_batch(
    conn: &Connection,
    batch: &mut Vec<Box<dyn WriteJob>>,
    max_events: i64,
    commits: &AtomicU64,
) {
    let committed = run_batch(conn, batch, max_events);
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

/// Checkpoints every frame of the WAL (waiting up to [`RESTART_WAIT`] for
/// readers still on it) so that the next write starts the WAL over from its
/// beginning; false when a reader kept it from finishing, or it failed. Only
/// the writer can count on this: the checkpointer's own attempt would need
/// the write lock, which a busy writer takes back between two commits before
/// the checkpointer's busy handler wakes up.
pub(super) fn restart_wal(conn: &Connection) -> bool {
    let _ = conn.busy_timeout(RESTART_WAIT);
    let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    });
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    match busy {
        Ok(0) => true,
        Ok(_) => {
            tracing::debug!("WAL restart checkpoint found a reader still on the WAL");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "WAL restart checkpoint failed");
            false
        }
    }
}

pub(super) fn run_batch(
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

/// Most events one trim deletes beyond those over the cap: the cap is kept by
/// deleting a chunk (1% of `max_events`, at most this many) whenever a batch
/// takes the table over it. Deleting a few rows at every commit rewrote the
/// table's first leaf pages and their parent, and freed one page at a time:
/// about 3 of a commit's 30 WAL frames once the table sat at its cap.
const TRIM_CHUNK: i64 = 1024;

/// Keeps at most `max_events` events. Once per batch, the table's lowest and
/// highest sequences (one seek each) say whether the batch took it over the
/// cap; when it did, a range delete at the low end brings it back to
/// `max_events` less a chunk ([`TRIM_CHUNK`]), so that the next trims are
/// that many events apart. At least the newest event stays.
pub(super) fn trim_events(conn: &Connection, max_events: i64) -> rusqlite::Result<()> {
    let (lowest, highest): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            // Two subqueries: each is one seek, where MIN and MAX of one
            // SELECT would scan the table.
            "SELECT (SELECT MIN(sequence) FROM events), (SELECT MAX(sequence) FROM events)",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let (Some(lowest), Some(highest)) = (lowest, highest) else {
        return Ok(());
    };
    // Sequences are kept above `highest - max_events`: at most `max_events`
    // rows, gaps or not.
    if lowest > highest.saturating_sub(max_events) {
        return Ok(());
    }
    let keep = max_events
        .saturating_sub((max_events / 100).clamp(1, TRIM_CHUNK))
        .max(1);
    conn.prepare_cached("DELETE FROM events WHERE sequence <= ?1")?
        .execute([highest.saturating_sub(keep)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::mpsc::{self, Receiver};

    use rusqlite::Connection;

    use super::{Job, WriteJob, run_batch};
    use crate::config::StoreSynchronous;
    use crate::model::{Task, TaskStatus};
    use crate::store::conformance::{created, event, key, task};
    use crate::store::sqlite::connections::open_writer;
    use crate::store::sqlite::schema::migrate;
    use crate::store::sqlite::tasks::{TaskRow, insert_task};
    use crate::store::sqlite::test_support::{all_task_names, temp_store};
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{Store, StoreError};

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
    fn events_beyond_max_events_are_dropped_as_they_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            max_events: 300,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("store.db"), options).unwrap();
        let kept = |store: &SqliteStore| -> Vec<u64> {
            store
                .events_after(0, 1000)
                .unwrap()
                .iter()
                .map(|e| e.sequence)
                .collect()
        };
        let mut trims = 0;
        let mut oldest = 1;
        for sequence in 1..=700 {
            store.append_event(&event(sequence)).unwrap();
            let now = kept(&store);
            // Never over the cap, the newest always there, the oldest gone
            // first; a trim takes 1% (3 events) more than the cap asks.
            assert!(now.len() <= 300, "{} events after {sequence}", now.len());
            assert!(now.len() >= 297.min(sequence as usize));
            assert_eq!(now.last(), Some(&sequence));
            assert!(now.windows(2).all(|w| w[1] == w[0] + 1));
            if now[0] != oldest {
                trims += 1;
                oldest = now[0];
            }
        }
        // Trimmed in chunks: one delete per 4 appends past the cap, not one
        // per append.
        assert_eq!(trims, 100);
        // A trim every 4 events (at 301, 305, ..., 697), each deleting 4:
        // after 697 the table held 401..=697, then 698..=700 came.
        assert_eq!(kept(&store).first(), Some(&401));
        assert_eq!(store.last_event_sequence().unwrap(), 700);

        // The smallest cap keeps exactly the newest event.
        let one = SqliteStore::open_with(
            &dir.path().join("one.db"),
            SqliteOptions {
                max_events: 1,
                ..SqliteOptions::default()
            },
        )
        .unwrap();
        for sequence in 1..=5 {
            one.append_event(&event(sequence)).unwrap();
            assert_eq!(kept(&one), [sequence]);
        }
    }
}
