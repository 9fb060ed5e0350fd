//! ComfyUI: the typed wire protocol (`wire`) and the HTTP + WebSocket client
//! that drives one backend (`client`, `ws`). The fake ComfyUI that tests,
//! benchmarks and the quick start use is its own crate,
//! `comfy-reality-fake-comfyui` (`crates/fake-comfyui/`).
//!
//! This module knows nothing of scheduling, the store or gRPC: it imports
//! only `config` (for `ServerConfig`) and the standard crates.

pub mod capabilities;
pub mod client;
pub mod tls;
pub mod wire;
pub mod ws;
