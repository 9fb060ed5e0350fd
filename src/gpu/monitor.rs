//! [`GpuMonitor`]: one shared probe, sampled on a dedicated blocking thread at a fixed interval
//! (`executor.gpu_sample_interval_seconds`). Each sample reads every GPU, sets its gauges,
//! records how much GPU memory each process holds, and raises the peak of every
//! [`ProcessPeak`] watching one of them. Readers (GetRuntimeInfo, the executor) only copy the
//! latest sample under a short lock: they never call the probe.
//!
//! A sample is cheap (NVML answers in microseconds), so it runs all the time rather than
//! lazily; the thread ends when the runtime's cancellation token fires.

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{GpuDevice, GpuError, GpuProbe, GpuReading, NvmlProbe};
use crate::telemetry::metrics;

/// The GPUs of this host and what was last read from them. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct GpuMonitor {
    /// Shared with the sampler thread and every [`ProcessPeak`].
    inner: Arc<Inner>,
}

struct Inner {
    /// The probe; `None` when none could be loaded.
    probe: Option<Arc<dyn GpuProbe>>,
    /// Why there are no GPUs to report, when there are none.
    unavailable: Option<String>,
    /// The GPUs listed when the monitor was built.
    devices: Vec<GpuDevice>,
    /// What the sampler last found, and the watches it feeds.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last reading of each GPU, in the order of `devices`.
    latest: Vec<GpuSnapshot>,
    /// GPU memory each process held at the last sample, summed over the GPUs.
    process_bytes: HashMap<u32, u64>,
    /// Open watches, by id.
    watches: HashMap<u64, Watch>,
    /// The id of the next watch.
    next_watch: u64,
    /// Samples taken so far.
    samples: u64,
}

/// One process being watched for its peak GPU memory.
struct Watch {
    /// The process.
    pid: u32,
    /// The most GPU memory it held in a sample since the watch began; `None` while it has
    /// not been seen on any GPU.
    peak: Option<u64>,
}

/// One GPU and its last reading.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSnapshot {
    /// The GPU.
    pub device: GpuDevice,
    /// The last successful reading; `None` before the first sample or when the last one failed.
    pub reading: Option<GpuReading>,
    /// Why the last reading failed.
    pub error: Option<String>,
}

impl GpuMonitor {
    /// A monitor over `probe`: its GPUs are listed once, now. A probe that cannot list them
    /// makes a monitor with no GPUs whose [`unavailable_reason`](Self::unavailable_reason) says
    /// why. Blocking: NVML calls.
    pub fn new(probe: Arc<dyn GpuProbe>) -> Self {
        match probe.devices() {
            Ok(devices) => {
                let unavailable = devices
                    .is_empty()
                    .then(|| "the GPU library found no GPUs on this host".to_owned());
                let latest = devices
                    .iter()
                    .map(|device| GpuSnapshot {
                        device: device.clone(),
                        reading: None,
                        error: None,
                    })
                    .collect();
                Self {
                    inner: Arc::new(Inner {
                        probe: Some(probe),
                        unavailable,
                        devices,
                        state: Mutex::new(State {
                            latest,
                            ..State::default()
                        }),
                    }),
                }
            }
            Err(error) => Self::unavailable(error.to_string()),
        }
    }

    /// A monitor with no GPUs, for `reason`.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                probe: None,
                unavailable: Some(reason.into()),
                devices: Vec::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A monitor over NVML, or one with no GPUs when NVML cannot be loaded here (logged once,
    /// at info: a host without an NVIDIA GPU is normal). Blocking: it opens a library.
    pub fn load_nvml() -> Self {
        let monitor = match NvmlProbe::load() {
            Ok(probe) => Self::new(Arc::new(probe)),
            Err(error) => Self::unavailable(match error {
                GpuError::Unavailable(reason) => reason,
                other => other.to_string(),
            }),
        };
        match monitor.unavailable_reason() {
            Some(reason) => tracing::info!(reason, "no local gpu monitoring"),
            None => tracing::info!(gpus = monitor.inner.devices.len(), "local gpus found"),
        }
        monitor
    }

    /// Why this monitor reports no GPUs; `None` when it has some.
    pub fn unavailable_reason(&self) -> Option<&str> {
        self.inner.unavailable.as_deref()
    }

    /// The GPUs with their last readings, by index.
    pub fn snapshots(&self) -> Vec<GpuSnapshot> {
        self.lock().latest.clone()
    }

    /// How many samples were taken.
    pub fn samples_taken(&self) -> u64 {
        self.lock().samples
    }

    /// Reads every GPU once: updates the snapshots and the gauges, the memory per process,
    /// and the peak of every open watch. Blocking: call it from a blocking thread (the sampler
    /// does; tests call it directly).
    pub fn sample(&self) {
        let Some(probe) = &self.inner.probe else {
            return;
        };
        let mut latest = Vec::with_capacity(self.inner.devices.len());
        let mut process_bytes: HashMap<u32, u64> = HashMap::new();
        for device in &self.inner.devices {
            let (reading, error) = match probe.read(device.index) {
                Ok(reading) => {
                    set_gauges(device, &reading);
                    (Some(reading), None)
                }
                Err(error) => {
                    tracing::debug!(%error, gpu = device.index, "gpu reading failed");
                    (None, Some(error.to_string()))
                }
            };
            match probe.process_memory(device.index) {
                Ok(processes) => {
                    for process in processes {
                        *process_bytes.entry(process.pid).or_default() += process.used_bytes;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, gpu = device.index, "gpu process list failed");
                }
            }
            latest.push(GpuSnapshot {
                device: device.clone(),
                reading,
                error,
            });
        }
        let mut state = self.lock();
        for watch in state.watches.values_mut() {
            if let Some(&bytes) = process_bytes.get(&watch.pid) {
                watch.peak = Some(watch.peak.map_or(bytes, |peak| peak.max(bytes)));
            }
        }
        state.latest = latest;
        state.process_bytes = process_bytes;
        state.samples += 1;
    }

    /// Starts watching the GPU memory of process `pid`: the watch's peak starts at what the
    /// last sample saw it hold and rises with each sample until the watch ends. `None` when
    /// this host has no GPUs to watch.
    pub fn watch_process(&self, pid: u32) -> Option<ProcessPeak> {
        self.inner.probe.as_ref()?;
        if self.inner.devices.is_empty() {
            return None;
        }
        let mut state = self.lock();
        let id = state.next_watch;
        state.next_watch += 1;
        let peak = state.process_bytes.get(&pid).copied();
        state.watches.insert(id, Watch { pid, peak });
        Some(ProcessPeak {
            inner: Arc::clone(&self.inner),
            id,
        })
    }

    /// Starts the sampler on a blocking thread of `tracker`: one sample now, then one every
    /// `interval`, until `cancel`. Nothing starts when there are no GPUs.
    pub fn spawn_sampler(
        &self,
        interval: Duration,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        if self.inner.probe.is_none() || self.inner.devices.is_empty() {
            return;
        }
        // The thread waits on a std channel; the token's task drops the sender to wake it.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            cancel.cancelled().await;
            drop(stop_tx);
        });
        let monitor = self.clone();
        tracker.spawn_blocking(move || {
            loop {
                monitor.sample();
                match stop_rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }
}

/// Sets the gauges of `device` from `reading`; a value the GPU does not report is left unset.
fn set_gauges(device: &GpuDevice, reading: &GpuReading) {
    let index = device.index.to_string();
    let labels = metrics::GpuLabels {
        index: &index,
        name: &device.name,
        uuid: &device.uuid,
    };
    #[allow(clippy::cast_precision_loss)] // Exact below 2^53 bytes (8 PiB).
    let bytes = |n: u64| n as f64;
    metrics::set_gpu_gauge(
        metrics::GPU_MEMORY_USED_BYTES,
        labels,
        bytes(reading.memory_used_bytes),
    );
    metrics::set_gpu_gauge(
        metrics::GPU_MEMORY_TOTAL_BYTES,
        labels,
        bytes(reading.memory_total_bytes),
    );
    let optional = [
        (metrics::GPU_UTILIZATION_RATIO, reading.utilization_ratio),
        (
            metrics::GPU_TEMPERATURE_CELSIUS,
            reading.temperature_celsius,
        ),
        (metrics::GPU_POWER_WATTS, reading.power_watts),
    ];
    for (metric, value) in optional {
        if let Some(value) = value {
            metrics::set_gpu_gauge(metric, labels, value);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A watch on one process's GPU memory; see [`GpuMonitor::watch_process`]. Dropping it ends
/// the watch without a result.
pub struct ProcessPeak {
    /// The monitor whose samples raise the peak.
    inner: Arc<Inner>,
    /// The watch's id in the monitor.
    id: u64,
}

impl ProcessPeak {
    /// The most GPU memory the process held, in bytes, in any sample since the watch began
    /// (or at the sample just before); `None` when no sample saw it on a GPU.
    pub fn peak_bytes(&self) -> Option<u64> {
        self.inner.lock().watches.get(&self.id).and_then(|w| w.peak)
    }

    /// Ends the watch and returns its peak (see [`ProcessPeak::peak_bytes`]).
    pub fn finish(self) -> Option<u64> {
        self.peak_bytes()
    }
}

impl Drop for ProcessPeak {
    fn drop(&mut self) {
        self.inner.lock().watches.remove(&self.id);
    }
}

impl std::fmt::Debug for ProcessPeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPeak").field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("devices", &self.inner.devices)
            .field("unavailable", &self.inner.unavailable)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::FakeGpuProbe;

    const GIB: u64 = 1 << 30;

    fn monitor_with(probe: &Arc<FakeGpuProbe>) -> GpuMonitor {
        GpuMonitor::new(Arc::clone(probe) as Arc<dyn GpuProbe>)
    }

    #[test]
    fn a_probe_without_gpus_says_why() {
        let monitor = monitor_with(&Arc::new(FakeGpuProbe::new()));
        assert_eq!(
            monitor.unavailable_reason(),
            Some("the GPU library found no GPUs on this host")
        );
        assert!(monitor.watch_process(1).is_none());
        let monitor = GpuMonitor::unavailable("the NVIDIA driver is not loaded");
        monitor.sample();
        assert_eq!(monitor.samples_taken(), 0);
        assert!(monitor.snapshots().is_empty());
    }

    #[test]
    fn a_sample_reads_every_gpu_and_keeps_going_past_a_failing_one() {
        let probe = Arc::new(FakeGpuProbe::new());
        probe.add_gpu(0, "Fake A100", 80 * GIB);
        probe.add_gpu(1, "Fake L4", 24 * GIB);
        let monitor = monitor_with(&probe);
        assert_eq!(monitor.unavailable_reason(), None);
        assert!(monitor.snapshots().iter().all(|s| s.reading.is_none()));
        probe.set_reading(
            0,
            GpuReading {
                memory_used_bytes: 10 * GIB,
                memory_total_bytes: 80 * GIB,
                utilization_ratio: Some(0.5),
                temperature_celsius: Some(61.0),
                power_watts: Some(250.5),
            },
        );
        probe.set_failing(1, true);
        monitor.sample();
        let snapshots = monitor.snapshots();
        assert_eq!(snapshots.len(), 2);
        let first = snapshots[0].reading.unwrap();
        assert_eq!(first.memory_used_bytes, 10 * GIB);
        assert_eq!(first.utilization_ratio, Some(0.5));
        assert_eq!(snapshots[0].device.uuid, "GPU-fake-0000");
        assert_eq!(snapshots[1].reading, None);
        assert!(
            snapshots[1]
                .error
                .as_deref()
                .unwrap()
                .contains("told to fail")
        );
        probe.set_failing(1, false);
        monitor.sample();
        assert!(monitor.snapshots()[1].reading.is_some());
        assert_eq!(monitor.samples_taken(), 2);
    }

    #[test]
    fn a_watch_keeps_the_peak_of_its_process_over_every_gpu() {
        let probe = Arc::new(FakeGpuProbe::new());
        probe.add_gpu(0, "Fake A100", 80 * GIB);
        probe.add_gpu(1, "Fake A100", 80 * GIB);
        let monitor = monitor_with(&probe);
        let (comfy, other) = (4242, 777);
        // Seen before the watch: the watch starts from the last sample.
        probe.set_process_memory(0, comfy, 2 * GIB);
        monitor.sample();
        let watch = monitor.watch_process(comfy).unwrap();
        assert_eq!(watch.peak_bytes(), Some(2 * GIB));
        // Held on two GPUs at once: summed.
        probe.set_process_memory(0, comfy, 6 * GIB);
        probe.set_process_memory(1, comfy, 3 * GIB);
        probe.set_process_memory(0, other, 50 * GIB);
        monitor.sample();
        assert_eq!(watch.peak_bytes(), Some(9 * GIB));
        // Released: the peak stays.
        probe.set_process_memory(0, comfy, GIB);
        probe.set_process_memory(1, comfy, 0);
        monitor.sample();
        // A watch started now begins at the current value, not the old peak.
        let later = monitor.watch_process(comfy).unwrap();
        assert_eq!(later.peak_bytes(), Some(GIB));
        assert_eq!(watch.finish(), Some(9 * GIB));
        // A process never seen on a GPU has no peak rather than zero.
        let unseen = monitor.watch_process(31337).unwrap();
        monitor.sample();
        assert_eq!(unseen.finish(), None);
        drop(later);
        assert!(
            monitor.lock().watches.is_empty(),
            "finished watches are removed"
        );
    }

    #[test]
    fn a_sample_sets_the_gauges_in_base_units() {
        let recorder = metrics::prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        let probe = Arc::new(FakeGpuProbe::new());
        probe.add_gpu(3, "Fake H200", 141 * GIB);
        probe.set_reading(
            3,
            GpuReading {
                memory_used_bytes: 7 * GIB,
                memory_total_bytes: 141 * GIB,
                utilization_ratio: Some(0.25),
                temperature_celsius: Some(40.0),
                power_watts: Some(120.0),
            },
        );
        let monitor = monitor_with(&probe);
        ::metrics::with_local_recorder(&recorder, || monitor.sample());
        let text = handle.render();
        let labels = r#"{index="3",name="Fake H200",uuid="GPU-fake-0003"}"#;
        for (name, value) in [
            (metrics::GPU_MEMORY_USED_BYTES, (7 * GIB).to_string()),
            (metrics::GPU_MEMORY_TOTAL_BYTES, (141 * GIB).to_string()),
            (metrics::GPU_UTILIZATION_RATIO, "0.25".to_owned()),
            (metrics::GPU_TEMPERATURE_CELSIUS, "40".to_owned()),
            (metrics::GPU_POWER_WATTS, "120".to_owned()),
        ] {
            let line = format!("{name}{labels} {value}");
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn the_sampler_thread_samples_until_cancelled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let probe = Arc::new(FakeGpuProbe::new());
        probe.add_gpu(0, "Fake", GIB);
        let monitor = monitor_with(&probe);
        rt.block_on(async {
            let tracker = TaskTracker::new();
            let cancel = CancellationToken::new();
            monitor.spawn_sampler(Duration::from_millis(1), &tracker, &cancel);
            // Poll, bounded, for a few samples: the thread runs on its own.
            let bound = tokio::time::Instant::now() + Duration::from_secs(30);
            while monitor.samples_taken() < 3 {
                assert!(tokio::time::Instant::now() < bound, "the sampler never ran");
                tokio::task::yield_now().await;
                std::thread::yield_now();
            }
            cancel.cancel();
            tracker.close();
            tracker.wait().await;
        });
        let after = monitor.samples_taken();
        std::thread::yield_now();
        assert_eq!(monitor.samples_taken(), after, "the sampler stopped");
    }
}
