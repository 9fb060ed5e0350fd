//! ComfyUI: the typed wire protocol (`wire`), the HTTP + WebSocket client
//! that drives one backend (`client`, `ws`), and a faithful fake ComfyUI
//! server for tests, benchmarks and the quick start (`fake`).
//!
//! This module knows nothing of scheduling, the store or gRPC: it imports
//! only `config` (for `ServerConfig`) and the standard crates.

pub mod capabilities;
pub mod client;
pub mod fake;
pub mod tls;
pub mod wire;
pub mod ws;
