//! Runtime events in the SQLite store: appending, replaying after a
//! sequence, and the last sequence ever used (kept past compaction through a
//! high-water mark). Trimming to `max_events` happens in the writer, and
//! retention in compaction.

use rusqlite::{Connection, params};

use super::SqliteStore;
use super::codec::{decode, encode, to_i64};
use crate::model::events::Event;
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::StoreError;

/// `store_state` key: the highest event sequence ever deleted, so that sequences
/// continue without reuse even when compaction removed every event.
pub(super) const EVENT_HIGH_WATER: &str = "event_high_water";

/// The highest event sequence stored or ever deleted (0 when none).
pub(super) fn last_event_sequence(conn: &Connection) -> Result<u64, StoreError> {
    let last: i64 = conn
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT MAX(sequence) FROM events), 0),
                        COALESCE((SELECT value FROM store_state WHERE key = ?1), 0))",
        )?
        .query_row([EVENT_HIGH_WATER], |row| row.get(0))?;
    Ok(u64::try_from(last).unwrap_or(0))
}

/// An event as the `events` table keeps it.
pub(super) struct EventRow {
    /// Its sequence number.
    sequence: i64,
    /// When it was published, in ms since the epoch.
    timestamp_ms: i64,
    /// The event as JSON.
    body: String,
}

impl EventRow {
    /// The row of `event`.
    pub(super) fn new(event: &Event) -> Result<Self, StoreError> {
        let sequence = to_i64(event.sequence, "event sequence")?;
        Ok(Self {
            sequence,
            timestamp_ms: event.timestamp.timestamp_millis(),
            body: encode("event", sequence, event)?,
        })
    }
}

/// Inserts `row`, inside the writer's transaction.
pub(super) fn insert_event(conn: &Connection, row: &EventRow) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO events (sequence, timestamp_ms, body) VALUES (?1, ?2, ?3)")?
        .execute(params![row.sequence, row.timestamp_ms, row.body])?;
    Ok(())
}

/// [`Store::append_event`].
pub(super) fn append(store: &SqliteStore, event: &Event) -> Result<(), StoreError> {
    let row = EventRow::new(event)?;
    store.write(move |conn| insert_event(conn, &row))
}

/// [`Store::events_after`]: in sequence order, at most `limit`.
pub(super) fn after(
    store: &SqliteStore,
    after: u64,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(|conn| {
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
