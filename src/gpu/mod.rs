//! The GPUs of this host: a small [`GpuProbe`] seam in front of NVML (`nvml.rs`, through the
//! `nvml-wrapper` crate, loaded at run time) with a fake for tests (`fake.rs`); the
//! [`GpuMonitor`] that samples it on a dedicated blocking thread, keeps the latest readings,
//! sets the per-GPU Prometheus gauges and tracks the peak GPU memory of watched processes
//! (`monitor.rs`); and finding the process that listens on a local port (`process.rs`), so a
//! ComfyUI backend on this host is attributed its GPU memory without configuration.
//!
//! It must not know the scheduler, the executor, the store or tonic: the runtime asks it for
//! readings and watches, and decides what they mean. It imports only `config` and `telemetry`.
//! No NVML call ever runs on an async worker thread.

mod fake;
mod monitor;
mod nvml;
mod process;

pub use fake::FakeGpuProbe;
pub use monitor::{GpuMonitor, GpuSnapshot, ProcessPeak};
pub use nvml::NvmlProbe;
pub use process::find_listening_pid;

/// One GPU of this host, as the probe lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// The driver's index of the GPU (`nvidia-smi`'s index).
    pub index: u32,
    /// The product name (`NVIDIA H200`).
    pub name: String,
    /// The GPU's UUID (`GPU-...`): stable across reboots, unlike the index.
    pub uuid: String,
}

/// One reading of one GPU, in base units. A value the driver does not report on this GPU
/// (power on some boards, temperature in some VMs) is `None` rather than a made-up zero.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GpuReading {
    /// Memory allocated on the GPU, in bytes.
    pub memory_used_bytes: u64,
    /// Memory installed on the GPU, in bytes.
    pub memory_total_bytes: u64,
    /// Share of the last sample period during which a kernel ran, in [0, 1].
    pub utilization_ratio: Option<f64>,
    /// Core temperature, in degrees Celsius.
    pub temperature_celsius: Option<f64>,
    /// Power draw, in watts.
    pub power_watts: Option<f64>,
}

/// GPU memory one process holds on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    /// The process id.
    pub pid: u32,
    /// Memory it holds, in bytes.
    pub used_bytes: u64,
}

/// A failure of the probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The GPU library cannot be used on this host at all (no driver, no library, no
    /// permission): the message says which.
    #[error("gpu monitoring is unavailable: {0}")]
    Unavailable(String),
    /// One query about one GPU failed.
    #[error("gpu {index}: {message}")]
    Device {
        /// The GPU's index.
        index: u32,
        /// What failed.
        message: String,
    },
}

/// What the runtime needs to know about this host's GPUs. Implementations block (NVML calls
/// take microseconds, but they are calls into a C library): call them from the sampler
/// thread, never from an async task.
pub trait GpuProbe: Send + Sync + 'static {
    /// Every GPU of this host, by index.
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError>;

    /// Memory, utilization, temperature and power of the GPU at `index`.
    fn read(&self, index: u32) -> Result<GpuReading, GpuError>;

    /// GPU memory held by each process on the GPU at `index` (compute and graphics
    /// processes; a process in both lists appears once, with the larger amount).
    fn process_memory(&self, index: u32) -> Result<Vec<ProcessMemory>, GpuError>;
}
