//! The runtime's own key-value notes in the SQLite store (`meta` table):
//! read and replace a value. Nothing else.

use rusqlite::OptionalExtension;

use super::SqliteStore;
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::StoreError;

/// [`Store::meta`].
pub(super) fn get(store: &SqliteStore, key: &str) -> Result<Option<String>, StoreError> {
    store.read(|conn| {
        Ok(conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |row| row.get(0))
            .optional()?)
    })
}

/// [`Store::set_meta`]: inserts or replaces the value.
pub(super) fn set(store: &SqliteStore, key: &str, value: &str) -> Result<(), StoreError> {
    let (key, value) = (key.to_owned(), value.to_owned());
    store.write(move |conn| {
        conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
            .execute([key, value])?;
        Ok(())
    })
}
