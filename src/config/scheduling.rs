//! `[scheduling]`: how workflow executions are admitted (queue length, workflow size), retried,
//! checked for stalls, where their backends are probed from and where their artifacts go (not in
//! the seed). Only settings, defaults and accessors live here; bounds are checked in
//! `validate.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// `[scheduling]`: admission, retries, stall detection, backend probing and artifacts of
/// workflow executions (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingConfig {
    /// Most executions waiting in the runtime's queue; beyond it ExecuteWorkflow answers
    /// RESOURCE_EXHAUSTED. Default: 10000. Bound: >= 1.
    pub max_queue_len: usize,
    /// Longest delay between retries, in seconds (the delay doubles from
    /// `runtime.task_retry_delay_seconds` up to this). Default: 300. Bound: finite, > 0.
    pub retry_max_delay_seconds: f64,
    /// A running prompt with no message from its backend for this long is checked against
    /// history, then interrupted and retried (or failed). One found running before it was
    /// heard to start (it may have begun an instant ago, behind another) gets one more such
    /// wait. Default: 600. Bound: finite, > 0.
    pub stall_timeout_seconds: f64,
    /// How often each backend's health is probed, in seconds. Default: 5. Bound: finite, > 0.
    pub probe_interval_seconds: f64,
    /// Where downloaded outputs are kept, one folder per execution. Default: none, meaning
    /// `<service.data_dir>/artifacts`. Bound: not empty when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_dir: Option<PathBuf>,
    /// Largest workflow JSON accepted, in bytes. Default: 8 MiB. Bound: >= 1024.
    pub max_workflow_bytes: usize,
    /// Most nodes in one workflow. Default: 10000. Bound: >= 1.
    pub max_workflow_nodes: usize,
    /// Prompts handed to each backend at once: the one it runs and those waiting in its own
    /// queue, so that a fast backend starts its next prompt without waiting for the runtime. A
    /// waiting prompt is still taken back when a more urgent execution needs the backend.
    /// Default: 3. Bound: 1 to 64.
    pub backend_pipeline_depth: usize,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            max_queue_len: 10_000,
            retry_max_delay_seconds: 300.0,
            stall_timeout_seconds: 600.0,
            probe_interval_seconds: 5.0,
            artifact_dir: None,
            max_workflow_bytes: 8 * 1024 * 1024,
            max_workflow_nodes: 10_000,
            backend_pipeline_depth: 3,
        }
    }
}

impl SchedulingConfig {
    /// `retry_max_delay_seconds` as a duration.
    pub fn retry_max_delay(&self) -> Duration {
        seconds(self.retry_max_delay_seconds)
    }

    /// `stall_timeout_seconds` as a duration.
    pub fn stall_timeout(&self) -> Duration {
        seconds(self.stall_timeout_seconds)
    }

    /// `probe_interval_seconds` as a duration.
    pub fn probe_interval(&self) -> Duration {
        seconds(self.probe_interval_seconds)
    }
}
