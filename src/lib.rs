//! comfy-reality: a gRPC runtime that turns ComfyUI into a reliable,
//! observable service.
//!
//! Imports point one way: `cli -> api -> runtime -> store -> model`; `model`
//! imports none of the others and only `api` knows tonic and `pb`.

pub mod api;
pub mod cli;
pub mod comfy;
pub mod config;
pub mod drain;
pub mod gpu;
pub mod model;
pub mod pb;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use server::{ServeError, serve as run};
