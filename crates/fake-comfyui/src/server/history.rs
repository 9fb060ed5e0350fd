//! The history and the jobs view: `GET`/`POST /history`,
//! `GET /history/{prompt_id}` and the `/api/jobs…` routes (list, get,
//! cancel).
//!
//! They read snapshots of the queue and history under the lock; the jobs
//! view's filters, sorting and shapes are `crate::jobs`'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::prompts::{Edit, canonical_uuid, parse_edit};
use super::reply::{first, internal_error, json, json_error, ok_empty, ok_json, query_pairs};
use crate::jobs;
use crate::pyjson::{self, object};
use crate::shared::Shared;

/// `{id: entry, …}` for history records.
pub(super) fn history_body(records: Vec<(String, Arc<Value>)>) -> Value {
    let mut map = Map::new();
    for (id, entry) in records {
        map.insert(id, (*entry).clone());
    }
    Value::Object(map)
}

/// `GET /history?max_items=&offset=`.
pub(super) async fn get_history(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let parse = |key: &str| -> Result<Option<i64>, ()> {
        match first(&pairs, key) {
            None => Ok(None),
            Some(raw) => jobs::parse_int(raw).map(Some).ok_or(()),
        }
    };
    let (Ok(max_items), Ok(offset)) = (parse("max_items"), parse("offset")) else {
        return internal_error();
    };
    let records: Vec<(String, Arc<Value>)> = shared
        .lock()
        .history_page(max_items, offset)
        .into_iter()
        .map(|r| (r.prompt_id, r.entry))
        .collect();
    ok_json(&history_body(records))
}

/// `GET /history/{prompt_id}`.
pub(super) async fn get_history_one(
    State(shared): State<Arc<Shared>>,
    Path(prompt_id): Path<String>,
) -> Response {
    let entry = shared.lock().history_entry(&prompt_id);
    let records = entry.map(|e| vec![(prompt_id, e)]).unwrap_or_default();
    ok_json(&history_body(records))
}

/// `POST /history`: clears or deletes history entries.
pub(super) async fn post_history(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(edits) = parse_edit(&body) else {
        return internal_error();
    };
    let mut state = shared.lock();
    for edit in edits {
        match edit {
            Edit::Clear => state.clear_history(),
            Edit::Delete(Value::Array(_) | Value::Object(_)) => return internal_error(),
            Edit::Delete(id) => {
                if let Some(id) = id.as_str() {
                    state.delete_history(id);
                }
            }
        }
    }
    ok_empty()
}

/// Snapshots the queue and history for the jobs view.
#[allow(clippy::type_complexity)]
pub(super) fn job_snapshot(shared: &Shared) -> (Vec<Value>, Vec<Value>, Vec<(String, Arc<Value>)>) {
    let state = shared.lock();
    let running = state.running.iter().map(|i| i.tuple.clone()).collect();
    let pending = state.pending().iter().map(|i| i.tuple.clone()).collect();
    let history = state
        .history()
        .iter()
        .map(|r| (r.prompt_id.clone(), r.entry.clone()))
        .collect();
    (running, pending, history)
}

/// `GET /api/jobs`: filtered, sorted and paginated.
pub(super) async fn list_jobs(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let query = match jobs::parse_list_query(&pairs) {
        Ok(query) => query,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let (running, pending, history) = job_snapshot(&shared);
    let (page, total) = jobs::list(&query, &running, &pending, &history);
    let has_more = (query.offset as usize).saturating_add(page.len()) < total;
    ok_json(&object([
        ("jobs", Value::Array(page)),
        (
            "pagination",
            object([
                ("offset", Value::from(query.offset)),
                ("limit", query.limit.map(Value::from).unwrap_or(Value::Null)),
                ("total", Value::from(total)),
                ("has_more", Value::Bool(has_more)),
            ]),
        ),
    ]))
}

/// `get_job`: history first, then running, then pending.
pub(super) fn find_job(shared: &Shared, job_id: &str) -> Response {
    let state = shared.lock();
    let job = if let Some(entry) = state.history_entry(job_id) {
        Some(jobs::history_job(job_id, &entry, true))
    } else if let Some(running) = state.running.as_ref().filter(|r| r.prompt_id == job_id) {
        Some(jobs::queue_job(&running.tuple, "in_progress"))
    } else {
        state
            .pending()
            .iter()
            .find(|i| i.prompt_id == job_id)
            .map(|i| jobs::queue_job(&i.tuple, "pending"))
    };
    drop(state);
    match job {
        Some(job) => ok_json(&job),
        None => json_error(StatusCode::NOT_FOUND, "Job not found"),
    }
}

/// `GET /api/jobs/{job_id}`.
pub(super) async fn get_job(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> Response {
    find_job(&shared, &job_id)
}

/// `GET /api/jobs/cancel` reaches the `{job_id}` route in aiohttp.
pub(super) async fn get_job_named_cancel(State(shared): State<Arc<Shared>>) -> Response {
    find_job(&shared, "cancel")
}

/// `_cancel_job_by_id`: interrupts a running job, dequeues a pending one.
pub(super) fn cancel_one(shared: &Shared, job_id: &str) -> bool {
    let mut state = shared.lock();
    if state.is_running(job_id) {
        return shared.interrupt_if_running(&state, job_id);
    }
    if state.is_pending(job_id) {
        let broadcasts = state.delete_pending(job_id);
        for _ in 0..broadcasts {
            shared.broadcast_status(&state);
        }
        return broadcasts > 0;
    }
    false
}

/// `POST /api/jobs/{job_id}/cancel`.
pub(super) async fn cancel_job(
    State(shared): State<Arc<Shared>>,
    Path(job_id): Path<String>,
) -> Response {
    let cancelled = cancel_one(&shared, &job_id);
    ok_json(&object([("cancelled", Value::Bool(cancelled))]))
}

/// `POST /api/jobs/cancel {"job_ids": [...]}`.
pub(super) async fn cancel_jobs(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(data) = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return json_error(StatusCode::BAD_REQUEST, "Request body must be valid JSON");
    };
    let Some(Value::Array(ids)) = data.get("job_ids").filter(|_| data.is_object()) else {
        return json_error(StatusCode::BAD_REQUEST, "job_ids must be a list");
    };
    let invalid: Vec<Value> = ids
        .iter()
        .filter(|id| !id.as_str().is_some_and(canonical_uuid))
        .map(|id| match id {
            Value::String(_) => id.clone(),
            other => Value::String(pyjson::repr(other)),
        })
        .collect();
    if !invalid.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &object([
                (
                    "error",
                    Value::String("job_ids contains invalid id(s)".to_owned()),
                ),
                ("invalid_ids", Value::Array(invalid)),
            ]),
        );
    }
    let mut cancelled = false;
    for id in ids.iter().filter_map(Value::as_str) {
        cancelled |= cancel_one(&shared, id);
    }
    ok_json(&object([("cancelled", Value::Bool(cancelled))]))
}
