//! The fixed and read-only routes: `/embeddings`, `/models`,
//! `/models/{folder}`, `/features`, `/system_stats` and `/object_info`.
//!
//! They answer the captured shapes and never touch the queue or history.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::reply::{ok_json, status_only};
use crate::nodes::catalog;
use crate::pyjson::object;
use crate::shared::{Shared, features};

/// The model folders of the captured server (`GET /models`).
pub(super) const MODEL_FOLDERS: [&str; 27] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "datasets",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "background_removal",
    "frame_interpolation",
    "geometry_estimation",
    "optical_flow",
    "detection",
];

/// `GET /embeddings`: none.
pub(super) async fn embeddings() -> Response {
    ok_json(&Value::Array(Vec::new()))
}

/// `GET /models`: the captured model folders.
pub(super) async fn models() -> Response {
    ok_json(&Value::Array(
        MODEL_FOLDERS
            .iter()
            .map(|f| Value::String((*f).to_owned()))
            .collect(),
    ))
}

/// `GET /models/{folder}`: no models in a known folder, 404 otherwise.
pub(super) async fn models_in(Path(folder): Path<String>) -> Response {
    if MODEL_FOLDERS.contains(&folder.as_str()) {
        ok_json(&Value::Array(Vec::new()))
    } else {
        status_only(StatusCode::NOT_FOUND)
    }
}

/// `GET /features`.
pub(super) async fn get_features() -> Response {
    ok_json(&features())
}

/// `GET /system_stats`: the captured CPU machine, with this fake's port, version and device
/// (`--device-type`, `--vram-total-mb`, the memory in use set through `/__fake/vram`).
pub(super) async fn system_stats(State(shared): State<Arc<Shared>>) -> Response {
    let package = |name: &str, version: &str| {
        object([
            ("name", Value::String(name.to_owned())),
            ("installed", Value::String(version.to_owned())),
            ("required", Value::String(version.to_owned())),
        ])
    };
    let ram_total = Value::from(25_276_510_208u64);
    let ram_free = Value::from(23_749_312_512u64);
    let port = shared.port.to_string();
    let mut args = vec!["main.py"];
    if shared.device.is_cpu() {
        args.push("--cpu");
    }
    args.extend([
        "--listen",
        "127.0.0.1",
        "--port",
        &port,
        "--disable-auto-launch",
    ]);
    let argv: Vec<Value> = args
        .iter()
        .map(|a| Value::String((*a).to_owned()))
        .collect();
    let stats = object([
        (
            "system",
            object([
                ("os", Value::String("linux".to_owned())),
                ("ram_total", ram_total),
                ("ram_free", ram_free),
                (
                    "comfyui_version",
                    Value::String(shared.settings.version.clone()),
                ),
                (
                    "required_frontend_version",
                    Value::String("1.49.6".to_owned()),
                ),
                (
                    "installed_templates_version",
                    Value::String("0.11.44".to_owned()),
                ),
                (
                    "required_templates_version",
                    Value::String("0.11.44".to_owned()),
                ),
                (
                    "comfy_package_versions",
                    Value::Array(vec![
                        package("comfyui-frontend-package", "1.49.6"),
                        package("comfyui-workflow-templates", "0.11.44"),
                        package("comfyui-embedded-docs", "0.5.10"),
                        package("comfy-kitchen", "0.2.31"),
                        package("comfy-aimdo", "0.4.13"),
                    ]),
                ),
                (
                    "python_version",
                    Value::String("3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]".to_owned()),
                ),
                ("pytorch_version", Value::String("2.11.0+cu130".to_owned())),
                ("embedded_python", Value::Bool(false)),
                ("deploy_environment", Value::String("local-git".to_owned())),
                ("argv", Value::Array(argv)),
            ]),
        ),
        ("devices", shared.device.system_stats_devices()),
    ]);
    ok_json(&stats)
}

/// `GET /object_info`: every node class.
pub(super) async fn object_info_all(State(shared): State<Arc<Shared>>) -> Response {
    ok_json(&catalog().object_info_all(&shared.dirs))
}

/// `GET /object_info/{node_class}`.
pub(super) async fn object_info_one(
    State(shared): State<Arc<Shared>>,
    Path(node_class): Path<String>,
) -> Response {
    ok_json(&catalog().object_info_one(&node_class, &shared.dirs))
}
