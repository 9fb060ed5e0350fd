//! The SQLite store's background threads: `Periodic`, a thread that runs a
//! step every interval until stopped, and the WAL checkpointer built on it
//! (background compaction, also built on it, lives in `compaction`). They
//! never write records.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::connections::BUSY_TIMEOUT;
use super::queue::Sender;
use super::writer::{Command, RESTART_WAIT};

/// How often the checkpointer looks at the WAL (and copies it back into the database file
/// when it is due; see [`Pace`]).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// The longest the checkpointer waits for a quiet moment before it copies anyway.
const CHECKPOINT_AT_LEAST_EVERY: Duration = Duration::from_secs(5);
/// How long the WAL must sit idle (every frame copied, nothing written) before the
/// checkpointer truncates it to nothing; see [`spawn_checkpointer`].
const IDLE_TRUNCATE_AFTER: Duration = Duration::from_secs(10);

/// A background thread that runs a step every interval until stopped
/// (compaction, WAL checkpoints).
pub(super) struct Periodic {
    /// Dropping it wakes the thread, which then exits.
    stop: SyncSender<()>,
    /// The thread.
    thread: JoinHandle<()>,
}

impl Periodic {
    /// Runs `step` after `first`, then every `every`, on a thread named `name`.
    pub(super) fn spawn(
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
    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Background WAL checkpoints on their own connection (PASSIVE: they never
/// block the writer or readers), so commits stay cheap and the WAL small.
///
/// A PASSIVE checkpoint lets the WAL start over only when it has copied every
/// frame before the next write begins. Under a steady stream of writes one
/// always lands while it copies (the more so the larger the database, whose
/// pages it writes back at random places), so the WAL never starts over: it
/// grew past 5 GB while 200,000 submits were queued, every read searched its
/// index, and the commit that finally restarted it truncated gigabytes. When a
/// PASSIVE checkpoint finds more than `restart_bytes` in the WAL, it asks the
/// writer (`Command::RestartWal`) to checkpoint the rest between two batches,
/// which makes the next write start the WAL over. Writes wait for that
/// meanwhile: little to copy (the PASSIVE one just ran) and one sync, once per
/// [`WAL_RESTART_BYTES`] written; back-pressure where the disk cannot keep up.
///
/// When the WAL has sat idle for [`IDLE_TRUNCATE_AFTER`] with every frame
/// copied and nothing written, the checkpointer truncates it to nothing
/// (`wal_checkpoint(TRUNCATE)`, waiting at most [`RESTART_WAIT`] for a
/// reader). A WAL frame is a page and a 24-byte header, so frames never fill
/// whole pages of the file: writing one over an older frame whose page the
/// kernel no longer caches reads that page from disk first. After a minute
/// idle, the first 400 one-node jobs cost the writer thread twice its CPU (a
/// third of it submitting those reads) and each job 1 ms more; written to an
/// empty WAL, frames append instead. An idle runtime also keeps no WAL on
/// disk. A short pause does not truncate: its pages are still cached, and
/// writing over them costs less than appending (each new page of the file is
/// allocated, zeroed and reserved on disk). After every pause of half a
/// second (two quiet rounds, the rule before), a window of 300 one-node jobs
/// appended all its frames.
///
/// A checkpoint copies pages while jobs are committing: on two cores its reads, writes and
/// fsyncs (which hold up the file system's journal, and so the writer's next WAL append) added
/// a stall to the job in flight. Every 250 ms, that was a few jobs in a hundred: the
/// benchmark's added p99. So a round only copies when it is due ([`Pace`]): when the writer
/// was quiet for a whole interval, when the WAL is past the restart bound, or at the latest
/// every [`CHECKPOINT_AT_LEAST_EVERY`]. A hot page (the last leaf of the events table, say)
/// rewritten by many commits is then copied once instead of every 250 ms.
pub(super) fn spawn_checkpointer(
    path: &Path,
    writer: Sender<Command>,
    frames: WalFrames,
) -> Result<Periodic, String> {
    checkpointer(
        path,
        CHECKPOINT_INTERVAL,
        WAL_RESTART_BYTES,
        IDLE_TRUNCATE_AFTER,
        writer,
        Some((frames, CHECKPOINT_AT_LEAST_EVERY)),
    )
}

/// The frames in the WAL after the writer's last commit, as its WAL hook reports them.
pub(super) type WalFrames = Arc<AtomicI64>;

/// Has the writer's connection report the WAL's frames after each commit (its WAL hook: a
/// store per commit, on the writer thread). Set after `wal_autocheckpoint`, which replaces the
/// hook.
pub(super) fn report_wal_frames(conn: &mut Connection) -> Result<WalFrames, String> {
    let frames = WalFrames::default();
    let reported = Arc::clone(&frames);
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, count: std::ffi::c_int| {
            reported.store(i64::from(count), Ordering::Relaxed);
            Ok(())
        },
    ))
    .map_err(|e| e.to_string())?;
    Ok(frames)
}

/// When a round of the checkpointer copies the WAL: see [`spawn_checkpointer`].
#[derive(Debug)]
struct Pace {
    /// The longest between two checkpoints while the writer is busy.
    longest: Duration,
    /// Frames past which the WAL must start over (a checkpoint then a restart).
    restart_frames: i64,
    /// The frames seen at the previous round.
    seen: Option<i64>,
    /// When the last checkpoint ran.
    last: Instant,
}

impl Pace {
    fn new(longest: Duration, restart_frames: i64, now: Instant) -> Self {
        Self {
            longest,
            restart_frames,
            seen: None,
            last: now,
        }
    }

    /// Whether the round at `now`, finding `frames` in the WAL, checkpoints; it then counts as
    /// the last checkpoint.
    fn due(&mut self, frames: i64, now: Instant) -> bool {
        let quiet = self.seen.replace(frames) == Some(frames);
        let due = quiet
            || frames > self.restart_frames
            || now.saturating_duration_since(self.last) >= self.longest;
        if due {
            self.last = now;
        }
        due
    }
}

/// The checkpointer; `paced`, the writer's frame count and the longest wait, makes its rounds
/// copy only when due ([`Pace`]); without it every round copies (the tests' own writers).
fn checkpointer(
    path: &Path,
    every: Duration,
    restart_bytes: i64,
    idle_after: Duration,
    writer: Sender<Command>,
    paced: Option<(WalFrames, Duration)>,
) -> Result<Periodic, String> {
    let mut checkpointer = Checkpointer::open(path, restart_bytes, idle_after, writer, paced)?;
    Periodic::spawn("store-checkpoint", every, every, move || {
        checkpointer.round()
    })
    .map_err(|e| e.to_string())
}

/// The checkpointer's connection and what it remembers between rounds; [`Checkpointer::round`]
/// is one round (the background thread runs one every interval).
struct Checkpointer {
    /// Its own connection to the store file.
    conn: Connection,
    /// The store file, for the log lines.
    path: std::path::PathBuf,
    /// Frames past which the writer is asked to start the WAL over.
    restart_frames: i64,
    /// How long the WAL sits copied and untouched before it is truncated.
    idle_after: Duration,
    /// The writer's commands, for [`Command::RestartWal`].
    writer: Sender<Command>,
    /// The writer's frame count and the pace of the copies, when paced.
    pace: Option<(WalFrames, Pace)>,
    /// The WAL's frames when a round found every one copied, and since when it has stayed so.
    copied_since: Option<(i64, Instant)>,
}

impl Checkpointer {
    fn open(
        path: &Path,
        restart_bytes: i64,
        idle_after: Duration,
        writer: Sender<Command>,
        paced: Option<(WalFrames, Duration)>,
    ) -> Result<Self, String> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(|e| e.to_string())?;
        // A WAL frame is a page and its 24-byte header.
        let restart_frames = restart_bytes / (page_size.max(512) + 24);
        // Only the idle truncation waits on the busy handler (PASSIVE never does).
        conn.busy_timeout(RESTART_WAIT).map_err(|e| e.to_string())?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            restart_frames,
            idle_after,
            writer,
            pace: paced.map(|(frames, longest)| {
                (frames, Pace::new(longest, restart_frames, Instant::now()))
            }),
            copied_since: None,
        })
    }

    /// One round: a PASSIVE checkpoint when due, then the writer asked to start a WAL past the
    /// bound over, or a WAL copied and idle long enough truncated.
    fn round(&mut self) {
        if let Some((frames, pace)) = &mut self.pace
            && !pace.due(frames.load(Ordering::Relaxed), Instant::now())
        {
            // Commits came since the last round: not the moment, unless due.
            self.copied_since = None;
            return;
        }
        // The frames in the WAL (copied or not): only a restart lowers it.
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            }) {
            Ok((frames, _)) if frames > self.restart_frames => {
                self.copied_since = None;
                // Full queue: the writer is busy; the next round asks again.
                let _ = self.writer.try_send(Command::RestartWal);
            }
            Ok((frames, copied)) if frames > 0 && frames == copied => {
                let now = Instant::now();
                let since = match self.copied_since {
                    Some((seen, since)) if seen == frames => since,
                    _ => now,
                };
                self.copied_since = Some((frames, since));
                if now.saturating_duration_since(since) >= self.idle_after {
                    // Idle long enough: the next write appends.
                    self.copied_since = None;
                    truncate_idle_wal(&self.conn, &self.path);
                }
            }
            Ok(_) => self.copied_since = None,
            Err(error) => {
                self.copied_since = None;
                let path = self.path.display();
                tracing::warn!(path = %path, %error, "WAL checkpoint failed");
            }
        }
    }
}

/// Truncates a WAL whose every frame is in the database file to nothing. A
/// reader still on it (a backup, say), or a write that began meanwhile,
/// leaves it as it is until the next idle round.
fn truncate_idle_wal(conn: &Connection, path: &Path) {
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => tracing::debug!(path = %path.display(), "idle WAL kept: a reader is on it"),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "idle WAL truncation failed");
        }
    }
}

/// The WAL size past which the checkpointer asks the writer to make the WAL
/// start over (see [`spawn_checkpointer`]); half of what the WAL file is
/// truncated back to when it does, so that the file a busy writer made is
/// kept and written over, not cut and grown again.
///
/// Appending to the WAL file costs more than writing over it: each new page
/// of the file is a new page of the page cache, allocated, zeroed where a
/// frame does not cover it, and reserved on disk. When the WAL restarted at
/// 256 MiB and was cut back to 64 MiB, three quarters of the frames written
/// under a steady load grew the file, and growing was about a quarter of the
/// writer thread's time (`ext4_da_write_begin`, `__filemap_get_folio`,
/// `zero_user_segments`, the cut itself in `walLimitSize`). A WAL restarted
/// at 64 MiB and never cut below 128 MiB (the checkpointer may ask for the
/// restart up to one interval late) grows once and is then written over, in
/// pages the kernel still caches.
pub(super) const WAL_RESTART_BYTES: i64 = super::connections::JOURNAL_SIZE_LIMIT / 2;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use rusqlite::Connection;

    use super::{Checkpointer, Pace, checkpointer, report_wal_frames};
    use crate::store::sqlite::queue;
    use crate::store::sqlite::writer::{Command, restart_wal};

    /// The largest the WAL file gets over 300 commits of eight scattered rows
    /// each, a checkpointer round every fourth commit, and a reader on the WAL
    /// at every commit; the writer does what the writer thread does between two
    /// batches when `restart` is true. Also the WAL restarts it made.
    fn largest_wal(restart_bytes: i64, restart: bool) -> (u64, usize) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )
        .unwrap();
        let reader = Connection::open(&path).unwrap();
        let wal = dir.path().join("wal.db-wal");
        let (writer, commands) = queue::bounded(16);
        let mut checkpointer =
            Checkpointer::open(&path, restart_bytes, Duration::MAX, writer, None).unwrap();
        let (mut largest, mut restarts) = (0, 0);
        let mut id = 0_i64;
        for commit in 0..300 {
            // A reader on the WAL while the next write begins (the server's
            // readers, or, as SQLite sees it, a write that lands while a
            // checkpoint copies): the write cannot start the WAL over, even
            // with every frame copied, and appends.
            reader.execute_batch("BEGIN").unwrap();
            let _: i64 = reader
                .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                .unwrap();
            if commit % 4 == 0 {
                checkpointer.round();
            }
            // Rows rewritten at scattered places: every commit writes several pages.
            let tx = conn.unchecked_transaction().unwrap();
            for _ in 0..8 {
                id += 1;
                tx.execute(
                    "INSERT OR REPLACE INTO t (id, body) VALUES (?1, zeroblob(1000))",
                    [id.wrapping_mul(7_919) % 5_000],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            reader.execute_batch("COMMIT").unwrap();
            while let Some(command) = commands.try_recv() {
                if restart && matches!(command, Command::RestartWal) && restart_wal(&conn) {
                    restarts += 1;
                }
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        (largest, restarts)
    }

    #[test]
    fn a_reader_on_the_wal_holds_a_restart_up_briefly_not_for_its_whole_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (id INTEGER PRIMARY KEY);
                 INSERT INTO t VALUES (1);",
            )
            .unwrap();
        // A long read (a backup, say) on the snapshot that has row 1.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let start = Instant::now();
        assert!(!restart_wal(&writer), "the reader still needs the WAL");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "writes were held up {:?}",
            start.elapsed()
        );
        reader.execute_batch("COMMIT").unwrap();
        assert!(restart_wal(&writer), "nobody on the WAL any more");
    }

    /// A database in `dir` in WAL mode without automatic checkpoints, with a table `t` of
    /// rows `(id, body)`, and a connection to it.
    fn wal_table(dir: &std::path::Path) -> (std::path::PathBuf, Connection) {
        let path = dir.join("wal.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )
        .unwrap();
        (path, conn)
    }

    /// Writes 200 rows, then nothing: the checkpointer (paced by the writer's frames when
    /// `paced`, with a longest wait that never comes) copies the WAL and, once it has sat
    /// idle for 50 ms, truncates it to nothing, and the database takes writes again.
    fn a_quiet_wal_is_truncated(paced: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = wal_table(dir.path());
        let paced = paced.then(|| {
            let frames = report_wal_frames(&mut conn).unwrap();
            (frames, Duration::from_secs(3_600))
        });
        let wal = dir.path().join("wal.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let (writer, _commands) = queue::bounded(16);
        let idle_after = Duration::from_millis(50);
        let checkpoints = checkpointer(
            &path,
            Duration::from_millis(5),
            i64::MAX,
            idle_after,
            writer,
            paced,
        )
        .unwrap();
        for id in 0..200 {
            conn.execute("INSERT INTO t (id, body) VALUES (?1, zeroblob(1000))", [id])
                .unwrap();
        }
        let written = Instant::now();
        assert!(wal_len() > 0, "the writes went to the WAL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal_len() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(wal_len(), 0, "the idle WAL was not truncated");
        assert!(
            written.elapsed() >= idle_after,
            "truncated {:?} after the last write, before it had been idle for {idle_after:?}",
            written.elapsed()
        );
        // The database has every row, and takes writes again.
        conn.execute("INSERT INTO t (id, body) VALUES (200, zeroblob(10))", [])
            .unwrap();
        checkpoints.stop();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 201);
    }

    #[test]
    fn an_idle_wal_is_truncated_to_nothing_so_that_the_next_frames_append() {
        a_quiet_wal_is_truncated(false);
    }

    #[test]
    fn a_paced_checkpointer_copies_and_truncates_the_wal_once_the_writer_is_quiet() {
        a_quiet_wal_is_truncated(true);
    }

    #[test]
    fn a_short_pause_leaves_the_wal_to_be_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = wal_table(dir.path());
        let frames = report_wal_frames(&mut conn).unwrap();
        let wal = dir.path().join("wal.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let (writer, _commands) = queue::bounded(16);
        let checkpoints = checkpointer(
            &path,
            Duration::from_millis(5),
            i64::MAX,
            Duration::from_secs(3_600),
            writer,
            Some((Arc::clone(&frames), Duration::from_secs(3_600))),
        )
        .unwrap();
        for id in 0..200 {
            conn.execute("INSERT INTO t (id, body) VALUES (?1, zeroblob(1000))", [id])
                .unwrap();
        }
        let before = wal_len();
        assert!(before > 0, "the writes went to the WAL");
        // A hundred quiet rounds (an early one copies it): the WAL stays, to be written over.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(wal_len(), before, "a short pause truncated the WAL");
        // Copied: the next write starts the WAL over instead of appending.
        conn.execute("INSERT INTO t (id, body) VALUES (200, zeroblob(10))", [])
            .unwrap();
        let after = frames.load(Ordering::Relaxed);
        assert!(
            after < 5,
            "{after} frames after the pause: the WAL did not start over"
        );
        assert_eq!(wal_len(), before, "the WAL file kept its length");
        checkpoints.stop();
    }

    #[test]
    fn a_paced_checkpoint_waits_for_a_quiet_round_the_restart_bound_or_the_longest_wait() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut pace = Pace::new(Duration::from_millis(1_000), 10_000, start);
        // Commits between every two rounds: not due until the longest wait has passed.
        assert!(!pace.due(10, at(250)));
        assert!(!pace.due(20, at(500)));
        assert!(!pace.due(30, at(750)));
        assert!(pace.due(40, at(1_000)), "the longest wait passed");
        // It counts again from that checkpoint.
        assert!(!pace.due(50, at(1_250)));
        // A round with no commit since the one before: the quiet moment to copy.
        assert!(pace.due(50, at(1_500)));
        assert!(pace.due(50, at(1_750)), "still quiet");
        assert!(!pace.due(60, at(2_000)));
        // A WAL past the restart bound is copied (then restarted) at once, busy or not.
        assert!(pace.due(10_001, at(2_100)));
        assert!(pace.due(10_500, at(2_200)));
        // After a restart the count starts small again.
        assert!(!pace.due(5, at(2_300)));
    }

    #[test]
    fn the_writer_reports_the_wal_frames_after_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut conn) = wal_table(dir.path());
        let frames = report_wal_frames(&mut conn).unwrap();
        conn.execute("INSERT INTO t (id, body) VALUES (1, zeroblob(10))", [])
            .unwrap();
        let first = frames.load(Ordering::Relaxed);
        assert!(first > 0, "{first}");
        conn.execute("INSERT INTO t (id, body) VALUES (2, zeroblob(10000))", [])
            .unwrap();
        let second = frames.load(Ordering::Relaxed);
        assert!(second > first, "{first} then {second}");
        // Once the WAL starts over, the next commit counts from its beginning.
        assert!(restart_wal(&conn));
        conn.execute("INSERT INTO t (id, body) VALUES (3, zeroblob(10))", [])
            .unwrap();
        let after = frames.load(Ordering::Relaxed);
        assert!(after < second, "{second} then {after} after a restart");
    }

    #[test]
    fn a_steady_stream_of_writes_does_not_grow_the_wal_without_bound() {
        let bound: i64 = 1024 * 1024;
        let (largest, restarts) = largest_wal(bound, true);
        // The same writes without the writer's restart: PASSIVE checkpoints
        // alone never let the WAL start over.
        let (unbounded, _) = largest_wal(bound, false);
        eprintln!("largest WAL: {largest} bytes with {restarts} restarts, {unbounded} without");
        // With them, the WAL starts over once a round finds it past the bound;
        // what is written until the writer's next turn comes on top (here at
        // most four commits of about twenty pages).
        assert!(
            restarts >= 3 && largest < 2 * bound as u64 && 4 * largest < unbounded,
            "the WAL reached {largest} bytes with {restarts} restarts past {bound}, \
             {unbounded} without"
        );
    }
}
