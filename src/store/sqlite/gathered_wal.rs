//! The write connection's WAL writes, gathered: a VFS over the platform's own
//! that writes a commit's WAL frames to the file with one system call
//! instead of two per frame.
//!
//! SQLite writes each WAL frame as two `write` calls: its 24-byte header,
//! then its page. A one-node job's commits write some 25 frames, about 50
//! calls, each paying the system call and the file system's per-call work
//! (`pwrite64` and what runs under it were a tenth of the runtime's CPU per
//! job). This VFS opens every file with the platform's VFS; a WAL file's
//! appended frames it keeps in a buffer until the frame
//! that commits the transaction (the header's "database size" field is
//! non-zero only there), then writes them in one `pwrite` (in pieces of just
//! under 128 KiB, what the platform's VFS takes in one call) before that frame's
//! own write returns. SQLite publishes a commit in the WAL index (where
//! other connections find it) only after its frames are written, and the
//! writer answers no caller before the commit returns: what a reader, a
//! checkpoint or a restart after `kill -9` can see is what it saw before.
//!
//! Anything else on a WAL file (a read, a sync, its size, a truncation, a
//! file control, a write that is not the next frame, closing it) first
//! writes out what is gathered, then goes to the platform's VFS: a cache
//! spill's frames reach the file before they are read back, and a
//! transaction's rewrite of frame checksums (when it wrote a page twice) is
//! written as it comes, its last header, the commit's, directly.
//!
//! The database file is wrapped too, its methods the platform's but for one
//! thing: a lock or a barrier on the WAL index first writes out what its WAL
//! gathered. SQLite publishes a commit between two barriers and ends a write
//! transaction by unlocking the index, so even a write pattern the rules
//! above did not foresee (a future SQLite's) reaches the file before another
//! connection can look for it; frames of a transaction rolled back after a
//! spill are written out (harmlessly: never committed) as it unlocks.
//!
//! Only the store's write connection opens its file through this VFS
//! ([`VFS_NAME`]), and only with `synchronous = NORMAL`, where SQLite writes
//! a commit's frames whole, with no sync between them (with FULL it may
//! split a frame around a sync, and the sync costs far more than the
//! writes); the read connections and the checkpointer use the platform's
//! VFS, on the same files.

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the write connection opens its file with.
pub(super) const VFS_NAME: &CStr = c"comfy-reality-gathered-wal";

/// The size of a WAL frame's header (SQLite's `WAL_FRAME_HDRSIZE`).
const FRAME_HEADER: usize = 24;
/// The most bytes handed to the platform's `xWrite` in one call (128 KiB
/// less one): the unix VFS writes `amount & 0x1ffff` bytes a system call
/// (SQLite itself never writes more than a page at once), so a larger write
/// would come up short.
const MOST_PER_CALL: usize = 0x1ffff;
/// Gathered bytes written out even before a commit frame (a transaction
/// larger than this spills its frames in pieces).
const MOST_GATHERED: usize = 1024 * 1024;
/// The buffer's capacity kept between commits (a group commit of many jobs
/// gathers more, then gives it back).
const KEPT_CAPACITY: usize = 256 * 1024;

/// Registers the VFS (once per process) and returns its name; `Err` with
/// SQLite's code when the platform has no default VFS or registration fails.
pub(super) fn register() -> Result<&'static CStr, c_int> {
    static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();
    (*REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find with a null name returns the default VFS
        // (SQLite initialises itself first), a pointer valid for the process.
        let platform = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
        if platform.is_null() {
            return Err(ffi::SQLITE_ERROR);
        }
        // SAFETY: `platform` points at a registered VFS, never freed.
        let mut vfs = unsafe { ptr::read(platform) };
        PLATFORM.get_or_init(|| Platform(platform));
        vfs.pNext = ptr::null_mut();
        vfs.zName = VFS_NAME.as_ptr();
        vfs.szOsFile = c_int::try_from(size_of::<Gathering>())
            .ok()
            .and_then(|own| own.checked_add(vfs.szOsFile))
            .ok_or(ffi::SQLITE_ERROR)?;
        vfs.xOpen = Some(open);
        // Every other method is the platform's own, called with this VFS,
        // which carries the platform's settings (`mxPathname`, `pAppData`).
        let vfs: &'static mut ffi::sqlite3_vfs = Box::leak(Box::new(vfs));
        // SAFETY: `vfs` lives as long as the process; 0: not the default.
        match unsafe { ffi::sqlite3_vfs_register(vfs, 0) } {
            ffi::SQLITE_OK => Ok(()),
            code => Err(code),
        }
    }))
    .map(|()| VFS_NAME)
}

/// The platform's VFS, which this one wraps.
struct Platform(*mut ffi::sqlite3_vfs);
// SAFETY: a registered VFS is shared by every connection of the process;
// SQLite's VFS methods are safe to call from any thread.
unsafe impl Send for Platform {}
// SAFETY: as above.
unsafe impl Sync for Platform {}

static PLATFORM: OnceLock<Platform> = OnceLock::new();

/// A file SQLite opened through [`open`]: its database file or its WAL.
/// SQLite's file object (whose methods are [`DB_METHODS`] or
/// [`WAL_METHODS`]), the platform's file object it wraps (in the memory right
/// after this one), and, for a WAL, the frames gathered for it.
#[repr(C)]
struct Gathering {
    /// What SQLite reads: the methods. Must stay first.
    base: ffi::sqlite3_file,
    /// The platform's file, right after this struct in SQLite's allocation.
    inner: *mut ffi::sqlite3_file,
    /// Whether this is a WAL file (else its database's).
    wal: bool,
    /// The other file of the pair while both are open: a database's WAL, a
    /// WAL's database.
    peer: *mut Gathering,
    /// Gathered bytes, to be written at `at` (a WAL's only).
    gathered: Vec<u8>,
    /// The file offset of `gathered`'s first byte.
    at: i64,
    /// Whether the last gathered write was a frame header, whose page comes
    /// next; and whether that header commits its transaction.
    header: Option<Commits>,
}

// The platform's file object follows a Gathering in the same allocation,
// whose start SQLite aligns to 8 bytes.
const _: () = assert!(size_of::<Gathering>().is_multiple_of(8));

/// Whether a gathered frame header commits its transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commits {
    No,
    Yes,
}

impl Gathering {
    /// The byte after the gathered ones.
    fn end(&self) -> i64 {
        self.at + self.gathered.len() as i64
    }

    /// The platform file's methods.
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the platform's xOpen succeeded on `inner` (else this
        // object was never made), which sets its methods for its lifetime.
        unsafe { &*(*self.inner).pMethods }
    }

    /// Hands `data` to the platform file's `xWrite` at `offset`, as it is.
    fn platform_write(&self, data: &[u8], offset: i64) -> c_int {
        let Some(write) = self.methods().xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let Ok(amount) = c_int::try_from(data.len()) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        #[cfg(test)]
        tests::WRITES.with(|writes| writes.set(writes.get() + 1));
        // SAFETY: `inner` is an open platform file; `data` outlives the call.
        unsafe { write(self.inner, data.as_ptr().cast(), amount, offset) }
    }

    /// Writes out what is gathered: in one call, or in pieces of at most
    /// [`MOST_PER_CALL`] bytes.
    fn flush(&mut self) -> c_int {
        self.header = None;
        if self.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let mut written = 0;
        let mut rc = ffi::SQLITE_OK;
        for piece in self.gathered.chunks(MOST_PER_CALL) {
            rc = self.platform_write(piece, self.at + written as i64);
            if rc != ffi::SQLITE_OK {
                break;
            }
            written += piece.len();
        }
        if rc != ffi::SQLITE_OK {
            // What was not written stays, for the next flush to try again.
            self.gathered.drain(..written);
            self.at += written as i64;
            return rc;
        }
        self.gathered.clear();
        if self.gathered.capacity() > KEPT_CAPACITY {
            self.gathered.shrink_to(KEPT_CAPACITY);
        }
        rc
    }

    /// Writes out what this database's WAL gathered (nothing for a WAL).
    fn flush_wal(&mut self) -> c_int {
        if self.wal || self.peer.is_null() {
            return ffi::SQLITE_OK;
        }
        // SAFETY: a database's peer is its open WAL (cleared when it closes),
        // used by the same connection, on this thread.
        unsafe { (*self.peer).flush() }
    }

    /// Takes SQLite's write of `data` at `offset`: gathered when it is the
    /// next frame's header or page, else written (after what is gathered).
    fn write(&mut self, data: &[u8], offset: i64) -> c_int {
        let next = self.gathered.is_empty() || offset == self.end();
        if next && self.header.is_some() {
            // The page of the header gathered last.
            let commits = self.header == Some(Commits::Yes);
            self.header = None;
            self.gathered.extend_from_slice(data);
            if commits || self.gathered.len() >= MOST_GATHERED {
                return self.flush();
            }
            return ffi::SQLITE_OK;
        }
        if next && data.len() == FRAME_HEADER {
            // A frame header: bytes 4..8 are the database's size in pages
            // after a commit, 0 in any other frame.
            let commits = data[4..8] != [0, 0, 0, 0];
            // A commit header starts a gathering only after other frames of
            // its transaction: alone, it may be a checksum rewrite's last
            // header (no page follows it, nothing else is written before
            // the commit is published).
            if !commits || !self.gathered.is_empty() {
                if self.gathered.is_empty() {
                    self.at = offset;
                }
                self.gathered.extend_from_slice(data);
                self.header = Some(if commits { Commits::Yes } else { Commits::No });
                return ffi::SQLITE_OK;
            }
        }
        let rc = self.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        #[cfg(test)]
        if data.len() >= 512 {
            tests::PAGES_AS_THEY_CAME.with(|pages| pages.set(pages.get() + 1));
        }
        self.platform_write(data, offset)
    }
}

/// The [`Gathering`] of a file SQLite opened through [`open`], wrapped.
///
/// # Safety
/// `file` must be a file object whose methods are [`WAL_METHODS`] or
/// [`DB_METHODS`].
unsafe fn gathering<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Gathering {
    // SAFETY: only wrapped files get these methods, and their object is a Gathering.
    unsafe { &mut *file.cast::<Gathering>() }
}

/// The VFS's `xOpen`: the platform's; a database file and its WAL wrapped
/// (and linked to each other), any other file left as the platform opens it.
unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(&Platform(platform)) = PLATFORM.get() else {
        return ffi::SQLITE_ERROR;
    };
    // SAFETY: the platform's VFS is registered for the process.
    let Some(platform_open) = (unsafe { (*platform).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let wal = flags & ffi::SQLITE_OPEN_WAL != 0;
    if !wal && flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
        // Neither a database nor its WAL (a journal, a temporary file): the
        // platform's file object itself, in the same (larger) allocation,
        // with the platform's methods.
        // SAFETY: SQLite's arguments, passed on; `vfs` carries the platform's settings.
        return unsafe { platform_open(vfs, name, file, flags, out_flags) };
    }
    // SAFETY: SQLite allocated `szOsFile` bytes at `file`: a Gathering, then
    // the platform's file object (its size is the platform's szOsFile).
    let inner = unsafe { file.cast::<u8>().add(size_of::<Gathering>()) }.cast();
    // SAFETY: as above; `inner` has room for the platform's file object.
    let rc = unsafe { platform_open(vfs, name, inner, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: SQLite reads pMethods after a failed open: null, not ours.
        unsafe { (*file).pMethods = ptr::null() };
        return rc;
    }
    let this = file.cast::<Gathering>();
    let mut peer = ptr::null_mut();
    if wal {
        // SAFETY: SQLite opens a WAL with the name its pager made, which
        // sqlite3_database_file_object maps to the pager's database file.
        let db = unsafe { ffi::sqlite3_database_file_object(name) };
        // SAFETY: the database file is open while its WAL is.
        if !db.is_null() && ptr::eq(unsafe { (*db).pMethods }, &DB_METHODS) {
            peer = db.cast::<Gathering>();
            // SAFETY: a database file opened through `open`: a Gathering.
            unsafe { (*peer).peer = this };
        }
    }
    // SAFETY: `file` has room for a Gathering (see above); SQLite's
    // memory is uninitialised, so it is written, not assigned.
    unsafe {
        ptr::write(
            this,
            Gathering {
                base: ffi::sqlite3_file {
                    pMethods: if wal { &WAL_METHODS } else { &DB_METHODS },
                },
                inner,
                wal,
                peer,
                gathered: Vec::new(),
                at: 0,
                header: None,
            },
        );
    }
    rc
}

/// The methods of a WAL file opened through [`open`]: writes gathered,
/// everything else after what is gathered is written. SQLite calls the
/// shared-memory and mapping methods on the database file, not on its WAL.
static WAL_METHODS: ffi::sqlite3_io_methods = methods(write);

/// The methods of a database file opened through [`open`]: the platform's,
/// except that a lock or barrier on the WAL index first writes out what its
/// WAL gathered. SQLite publishes a commit in the WAL index between its
/// barriers and ends a write transaction by unlocking it: whatever SQLite
/// wrote to the WAL is in the file before another connection can see it,
/// even a write pattern [`Gathering::write`] did not foresee.
static DB_METHODS: ffi::sqlite3_io_methods = methods(write_through);

/// The methods of a file opened through [`open`], its writes taken by
/// `write`. Version 3, as the platform's (unix) are.
const fn methods(
    write: unsafe extern "C" fn(
        *mut ffi::sqlite3_file,
        *const c_void,
        c_int,
        ffi::sqlite3_int64,
    ) -> c_int,
) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: 3,
        xClose: Some(close),
        xRead: Some(read),
        xWrite: Some(write),
        xTruncate: Some(truncate),
        xSync: Some(sync),
        xFileSize: Some(file_size),
        xLock: Some(lock),
        xUnlock: Some(unlock),
        xCheckReservedLock: Some(check_reserved_lock),
        xFileControl: Some(file_control),
        xSectorSize: Some(sector_size),
        xDeviceCharacteristics: Some(device_characteristics),
        xShmMap: Some(shm_map),
        xShmLock: Some(shm_lock),
        xShmBarrier: Some(shm_barrier),
        xShmUnmap: Some(shm_unmap),
        xFetch: Some(fetch),
        xUnfetch: Some(unfetch),
    }
}

/// Calls the platform file's method `$method` with the arguments after
/// writing out what `$file` gathered; a failed write is the call's result.
macro_rules! after_flush {
    ($file:expr, $method:ident $(, $arg:expr)*) => {{
        // SAFETY: SQLite calls these methods with the file it opened.
        let this = unsafe { gathering($file) };
        let rc = this.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let Some(method) = this.methods().$method else {
            return ffi::SQLITE_IOERR;
        };
        // SAFETY: SQLite's arguments, passed on to the platform's file.
        unsafe { method(this.inner $(, $arg)*) }
    }};
}

/// Calls the platform file's method `$method` with the arguments as they are.
macro_rules! passed_on {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        // SAFETY: SQLite calls these methods with the file it opened.
        let this = unsafe { gathering($file) };
        let Some(method) = this.methods().$method else {
            return $missing;
        };
        // SAFETY: SQLite's arguments, passed on to the platform's file.
        unsafe { method(this.inner $(, $arg)*) }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls xClose once, with the file it opened.
    let this = unsafe { gathering(file) };
    let flushed = this.flush();
    if !this.peer.is_null() {
        // SAFETY: the peer is open (each unlinks the other as it closes).
        unsafe { (*this.peer).peer = ptr::null_mut() };
        this.peer = ptr::null_mut();
    }
    let closed = match this.methods().xClose {
        // SAFETY: the platform's file, closed once.
        Some(platform_close) => unsafe { platform_close(this.inner) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: the Gathering written by `open`, dropped once; SQLite frees
    // the memory itself.
    unsafe { ptr::drop_in_place(file.cast::<Gathering>()) };
    if flushed == ffi::SQLITE_OK {
        closed
    } else {
        flushed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    after_flush!(file, xRead, buf, amount, offset)
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes at `buf`.
    let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    // SAFETY: SQLite calls xWrite with the file it opened.
    unsafe { gathering(file) }.write(data, offset)
}

unsafe extern "C" fn write_through(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    passed_on!(file, xWrite, ffi::SQLITE_IOERR_WRITE, buf, amount, offset)
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    after_flush!(file, xTruncate, size)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(file, xSync, flags)
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    after_flush!(file, xFileSize, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed_on!(file, xLock, ffi::SQLITE_IOERR_LOCK, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed_on!(file, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    passed_on!(
        file,
        xCheckReservedLock,
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK,
        out
    )
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(file, xFileControl, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    passed_on!(file, xSectorSize, 4096)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    passed_on!(file, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    passed_on!(
        file,
        xShmMap,
        ffi::SQLITE_IOERR_SHMMAP,
        page,
        page_size,
        extend,
        out
    )
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite calls xShmLock with the file it opened.
    let rc = unsafe { gathering(file) }.flush_wal();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    passed_on!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls xShmBarrier with the file it opened.
    let this = unsafe { gathering(file) };
    // A barrier cannot fail. What a commit gathered was written when its
    // commit frame was (an error there fails the commit), so this finds
    // nothing in practice; a failed write here leaves the bytes unwritten
    // and the error to the next write, sync or close of the WAL.
    let _ = this.flush_wal();
    if let Some(barrier) = this.methods().xShmBarrier {
        // SAFETY: the platform's file.
        unsafe { barrier(this.inner) }
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    passed_on!(file, xShmUnmap, ffi::SQLITE_IOERR, delete)
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    after_flush!(file, xFetch, offset, amount, out)
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    passed_on!(file, xUnfetch, ffi::SQLITE_IOERR, offset, page)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags, params};

    use super::register;

    thread_local! {
        /// Writes this thread's WAL files made to the platform's files.
        pub(super) static WRITES: Cell<usize> = const { Cell::new(0) };
        /// Pages this thread's WAL files wrote as they came, not gathered
        /// (a frame overwritten in place).
        pub(super) static PAGES_AS_THEY_CAME: Cell<usize> = const { Cell::new(0) };
    }

    fn writes() -> usize {
        WRITES.with(Cell::get)
    }

    /// A connection to `path` through the gathering VFS, in WAL mode, never
    /// checkpointing by itself; `cache_pages`: its page cache.
    fn gathering(path: &Path, cache_pages: i64) -> Connection {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = Connection::open_with_flags_and_vfs(path, flags, register().unwrap()).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = {cache_pages};
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);"
        ))
        .unwrap();
        conn
    }

    /// Each row's id and body length, in id order, as `conn` reads them.
    fn rows(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT id, length(body) FROM t ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The database and its WAL copied while `conn` (which has not
    /// checkpointed) still holds them: the files as a `kill -9` would leave
    /// them. Opening the copy recovers from the WAL, checksums checked.
    /// Called before `conn` touches its WAL again (which would write out
    /// anything still gathered).
    fn crashed_copy(dir: &Path, conn: &Connection) -> Connection {
        let copy = dir.join("copy.db");
        let db = conn.path().unwrap().to_owned();
        let _ = std::fs::remove_file(&copy);
        let _ = std::fs::remove_file(dir.join("copy.db-shm"));
        std::fs::copy(&db, &copy).unwrap();
        std::fs::copy(format!("{db}-wal"), dir.join("copy.db-wal")).unwrap();
        let recovered = Connection::open(&copy).unwrap();
        let check: String = recovered
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        recovered
    }

    /// Inserts `count` rows of `bytes` random bytes from `first` on, in one
    /// transaction unless `conn` is in one.
    fn insert(conn: &Connection, first: i64, count: i64, bytes: i64) {
        for id in first..first + count {
            conn.execute(
                "INSERT OR REPLACE INTO t (id, body) VALUES (?1, randomblob(?2))",
                params![id, bytes],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_commits_frames_are_written_in_one_call_and_read_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = gathering(&path, 2000);
        insert(&conn, 0, 1, 10);
        let before = writes();
        conn.execute_batch("BEGIN").unwrap();
        insert(&conn, 1, 20, 3000);
        conn.execute_batch("COMMIT").unwrap();
        // About 20 pages, 40 writes through the platform's VFS: one here.
        assert_eq!(writes() - before, 1);

        let reader = Connection::open(&path).unwrap();
        let expected = rows(&reader);
        assert_eq!(expected.len(), 21);
        assert_eq!(rows(&crashed_copy(dir.path(), &conn)), expected);
        assert_eq!(rows(&conn), expected);
    }

    #[test]
    fn a_commit_larger_than_one_call_is_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.db");
        let conn = gathering(&path, 2000);
        let before = writes();
        conn.execute_batch("BEGIN").unwrap();
        // About 400 pages, 1.6 MB: past the most gathered (written before
        // the commit) and past the most the platform takes in one call.
        insert(&conn, 0, 400, 3900);
        conn.execute_batch("COMMIT").unwrap();
        let calls = writes() - before;
        assert!((14..=20).contains(&calls), "{calls} writes");

        let reader = Connection::open(&path).unwrap();
        let expected = rows(&reader);
        assert_eq!(expected, (0..400).map(|id| (id, 3900)).collect::<Vec<_>>());
        assert_eq!(rows(&crashed_copy(dir.path(), &conn)), expected);
    }

    #[test]
    fn a_transaction_that_spills_and_rewrites_its_frames_recovers_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        // A cache of 10 pages: the transaction spills frames before its
        // commit, then changes spilled pages again, so the commit overwrites
        // those frames in place and rewrites the checksums after them.
        let conn = gathering(&path, 10);
        let in_place = PAGES_AS_THEY_CAME.with(Cell::get);
        conn.execute_batch("BEGIN").unwrap();
        insert(&conn, 0, 300, 900);
        conn.execute("UPDATE t SET body = randomblob(700) WHERE id % 7 = 0", [])
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        assert!(PAGES_AS_THEY_CAME.with(Cell::get) > in_place);
        let reader = Connection::open(&path).unwrap();
        let expected = rows(&reader);
        assert_eq!(expected.len(), 300);
        assert_eq!(expected.iter().filter(|(_, len)| *len == 700).count(), 43);
        assert_eq!(rows(&crashed_copy(dir.path(), &conn)), expected);

        // A spill rolled back: its gathered frames are written out as the
        // transaction lets go of the WAL index, not left for a later write.
        conn.execute_batch("BEGIN").unwrap();
        insert(&conn, 300, 100, 900);
        let before_rollback = writes();
        conn.execute_batch("ROLLBACK").unwrap();
        assert!(writes() > before_rollback);
        // Then a small commit over their frames.
        insert(&conn, 1000, 1, 5);
        let expected = rows(&reader);
        assert_eq!(expected.len(), 301);
        assert_eq!(rows(&crashed_copy(dir.path(), &conn)), expected);
        assert_eq!(rows(&conn), expected);
    }

    #[test]
    fn a_wal_started_again_after_a_checkpoint_is_written_over_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = gathering(&path, 2000);
        // The WAL header's checkpoint sequence: one more at each restart.
        let restarts = || {
            let header = std::fs::read(dir.path().join("c.db-wal")).unwrap();
            u32::from_be_bytes(header[12..16].try_into().unwrap())
        };
        let mut seen = Vec::new();
        for round in 0..3 {
            insert(&conn, 0, 50, 100 + round * 200);
            seen.push(restarts());
            // The next write starts the WAL again from its first frame, over
            // the frames of this round.
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))
                .unwrap();
            assert_eq!(busy, 0);
        }
        conn.execute("UPDATE t SET body = randomblob(42) WHERE id < 10", [])
            .unwrap();
        seen.push(restarts());
        assert!(
            seen.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{seen:?}"
        );

        let reader = Connection::open(&path).unwrap();
        let expected = rows(&reader);
        assert_eq!(expected.iter().filter(|(_, len)| *len == 42).count(), 10);
        assert_eq!(expected.iter().filter(|(_, len)| *len == 500).count(), 40);
        assert_eq!(rows(&crashed_copy(dir.path(), &conn)), expected);
    }
}
