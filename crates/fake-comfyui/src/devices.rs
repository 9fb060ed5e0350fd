//! The device the fake reports in `/system_stats` (`--device-type`, `--vram-total-mb`) and the
//! GPU memory it says is in use, which a test sets through `POST /__fake/vram` or
//! [`FakeComfy::set_vram_used_mb`](crate::FakeComfy::set_vram_used_mb). The shapes are what
//! ComfyUI reports for each kind of torch device (a DirectML device's torch type is
//! `privateuseone`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::pyjson::object;

/// The host RAM of the captured CPU machine, in bytes (what the CPU "device" reports).
const CAPTURED_RAM_TOTAL: u64 = 25_276_510_208;
/// Its free RAM in the capture, in bytes.
const CAPTURED_RAM_FREE: u64 = 23_749_312_512;
/// Bytes in a MiB, ComfyUI's "MB".
const MIB: u64 = 1024 * 1024;

/// The kind of torch device the fake pretends to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceType {
    /// `--cpu`: the captured machine (the default).
    #[default]
    Cpu,
    /// An NVIDIA (or ROCm) GPU.
    Cuda,
    /// Apple silicon.
    Mps,
    /// DirectML on Windows (torch type `privateuseone`).
    Directml,
}

impl DeviceType {
    /// Parses the command line's spelling: `cuda`, `cpu`, `mps` or `directml`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "mps" => Ok(Self::Mps),
            "directml" => Ok(Self::Directml),
            other => Err(format!(
                "unknown device type `{other}`: expected cuda, cpu, mps or directml"
            )),
        }
    }

    /// The default memory of such a device, in MiB.
    pub fn default_vram_total_mb(self) -> u64 {
        match self {
            Self::Cpu => CAPTURED_RAM_TOTAL / MIB,
            Self::Cuda => 24_576,
            Self::Mps => 16_384,
            Self::Directml => 8_192,
        }
    }
}

/// The device and its memory in use; shared by the routes.
#[derive(Debug)]
pub(crate) struct DeviceState {
    /// The kind of device.
    pub(crate) device_type: DeviceType,
    /// Its memory, in bytes.
    total_bytes: u64,
    /// Memory in use, in bytes; [`UNSET`] until set (the CPU then reports the captured free
    /// RAM, a GPU reports all of it free).
    used_bytes: AtomicU64,
}

/// `used_bytes` before any is set.
const UNSET: u64 = u64::MAX;

impl DeviceState {
    /// A device of `device_type` with `total_mb` MiB (its default when `None`; the default
    /// CPU reports the captured machine's RAM to the byte).
    pub(crate) fn new(device_type: DeviceType, total_mb: Option<u64>) -> Self {
        let total_bytes = match (device_type, total_mb) {
            (_, Some(mb)) => mb.saturating_mul(MIB),
            (DeviceType::Cpu, None) => CAPTURED_RAM_TOTAL,
            (other, None) => other.default_vram_total_mb() * MIB,
        };
        Self {
            device_type,
            total_bytes,
            used_bytes: AtomicU64::new(UNSET),
        }
    }

    /// Sets the memory in use, in MiB; refused above the total.
    pub(crate) fn set_used_mb(&self, used_mb: u64) -> Result<(), String> {
        let used = used_mb.saturating_mul(MIB);
        if used > self.total_bytes {
            return Err(format!(
                "used_mb {used_mb} is above the device's {} MiB",
                self.total_mb()
            ));
        }
        self.used_bytes.store(used, Ordering::SeqCst);
        Ok(())
    }

    /// Its memory, in MiB.
    pub(crate) fn total_mb(&self) -> u64 {
        self.total_bytes / MIB
    }

    /// Memory in use, in bytes.
    fn used_bytes(&self) -> u64 {
        match self.used_bytes.load(Ordering::SeqCst) {
            UNSET if self.is_cpu() => self
                .total_bytes
                .saturating_sub(CAPTURED_RAM_FREE.min(self.total_bytes)),
            UNSET => 0,
            used => used,
        }
    }

    /// Memory in use, in MiB.
    pub(crate) fn used_mb(&self) -> u64 {
        self.used_bytes() / MIB
    }

    /// `GET /__fake/vram`'s and `POST /__fake/vram`'s answer.
    pub(crate) fn json(&self) -> Value {
        object([
            ("device_type", Value::String(self.type_name().to_owned())),
            ("total_mb", Value::from(self.total_mb())),
            ("used_mb", Value::from(self.used_mb())),
        ])
    }

    /// `--cpu` in the reported `argv`, as ComfyUI is started for a CPU.
    pub(crate) fn is_cpu(&self) -> bool {
        self.device_type == DeviceType::Cpu
    }

    fn type_name(&self) -> &'static str {
        match self.device_type {
            DeviceType::Cpu => "cpu",
            DeviceType::Cuda => "cuda",
            DeviceType::Mps => "mps",
            DeviceType::Directml => "directml",
        }
    }

    /// The `devices` array of `/system_stats`.
    pub(crate) fn system_stats_devices(&self) -> Value {
        let total = self.total_bytes;
        let free = total - self.used_bytes().min(total);
        let used = total - free;
        let (name, kind, index) = match self.device_type {
            DeviceType::Cpu => ("cpu".to_owned(), "cpu", Value::Null),
            DeviceType::Cuda => (
                "cuda:0 Fake GeForce RTX 4090 : cudaMallocAsync".to_owned(),
                "cuda",
                Value::from(0),
            ),
            DeviceType::Mps => ("mps".to_owned(), "mps", Value::Null),
            DeviceType::Directml => (
                "privateuseone:0 Fake Radeon RX 7900".to_owned(),
                "privateuseone",
                Value::from(0),
            ),
        };
        // Torch reserves what is in use and has nothing of it free, on a GPU; the CPU
        // reports the host's RAM for both.
        let (torch_total, torch_free) = if self.is_cpu() {
            (total, free)
        } else {
            (used, 0)
        };
        Value::Array(vec![object([
            ("name", Value::String(name)),
            ("type", Value::String(kind.to_owned())),
            ("index", index),
            ("vram_total", Value::from(total)),
            ("vram_free", Value::from(free)),
            ("torch_vram_total", Value::from(torch_total)),
            ("torch_vram_free", Value::from(torch_free)),
        ])])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cpu_reports_the_captured_machine() {
        let device = DeviceState::new(DeviceType::Cpu, None);
        let devices = device.system_stats_devices();
        assert_eq!(devices[0]["vram_total"], Value::from(CAPTURED_RAM_TOTAL));
        assert_eq!(devices[0]["vram_free"], Value::from(CAPTURED_RAM_FREE));
        assert_eq!(
            devices[0]["torch_vram_free"],
            Value::from(CAPTURED_RAM_FREE)
        );
        assert_eq!(devices[0]["type"], "cpu");
        assert_eq!(devices[0]["index"], Value::Null);
    }

    #[test]
    fn used_memory_is_bounded_by_the_total() {
        let device = DeviceState::new(DeviceType::Cuda, Some(1000));
        assert_eq!(device.used_mb(), 0);
        device.set_used_mb(1000).unwrap();
        assert!(device.set_used_mb(1001).unwrap_err().contains("above"));
        assert_eq!(device.used_mb(), 1000);
        assert_eq!(
            device.system_stats_devices()[0]["vram_free"],
            Value::from(0)
        );
        assert_eq!(
            DeviceType::parse("rocm").unwrap_err(),
            "unknown device type `rocm`: expected cuda, cpu, mps or directml"
        );
    }
}
