//! Workflow definitions in the SQLite store: one row per version, ordered by
//! its numeric (major, minor, patch) key; their writes and reads. Compaction
//! never touches them.

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::codec::{decode, encode};
use crate::model::WorkflowDefinition;
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;
use crate::store::{Page, StoreError, WorkflowCursor, WorkflowFilter, version_key};

/// A workflow version's `version_key` as SQLite integers. Flipping the top
/// bit maps u64 order onto i64 order, so versions past `i64::MAX` still sort.
#[derive(Debug, Clone, Copy)]
pub(super) struct VersionColumns {
    major: i64,
    minor: i64,
    patch: i64,
}

impl VersionColumns {
    fn of(version: &str) -> Self {
        // The cast reinterprets the bits on purpose (see the type's comment).
        let ordered = |part: u64| (part ^ (1 << 63)) as i64;
        let (major, minor, patch) = version_key(version);
        Self {
            major: ordered(major),
            minor: ordered(minor),
            patch: ordered(patch),
        }
    }
}

/// [`Store::insert_workflow`]: `Err` with the stored one when that version
/// exists.
pub(super) fn insert(
    store: &SqliteStore,
    workflow: WorkflowDefinition,
) -> Result<Result<WorkflowDefinition, WorkflowDefinition>, StoreError> {
    let key = VersionColumns::of(&workflow.version);
    let what = format!("workflow {} version {}", workflow.id, workflow.version);
    let body = encode("workflow", &what, &workflow.to_record())?;
    let tags = encode("workflow", &what, &workflow.tags)?;
    store.write(move |conn| {
        let existing: Option<String> = conn
            .prepare_cached(
                "SELECT body FROM workflows
                 WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
            )?
            .query_row(
                params![workflow.id, key.major, key.minor, key.patch],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(body) = existing {
            return Ok(Err(decode("workflow", &what, &body)?));
        }
        conn.prepare_cached(
            "INSERT INTO workflows (id, major, minor, patch, version, tags, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            workflow.id,
            key.major,
            key.minor,
            key.patch,
            workflow.version,
            tags,
            body
        ])?;
        Ok(Ok(workflow))
    })
}

/// [`Store::get_workflow`]: the version asked for, or the latest.
pub(super) fn get(
    store: &SqliteStore,
    id: &str,
    version: Option<&str>,
) -> Result<Option<WorkflowDefinition>, StoreError> {
    store.read(|conn| {
        let body: Option<String> = match version {
            Some(version) => {
                let key = VersionColumns::of(version);
                conn.prepare_cached(
                    "SELECT body FROM workflows
                     WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                )?
                .query_row(params![id, key.major, key.minor, key.patch], |row| {
                    row.get(0)
                })
                .optional()?
            }
            None => conn
                .prepare_cached(
                    "SELECT body FROM workflows WHERE id = ?1
                     ORDER BY major DESC, minor DESC, patch DESC LIMIT 1",
                )?
                .query_row([id], |row| row.get(0))
                .optional()?,
        };
        body.map(|body| decode("workflow", id, &body)).transpose()
    })
}

/// [`Store::list_workflows`]: by id then version, the latest only unless
/// `all_versions`.
pub(super) fn list(
    store: &SqliteStore,
    filter: &WorkflowFilter,
    after: Option<&WorkflowCursor>,
    limit: usize,
) -> Result<Page<WorkflowDefinition, WorkflowCursor>, StoreError> {
    let mut sql = String::from("SELECT w.id, w.tags, w.body FROM workflows w WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(cursor) = after {
        let key = VersionColumns::of(&cursor.version);
        sql.push_str(" AND (w.id, w.major, w.minor, w.patch) > (?, ?, ?, ?)");
        args.extend([
            Value::Text(cursor.id.clone()),
            Value::Integer(key.major),
            Value::Integer(key.minor),
            Value::Integer(key.patch),
        ]);
    }
    if !filter.all_versions {
        sql.push_str(
            " AND NOT EXISTS (SELECT 1 FROM workflows n WHERE n.id = w.id
              AND (n.major, n.minor, n.patch) > (w.major, w.minor, w.patch))",
        );
    }
    sql.push_str(" ORDER BY w.id, w.major, w.minor, w.patch");
    store.read(|conn| {
        let mut statement = conn.prepare_cached(&sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(args))?;
        let mut items: Vec<WorkflowDefinition> = Vec::new();
        let mut more = false;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let tags: Vec<String> = decode("workflow tags of", &id, row.get_ref(1)?.as_str()?)?;
            if !filter.tags.iter().all(|tag| tags.contains(tag)) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(decode("workflow", &id, row.get_ref(2)?.as_str()?)?);
        }
        Ok(Page::of_workflows(items, more))
    })
}

/// [`Store::delete_workflow`]: the versions deleted.
pub(super) fn delete(
    store: &SqliteStore,
    id: &str,
    version: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let id = id.to_owned();
    let key = version.map(VersionColumns::of);
    store.write(move |conn| {
        let (select, delete) = match key {
            Some(_) => (
                "SELECT version FROM workflows
                 WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
                "DELETE FROM workflows
                 WHERE id = ?1 AND major = ?2 AND minor = ?3 AND patch = ?4",
            ),
            None => (
                "SELECT version FROM workflows WHERE id = ?1 ORDER BY major, minor, patch",
                "DELETE FROM workflows WHERE id = ?1",
            ),
        };
        let mut args = vec![Value::Text(id)];
        if let Some(key) = key {
            args.extend([
                Value::Integer(key.major),
                Value::Integer(key.minor),
                Value::Integer(key.patch),
            ]);
        }
        let versions = conn
            .prepare_cached(select)?
            .query_map(rusqlite::params_from_iter(&args), |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        conn.prepare_cached(delete)?
            .execute(rusqlite::params_from_iter(&args))?;
        Ok(versions)
    })
}
