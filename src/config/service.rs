//! `[service]`: where the gRPC server listens, where durable state lives, how large a request may
//! be and how long shutdown waits. Only the settings, their defaults and typed accessors live
//! here; bounds are checked in `validate.rs`, and nothing here opens, binds or creates anything.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// `[service]`: where the gRPC server listens and how the process behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address of the gRPC server. Default: `127.0.0.1:50051`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint. Default: none, meaning
    /// `127.0.0.1:{runtime.metrics_port}` (see [`Config::metrics_addr`]). Bound: must differ
    /// from `listen` unless the port is 0.
    ///
    /// [`Config::metrics_addr`]: super::Config::metrics_addr
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory for durable state, relative to the working directory unless absolute.
    /// Default: `data`. Bound: not empty.
    pub data_dir: PathBuf,
    /// How long shutdown waits for in-flight work before cancelling it, in seconds.
    /// Default: 10. Bound: finite, > 0.
    pub shutdown_grace_seconds: f64,
    /// Largest accepted gRPC request message, in bytes. Default: 32 MiB. Bound: >= 1024.
    pub max_request_bytes: usize,
    /// Threads that run the server's async work (gRPC calls, the executor, the ComfyUI
    /// connections, event streams). Default: 1. Bound: 0..=1024; 0 means one per CPU core.
    /// Store writes, log writing and GPU sampling have threads of their own either way; store
    /// reads run on these threads. One thread is the cheapest per job: work handed from one
    /// thread to another costs a wake-up and a context switch, and orchestrating GPUs needs far
    /// less than a core (PERFORMANCE.md, "One async thread"; ARCHITECTURE.md, "Threads"). With 1,
    /// tokio's current-thread scheduler runs them, so that the responses and events one turn
    /// makes ready for a connection leave in one write.
    pub worker_threads: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051),
            metrics_listen: None,
            data_dir: PathBuf::from("data"),
            shutdown_grace_seconds: 10.0,
            max_request_bytes: 32 * 1024 * 1024,
            worker_threads: 1,
        }
    }
}

impl ServiceConfig {
    /// `shutdown_grace_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn shutdown_grace(&self) -> Duration {
        seconds(self.shutdown_grace_seconds)
    }
}
