//! How the fake answers and reads requests the way aiohttp and ComfyUI do:
//! JSON written like Python's `json.dumps` with aiohttp's content type, the
//! empty and error answers, and the request helpers (`await request.json()`,
//! `request.rel_url.query`, Python's `in` and iteration on a body).
//!
//! Shared by every route module; it holds no route and no state.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::pyjson::{self, object};

/// A JSON answer as aiohttp's `json_response` writes it.
pub(super) fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        pyjson::dumps(value),
    )
        .into_response()
}

/// `200` with a JSON body.
pub(super) fn ok_json(value: &Value) -> Response {
    json(StatusCode::OK, value)
}

/// `web.Response(status=200)`: empty, no content type.
pub(super) fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// aiohttp's answer to an unhandled exception.
pub(super) fn internal_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

/// An empty answer with only a status.
pub(super) fn status_only(status: StatusCode) -> Response {
    status.into_response()
}

/// The static route's answer to a GET it has no file for.
pub(super) fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::empty(),
    )
        .into_response()
}

/// aiohttp's 405.
pub(super) fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "405: Method Not Allowed",
    )
        .into_response()
}

/// `{"error": message}` with `status`.
pub(super) fn json_error(status: StatusCode, message: &str) -> Response {
    json(
        status,
        &object([("error", Value::String(message.to_owned()))]),
    )
}

/// `await request.json()`: `None` where aiohttp would raise.
pub(super) fn parse_body(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let mut value: Value = serde_json::from_str(text).ok()?;
    pyjson::pythonize(&mut value);
    Some(value)
}

/// The decoded query pairs, in order.
pub(super) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// The first value of `key`, like aiohttp's `query[key]`.
pub(super) fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Python's `key in value`, or `None` where Python raises `TypeError`.
pub(super) fn py_contains(value: &Value, key: &str) -> Option<bool> {
    match value {
        Value::Object(map) => Some(map.contains_key(key)),
        Value::Array(items) => Some(items.iter().any(|i| i.as_str() == Some(key))),
        Value::String(text) => Some(text.contains(key)),
        _ => None,
    }
}

/// Python's iteration over a value, or `None` where it raises.
pub(super) fn py_iter(value: &Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) => Some(items.clone()),
        Value::Object(map) => Some(map.keys().cloned().map(Value::String).collect()),
        Value::String(text) => Some(text.chars().map(|c| Value::String(c.to_string())).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_membership_on_bodies() {
        assert_eq!(
            py_contains(&serde_json::json!(["clear"]), "clear"),
            Some(true)
        );
        assert_eq!(py_contains(&serde_json::json!(5), "clear"), None);
    }
}
