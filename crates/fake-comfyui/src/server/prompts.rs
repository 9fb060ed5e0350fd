//! Prompts and the queue: `GET`/`POST /prompt`, `GET`/`POST /queue`,
//! `POST /interrupt` and `POST /free`.
//!
//! Handlers parse the body like ComfyUI (including its quirks on bodies that
//! are not objects), change the queue under its lock and wake the worker;
//! validation is `crate::validate`'s and execution the worker's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::reply::{internal_error, json, ok_empty, ok_json, parse_body, py_contains, py_iter};
use crate::executor::now_ms;
use crate::pyjson::{self, object};
use crate::queue::{Priority, QueueItem};
use crate::shared::Shared;
use crate::validate::{self, Rejected};

/// `extra_data` keys ComfyUI keeps out of `/queue` and the history.
pub(super) const SENSITIVE_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

/// `GET /prompt`: the queue size.
pub(super) async fn get_prompt(State(shared): State<Arc<Shared>>) -> Response {
    let info = shared.lock().queue_info();
    ok_json(&info)
}

/// A 400 of `POST /prompt`.
pub(super) fn prompt_error(error: Value, node_errors: Value) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &object([("error", error), ("node_errors", node_errors)]),
    )
}

/// The `no_prompt` 400.
pub(super) fn no_prompt() -> Response {
    prompt_error(
        object([
            ("type", Value::String("no_prompt".to_owned())),
            ("message", Value::String("No prompt provided".to_owned())),
            ("details", Value::String("No prompt provided".to_owned())),
            ("extra_info", Value::Object(Map::new())),
        ]),
        Value::Object(Map::new()),
    )
}

/// Whether a client-chosen prompt id is a canonical lowercase UUID.
pub(super) fn canonical_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// `POST /prompt`: validates and queues a prompt, with ComfyUI's checks in its order.
pub(super) async fn post_prompt(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(data) = parse_body(&body) else {
        return internal_error();
    };
    let request = match data {
        Value::Object(map) => map,
        other => {
            // `"number" in json_data` and friends on a non-dict body.
            let (Some(has_number), Some(has_prompt)) =
                (py_contains(&other, "number"), py_contains(&other, "prompt"))
            else {
                return internal_error();
            };
            if has_number {
                return internal_error();
            }
            shared.lock().next_number();
            return if has_prompt {
                internal_error()
            } else {
                no_prompt()
            };
        }
    };

    let number = match request.get("number") {
        Some(raw) => match pyjson::py_float(raw) {
            Ok(x) if x.is_finite() => Priority::Explicit(x),
            _ => return internal_error(),
        },
        None => {
            let n = shared.lock().next_number();
            let front = request.get("front").is_some_and(pyjson::truthy);
            Priority::Counter(if front { -n } else { n })
        }
    };
    let Some(prompt) = request.get("prompt") else {
        return no_prompt();
    };
    let prompt_id = match request.get("prompt_id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(id)) if canonical_uuid(id) => id.clone(),
        Some(_) => {
            return prompt_error(
                object([
                    ("type", Value::String("invalid_prompt_id".to_owned())),
                    ("message", Value::String("prompt_id must be a valid UUID".to_owned())),
                    (
                        "details",
                        Value::String(
                            "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one"
                                .to_owned(),
                        ),
                    ),
                    ("extra_info", Value::Object(Map::new())),
                ]),
                Value::Object(Map::new()),
            );
        }
    };
    let mut prompt = match prompt {
        Value::Object(map) => map.clone(),
        Value::Array(items) if items.is_empty() => Map::new(),
        Value::String(text) if text.is_empty() => Map::new(),
        _ => return internal_error(),
    };
    let verdict = validate::validate_prompt(
        &mut prompt,
        request.get("partial_execution_targets"),
        &shared.dirs,
    );

    let mut extra_data = match request.get("extra_data") {
        None => Some(Map::new()),
        Some(Value::Object(map)) => Some(map.clone()),
        Some(_) => None,
    };
    if let Some(client_id) = request.get("client_id") {
        match extra_data.as_mut() {
            Some(extra) => {
                extra.insert("client_id".to_owned(), client_id.clone());
            }
            None => return internal_error(),
        }
    }
    if let (Some(extra), Some(source)) = (
        extra_data.as_mut(),
        headers
            .get("comfy-usage-source")
            .and_then(|v| v.to_str().ok()),
    ) && !extra.contains_key("comfy_usage_source")
        && !source.is_empty()
    {
        extra.insert(
            "comfy_usage_source".to_owned(),
            Value::String(source.to_owned()),
        );
    }

    let accepted = match verdict {
        Ok(accepted) => accepted,
        Err(Rejected::Internal) => return internal_error(),
        Err(Rejected::Invalid(body)) => return prompt_error(body.error, body.node_errors),
    };
    let Some(mut extra_data) = extra_data else {
        return internal_error();
    };
    let mut sensitive = Map::new();
    for key in SENSITIVE_KEYS {
        if let Some(value) = extra_data.shift_remove(key) {
            sensitive.insert(key.to_owned(), value);
        }
    }
    extra_data.insert("create_time".to_owned(), Value::from(now_ms()));
    let item = Arc::new(QueueItem::new(
        number,
        prompt_id.clone(),
        prompt,
        extra_data,
        sensitive,
        accepted.outputs,
    ));
    {
        let mut state = shared.lock();
        state.push(item);
        shared.broadcast_status(&state);
    }
    shared.wake.notify_one();
    ok_json(&object([
        ("prompt_id", Value::String(prompt_id)),
        ("number", number.to_value()),
        ("node_errors", accepted.node_errors),
    ]))
}

/// `GET /queue`: the running and pending items.
pub(super) async fn get_queue(State(shared): State<Arc<Shared>>) -> Response {
    let (running, pending) = {
        let state = shared.lock();
        let running: Vec<Value> = state.running.iter().map(|i| i.tuple.clone()).collect();
        let pending: Vec<Value> = state.pending().iter().map(|i| i.tuple.clone()).collect();
        (running, pending)
    };
    ok_json(&object([
        ("queue_running", Value::Array(running)),
        ("queue_pending", Value::Array(pending)),
    ]))
}

/// The `clear`/`delete` body of `POST /queue` and `POST /history`.
pub(super) enum Edit {
    /// `clear: true`.
    Clear,
    /// One id of `delete`.
    Delete(Value),
}

/// Reads `{"clear": bool, "delete": [ids]}` the way ComfyUI does; `None`
/// where it would raise.
pub(super) fn parse_edit(body: &[u8]) -> Option<Vec<Edit>> {
    let data = parse_body(body)?;
    let mut edits = Vec::new();
    if py_contains(&data, "clear")? {
        let clear = data.get("clear")?;
        if pyjson::truthy(clear) {
            edits.push(Edit::Clear);
        }
    }
    if py_contains(&data, "delete")? {
        let ids = py_iter(data.get("delete")?)?;
        edits.extend(ids.into_iter().map(Edit::Delete));
    }
    Some(edits)
}

/// `POST /queue`: clears or deletes pending items.
pub(super) async fn post_queue(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(edits) = parse_edit(&body) else {
        return internal_error();
    };
    let mut state = shared.lock();
    for edit in edits {
        match edit {
            Edit::Clear => {
                state.clear_pending();
                shared.broadcast_status(&state);
            }
            Edit::Delete(id) => {
                let Some(id) = id.as_str() else { continue };
                for _ in 0..state.delete_pending(id) {
                    shared.broadcast_status(&state);
                }
            }
        }
    }
    ok_empty()
}

/// `POST /interrupt`: the given prompt if it runs, else whatever runs.
pub(super) async fn post_interrupt(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let data = if std::str::from_utf8(&body).is_err() {
        return internal_error();
    } else {
        parse_body(&body).unwrap_or_else(|| Value::Object(Map::new()))
    };
    let Value::Object(data) = data else {
        return internal_error();
    };
    match data.get("prompt_id").filter(|v| pyjson::truthy(v)) {
        Some(Value::String(id)) => {
            let state = shared.lock();
            shared.interrupt_if_running(&state, id);
        }
        Some(_) => {}
        None => shared.interrupt_any(),
    }
    ok_empty()
}

/// `POST /free`: flags the worker to unload models or clear the output cache.
pub(super) async fn post_free(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(Value::Object(data)) = parse_body(&body) else {
        return internal_error();
    };
    {
        let mut state = shared.lock();
        if data.get("unload_models").is_some_and(pyjson::truthy) {
            state.flags.unload_models = true;
        }
        if data.get("free_memory").is_some_and(pyjson::truthy) {
            state.flags.free_memory = true;
        }
    }
    shared.wake.notify_one();
    ok_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_only() {
        assert!(canonical_uuid("a12acd6c-351a-4f4a-9bf2-99c14525783c"));
        assert!(!canonical_uuid("A12ACD6C-351A-4F4A-9BF2-99C14525783C"));
        assert!(!canonical_uuid("a12acd6c351a4f4a9bf299c14525783c"));
        assert!(!canonical_uuid("not-a-uuid"));
    }
}
