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
    /// Share of a backend's GPU memory that may be in use for it to get new work: a backend
    /// whose devices report more in use (total minus free, from `/system_stats`) waits until
    /// it falls back below. Default: 0.9. Bound: 0.1..=1.0.
    pub gpu_memory_fraction: f64,
    /// Whether executions may run on a GPU. `false` places work only on backends whose
    /// devices are all CPUs. Default: true.
    pub enable_gpu: bool,
    /// Device types (`/system_stats` `devices[].type`) in order of preference: among backends
    /// equally loaded, one with a device of an earlier type wins; types not listed (and CPUs)
    /// come after. Default: `["cuda", "mps", "directml"]`. Bound: lowercase names of letters,
    /// digits and `_`, no duplicates.
    pub prefer_gpu_types: Vec<String>,
    /// How often this host's GPUs are sampled (NVML), in seconds (not in the seed).
    /// Default: 1. Bound: finite, > 0.
    pub gpu_sample_interval_seconds: f64,
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
            gpu_sample_interval_seconds: 1.0,
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

    /// `gpu_sample_interval_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn gpu_sample_interval(&self) -> Duration {
        super::seconds(self.gpu_sample_interval_seconds)
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
