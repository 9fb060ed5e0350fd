//! GPUs in the actor: a backend's device report goes to the scheduler, and a change of its
//! hold (GPU disabled, GPU memory above `executor.gpu_memory_fraction`, or free again) is
//! published as a runtime event; a running prompt's backend process is watched for its
//! peak GPU memory, which becomes the root task's `gpu_memory_mb` and a performance metric
//! when the attempt ends.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the actor's state from
//! its parent and the executor's lower modules, never another part.

use serde_json::Value;

use crate::gpu::ProcessPeak;
use crate::model::{EventCategory, JsonObject, LogLevel};
use crate::runtime::bus::EventContext;
use crate::runtime::scheduler::{BackendId, DeviceReport, ExecutionId, Hold};
use crate::telemetry::metrics;

use super::Actor;

/// Bytes in the MiB that `gpu_memory_mb` counts in (ComfyUI's and nvidia-smi's "MB").
const MIB: f64 = 1024.0 * 1024.0;

impl Actor {
    /// A backend reported its devices: the scheduler places by them; a change of its hold is
    /// published.
    pub(super) fn backend_devices(&mut self, backend: BackendId, report: DeviceReport) {
        let Some(change) = self.scheduler.backend_devices(backend, report) else {
            return;
        };
        let Some(b) = self.shared.pool.get(backend) else {
            return;
        };
        b.set_placement_hold(change.now.map(|hold| hold.to_string()));
        metrics::set_backend_vram_over_fraction(
            &b.name,
            matches!(change.now, Some(Hold::VramAboveFraction { .. })),
        );
        let mut data = JsonObject::new();
        data.insert("backend".into(), Value::from(b.name.clone()));
        let (event_type, level, message) = match change.now {
            Some(hold) => {
                data.insert("reason".into(), Value::from(hold_reason(&hold)));
                if let Hold::VramAboveFraction {
                    used,
                    total,
                    fraction,
                } = hold
                {
                    data.insert("vram_used_bytes".into(), Value::from(used));
                    data.insert("vram_total_bytes".into(), Value::from(total));
                    data.insert("gpu_memory_fraction".into(), Value::from(fraction));
                }
                (
                    "backend.held",
                    LogLevel::Warning,
                    format!("backend {} gets no new work: {hold}", b.name),
                )
            }
            None => (
                "backend.released",
                LogLevel::Info,
                format!(
                    "backend {} takes new work again ({} no longer applies)",
                    b.name,
                    change.before.map(|h| h.to_string()).unwrap_or_default()
                ),
            ),
        };
        self.shared.runtime_event(
            EventCategory::System,
            level,
            event_type,
            message,
            data,
            EventContext::default(),
        );
    }

    /// The watch on the GPU memory of `backend`'s process, for a prompt that just started
    /// there; `None` when the process or this host's GPUs are unknown.
    pub(super) fn watch_gpu_memory(&self, backend: BackendId) -> Option<ProcessPeak> {
        self.shared.pool.get(backend)?.watch_gpu_memory()
    }

    /// An attempt of `sched` ended: the peak GPU memory its backend's process held while it
    /// ran becomes the root task's `gpu_memory_mb` and a `gpu_memory_mb` metric.
    pub(super) fn record_gpu_peak(&self, sched: ExecutionId, watch: Option<ProcessPeak>) {
        let Some(bytes) = watch.and_then(ProcessPeak::finish) else {
            return;
        };
        #[allow(clippy::cast_precision_loss)] // Exact below 2^53 bytes.
        let mb = bytes as f64 / MIB;
        self.update_root(sched, |task| {
            task.metrics.gpu_memory_mb = Some(task.metrics.gpu_memory_mb.unwrap_or(0.0).max(mb));
            Ok(())
        });
        self.shared
            .metric("gpu_memory_mb", mb, "MiB", self.context(sched), &[]);
    }
}

/// The machine-readable reason of a hold, for the event's data.
fn hold_reason(hold: &Hold) -> &'static str {
    match hold {
        Hold::GpuDisabled => "gpu_disabled",
        Hold::VramAboveFraction { .. } => "vram_above_fraction",
    }
}
