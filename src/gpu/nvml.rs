//! [`NvmlProbe`]: the [`GpuProbe`] over NVIDIA's management library through `nvml-wrapper`.
//! The library is opened at run time (`dlopen`), so one binary runs on hosts with and without
//! an NVIDIA driver: [`NvmlProbe::load`] fails with a reason instead of the process failing to
//! start.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;

use super::{GpuDevice, GpuError, GpuProbe, GpuReading, ProcessMemory};

/// The library names tried in order: the driver ships the versioned name; the unversioned one
/// exists only where the development package is installed.
#[cfg(target_os = "linux")]
const LIBRARY_NAMES: &[&str] = &["libnvidia-ml.so.1", "libnvidia-ml.so"];
#[cfg(target_os = "windows")]
const LIBRARY_NAMES: &[&str] = &["nvml.dll"];
#[cfg(not(any(target_os = "linux", target_os = "windows")))]
const LIBRARY_NAMES: &[&str] = &[];

/// NVML, initialised once and shared by every query (`Nvml` is `Send + Sync`).
pub struct NvmlProbe {
    /// The initialised library.
    nvml: Nvml,
}

impl NvmlProbe {
    /// Opens and initialises NVML. The error says why it cannot be used here (no library, no
    /// driver loaded, no permission), in words an operator can act on.
    pub fn load() -> Result<Self, GpuError> {
        // The first failure says the most: it names the library the driver ships.
        let mut first: Option<GpuError> = None;
        for name in LIBRARY_NAMES {
            match Nvml::builder().lib_path(OsStr::new(name)).init() {
                Ok(nvml) => return Ok(Self { nvml }),
                Err(error) => {
                    first.get_or_insert(GpuError::Unavailable(describe(name, &error)));
                }
            }
        }
        Err(first.unwrap_or_else(|| {
            GpuError::Unavailable("NVML is not available on this platform".into())
        }))
    }

    fn device(&self, index: u32) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        self.nvml
            .device_by_index(index)
            .map_err(|e| device_error(index, &e))
    }
}

impl GpuProbe for NvmlProbe {
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuError::Unavailable(format!("NVML device count: {e}")))?;
        (0..count)
            .map(|index| {
                let device = self.device(index)?;
                Ok(GpuDevice {
                    index,
                    name: device.name().map_err(|e| device_error(index, &e))?,
                    uuid: device.uuid().map_err(|e| device_error(index, &e))?,
                })
            })
            .collect()
    }

    fn read(&self, index: u32) -> Result<GpuReading, GpuError> {
        let device = self.device(index)?;
        let memory = device.memory_info().map_err(|e| device_error(index, &e))?;
        Ok(GpuReading {
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            // Not every board reports these: leave them out rather than fail the reading.
            utilization_ratio: device
                .utilization_rates()
                .ok()
                .map(|u| f64::from(u.gpu) / 100.0),
            temperature_celsius: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
            power_watts: device
                .power_usage()
                .ok()
                .map(|milliwatts| f64::from(milliwatts) / 1000.0),
        })
    }

    fn process_memory(&self, index: u32) -> Result<Vec<ProcessMemory>, GpuError> {
        let device = self.device(index)?;
        let compute = device
            .running_compute_processes()
            .map_err(|e| device_error(index, &e))?;
        // Graphics processes are optional: some data-centre boards refuse the query.
        let graphics = device.running_graphics_processes().unwrap_or_default();
        let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for process in compute.into_iter().chain(graphics) {
            let used = match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes,
                UsedGpuMemory::Unavailable => continue,
            };
            let entry = by_pid.entry(process.pid).or_default();
            *entry = (*entry).max(used);
        }
        Ok(by_pid
            .into_iter()
            .map(|(pid, used_bytes)| ProcessMemory { pid, used_bytes })
            .collect())
    }
}

/// Why NVML could not be loaded from `name`, as one sentence.
fn describe(name: &str, error: &NvmlError) -> String {
    match error {
        NvmlError::LibloadingError(_) => {
            format!("the NVIDIA management library ({name}) is not installed")
        }
        NvmlError::DriverNotLoaded => "the NVIDIA driver is not loaded".into(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".into(),
        other => format!("NVML could not be initialised: {other}"),
    }
}

fn device_error(index: u32, error: &NvmlError) -> GpuError {
    GpuError::Device {
        index,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_failures_read_as_one_actionable_sentence() {
        assert_eq!(
            describe("libnvidia-ml.so.1", &NvmlError::DriverNotLoaded),
            "the NVIDIA driver is not loaded"
        );
        assert_eq!(
            describe("libnvidia-ml.so.1", &NvmlError::NoPermission),
            "no permission to talk to the NVIDIA driver"
        );
        assert!(describe("x", &NvmlError::Unknown).starts_with("NVML could not be initialised: "));
    }

    #[test]
    fn loading_never_panics_and_explains_a_failure() {
        // On a host without a driver this is the reason GetRuntimeInfo shows; with one, a probe.
        match NvmlProbe::load() {
            Ok(probe) => {
                let devices = probe.devices().expect("a loaded NVML lists its GPUs");
                for device in devices {
                    let reading = probe.read(device.index).expect("a reading");
                    assert!(reading.memory_total_bytes > 0);
                }
            }
            Err(GpuError::Unavailable(reason)) => assert!(!reason.is_empty()),
            Err(other) => panic!("unexpected {other}"),
        }
    }
}
