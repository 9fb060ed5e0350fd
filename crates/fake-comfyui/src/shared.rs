//! The state every part of the fake shares: the queue behind its mutex, the
//! WebSocket hub, the fault switches, the folders, the interrupt flag and
//! the worker's lifecycle (start, restart, shutdown).
//!
//! Locking rule: the queue mutex is never held across an `await`; frames
//! that report a queue change are handed to the hub while it is held, so
//! `status` frames keep the order of the changes they describe.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::devices::DeviceState;
use super::executor;
use super::faults::FaultState;
use super::files::Dirs;
use super::hub::{Hub, Target};
use super::pyjson::object;
use super::queue::QueueState;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Multiplies TestDelay sleeps and the progress throttle.
    pub(crate) time_scale: f64,
    /// `system_stats.system.comfyui_version`.
    pub(crate) version: String,
}

/// The running worker.
#[derive(Debug)]
struct Worker {
    /// Stops it (restart, shutdown).
    cancel: CancellationToken,
    /// Its task.
    join: JoinHandle<()>,
}

/// Everything the server, the hub and the worker share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The queue, the running item, the history, the counter, the flags.
    state: Mutex<QueueState>,
    /// WebSocket registry and delivery.
    pub(crate) hub: Arc<Hub>,
    /// Fault switches.
    pub(crate) faults: Arc<FaultState>,
    /// `output/`, `input/`, `temp/`.
    pub(crate) dirs: Dirs,
    /// Fixed settings.
    pub(crate) settings: Settings,
    /// ComfyUI's global interrupt flag; reset when a prompt starts.
    pub(crate) interrupt: watch::Sender<bool>,
    /// Wakes the idle worker (a new prompt, a `POST /free`).
    pub(crate) wake: Notify,
    /// Cancelled when the fake shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Every task the fake spawns.
    pub(crate) tracker: TaskTracker,
    /// The current worker; a restart swaps it.
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// The port the fake listens on (for `system_stats.argv`).
    pub(crate) port: u16,
    /// The device `/system_stats` reports, and its memory in use.
    pub(crate) device: DeviceState,
}

/// `GET /features` and the `feature_flags` reply.
pub(crate) fn features() -> Value {
    object([
        ("supports_preview_metadata", Value::Bool(true)),
        ("supports_model_type_tags", Value::Bool(true)),
        ("max_upload_size", Value::from(104_857_600u64)),
        (
            "extension",
            object([("manager", object([("supports_v4", Value::Bool(true))]))]),
        ),
        ("node_replacements", Value::Bool(true)),
        ("assets", Value::Bool(false)),
    ])
}

impl Shared {
    /// Shared state with an empty queue; no worker yet.
    pub(crate) fn new(
        dirs: Dirs,
        settings: Settings,
        faults: Arc<FaultState>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        port: u16,
        device: DeviceState,
    ) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            hub: Arc::new(Hub::new(faults.clone(), features())),
            faults,
            dirs,
            settings,
            interrupt: watch::Sender::new(false),
            wake: Notify::new(),
            shutdown,
            tracker,
            worker: tokio::sync::Mutex::new(None),
            port,
            device,
        }
    }

    /// Locks the queue (never across an `await`).
    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `queue_updated()`: broadcasts `status` for `state`.
    pub(crate) fn broadcast_status(&self, state: &QueueState) {
        self.hub.send_json("status", state.status(), &Target::All);
    }

    /// `interrupt_processing()`: interrupts whatever runs (or the next
    /// check of a prompt that is about to finish; harmless when idle).
    pub(crate) fn interrupt_any(&self) {
        self.interrupt.send_replace(true);
    }

    /// `interrupt_if_running`: interrupts only if `prompt_id` runs now,
    /// atomically with respect to the worker picking the next prompt.
    pub(crate) fn interrupt_if_running(&self, state: &QueueState, prompt_id: &str) -> bool {
        if state.is_running(prompt_id) {
            self.interrupt.send_replace(true);
            true
        } else {
            false
        }
    }

    /// Starts the first worker.
    pub(crate) async fn start_worker(self: &Arc<Self>) {
        let mut worker = self.worker.lock().await;
        *worker = Some(self.spawn_worker());
    }

    fn spawn_worker(self: &Arc<Self>) -> Worker {
        let cancel = self.shutdown.child_token();
        let join = self
            .tracker
            .spawn(executor::run_worker(self.clone(), cancel.clone()));
        Worker { cancel, join }
    }

    /// Behaves like a process restart on the same port: the running prompt
    /// stops without a word, the queue, history, counter and output cache
    /// are lost, every WebSocket is cut. Files on disk stay.
    pub(crate) async fn restart(self: &Arc<Self>) {
        let mut worker = self.worker.lock().await;
        if let Some(old) = worker.take() {
            old.cancel.cancel();
            let _ = old.join.await;
        }
        *self.lock() = QueueState::default();
        self.interrupt.send_replace(false);
        self.hub.reset();
        self.faults.drop_all_websockets();
        if !self.shutdown.is_cancelled() {
            *worker = Some(self.spawn_worker());
        }
    }
}
