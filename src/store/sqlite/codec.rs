//! How the SQLite store turns values into column text and back (JSON, exact
//! numbers), and how SQLite's errors become `StoreError`s. No SQL here.

use std::cell::RefCell;
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

/// Largest encoder buffer kept between calls (a bigger one, for a large workflow's record, is
/// let go after its row).
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// The encoder's buffer, kept between calls: a row's JSON is written into room already
    /// there and copied out at its size, instead of into a string grown from 128 bytes by
    /// doubling (an event's several hundred bytes took three reallocations).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `value` as JSON text; an error naming `what` and `key` when it cannot be encoded.
pub(super) fn encode(
    what: &str,
    key: impl Display,
    value: &impl Serialize,
) -> Result<String, StoreError> {
    let failed = |error: &dyn Display| {
        StoreError::Unavailable(format!("cannot encode {what} {key}: {error}"))
    };
    SCRATCH.with(|scratch| {
        // A value whose encoding encodes another row (none does) gets a buffer of its own.
        let Ok(mut buffer) = scratch.try_borrow_mut() else {
            return serde_json::to_string(value).map_err(|error| failed(&error));
        };
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, value).map_err(|error| failed(&error));
        let text = written.and_then(|()| {
            std::str::from_utf8(&buffer)
                .map(str::to_owned)
                .map_err(|error| failed(&error))
        });
        if buffer.capacity() > SCRATCH_KEPT {
            *buffer = Vec::new();
        }
        text
    })
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{SCRATCH, SCRATCH_KEPT, decode, encode};

    #[test]
    fn encoding_reuses_its_buffer_and_gives_what_serde_json_gives() {
        let values = [
            json!({"sequence": 7, "payload": {"message": "step 1 of 4", "value": 1.50}}),
            json!([]),
            json!({"big": "x".repeat(SCRATCH_KEPT * 2)}),
            json!("after the big one"),
            json!({"n": 123456789012345678901234567890u128.to_string()}),
        ];
        for value in &values {
            let text = encode("value", 1, value).expect("encodes");
            assert_eq!(text, serde_json::to_string(value).expect("encodes"));
            assert_eq!(
                &decode::<serde_json::Value>("value", 1, &text).expect("decodes"),
                value
            );
            // Nothing above the kept size stays with the thread.
            SCRATCH.with(|scratch| assert!(scratch.borrow().capacity() <= SCRATCH_KEPT));
        }
    }
}
