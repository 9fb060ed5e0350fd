//! Devices and placement: what each backend reported of its devices (types, GPU memory), the
//! GPU policy (`executor.enable_gpu`, `prefer_gpu_types`, `gpu_memory_fraction`), which
//! backends it holds back from new work and why, and the order in which equally eligible
//! backends are preferred. The planner asks; the reports arrive through
//! [`Scheduler::backend_devices`].
//!
//! # Rules
//! - `enable_gpu = false`: a backend with any non-CPU device gets no new work.
//! - A backend whose GPU memory in use (total minus free, over its non-CPU devices) is above
//!   `gpu_memory_fraction` of its total gets no new work until a report shows it at or below
//!   the fraction again. What it already holds stays.
//! - A held backend still counts as able to run an execution (its classes are what matter):
//!   work waits in the queue rather than failing for want of a backend.
//! - Among backends with a free slot, the least loaded wins; then the one whose best device
//!   type comes first in `prefer_gpu_types` (unlisted GPU types after the listed ones, CPUs
//!   and backends with no report last); then the most free GPU memory; then the lowest id.

use std::cmp::Reverse;

use super::Scheduler;
use super::backends::Backend;
use super::ids::BackendId;

/// The device type ComfyUI reports for the CPU.
const CPU: &str = "cpu";

/// The GPU settings placement follows.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPolicy {
    /// Whether backends with a GPU may get work (`executor.enable_gpu`).
    pub enable_gpu: bool,
    /// Device types in order of preference (`executor.prefer_gpu_types`).
    pub prefer_gpu_types: Vec<String>,
    /// Largest share of GPU memory in use for a backend to get new work
    /// (`executor.gpu_memory_fraction`).
    pub gpu_memory_fraction: f64,
}

impl Default for GpuPolicy {
    /// No preference, every backend allowed, never held for its memory.
    fn default() -> Self {
        Self {
            enable_gpu: true,
            prefer_gpu_types: Vec::new(),
            gpu_memory_fraction: 1.0,
        }
    }
}

/// What a backend reported of its devices (`/system_stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceReport {
    /// The type of each device (`cuda`, `cpu`, `mps`, ...), lowercase.
    pub types: Vec<String>,
    /// GPU memory over its non-CPU devices that report it; `None` when none does.
    pub vram: Option<Vram>,
}

/// GPU memory of a backend, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vram {
    /// Installed.
    pub total: u64,
    /// Free.
    pub free: u64,
}

impl Vram {
    /// Memory in use.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// Why a backend that is up gets no new work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// It has a GPU and `executor.enable_gpu` is false.
    GpuDisabled,
    /// Its GPU memory in use is above `gpu_memory_fraction` of its total.
    VramAboveFraction {
        /// Bytes in use.
        used: u64,
        /// Bytes installed.
        total: u64,
        /// The configured fraction.
        fraction: f64,
    },
}

impl Hold {
    /// Whether `self` and `other` are the same reason (memory figures aside).
    fn same_reason(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GpuDisabled => f.write_str("it has a GPU and executor.enable_gpu is false"),
            Self::VramAboveFraction {
                used,
                total,
                fraction,
            } => {
                const MIB: u64 = 1024 * 1024;
                write!(
                    f,
                    "GPU memory in use {} MiB of {} MiB is above executor.gpu_memory_fraction {fraction}",
                    used / MIB,
                    total / MIB
                )
            }
        }
    }
}

/// A change of whether a backend is held, returned by [`Scheduler::backend_devices`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldChange {
    /// The backend.
    pub backend: BackendId,
    /// Why it is held now; `None` when it takes work again.
    pub now: Option<Hold>,
    /// Why it was held before; `None` when it took work.
    pub before: Option<Hold>,
}

/// Why `report` keeps a backend from new work under `policy`, if it does.
pub(super) fn hold_for(policy: &GpuPolicy, report: &DeviceReport) -> Option<Hold> {
    if !policy.enable_gpu && report.types.iter().any(|t| t != CPU) {
        return Some(Hold::GpuDisabled);
    }
    let vram = report.vram?;
    #[allow(clippy::cast_precision_loss)] // Exact below 2^53 bytes.
    let over =
        vram.total > 0 && vram.used() as f64 > policy.gpu_memory_fraction * vram.total as f64;
    over.then_some(Hold::VramAboveFraction {
        used: vram.used(),
        total: vram.total,
        fraction: policy.gpu_memory_fraction,
    })
}

/// The sort key of a backend with a free slot: smaller wins (see the module's rules).
pub(super) type PlacementKey = (usize, usize, Reverse<u64>, BackendId);

/// `backend`'s placement key under `policy`.
pub(super) fn placement_key(policy: &GpuPolicy, id: BackendId, backend: &Backend) -> PlacementKey {
    let listed = policy.prefer_gpu_types.len();
    let (rank, free) = match &backend.devices {
        Some(report) => {
            let rank = report
                .types
                .iter()
                .map(|t| {
                    policy
                        .prefer_gpu_types
                        .iter()
                        .position(|p| p == t)
                        .unwrap_or(if t == CPU { listed + 1 } else { listed })
                })
                .min()
                .unwrap_or(listed + 1);
            (rank, report.vram.map_or(0, |v| v.free))
        }
        None => (listed + 1, 0),
    };
    (backend.slots.len(), rank, Reverse(free), id)
}

impl Scheduler {
    /// Sets the GPU policy; the holds of known backends are computed again (without
    /// reporting changes: call it before any backend reports).
    pub fn set_gpu_policy(&mut self, policy: GpuPolicy) {
        self.gpu = policy;
        for backend in self.backends.values_mut() {
            backend.hold = backend
                .devices
                .as_ref()
                .and_then(|report| hold_for(&self.gpu, report));
        }
    }

    /// The GPU policy in force.
    pub fn gpu_policy(&self) -> &GpuPolicy {
        &self.gpu
    }

    /// A backend reported its devices (it may not be up yet). Returns the change of its hold
    /// when it is held now and was not, is no longer held, or is held for another reason.
    pub fn backend_devices(
        &mut self,
        backend: BackendId,
        report: DeviceReport,
    ) -> Option<HoldChange> {
        let now = hold_for(&self.gpu, &report);
        let known = self
            .backends
            .entry(backend)
            .or_insert_with(Backend::new_down);
        let before = known.hold;
        known.devices = Some(report);
        known.hold = now;
        let changed = match (&before, &now) {
            (None, None) => false,
            (Some(a), Some(b)) => !a.same_reason(b),
            _ => true,
        };
        changed.then_some(HoldChange {
            backend,
            now,
            before,
        })
    }

    /// Why `backend` gets no new work, if it is held.
    pub fn backend_hold(&self, backend: BackendId) -> Option<Hold> {
        self.backends.get(&backend).and_then(|b| b.hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskPriority;
    use crate::runtime::scheduler::test_support::{B0, B1, B2, dispatch, scheduler, submit, up};
    use crate::runtime::scheduler::{Action, ExecutionId};

    const GIB: u64 = 1 << 30;

    fn gpu(kind: &str, total_gib: u64, free_gib: u64) -> DeviceReport {
        DeviceReport {
            types: vec![kind.to_owned()],
            vram: Some(Vram {
                total: total_gib * GIB,
                free: free_gib * GIB,
            }),
        }
    }

    fn cpu() -> DeviceReport {
        DeviceReport {
            types: vec!["cpu".into()],
            vram: None,
        }
    }

    fn policy(fraction: f64) -> GpuPolicy {
        GpuPolicy {
            enable_gpu: true,
            prefer_gpu_types: vec!["cuda".into(), "mps".into(), "directml".into()],
            gpu_memory_fraction: fraction,
        }
    }

    #[test]
    fn a_backend_above_the_fraction_gets_no_new_work_until_it_falls_below() {
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(policy(0.5));
        assert_eq!(s.backend_devices(B0, gpu("cuda", 24, 20)), None);
        up(&mut s, B0, &[]);
        let change = s.backend_devices(B0, gpu("cuda", 24, 8)).unwrap();
        assert_eq!(change.before, None);
        assert_eq!(
            change.now,
            Some(Hold::VramAboveFraction {
                used: 16 * GIB,
                total: 24 * GIB,
                fraction: 0.5
            })
        );
        assert_eq!(
            change.now.unwrap().to_string(),
            "GPU memory in use 16384 MiB of 24576 MiB is above executor.gpu_memory_fraction 0.5"
        );
        // Still held, other figures: no new change to report.
        assert_eq!(s.backend_devices(B0, gpu("cuda", 24, 6)), None);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![], "held: the work waits");
        assert!(s.stranded().is_empty(), "a held backend can still run it");
        // Exactly at the fraction is not above it.
        let change = s.backend_devices(B0, gpu("cuda", 24, 12)).unwrap();
        assert_eq!(change.now, None);
        assert!(change.before.is_some());
        assert_eq!(s.next_actions(), vec![dispatch(1, B0)]);
    }

    #[test]
    fn a_held_backend_keeps_what_it_holds_and_others_take_the_rest() {
        use TaskPriority::*;
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(policy(0.9));
        s.backend_devices(B0, gpu("cuda", 80, 80));
        up(&mut s, B0, &[]);
        submit(&mut s, 1, Low);
        submit(&mut s, 2, Low);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0), dispatch(2, B0)]);
        s.prompt_started(B0, ExecutionId(1)).unwrap();
        assert!(s.backend_devices(B0, gpu("cuda", 80, 1)).is_some());
        // No preemption for a backend that could not take the urgent one anyway.
        submit(&mut s, 3, Critical);
        assert_eq!(s.next_actions(), vec![]);
        assert_eq!(s.on_backend(B0), 2, "held, not emptied");
        // Another backend takes the work.
        s.backend_devices(B1, gpu("cuda", 80, 80));
        up(&mut s, B1, &[]);
        assert_eq!(s.next_actions(), vec![dispatch(3, B1)]);
        // Its prompts end normally.
        s.prompt_finished(B0, ExecutionId(1)).unwrap();
        submit(&mut s, 4, Low);
        assert_eq!(s.next_actions(), vec![dispatch(4, B1)]);
        assert!(
            !s.next_actions()
                .iter()
                .any(|a| matches!(a, Action::Dispatch { backend, .. } if *backend == B0))
        );
    }

    #[test]
    fn gpu_disabled_allows_only_cpu_backends() {
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(GpuPolicy {
            enable_gpu: false,
            ..policy(0.9)
        });
        let change = s.backend_devices(B0, gpu("cuda", 24, 24)).unwrap();
        assert_eq!(change.now, Some(Hold::GpuDisabled));
        assert_eq!(s.backend_devices(B1, cpu()), None);
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        for id in 1..=3 {
            submit(&mut s, id, TaskPriority::Normal);
        }
        assert_eq!(s.next_actions(), vec![dispatch(1, B1), dispatch(2, B1)]);
        assert_eq!(s.backend_hold(B0), Some(Hold::GpuDisabled));
        assert_eq!(s.backend_hold(B1), None);
    }

    #[test]
    fn equally_loaded_backends_go_by_preferred_type_then_free_memory() {
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(policy(1.0));
        s.backend_devices(B0, cpu());
        s.backend_devices(B1, gpu("mps", 64, 60));
        s.backend_devices(B2, gpu("cuda", 24, 10));
        for b in [B0, B1, B2] {
            up(&mut s, b, &[]);
        }
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(1, B2)], "cuda first");
        submit(&mut s, 2, TaskPriority::Normal);
        assert_eq!(
            s.next_actions(),
            vec![dispatch(2, B1)],
            "least loaded before type: mps is idle"
        );
        submit(&mut s, 3, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(3, B0)], "the cpu is idle");
        // Equal type and load: the most free memory wins, whatever the id.
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(policy(1.0));
        s.backend_devices(B0, gpu("cuda", 24, 4));
        s.backend_devices(B1, gpu("cuda", 24, 20));
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(1, B1)]);
        // The preference order is the configuration's.
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(GpuPolicy {
            prefer_gpu_types: vec!["mps".into(), "cuda".into()],
            ..policy(1.0)
        });
        s.backend_devices(B0, gpu("cuda", 80, 80));
        s.backend_devices(B1, gpu("mps", 16, 1));
        up(&mut s, B0, &[]);
        up(&mut s, B1, &[]);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(1, B1)]);
    }

    #[test]
    fn backends_without_a_report_rank_last_and_are_never_held() {
        let mut s = scheduler(100, 10);
        s.set_gpu_policy(GpuPolicy {
            enable_gpu: false,
            ..policy(0.1)
        });
        up(&mut s, B0, &[]);
        assert_eq!(s.backend_hold(B0), None);
        submit(&mut s, 1, TaskPriority::Normal);
        assert_eq!(s.next_actions(), vec![dispatch(1, B0)]);
        // A policy set later applies to what was reported.
        let mut s = scheduler(100, 10);
        s.backend_devices(B0, gpu("cuda", 10, 1));
        assert_eq!(s.backend_hold(B0), None, "the default policy holds nothing");
        s.set_gpu_policy(policy(0.5));
        assert!(matches!(
            s.backend_hold(B0),
            Some(Hold::VramAboveFraction { .. })
        ));
    }
}
