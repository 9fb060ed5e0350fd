//! `[executor]`: the seed's `TaskExecutorConfig`: resource limits, GPU use, optimization and the
//! result cache of one execution. Only settings, defaults and accessors live here; bounds are
//! checked in `validate.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[executor]`: the seed's `TaskExecutorConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskExecutorConfig {
    /// Memory limit per execution, in MiB. Default: none (unlimited). Bound: >= 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
    /// CPU limit per execution, in percent. Default: none (unlimited). Bound: 0..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f64>,
    /// Share of GPU memory an execution may use. Default: 0.9. Bound: 0.1..=1.0.
    pub gpu_memory_fraction: f64,
    /// Whether executions may use a GPU. Default: true.
    pub enable_gpu: bool,
    /// GPU kinds in order of preference. Default: `["cuda", "mps", "directml"]`.
    pub prefer_gpu_types: Vec<String>,
    /// Whether workflow optimization is applied. Default: true.
    pub enable_optimization: bool,
    /// How hard to optimize. Default: `O2`. One of `O0`, `O1`, `O2`, `O3`.
    pub optimization_level: OptimizationLevel,
    /// Whether execution results are cached. Default: true.
    pub enable_cache: bool,
    /// Cache size, in MiB. Default: 1000. Bound: >= 0 (the type forbids negatives).
    pub cache_size_mb: u64,
    /// How long a cache entry lives, in seconds. Default: 3600. Bound: >= 0 (the type forbids
    /// negatives).
    pub cache_ttl_seconds: u64,
}

impl Default for TaskExecutorConfig {
    fn default() -> Self {
        Self {
            max_memory_mb: None,
            max_cpu_percent: None,
            gpu_memory_fraction: 0.9,
            enable_gpu: true,
            prefer_gpu_types: vec!["cuda".into(), "mps".into(), "directml".into()],
            enable_optimization: true,
            optimization_level: OptimizationLevel::O2,
            enable_cache: true,
            cache_size_mb: 1000,
            cache_ttl_seconds: 3600,
        }
    }
}

impl TaskExecutorConfig {
    /// `cache_ttl_seconds` as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }
}

/// How hard workflows are optimized (`executor.optimization_level`), spelled `O0`..`O3`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum OptimizationLevel {
    /// No optimization.
    O0,
    /// Light optimization.
    O1,
    /// Default optimization.
    #[default]
    O2,
    /// Aggressive optimization.
    O3,
}
