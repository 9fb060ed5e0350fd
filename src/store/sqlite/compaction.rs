//! Retention for the SQLite store: what a `RetentionPolicy` keeps, and
//! compaction, which deletes the rest in small steps through the writer (so
//! writes go on in between), on request or from a background thread. It
//! deletes finished executions, finished stand-alone tasks and old events;
//! it never touches workflows or unfinished work.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::background::Periodic;
use super::events::EVENT_HIGH_WATER;
use super::queue::Sender;
use super::writer::{Command, submit};
use crate::config::StoreConfig;
use crate::model::TaskStatus;
use crate::store::StoreError;

/// Creation sequence numbers scanned by one compaction step, which holds the
/// writer: small enough that submissions barely notice it.
const COMPACTION_WINDOW: i64 = 5_000;
/// Events deleted by one compaction step.
const COMPACTION_EVENTS: u64 = 10_000;
/// The background compaction's first run comes this soon after open (or
/// after one interval, when shorter), so short-lived processes compact too.
const FIRST_COMPACTION_DELAY: Duration = Duration::from_secs(60);

/// What compaction removes.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    /// Finished (completed, failed, cancelled) executions with their tasks,
    /// and finished stand-alone tasks, are deleted this long after they last
    /// changed. A task is kept while one of its children is.
    pub finished: Duration,
    /// Events older than this are deleted.
    pub events: Duration,
    /// Most events kept; the oldest beyond it are deleted.
    pub max_events: u64,
}

impl RetentionPolicy {
    /// The policy `[store]` asks for.
    pub fn from_config(store: &StoreConfig) -> Self {
        Self {
            finished: store.retention(),
            events: store.retention(),
            max_events: store.max_events,
        }
    }
}

/// What one compaction deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Executions deleted.
    pub executions: u64,
    /// Tasks deleted (those of the deleted executions included).
    pub tasks: u64,
    /// Events deleted.
    pub events: u64,
}

impl CompactionReport {
    /// Whether nothing was deleted.
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The statuses retention may delete, as an SQL list.
fn finished_statuses() -> String {
    TaskStatus::ALL
        .iter()
        .filter(|status| status.is_terminal())
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `now - age` in unix milliseconds; `None` when before the calendar's start.
fn cutoff_ms(now: DateTime<Utc>, age: Duration) -> Option<i64> {
    let age = TimeDelta::from_std(age).ok()?;
    now.checked_sub_signed(age).map(|t| t.timestamp_millis())
}

/// Deletes what `policy` no longer keeps, as of `now`, one small step per
/// write, then hands the freed pages back when anything went.
pub(super) fn compact(
    commands: &Sender<Command>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<CompactionReport, StoreError> {
    let mut report = CompactionReport::default();
    if let Some(cutoff) = cutoff_ms(now, policy.finished) {
        let finished = finished_statuses();
        let mut from = 0;
        loop {
            let sql = finished.clone();
            let (executions, tasks, next) = submit(commands, move |conn| {
                compact_executions(conn, &sql, cutoff, from)
            })?;
            report.executions += executions;
            report.tasks += tasks;
            let Some(next) = next else { break };
            from = next;
        }
        let mut from = 0;
        loop {
            let sql = finished.clone();
            let (tasks, next) = submit(commands, move |conn| {
                compact_tasks(conn, &sql, cutoff, from)
            })?;
            report.tasks += tasks;
            let Some(next) = next else { break };
            from = next;
        }
    }
    let keep = i64::try_from(policy.max_events).unwrap_or(i64::MAX);
    let event_cutoff = cutoff_ms(now, policy.events);
    loop {
        let deleted = submit(commands, move |conn| {
            compact_events(conn, keep, event_cutoff)
        })?;
        report.events += deleted;
        if deleted < COMPACTION_EVENTS {
            break;
        }
    }
    if !report.is_empty() {
        // Hands the freed pages back to the file system (auto_vacuum is incremental).
        submit(commands, |conn| {
            conn.execute_batch("PRAGMA incremental_vacuum")?;
            Ok(())
        })?;
    }
    Ok(report)
}

/// One step: finished executions older than the cutoff among creation
/// sequences (from, from + window], with their tasks and keys. Returns the
/// executions and tasks deleted and where the next step starts, if anywhere.
fn compact_executions(
    conn: &Connection,
    finished: &str,
    cutoff: i64,
    from: i64,
) -> Result<(u64, u64, Option<i64>), StoreError> {
    let to = from.saturating_add(COMPACTION_WINDOW);
    let doomed = conn
        .prepare_cached(&format!(
            "SELECT seq, id FROM executions WHERE seq > ?1 AND seq <= ?2
             AND status IN ({finished}) AND updated_ms < ?3"
        ))?
        .query_map(params![from, to, cutoff], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = 0;
    for (seq, id) in &doomed {
        conn.prepare_cached(
            "DELETE FROM task_tags WHERE task_seq IN
             (SELECT seq FROM tasks WHERE execution_id = ?1)",
        )?
        .execute([id])?;
        conn.prepare_cached(
            "DELETE FROM task_keys WHERE task_id IN
             (SELECT id FROM tasks WHERE execution_id = ?1)",
        )?
        .execute([id])?;
        tasks += conn
            .prepare_cached("DELETE FROM tasks WHERE execution_id = ?1")?
            .execute([id])? as u64;
        conn.prepare_cached("DELETE FROM execution_keys WHERE execution_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM execution_prompts WHERE execution_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM executions WHERE seq = ?1")?
            .execute([seq])?;
    }
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM executions", [], |row| {
        row.get(0)
    })?;
    Ok((doomed.len() as u64, tasks, (to < last).then_some(to)))
}

/// One step: finished stand-alone tasks (not part of an execution) older
/// than the cutoff among creation sequences (from, from + window], unless a
/// child of theirs is kept.
fn compact_tasks(
    conn: &Connection,
    finished: &str,
    cutoff: i64,
    from: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let to = from.saturating_add(COMPACTION_WINDOW);
    let doomed = conn
        .prepare_cached(&format!(
            "SELECT t.seq, t.id FROM tasks t WHERE t.seq > ?1 AND t.seq <= ?2
             AND t.execution_id IS NULL AND t.status IN ({finished}) AND t.updated_ms < ?3
             AND NOT EXISTS (SELECT 1 FROM tasks c WHERE c.parent_id = t.id
                 AND NOT (c.status IN ({finished}) AND c.updated_ms < ?3))"
        ))?
        .query_map(params![from, to, cutoff], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (seq, id) in &doomed {
        conn.prepare_cached("DELETE FROM task_tags WHERE task_seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM task_keys WHERE task_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM tasks WHERE seq = ?1")?
            .execute([seq])?;
    }
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |row| {
        row.get(0)
    })?;
    Ok((doomed.len() as u64, (to < last).then_some(to)))
}

/// One step: deletes up to a chunk of events beyond `keep` or older than
/// the cutoff, after recording the highest sequence so it is never reused.
fn compact_events(conn: &Connection, keep: i64, cutoff: Option<i64>) -> Result<u64, StoreError> {
    let Some(max): Option<i64> =
        conn.query_row("SELECT MAX(sequence) FROM events", [], |row| row.get(0))?
    else {
        return Ok(0);
    };
    conn.prepare_cached(
        "INSERT INTO store_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![EVENT_HIGH_WATER, max])?;
    // Every sequence below `below` goes.
    let mut below = max.saturating_sub(keep).saturating_add(1);
    if let Some(cutoff) = cutoff {
        let first_recent: Option<i64> = conn
            .prepare_cached(
                "SELECT sequence FROM events WHERE timestamp_ms >= ?1 ORDER BY sequence LIMIT 1",
            )?
            .query_row([cutoff], |row| row.get(0))
            .optional()?;
        below = below.max(first_recent.unwrap_or(max.saturating_add(1)));
    }
    let deleted = conn
        .prepare_cached(
            "DELETE FROM events WHERE sequence IN
             (SELECT sequence FROM events WHERE sequence < ?1 ORDER BY sequence LIMIT ?2)",
        )?
        .execute(params![below, COMPACTION_EVENTS as i64])?;
    Ok(deleted as u64)
}

/// Background compaction: retention in small steps through the writer.
pub(super) fn spawn_compactor(
    commands: Sender<Command>,
    interval: Duration,
    policy: RetentionPolicy,
    path: &Path,
) -> std::io::Result<Periodic> {
    let path = path.to_path_buf();
    let first = interval.min(FIRST_COMPACTION_DELAY);
    Periodic::spawn("store-compaction", first, interval, move || {
        match compact(&commands, &policy, Utc::now()) {
            Ok(report) if report.is_empty() => {}
            Ok(report) => tracing::info!(
                path = %path.display(),
                executions = report.executions,
                tasks = report.tasks,
                events = report.events,
                "store compacted"
            ),
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "store compaction failed; trying again at the next interval"
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{TimeDelta, Utc};

    use super::{CompactionReport, RetentionPolicy};
    use crate::model::{Task, TaskStatus, TaskType};
    use crate::store::conformance::{
        created, created_execution, event, key, new_execution, task, task_with, workflow,
    };
    use crate::store::sqlite::executions::PROMPT_INLINE_BYTES;
    use crate::store::sqlite::test_support::{aged, all_task_names, temp_store};
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::{CreateOutcome, ExecutionFilter, Store, WorkflowFilter};

    #[test]
    fn compaction_removes_only_finished_work_past_retention() {
        let (_dir, store) = temp_store();
        let old = TimeDelta::days(31);
        let recent = TimeDelta::days(29);
        let put = |task: Task, key_name: Option<&str>| {
            created(
                store
                    .create_task(task, key_name.and_then(|k| key(k, "fp")))
                    .unwrap(),
            )
        };
        // Stand-alone tasks.
        put(
            aged(task("old done"), TaskStatus::Completed, old),
            Some("old-key"),
        );
        put(
            aged(task("recent done"), TaskStatus::Completed, recent),
            None,
        );
        put(aged(task("old running"), TaskStatus::Running, old), None);
        let parent = put(aged(task("old parent"), TaskStatus::Failed, old), None);
        put(
            aged(
                task_with("old child", TaskType::Node, &[], Some(&parent.id)),
                TaskStatus::Cancelled,
                old,
            ),
            None,
        );
        let busy = put(aged(task("busy parent"), TaskStatus::Completed, old), None);
        put(
            aged(
                task_with("live child", TaskType::Node, &[], Some(&busy.id)),
                TaskStatus::Running,
                old,
            ),
            None,
        );
        // Executions: each with a root and one node, and a prompt of its own kept out of its row.
        let prompt_of = |key_name: &str| {
            let mut prompt = key_name
                .as_bytes()
                .repeat(PROMPT_INLINE_BYTES / key_name.len() + 1);
            prompt.truncate(PROMPT_INLINE_BYTES + 1);
            bytes::Bytes::from(prompt)
        };
        let execution = |status: TaskStatus, age: TimeDelta, key_name: &str| {
            let mut new = new_execution(key_name, &[], 1);
            new.prompt = prompt_of(key_name);
            let tasks = std::mem::take(&mut new.tasks);
            new.tasks = tasks
                .into_iter()
                .map(|t| Arc::new(aged(Arc::unwrap_or_clone(t), TaskStatus::Completed, age)))
                .collect();
            let execution = Arc::make_mut(&mut new.execution);
            for step in [TaskStatus::Queued, TaskStatus::Running, status] {
                if execution.status() != status {
                    execution.transition(step).unwrap();
                }
            }
            execution.updated_at = Some(Utc::now() - age);
            created_execution(store.create_execution(new, key(key_name, "fp")).unwrap())
        };
        let gone = execution(TaskStatus::Completed, old, "old-done");
        let kept_recent = execution(TaskStatus::Failed, recent, "recent-failed");
        let kept_running = execution(TaskStatus::Running, old, "old-running");
        // Events: 1..=6 old, 7..=10 recent.
        for sequence in 1..=10 {
            let mut event = event(sequence);
            if sequence <= 6 {
                event.timestamp = Utc::now() - old;
            }
            store.append_event(&event).unwrap();
        }

        let policy = RetentionPolicy {
            finished: Duration::from_secs(30 * 86_400),
            events: Duration::from_secs(30 * 86_400),
            max_events: 3,
        };
        let report = store.compact(&policy).unwrap();
        assert_eq!(
            report,
            CompactionReport {
                executions: 1,
                tasks: 2 + 3,
                events: 7,
            }
        );
        assert_eq!(
            all_task_names(&store),
            [
                "recent done",
                "old running",
                "busy parent",
                "live child",
                "root",
                "node 0",
                "root",
                "node 0",
            ]
        );
        assert_eq!(store.get_execution(&gone.id).unwrap(), None);
        assert_eq!(store.execution_prompt(&gone.id).unwrap(), None);
        for (kept, key_name) in [
            (&kept_recent, "recent-failed"),
            (&kept_running, "old-running"),
        ] {
            assert_eq!(
                store.execution_prompt(&kept.id).unwrap(),
                Some(prompt_of(key_name))
            );
        }
        assert_eq!(store.execution_for_key("old-done").unwrap(), None);
        let left: Vec<String> = store
            .list_executions(&ExecutionFilter::default(), None, 10)
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, [kept_recent.id, kept_running.id]);
        // The deleted execution's prompt went with it; the kept ones' stay.
        let prompts: i64 = store
            .write(|conn| {
                Ok(
                    conn.query_row("SELECT COUNT(*) FROM execution_prompts", [], |row| {
                        row.get(0)
                    })?,
                )
            })
            .unwrap();
        assert_eq!(prompts, 2);
        assert_eq!(
            store
                .events_after(0, 100)
                .unwrap()
                .iter()
                .map(|e| e.sequence)
                .collect::<Vec<_>>(),
            [8, 9, 10]
        );
        // The key of a deleted task is free again.
        assert!(matches!(
            store
                .create_task(task("new"), key("old-key", "fp"))
                .unwrap(),
            CreateOutcome::Created(_)
        ));
        // Nothing more to do the second time.
        assert_eq!(store.compact(&policy).unwrap(), CompactionReport::default());
        // Workflows are never compacted.
        store
            .insert_workflow(workflow("w", "1.0.0", &[]))
            .unwrap()
            .unwrap();
        store.compact(&policy).unwrap();
        assert_eq!(
            store
                .list_workflows(&WorkflowFilter::default(), None, 10)
                .unwrap()
                .items
                .len(),
            1
        );
    }

    #[test]
    fn event_sequences_continue_after_every_event_was_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            for sequence in 1..=5 {
                let mut event = event(sequence);
                event.timestamp = Utc::now() - TimeDelta::days(60);
                store.append_event(&event).unwrap();
            }
            let policy = RetentionPolicy {
                finished: Duration::from_secs(86_400),
                events: Duration::from_secs(86_400),
                max_events: 100,
            };
            assert_eq!(store.compact(&policy).unwrap().events, 5);
            assert!(store.events_after(0, 10).unwrap().is_empty());
            assert_eq!(store.last_event_sequence().unwrap(), 5);
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.last_event_sequence().unwrap(), 5);
    }

    #[test]
    fn background_compaction_runs_and_stops_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let policy = RetentionPolicy {
            finished: Duration::from_secs(86_400),
            events: Duration::from_secs(86_400),
            max_events: 1000,
        };
        let options = SqliteOptions {
            compaction: Some((Duration::from_millis(10), policy)),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_with(&dir.path().join("store.db"), options).unwrap();
        created(
            store
                .create_task(
                    aged(task("old"), TaskStatus::Completed, TimeDelta::days(2)),
                    None,
                )
                .unwrap(),
        );
        created(store.create_task(task("fresh"), None).unwrap());
        // Polls for the background thread's work; no assertion on how long it took.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while all_task_names(&store) != ["fresh"] {
            assert!(
                std::time::Instant::now() < deadline,
                "the old task was never compacted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Dropping the store stops the thread (the test would hang otherwise).
        drop(store);
    }
}
