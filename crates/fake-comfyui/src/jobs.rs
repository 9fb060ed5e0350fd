//! The `/api/jobs` view of the queue and history, as ComfyUI's
//! `comfy_execution/jobs.py` builds it: job summaries with status, times,
//! output counts and the preview pick, listing with status filter, sorting
//! and paging, and the query validation with its exact error strings.
//!
//! Pure functions over snapshots of the queue and history.

use serde_json::{Map, Value};

use super::pyjson::{self, object};

/// Every job status, in the order error messages list them.
pub(crate) const STATUSES: [&str; 5] =
    ["pending", "in_progress", "completed", "failed", "cancelled"];

/// Media types the frontend can preview.
const PREVIEWABLE: [&str; 5] = ["images", "video", "audio", "3d", "text"];
/// 3D extensions previewed by file name.
const THREE_D: [&str; 5] = [".obj", ".fbx", ".gltf", ".glb", ".usdz"];
/// Text extensions previewed by file name.
const TEXT_FILES: [&str; 3] = [".txt", ".md", ".json"];
/// Longest text preview.
const TEXT_PREVIEW_MAX: usize = 1024;

/// The parsed query of `GET /api/jobs`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListQuery {
    /// Statuses to include; `None` for all.
    pub(crate) statuses: Option<Vec<String>>,
    /// `workflow_id` filter.
    pub(crate) workflow_id: Option<String>,
    /// Sort by `execution_duration` instead of `created_at`.
    pub(crate) by_duration: bool,
    /// Descending order.
    pub(crate) descending: bool,
    /// Page size; `None` for all.
    pub(crate) limit: Option<i64>,
    /// Items skipped.
    pub(crate) offset: i64,
}

/// Parses the query pairs, or returns the 400 error string.
pub(crate) fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, String> {
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let mut statuses = None;
    if let Some(param) = get("status").filter(|p| !p.is_empty()) {
        let wanted: Vec<String> = param
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let invalid: Vec<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|s| !STATUSES.contains(s))
            .collect();
        if !invalid.is_empty() {
            return Err(format!(
                "Invalid status value(s): {}. Valid values: {}",
                invalid.join(", "),
                STATUSES.join(", ")
            ));
        }
        statuses = Some(wanted);
    }
    let sort_by = get("sort_by").unwrap_or("created_at").to_lowercase();
    if sort_by != "created_at" && sort_by != "execution_duration" {
        return Err("sort_by must be 'created_at' or 'execution_duration'".to_owned());
    }
    let sort_order = get("sort_order").unwrap_or("desc").to_lowercase();
    if sort_order != "asc" && sort_order != "desc" {
        return Err("sort_order must be 'asc' or 'desc'".to_owned());
    }
    let mut limit = None;
    if let Some(raw) = get("limit") {
        let value = parse_int(raw).ok_or_else(|| "limit must be an integer".to_owned())?;
        if value <= 0 {
            return Err("limit must be a positive integer".to_owned());
        }
        limit = Some(value);
    }
    let mut offset = 0;
    if let Some(raw) = get("offset") {
        offset = parse_int(raw)
            .ok_or_else(|| "offset must be an integer".to_owned())?
            .max(0);
    }
    Ok(ListQuery {
        statuses,
        workflow_id: get("workflow_id").map(str::to_owned),
        by_duration: sort_by == "execution_duration",
        descending: sort_order == "desc",
        limit,
        offset,
    })
}

/// Python's `int(str)` for query values, saturated to `i64`.
pub(crate) fn parse_int(raw: &str) -> Option<i64> {
    match pyjson::parse_int_literal(raw)? {
        pyjson::Numeric::Int { negative, digits } => {
            let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX);
            Some(if negative { -magnitude } else { magnitude })
        }
        pyjson::Numeric::Float(_) => None,
    }
}

/// `_extract_job_metadata`: `create_time` and the workflow id.
fn metadata(extra_data: &Value) -> (Value, Value) {
    let create_time = extra_data
        .get("create_time")
        .cloned()
        .unwrap_or(Value::Null);
    let workflow_id = extra_data
        .get("extra_pnginfo")
        .and_then(|p| p.get("workflow"))
        .and_then(|w| w.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    (create_time, workflow_id)
}

/// `prune_dict`: drops null values.
fn pruned(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in pairs {
        if !value.is_null() {
            map.insert(key.to_owned(), value);
        }
    }
    map
}

/// `normalize_queue_item` for a `[number, id, prompt, extra_data, outputs]` tuple.
pub(crate) fn queue_job(tuple: &Value, status: &str) -> Value {
    let priority = tuple.get(0).cloned().unwrap_or(Value::Null);
    let id = tuple.get(1).cloned().unwrap_or(Value::Null);
    let extra_data = tuple.get(3).cloned().unwrap_or(Value::Null);
    let (create_time, workflow_id) = metadata(&extra_data);
    Value::Object(pruned(vec![
        ("id", id),
        ("status", Value::String(status.to_owned())),
        ("priority", priority),
        ("create_time", create_time),
        ("outputs_count", Value::from(0)),
        ("previewable_outputs_count", Value::from(0)),
        ("workflow_id", workflow_id),
    ]))
}

/// `normalize_history_item`; with `full`, the single-job detail fields.
pub(crate) fn history_job(prompt_id: &str, entry: &Value, full: bool) -> Value {
    let tuple = entry.get("prompt").cloned().unwrap_or(Value::Null);
    let priority = tuple.get(0).cloned().unwrap_or(Value::Null);
    let prompt = tuple.get(2).cloned().unwrap_or(Value::Null);
    let extra_data = tuple.get(3).cloned().unwrap_or(Value::Null);
    let (create_time, workflow_id) = metadata(&extra_data);
    let status_info = entry.get("status").cloned().unwrap_or(Value::Null);
    let outputs = entry
        .get("outputs")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let (outputs_count, preview) = outputs_summary(&outputs);
    let previewable = count_previewable(&outputs);

    let mut start = Value::Null;
    let mut end = Value::Null;
    let mut error = Value::Null;
    let mut interrupted = false;
    if let Some(Value::Array(messages)) = status_info.get("messages") {
        for message in messages {
            let (Some(Value::String(event)), Some(data @ Value::Object(_))) =
                (message.get(0), message.get(1))
            else {
                continue;
            };
            match event.as_str() {
                "execution_start" => start = data.get("timestamp").cloned().unwrap_or(Value::Null),
                "execution_success" | "execution_error" | "execution_interrupted" => {
                    end = data.get("timestamp").cloned().unwrap_or(Value::Null);
                    if event == "execution_error" {
                        error = data.clone();
                    } else if event == "execution_interrupted" {
                        interrupted = true;
                    }
                }
                _ => {}
            }
        }
    }
    let status = match status_info.get("status_str").and_then(Value::as_str) {
        Some("error") if interrupted => "cancelled",
        Some("error") => "failed",
        _ => "completed",
    };
    let mut job = pruned(vec![
        ("id", Value::String(prompt_id.to_owned())),
        ("status", Value::String(status.to_owned())),
        ("priority", priority),
        ("create_time", create_time),
        ("execution_start_time", start),
        ("execution_end_time", end),
        ("execution_error", error),
        ("outputs_count", Value::from(outputs_count)),
        ("previewable_outputs_count", Value::from(previewable)),
        ("preview_output", preview.unwrap_or(Value::Null)),
        ("workflow_id", workflow_id),
    ]);
    if full {
        job.insert("outputs".to_owned(), normalize_outputs(&outputs));
        job.insert("execution_status".to_owned(), status_info);
        job.insert(
            "workflow".to_owned(),
            object([("prompt", prompt), ("extra_data", extra_data)]),
        );
    }
    Value::Object(job)
}

/// Whether a file name ends with one of `extensions`.
fn has_extension(name: &str, extensions: &[&str]) -> bool {
    let lower = name.to_lowercase();
    extensions.iter().any(|e| lower.ends_with(e))
}

/// `normalize_output_item`: a 3D file name string becomes a file dict.
fn normalize_item(item: &Value) -> Option<Value> {
    match item {
        Value::String(name) if has_extension(name, &THREE_D) => Some(object([
            ("filename", item.clone()),
            ("type", Value::String("output".to_owned())),
            ("subfolder", Value::String(String::new())),
            ("mediaType", Value::String("3d".to_owned())),
        ])),
        Value::Object(_) => Some(item.clone()),
        _ => None,
    }
}

/// `normalize_outputs`.
fn normalize_outputs(outputs: &Value) -> Value {
    let Value::Object(nodes) = outputs else {
        return outputs.clone();
    };
    let mut normalized = Map::new();
    for (node_id, node_outputs) in nodes {
        let Value::Object(media) = node_outputs else {
            normalized.insert(node_id.clone(), node_outputs.clone());
            continue;
        };
        let mut node = Map::new();
        for (media_type, items) in media {
            let Value::Array(list) = items else {
                node.insert(media_type.clone(), items.clone());
                continue;
            };
            if media_type == "animated" {
                node.insert(media_type.clone(), items.clone());
                continue;
            }
            let list = list
                .iter()
                .filter(|i| !i.is_null())
                .map(|i| normalize_item(i).unwrap_or_else(|| i.clone()))
                .collect();
            node.insert(media_type.clone(), Value::Array(list));
        }
        normalized.insert(node_id.clone(), Value::Object(node));
    }
    Value::Object(normalized)
}

/// `is_previewable`.
fn is_previewable(media_type: &str, item: &Value) -> bool {
    if PREVIEWABLE.contains(&media_type) {
        return true;
    }
    let format = item
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if format.starts_with("video/") || format.starts_with("audio/") {
        return true;
    }
    let name = item
        .get("filename")
        .and_then(Value::as_str)
        .unwrap_or_default();
    has_extension(name, &THREE_D) || has_extension(name, &TEXT_FILES)
}

/// `is_text_preview`.
fn is_text_preview(media_type: &str, item: &Value) -> bool {
    media_type == "text"
        || has_extension(
            item.get("filename")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            &TEXT_FILES,
        )
}

/// `get_outputs_summary`: output count and the preview pick.
fn outputs_summary(outputs: &Value) -> (u64, Option<Value>) {
    let mut count = 0;
    let mut preview: Option<Value> = None;
    let mut fallback: Option<Value> = None;
    let mut text_file: Option<Value> = None;
    let mut text: Option<Value> = None;
    let Value::Object(nodes) = outputs else {
        return (0, None);
    };
    for (node_id, node_outputs) in nodes {
        let Value::Object(media) = node_outputs else {
            continue;
        };
        for (media_type, items) in media {
            let Value::Array(items) = items else {
                continue;
            };
            if media_type == "animated" {
                continue;
            }
            for item in items {
                let item = if item.is_object() {
                    item.clone()
                } else {
                    match normalize_item(item) {
                        Some(normalized) => normalized,
                        None => {
                            if media_type == "text" && preview.is_none() && text.is_none() {
                                let value = match item {
                                    Value::Array(parts) => {
                                        parts.first().map(pyjson::str_of).unwrap_or_default()
                                    }
                                    other => pyjson::str_of(other),
                                };
                                let mut entry = Map::new();
                                if value.chars().count() <= TEXT_PREVIEW_MAX {
                                    entry.insert("content".to_owned(), Value::String(value));
                                } else {
                                    entry.insert(
                                        "content".to_owned(),
                                        Value::String(
                                            value.chars().take(TEXT_PREVIEW_MAX).collect(),
                                        ),
                                    );
                                    entry.insert("truncated".to_owned(), Value::Bool(true));
                                }
                                entry.insert("nodeId".to_owned(), Value::String(node_id.clone()));
                                entry.insert(
                                    "mediaType".to_owned(),
                                    Value::String(media_type.clone()),
                                );
                                text = Some(Value::Object(entry));
                            }
                            continue;
                        }
                    }
                };
                count += 1;
                if preview.is_some() || !is_previewable(media_type, &item) {
                    continue;
                }
                let mut enriched = item.as_object().cloned().unwrap_or_default();
                enriched.insert("nodeId".to_owned(), Value::String(node_id.clone()));
                if !enriched.contains_key("mediaType") {
                    enriched.insert("mediaType".to_owned(), Value::String(media_type.clone()));
                }
                let enriched = Value::Object(enriched);
                if is_text_preview(media_type, &item) {
                    text_file.get_or_insert(enriched);
                } else if item.get("type").and_then(Value::as_str) == Some("output") {
                    preview = Some(enriched);
                } else {
                    fallback.get_or_insert(enriched);
                }
            }
        }
    }
    (count, preview.or(fallback).or(text_file).or(text))
}

/// `count_previewable_outputs`.
fn count_previewable(outputs: &Value) -> u64 {
    let Value::Object(nodes) = outputs else {
        return 0;
    };
    let mut count = 0;
    for node_outputs in nodes.values() {
        let Value::Object(media) = node_outputs else {
            continue;
        };
        for (media_type, items) in media {
            let Value::Array(items) = items else {
                continue;
            };
            if media_type == "animated" {
                continue;
            }
            for item in items {
                let Some(item) = normalize_item(item) else {
                    continue;
                };
                if is_previewable(media_type, &item) {
                    count += 1;
                }
            }
        }
    }
    count
}

/// `get_all_jobs` + paging: the page and the total before paging.
pub(crate) fn list(
    query: &ListQuery,
    running: &[Value],
    pending: &[Value],
    history: &[(String, std::sync::Arc<Value>)],
) -> (Vec<Value>, usize) {
    let wants = |status: &str| {
        query
            .statuses
            .as_ref()
            .is_none_or(|s| s.iter().any(|w| w == status))
    };
    let mut jobs = Vec::new();
    if wants("in_progress") {
        jobs.extend(running.iter().map(|t| queue_job(t, "in_progress")));
    }
    if wants("pending") {
        jobs.extend(pending.iter().map(|t| queue_job(t, "pending")));
    }
    if wants("completed") || wants("failed") || wants("cancelled") {
        for (id, entry) in history {
            let job = history_job(id, entry, false);
            if job
                .get("status")
                .and_then(Value::as_str)
                .is_some_and(&wants)
            {
                jobs.push(job);
            }
        }
    }
    if let Some(workflow_id) = &query.workflow_id {
        jobs.retain(|j| j.get("workflow_id").and_then(Value::as_str) == Some(workflow_id.as_str()));
    }
    let key = |job: &Value| -> f64 {
        let number = |name: &str| job.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        if query.by_duration {
            let (start, end) = (number("execution_start_time"), number("execution_end_time"));
            if start != 0.0 && end != 0.0 {
                end - start
            } else {
                0.0
            }
        } else {
            number("create_time")
        }
    };
    jobs.sort_by(|a, b| {
        let ordering = key(a)
            .partial_cmp(&key(b))
            .unwrap_or(std::cmp::Ordering::Equal);
        if query.descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    let total = jobs.len();
    let offset = usize::try_from(query.offset).unwrap_or(0);
    let mut page: Vec<Value> = jobs.into_iter().skip(offset).collect();
    if let Some(limit) = query.limit {
        page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    (page, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_errors_match_comfyui() {
        let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            parse_list_query(&pairs(&[("status", "bogus")])).unwrap_err(),
            "Invalid status value(s): bogus. Valid values: pending, in_progress, completed, failed, cancelled"
        );
        assert_eq!(
            parse_list_query(&pairs(&[("limit", "0")])).unwrap_err(),
            "limit must be a positive integer"
        );
        assert_eq!(
            parse_list_query(&pairs(&[("limit", "x")])).unwrap_err(),
            "limit must be an integer"
        );
        let query =
            parse_list_query(&pairs(&[("status", "completed, failed"), ("offset", "-3")])).unwrap();
        assert_eq!(
            query.statuses,
            Some(vec!["completed".to_owned(), "failed".to_owned()])
        );
        assert_eq!(query.offset, 0);
    }

    #[test]
    fn error_job_counts_and_previews_like_the_capture() {
        let entry = json!({
            "prompt": [21, "id", {}, {"client_id": "c", "create_time": 5}, ["3"]],
            "outputs": {
                "3": {"files": [{"filename": "err_sibling_00001_.bin", "subfolder": "proto", "type": "output"}]},
                "1": {"text": ["slept 0.3s in 3 steps"]}
            },
            "status": {"status_str": "error", "completed": false, "messages": [
                ["execution_start", {"prompt_id": "id", "timestamp": 6}],
                ["execution_error", {"prompt_id": "id", "timestamp": 9}]
            ]},
            "meta": {}
        });
        let job = history_job("id", &entry, false);
        assert_eq!(job["status"], "failed");
        assert_eq!(job["outputs_count"], 1);
        assert_eq!(job["previewable_outputs_count"], 0);
        assert_eq!(
            job["preview_output"],
            json!({"content": "slept 0.3s in 3 steps", "nodeId": "1", "mediaType": "text"})
        );
        assert_eq!(job["execution_start_time"], 6);
        assert_eq!(job["execution_end_time"], 9);
        assert!(job.get("outputs").is_none());
    }
}
