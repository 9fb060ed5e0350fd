//! `GET /ws`: the WebSocket upgrade. It answers the upgrade like aiohttp
//! (and like a dropped socket while `drop_websockets` is on), registers the
//! socket under its `clientId` and hands it to the hub; what is sent on it
//! and when is the hub's and the worker's business.

use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::listener::ConnHandle;
use super::reply::{first, query_pairs, status_only};
use crate::hub;
use crate::shared::Shared;

/// The biggest WebSocket message a client may send.
pub(super) const MAX_WS_MESSAGE: usize = 1024 * 1024;

/// `GET /ws`: the WebSocket upgrade (the `clientId` query names the socket).
pub(super) async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    conn: Option<Extension<ConnectInfo<ConnHandle>>>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Subscribe before checking the switch, so a drop that lands between
    // this check and the upgrade still closes the socket.
    let drops = shared.faults.drop_signal();
    if shared.faults.drop_websockets() {
        if let Some(Extension(ConnectInfo(conn))) = conn {
            conn.kill();
        }
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                "400: No WebSocket UPGRADE hdr: None\n Can \"Upgrade\" only to \"WebSocket\".",
            )
                .into_response();
        }
    };
    let pairs = query_pairs(query.as_deref());
    let sid = match first(&pairs, "clientId") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    };
    let tracker = shared.tracker.clone();
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| {
            let remaining = shared.lock().remaining();
            let registration = shared.hub.register(sid, remaining);
            tracker.track_future(hub::run_socket(
                shared.hub.clone(),
                socket,
                registration,
                drops,
                shared.shutdown.clone(),
            ))
        })
}
