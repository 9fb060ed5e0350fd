//! [`FakeGpuProbe`]: a [`GpuProbe`] whose GPUs, readings and per-process memory the caller
//! sets, so the sampling, the gauges and the per-task attribution are tested on any machine.
//! Public because the integration tests inject it into an in-process server; the product
//! never constructs it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{GpuDevice, GpuError, GpuProbe, GpuReading, ProcessMemory};

/// A probe over GPUs that exist only in memory.
#[derive(Debug, Default)]
pub struct FakeGpuProbe {
    /// Every GPU with its current reading and processes.
    state: Mutex<BTreeMap<u32, FakeGpu>>,
}

#[derive(Debug, Clone)]
struct FakeGpu {
    device: GpuDevice,
    reading: GpuReading,
    processes: BTreeMap<u32, u64>,
    failing: bool,
}

impl FakeGpuProbe {
    /// A probe with no GPUs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a GPU with `total_bytes` of memory, none of it in use.
    pub fn add_gpu(&self, index: u32, name: &str, total_bytes: u64) {
        self.lock().insert(
            index,
            FakeGpu {
                device: GpuDevice {
                    index,
                    name: name.to_owned(),
                    uuid: format!("GPU-fake-{index:04}"),
                },
                reading: GpuReading {
                    memory_total_bytes: total_bytes,
                    ..GpuReading::default()
                },
                processes: BTreeMap::new(),
                failing: false,
            },
        );
    }

    /// Sets the reading of GPU `index` (its total memory included); unknown GPUs are ignored.
    pub fn set_reading(&self, index: u32, reading: GpuReading) {
        if let Some(gpu) = self.lock().get_mut(&index) {
            gpu.reading = reading;
        }
    }

    /// Sets the memory process `pid` holds on GPU `index` (0 removes it); the GPU's memory in
    /// use follows: it is the sum of its processes' memory.
    pub fn set_process_memory(&self, index: u32, pid: u32, bytes: u64) {
        if let Some(gpu) = self.lock().get_mut(&index) {
            if bytes == 0 {
                gpu.processes.remove(&pid);
            } else {
                gpu.processes.insert(pid, bytes);
            }
            gpu.reading.memory_used_bytes = gpu.processes.values().sum();
        }
    }

    /// Makes every query about GPU `index` fail (or succeed again).
    pub fn set_failing(&self, index: u32, failing: bool) {
        if let Some(gpu) = self.lock().get_mut(&index) {
            gpu.failing = failing;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, FakeGpu>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gpu(&self, index: u32) -> Result<FakeGpu, GpuError> {
        match self.lock().get(&index) {
            Some(gpu) if !gpu.failing => Ok(gpu.clone()),
            Some(_) => Err(GpuError::Device {
                index,
                message: "the fake gpu was told to fail".into(),
            }),
            None => Err(GpuError::Device {
                index,
                message: "no such gpu".into(),
            }),
        }
    }
}

impl GpuProbe for FakeGpuProbe {
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
        Ok(self.lock().values().map(|gpu| gpu.device.clone()).collect())
    }

    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        Ok(self.gpu(index)?.reading)
    }

    fn process_memory(&self, index: u32) -> Result<Vec<ProcessMemory>, GpuError> {
        Ok(self
            .gpu(index)?
            .processes
            .into_iter()
            .map(|(pid, used_bytes)| ProcessMemory { pid, used_bytes })
            .collect())
    }
}
