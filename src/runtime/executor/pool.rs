//! The pool of ComfyUI backends: one HTTP client and one WebSocket task per
//! configured server, and a prober per backend that tells the executor when it
//! comes up (with its node classes, from `/object_info`) or goes down, and
//! what devices it has (from `/system_stats`, every probe while it is up).
//!
//! A probe is one cheap `GET /queue`, then `GET /system_stats` while the backend
//! answers. The full `/object_info` (about 1.6 MB on a real server) is read only
//! when a backend comes up, and kept as its catalogue for validation and
//! routing. When a backend comes up its ComfyUI process is located on this host
//! (`servers[].pid`, else the process listening on a loopback url's port), so
//! the GPU memory it holds while a task runs can be attributed to the task.
//!
//! Imports point down only: the probers report through
//! [`messages`](super::messages); nothing of the actor or the attempts.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::comfy::client::{ComfyClient, ComfyError};
use crate::comfy::wire::{DeviceInfo, SystemStats};
use crate::comfy::ws::{BackendSocket, BackendSocketHandle, SocketSettings};
use crate::config::ServerConfig;
use crate::gpu::{GpuMonitor, ProcessPeak};
use crate::runtime::scheduler::{BackendId, DeviceReport, Vram};
use crate::runtime::workflow_checks::ObjectInfoCatalogue;
use crate::telemetry::metrics;

use super::messages::Msg;

/// One backend of the pool.
pub(crate) struct Backend {
    /// Its id in the scheduler (its index in the configuration).
    pub id: BackendId,
    /// Its configured name, else its URL without credentials.
    pub name: String,
    /// Its socket task (which owns the HTTP client too).
    pub socket: BackendSocketHandle,
    /// Wakes the prober for an immediate probe.
    probe_now: Notify,
    /// What the prober last learnt.
    state: RwLock<BackendState>,
    /// Where its ComfyUI process is looked for on this host.
    process: ProcessLookup,
    /// This host's GPUs, for the peak GPU memory of its process.
    gpu: GpuMonitor,
}

/// How a backend's ComfyUI process is found on this host.
#[derive(Debug, Clone, Copy)]
enum ProcessLookup {
    /// `servers[].pid`.
    Configured(u32),
    /// The process listening on this port of a loopback url.
    ListeningOn(u16),
    /// Not on this host, as far as its url tells.
    Remote,
}

/// One device of a backend, from its last `/system_stats`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendDevice {
    /// Device name (`cuda:0 NVIDIA H100 ...`, `cpu`).
    pub name: String,
    /// Device type (`cuda`, `cpu`, `mps`, `directml`, ...), lowercase.
    pub device_type: String,
    /// Device index; `None` for the CPU.
    pub index: Option<i64>,
    /// Memory installed, in bytes.
    pub vram_total: Option<u64>,
    /// Memory free, in bytes.
    pub vram_free: Option<u64>,
    /// Memory torch has reserved, in bytes.
    pub torch_vram_total: Option<u64>,
    /// Free memory inside torch's reservation, in bytes.
    pub torch_vram_free: Option<u64>,
}

impl BackendDevice {
    fn from_wire(device: &DeviceInfo) -> Self {
        let kind = device.device_type.trim().to_ascii_lowercase();
        Self {
            name: device.name.clone(),
            // torch-directml devices report torch's generic name for out-of-tree backends.
            device_type: if kind == "privateuseone" {
                "directml".into()
            } else {
                kind
            },
            index: device.index,
            vram_total: device.vram_total,
            vram_free: device.vram_free,
            torch_vram_total: device.torch_vram_total,
            torch_vram_free: device.torch_vram_free,
        }
    }

    /// The metric label of the device: `type:index`, or the type alone.
    fn label(&self) -> String {
        match self.index {
            Some(index) => format!("{}:{index}", self.device_type),
            None => self.device_type.clone(),
        }
    }
}

/// What the scheduler needs of a backend's devices: their types, and GPU memory summed over
/// the non-CPU devices that report it (a CPU's "vram" is the host's RAM).
pub(crate) fn device_report(devices: &[BackendDevice]) -> DeviceReport {
    let mut vram: Option<Vram> = None;
    for device in devices.iter().filter(|d| d.device_type != "cpu") {
        if let (Some(total), Some(free)) = (device.vram_total, device.vram_free) {
            let sum = vram.get_or_insert(Vram { total: 0, free: 0 });
            sum.total = sum.total.saturating_add(total);
            sum.free = sum.free.saturating_add(free.min(total));
        }
    }
    DeviceReport {
        types: devices.iter().map(|d| d.device_type.clone()).collect(),
        vram,
    }
}

/// What is known of a backend's health.
#[derive(Clone, Default)]
pub struct BackendState {
    /// Whether it was probed at least once.
    pub probed: bool,
    /// Whether the last probe succeeded.
    pub up: bool,
    /// Its node classes, from the last `/object_info` read (kept while down).
    pub catalogue: Option<Arc<ObjectInfoCatalogue>>,
    /// Why the last probe failed.
    pub last_error: Option<String>,
    /// Its devices, from the last `/system_stats` read (kept while down).
    pub devices: Vec<BackendDevice>,
    /// Why it gets no new work although up (GPU disabled, GPU memory above the fraction).
    pub placement_hold: Option<String>,
    /// Its ComfyUI process on this host, when known.
    pub pid: Option<u32>,
}

impl Backend {
    /// The HTTP client.
    pub fn client(&self) -> &ComfyClient {
        self.socket.client()
    }

    /// A copy of the current state.
    pub fn state(&self) -> BackendState {
        self.read_state(BackendState::clone)
    }

    /// What `read` makes of its state now, without copying the state (its last error and
    /// devices are copied by [`Backend::state`]). `read` runs under the state's lock: it must
    /// not read or change this backend's state again.
    pub fn read_state<R>(&self, read: impl FnOnce(&BackendState) -> R) -> R {
        read(
            &self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn set_state(&self, change: impl FnOnce(&mut BackendState)) {
        change(
            &mut self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// Asks the prober to probe now (after a failed request).
    pub fn suspect(&self) {
        self.probe_now.notify_one();
    }

    /// Records why the scheduler holds it back from new work (`None`: it takes work).
    pub fn set_placement_hold(&self, hold: Option<String>) {
        self.set_state(|state| state.placement_hold = hold);
    }

    /// Starts watching the GPU memory of its ComfyUI process; `None` when the process is not
    /// known on this host or this host has no GPUs to watch.
    pub fn watch_gpu_memory(&self) -> Option<ProcessPeak> {
        self.gpu.watch_process(self.read_state(|state| state.pid)?)
    }
}

impl ProcessLookup {
    fn for_server(server: &ServerConfig) -> Self {
        if let Some(pid) = server.pid {
            return Self::Configured(pid);
        }
        let Ok(url) = url::Url::parse(&server.url) else {
            return Self::Remote;
        };
        let loopback = match url.host() {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url.port_or_known_default() {
            Some(port) if loopback => Self::ListeningOn(port),
            _ => Self::Remote,
        }
    }

    /// The pid, looking it up now when it is found by port (a blocking `/proc` walk, off the
    /// async workers).
    async fn locate(self) -> Option<u32> {
        match self {
            Self::Configured(pid) => Some(pid),
            Self::ListeningOn(port) => {
                tokio::task::spawn_blocking(move || crate::gpu::find_listening_pid(port))
                    .await
                    .ok()
                    .flatten()
            }
            Self::Remote => None,
        }
    }
}

/// Every backend, by [`BackendId`] (index).
pub(crate) struct Pool {
    backends: Vec<Arc<Backend>>,
}

impl Pool {
    /// Builds a client and starts a socket task per server. Fails on a server
    /// whose configuration cannot be used (validated configuration never does).
    pub fn start(
        servers: &[ServerConfig],
        instance: Uuid,
        gpu: &GpuMonitor,
        cancel: &CancellationToken,
    ) -> Result<Self, ComfyError> {
        let mut backends = Vec::with_capacity(servers.len());
        for (index, server) in servers.iter().enumerate() {
            let client = ComfyClient::new(server)?;
            let name = server
                .name
                .clone()
                .unwrap_or_else(|| client.server().to_owned());
            let socket = BackendSocket::spawn(
                client,
                client_id(instance, &server.url).hyphenated().to_string(),
                SocketSettings::from_config(server),
                cancel.child_token(),
            );
            backends.push(Arc::new(Backend {
                id: BackendId(u32::try_from(index).unwrap_or(u32::MAX)),
                name,
                socket,
                probe_now: Notify::new(),
                state: RwLock::new(BackendState::default()),
                process: ProcessLookup::for_server(server),
                gpu: gpu.clone(),
            }));
        }
        Ok(Self { backends })
    }

    /// Every backend, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// One backend.
    pub fn get(&self, id: BackendId) -> Option<&Arc<Backend>> {
        self.backends.get(usize::try_from(id.0).ok()?)
    }

    /// Starts one prober per backend on `tracker`; each reports to `tx` until
    /// `cancel`.
    pub fn spawn_probers(
        &self,
        tracker: &TaskTracker,
        tx: &mpsc::UnboundedSender<Msg>,
        interval: Duration,
        cancel: &CancellationToken,
    ) {
        for backend in &self.backends {
            let backend = Arc::clone(backend);
            let tx = tx.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                tokio::select! {
                    () = probe_loop(&backend, &tx, interval) => {}
                    () = cancel.cancelled() => {}
                }
            });
        }
    }

    /// Stops every socket task and waits for them.
    pub async fn shutdown(&self) {
        for backend in &self.backends {
            backend.socket.shutdown().await;
        }
    }
}

/// The ComfyUI client id of this runtime instance on the backend at `url`:
/// stable across restarts (ComfyUI sends a prompt's messages only to the
/// client id that posted it), different per runtime instance and backend.
fn client_id(instance: Uuid, url: &str) -> Uuid {
    let digest = crate::runtime::fingerprint_of(url.as_bytes());
    let bits = instance.as_u128() ^ u128::from(digest);
    uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
}

/// Probes `backend` every `interval` (or when woken) and reports changes.
async fn probe_loop(backend: &Backend, tx: &mpsc::UnboundedSender<Msg>, interval: Duration) {
    loop {
        let was_up = backend.read_state(|state| state.up);
        match probe(backend, was_up).await {
            Ok(Some(catalogue)) => {
                let classes: Vec<String> = catalogue.class_names().map(str::to_owned).collect();
                backend.set_state(|state| {
                    state.probed = true;
                    state.up = true;
                    state.catalogue = Some(Arc::new(catalogue));
                    state.last_error = None;
                });
                // Devices before "up", so the first placement on it knows them.
                if !refresh_devices(backend, tx).await {
                    return;
                }
                tracing::info!(backend = %backend.name, classes = classes.len(), "backend up");
                if tx
                    .send(Msg::BackendUp {
                        backend: backend.id,
                        classes,
                    })
                    .is_err()
                {
                    return;
                }
                // Found again at every come-up: a restarted ComfyUI has a new pid. Only a
                // prompt's start needs it, so "up" is not delayed by the search.
                let pid = backend.process.locate().await;
                tracing::debug!(backend = %backend.name, pid, "backend process");
                backend.set_state(|state| state.pid = pid);
            }
            Ok(None) => {
                if !refresh_devices(backend, tx).await {
                    return;
                }
            }
            Err(error) => {
                let message = error.to_string();
                backend.set_state(|state| {
                    state.probed = true;
                    state.up = false;
                    state.last_error = Some(message.clone());
                });
                if was_up {
                    tracing::warn!(backend = %backend.name, error = %message, "backend down");
                    if tx
                        .send(Msg::BackendDown {
                            backend: backend.id,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = backend.probe_now.notified() => {}
        }
    }
}

/// Reads the backend's devices (`/system_stats`), records them, sets their gauges and reports
/// them to the actor. A failed read changes nothing (the queue probe decides up and down).
/// `false` when the actor is gone.
async fn refresh_devices(backend: &Backend, tx: &mpsc::UnboundedSender<Msg>) -> bool {
    let stats: SystemStats = match backend.client().system_stats().await {
        Ok(stats) => stats,
        Err(error) => {
            tracing::debug!(backend = %backend.name, %error, "system_stats not read");
            return true;
        }
    };
    let devices: Vec<BackendDevice> = stats.devices.iter().map(BackendDevice::from_wire).collect();
    for device in &devices {
        let label = device.label();
        for (metric, value) in [
            (metrics::BACKEND_VRAM_TOTAL_BYTES, device.vram_total),
            (metrics::BACKEND_VRAM_FREE_BYTES, device.vram_free),
            (
                metrics::BACKEND_TORCH_VRAM_TOTAL_BYTES,
                device.torch_vram_total,
            ),
            (
                metrics::BACKEND_TORCH_VRAM_FREE_BYTES,
                device.torch_vram_free,
            ),
        ] {
            if let Some(bytes) = value {
                metrics::set_backend_device_bytes(
                    metric,
                    &backend.name,
                    &label,
                    &device.device_type,
                    bytes,
                );
            }
        }
    }
    let report = device_report(&devices);
    backend.set_state(|state| state.devices = devices);
    tx.send(Msg::BackendDevices {
        backend: backend.id,
        report,
    })
    .is_ok()
}

/// One probe: `GET /queue`; when the backend was down (or never seen), also
/// its `/object_info`, returned as the catalogue of a backend that just came up.
async fn probe(backend: &Backend, was_up: bool) -> Result<Option<ObjectInfoCatalogue>, ComfyError> {
    let queue = backend.client().queue().await?;
    let depth = queue.queue_running.len() + queue.queue_pending.len();
    metrics::set_backend_queue_depth(&backend.name, u64::try_from(depth).unwrap_or(u64::MAX));
    metrics::set_websocket_reconnects(&backend.name, backend.socket.counters().reconnects);
    if was_up {
        return Ok(None);
    }
    // Up means able to follow prompts too: ComfyUI drops the messages of a
    // clientId with no socket, so work waits until the socket is connected.
    if tokio::time::timeout(SOCKET_WAIT, backend.socket.wait_connected())
        .await
        .is_err()
    {
        return Err(ComfyError::WebSocket {
            server: backend.client().server().to_owned(),
            message: format!(
                "answers http but its websocket is not connected after {}s",
                SOCKET_WAIT.as_secs()
            ),
        });
    }
    let classes = backend.client().object_info().await?;
    Ok(Some(ObjectInfoCatalogue::new(classes)))
}

/// How long a probe waits for a backend's WebSocket before calling it down.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(kind: &str, index: Option<i64>, total: u64, free: u64) -> DeviceInfo {
        DeviceInfo {
            name: format!("{kind} device"),
            device_type: kind.to_owned(),
            index,
            vram_total: Some(total),
            vram_free: Some(free),
            torch_vram_total: None,
            torch_vram_free: None,
        }
    }

    #[test]
    fn the_report_sums_gpu_memory_and_leaves_the_cpu_out() {
        let devices: Vec<BackendDevice> = [
            wire("cuda", Some(0), 100, 40),
            wire("CUDA", Some(1), 50, 60),
            wire("cpu", None, 1_000, 900),
            wire("privateuseone", Some(0), 10, 5),
        ]
        .iter()
        .map(BackendDevice::from_wire)
        .collect();
        assert_eq!(devices[1].device_type, "cuda", "lowercased");
        assert_eq!(devices[3].device_type, "directml", "torch's name for it");
        assert_eq!(devices[0].label(), "cuda:0");
        assert_eq!(devices[2].label(), "cpu");
        let report = device_report(&devices);
        assert_eq!(report.types, ["cuda", "cuda", "cpu", "directml"]);
        // Free is capped at total (a device cannot report more free than it has).
        assert_eq!(
            report.vram,
            Some(Vram {
                total: 160,
                free: 95
            })
        );
        let cpu_only = device_report(&[BackendDevice::from_wire(&wire("cpu", None, 8, 8))]);
        assert_eq!(
            cpu_only.vram, None,
            "a CPU's memory is the host's RAM, not VRAM"
        );
    }

    #[test]
    fn a_process_is_looked_for_only_on_this_host() {
        let lookup = |url: &str, pid: Option<u32>| {
            ProcessLookup::for_server(&ServerConfig {
                pid,
                ..ServerConfig::with_url(url)
            })
        };
        assert!(matches!(
            lookup("http://127.0.0.1:8188", None),
            ProcessLookup::ListeningOn(8188)
        ));
        assert!(matches!(
            lookup("http://localhost", None),
            ProcessLookup::ListeningOn(80)
        ));
        assert!(matches!(
            lookup("https://[::1]:9000", None),
            ProcessLookup::ListeningOn(9000)
        ));
        assert!(matches!(
            lookup("http://gpu-box:8188", None),
            ProcessLookup::Remote
        ));
        assert!(matches!(
            lookup("http://gpu-box:8188", Some(7)),
            ProcessLookup::Configured(7)
        ));
    }
}
