//! The fault middleware and the `/__fake/…` control routes.
//!
//! The middleware wraps every ComfyUI route (never the control routes):
//! refused connections are cut, `http_500` answers aiohttp's 500 page and
//! `slow_ms` delays the answer. The connection layer itself (refusing new
//! connections, cutting one) is in `listener`; the switches are in
//! `crate::faults`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::listener::ConnHandle;
use super::reply::{internal_error, json_error, ok_empty, ok_json, status_only};
use crate::faults::FaultUpdate;
use crate::shared::Shared;

/// Applies the HTTP faults to every non-control route.
pub(super) async fn fault_layer(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if shared.faults.refuse_connections() {
        if let Some(ConnectInfo(conn)) = request.extensions().get::<ConnectInfo<ConnHandle>>() {
            conn.kill();
        }
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    let response = if shared.faults.http_500() {
        internal_error()
    } else {
        next.run(request).await
    };
    if let Some(delay) = shared.faults.slow() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    response
}

/// `GET /__fake/faults`: the current switches.
pub(super) async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&shared.faults.snapshot())
}

/// `POST /__fake/faults`: changes the switches given, answers all of them.
pub(super) async fn post_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let update: FaultUpdate = if body.iter().all(u8::is_ascii_whitespace) {
        FaultUpdate::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(update) => update,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid fault update: {e}"),
                );
            }
        }
    };
    shared.faults.apply(&update);
    ok_json(&shared.faults.snapshot())
}

/// `POST /__fake/restart`: the same as `FakeComfy::restart`.
pub(super) async fn post_restart(State(shared): State<Arc<Shared>>) -> Response {
    shared.restart().await;
    ok_empty()
}

/// `GET /__fake/vram`: the device type, its memory and the memory in use, in MiB.
pub(super) async fn get_vram(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&shared.device.json())
}

/// `POST /__fake/vram {"used_mb": N}`: sets the memory in use that `/system_stats` reports;
/// answers like `GET`. A body that is not that object, or N above the total, is a 400.
pub(super) async fn post_vram(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct VramUpdate {
        used_mb: u64,
    }
    let update: VramUpdate = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid vram update, expected {{\"used_mb\": N}}: {e}"),
            );
        }
    };
    match shared.device.set_used_mb(update.used_mb) {
        Ok(()) => ok_json(&shared.device.json()),
        Err(message) => json_error(StatusCode::BAD_REQUEST, &message),
    }
}
