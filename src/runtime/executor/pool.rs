//! The pool of ComfyUI backends: one HTTP client and one WebSocket task per
//! configured server, and a prober per backend that tells the executor when it
//! comes up (with its node classes, from `/object_info`) or goes down.
//!
//! A probe is one cheap `GET /queue`. The full `/object_info` (about 1.6 MB on a
//! real server) is read only when a backend comes up, and kept as its
//! catalogue for validation and routing.
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
use crate::comfy::ws::{BackendSocket, BackendSocketHandle, SocketSettings};
use crate::config::ServerConfig;
use crate::runtime::scheduler::BackendId;
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
}

impl Backend {
    /// The HTTP client.
    pub fn client(&self) -> &ComfyClient {
        self.socket.client()
    }

    /// A copy of the current state.
    pub fn state(&self) -> BackendState {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
        let was_up = backend.state().up;
        match probe(backend, was_up).await {
            Ok(Some(catalogue)) => {
                let classes: Vec<String> = catalogue.class_names().map(str::to_owned).collect();
                backend.set_state(|state| {
                    state.probed = true;
                    state.up = true;
                    state.catalogue = Some(Arc::new(catalogue));
                    state.last_error = None;
                });
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
            }
            Ok(None) => {}
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
