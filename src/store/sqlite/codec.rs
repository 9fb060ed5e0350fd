//! How the SQLite store turns values into column text and back (JSON, exact
//! numbers), and how SQLite's errors become `StoreError`s. No SQL here.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Unavailable(format!("sqlite: {error}"))
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(error: rusqlite::types::FromSqlError) -> Self {
        StoreError::Corrupt(format!("unexpected column type: {error}"))
    }
}

/// `value` as an SQLite integer; an error naming `what` when it does not fit.
pub(super) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Unavailable(format!("{what} {value} is too large to store")))
}

/// `value` as JSON text; an error naming `what` and `key` when it cannot be encoded.
pub(super) fn encode(
    what: &str,
    key: impl Display,
    value: &impl Serialize,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Unavailable(format!("cannot encode {what} {key}: {error}")))
}

/// JSON text read back; a corrupt-store error naming `what` and `key` when it does not parse.
pub(super) fn decode<T: DeserializeOwned>(
    what: &str,
    key: impl Display,
    body: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(body)
        .map_err(|error| StoreError::Corrupt(format!("{what} {key}: {error}")))
}
