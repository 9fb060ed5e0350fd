//! The fake's HTTP surface: every ComfyUI route under `/x` and `/api/x`
//! (jobs only as `/api/jobs…`), the WebSocket upgrade, the `/__fake/…`
//! control routes, and the connection layer that injects faults (refused
//! and cut connections, slow and failing answers).
//!
//! Handlers stay thin: parse like aiohttp (a body that is not JSON is a 500
//! in `text/plain`), change the queue under its lock, answer with the
//! captured shapes and content types. Validation, execution and WebSocket
//! delivery live in their own modules.
//!
//! This module holds the route table; the rest is split by area:
//!
//! - `listener`: accepting, refusing and cutting connections;
//! - `control`: the fault middleware and the `/__fake/…` routes;
//! - `reply`: answers and request parsing the way aiohttp does them;
//! - `websocket`: the `/ws` upgrade;
//! - `system`: the fixed and read-only routes (`/system_stats`,
//!   `/object_info`, `/models`, …);
//! - `prompts`: `/prompt`, `/queue`, `/interrupt`, `/free`;
//! - `history`: `/history` and `/api/jobs…`;
//! - `view_upload`: `/view` and `/upload/image`.

mod control;
mod history;
mod listener;
mod prompts;
mod reply;
mod system;
mod view_upload;
mod websocket;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};

pub(crate) use listener::{ConnHandle, FakeListener};

use crate::shared::Shared;

use control::{fault_layer, get_faults, get_vram, post_faults, post_restart, post_vram};
use history::{
    cancel_job, cancel_jobs, get_history, get_history_one, get_job, get_job_named_cancel,
    list_jobs, post_history,
};
use prompts::{get_prompt, get_queue, post_free, post_interrupt, post_prompt, post_queue};
use reply::{method_not_allowed, not_found};
use system::{
    embeddings, get_features, models, models_in, object_info_all, object_info_one, system_stats,
};
use view_upload::{upload_image, view};
use websocket::ws_handler;

/// aiohttp's `client_max_size` with ComfyUI's default `--max-upload-size 100`.
const MAX_BODY: usize = 100 * 1024 * 1024;

/// Builds the whole application.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let comfy = comfy_routes();
    let main = Router::new()
        .merge(comfy.clone())
        .nest("/api", comfy)
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(shared.clone(), fault_layer));
    let control = Router::new()
        .route("/__fake/faults", get(get_faults).post(post_faults))
        .route("/__fake/restart", post(post_restart))
        .route("/__fake/vram", get(get_vram).post(post_vram));
    main.merge(control)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// The ComfyUI routes, mounted at `/` and again at `/api`.
fn comfy_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/embeddings", get(embeddings))
        .route("/models", get(models))
        .route("/models/{folder}", get(models_in))
        .route("/view", get(view))
        .route("/system_stats", get(system_stats))
        .route("/features", get(get_features))
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/object_info", get(object_info_all))
        .route("/object_info/{node_class}", get(object_info_one))
        .route("/api/jobs", get(list_jobs))
        .route(
            "/api/jobs/cancel",
            get(get_job_named_cancel).post(cancel_jobs),
        )
        .route("/api/jobs/{job_id}", get(get_job))
        .route("/api/jobs/{job_id}/cancel", post(cancel_job))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_one))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(post_interrupt))
        .route("/free", post(post_free))
        .route("/upload/image", post(upload_image))
        .method_not_allowed_fallback(wrong_method)
}

/// Unknown paths: GET/HEAD reach aiohttp's static route (404), other
/// methods get 405.
async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        not_found()
    } else {
        method_not_allowed()
    }
}

/// A known path with another method: a GET falls through to the static
/// route (404), anything else is a 405.
async fn wrong_method(method: Method) -> Response {
    fallback(method).await
}
