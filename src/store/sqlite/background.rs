//! The SQLite store's background threads: `Periodic`, a thread that runs a
//! step every interval until stopped, and the WAL checkpointer built on it
//! (background compaction, also built on it, lives in `compaction`). They
//! never write records.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::connections::BUSY_TIMEOUT;

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

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
pub(super) fn spawn_checkpointer(path: &Path) -> Result<Periodic, String> {
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
