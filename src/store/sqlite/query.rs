//! SQL shared by the record modules of the SQLite store: listing queries
//! built from a filter with creation-sequence cursors, and idempotency-key
//! lookups. It builds and runs reads; it never writes.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use super::codec::decode;
use crate::store::{Page, StoreError};

/// The (fingerprint, body) an idempotency key points to, by `sql` (which
/// selects those two columns for the key `?1`).
pub(super) fn keyed_body(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached(sql)?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
}

/// A listing's SQL and arguments, built from a filter.
pub(super) struct Query {
    sql: String,
    args: Vec<Value>,
}

impl Query {
    pub(super) fn new(select: &str, after: i64) -> Self {
        Self {
            sql: select.to_owned(),
            args: vec![Value::Integer(after)],
        }
    }

    /// `AND <condition>` with one text argument.
    pub(super) fn and(&mut self, condition: &str, arg: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
        self.args.push(Value::Text(arg.to_owned()));
    }

    /// `AND column IN (...)`, nothing when `values` is empty.
    pub(super) fn any_of<'a>(&mut self, column: &str, values: impl Iterator<Item = &'a str>) {
        let before = self.args.len();
        self.args.extend(values.map(|v| Value::Text(v.to_owned())));
        let count = self.args.len() - before;
        if count > 0 {
            let marks = vec!["?"; count].join(", ");
            self.sql.push_str(&format!(" AND {column} IN ({marks})"));
        }
    }

    /// Runs the listing: rows of (creation sequence, JSON body) in sequence
    /// order, at most `limit`, with the cursor of the last when more follow.
    pub(super) fn page<T: DeserializeOwned>(
        mut self,
        conn: &Connection,
        order: &str,
        limit: usize,
        what: &str,
    ) -> Result<Page<T, u64>, StoreError> {
        if limit == 0 {
            // As in MemoryStore: an empty page has no cursor to resume from.
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.sql.push_str(&format!(" ORDER BY {order} LIMIT ?"));
        self.args.push(Value::Integer(
            i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
        ));
        let mut statement = conn.prepare_cached(&self.sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(self.args))?;
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut last = 0;
        let mut more = false;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode(what, format!("#{seq}"), row.get_ref(1)?.as_str()?)?);
            last = seq;
        }
        Ok(Page {
            items,
            next: more.then(|| u64::try_from(last).unwrap_or(0)),
        })
    }
}

/// A listing cursor as a creation sequence: rows after it. Sequences start
/// at 1, so no cursor means "after 0".
pub(super) fn cursor(after: Option<u64>) -> i64 {
    after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX))
}
