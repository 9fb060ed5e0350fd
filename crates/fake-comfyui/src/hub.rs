//! The fake's WebSocket side: the `clientId → socket` registry and the
//! delivery of every frame, with ComfyUI's routing rules and its bugs.
//!
//! - A frame goes to one client id or to every socket; the registry is read
//!   when the frame is sent, so a frame for a client without a socket is
//!   dropped (nothing is replayed later).
//! - A new socket with a known client id replaces the old one, which stays
//!   open and receives nothing more.
//! - When any socket closes, the registry entry for its client id is
//!   removed even if it now belongs to a newer socket, which is then
//!   orphaned: still open, receiving nothing (ComfyUI ≤ 0.36).
//! - Each socket has a bounded queue; a socket that falls that far behind
//!   is cut rather than slowing everyone else down.
//!
//! The hub knows nothing of prompts: the executor and the HTTP handlers say
//! what to send and to whom.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::faults::FaultState;
use super::pyjson::{self, object};

/// Frames a socket may have waiting before it is cut.
const SOCKET_QUEUE: usize = 4096;

/// Who a frame is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Every socket (`sid=None`).
    All,
    /// The socket registered under this client id, if any.
    Client(String),
    /// Nobody: a prompt whose `client_id` is not a string.
    Nobody,
}

impl Target {
    /// The target of a prompt's `client_id` value (absent or null: all).
    pub(crate) fn for_client_id(client_id: Option<&Value>) -> Self {
        match client_id {
            None | Some(Value::Null) => Target::All,
            Some(Value::String(id)) => Target::Client(id.clone()),
            Some(_) => Target::Nobody,
        }
    }

    /// Whether ComfyUI's `server.client_id is not None` holds.
    pub(crate) fn has_client(&self) -> bool {
        !matches!(self, Target::All)
    }
}

/// One frame on its way to a socket.
#[derive(Debug, Clone)]
enum Frame {
    /// A JSON text frame.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Frame {
    fn into_message(self) -> Message {
        match self {
            Frame::Text(text) => Message::Text(text),
            Frame::Binary(bytes) => Message::Binary(bytes),
        }
    }
}

/// A registered socket.
#[derive(Debug)]
struct Entry {
    /// Its outgoing queue, each frame with when it was made.
    tx: mpsc::Sender<(Instant, Frame)>,
    /// Cut the socket (queue overflow).
    kill: CancellationToken,
    /// What the client announced in its `feature_flags` message.
    feature_flags: Value,
}

/// The registry and what the reconnect replay needs.
#[derive(Debug, Default)]
struct Registry {
    /// `self.sockets` (and `sockets_metadata`) keyed by client id.
    sockets: HashMap<String, Entry>,
    /// `server.client_id` when it is a string: the running (or last) prompt's client.
    client_id: Option<String>,
    /// `server.last_node_id`: the node the running prompt executes.
    last_node_id: Option<String>,
    /// Bumped when every socket is dropped (restart); older sockets'
    /// cleanups then leave the registry alone.
    epoch: u64,
}

/// What a newly upgraded socket needs to run.
#[derive(Debug)]
pub(crate) struct Registration {
    /// Its client id (`sid`).
    sid: String,
    /// Its outgoing queue, each frame with when it was made.
    rx: mpsc::Receiver<(Instant, Frame)>,
    /// Fires when the hub cuts it.
    kill: CancellationToken,
    /// The registry epoch it belongs to.
    epoch: u64,
}

/// The WebSocket registry and frame delivery.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The registry.
    registry: Mutex<Registry>,
    /// The fault switches (silence, drops).
    faults: Arc<FaultState>,
    /// What `feature_flags` replies and `GET /features` answer.
    features: Value,
}

impl Hub {
    /// An empty hub.
    pub(crate) fn new(faults: Arc<FaultState>, features: Value) -> Self {
        Self {
            registry: Mutex::new(Registry::default()),
            faults,
            features,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `{"type": event, "data": data}` to `target`.
    pub(crate) fn send_json(&self, event: &str, data: Value, target: &Target) {
        if self.faults.silent() || *target == Target::Nobody {
            return;
        }
        let text = pyjson::dumps(&object([
            ("type", Value::String(event.to_owned())),
            ("data", data),
        ]));
        let registry = self.lock();
        deliver(&registry, Frame::Text(Utf8Bytes::from(text)), target);
    }

    /// Sends a binary frame to `target`.
    pub(crate) fn send_binary(&self, bytes: Vec<u8>, target: &Target) {
        if self.faults.silent() || *target == Target::Nobody {
            return;
        }
        let registry = self.lock();
        deliver(&registry, Frame::Binary(Bytes::from(bytes)), target);
    }

    /// Notes the prompt now running (`server.client_id`) and forgets the
    /// node it ran last.
    pub(crate) fn set_client(&self, client_id: Option<&Value>) {
        let mut registry = self.lock();
        registry.client_id = client_id.and_then(Value::as_str).map(str::to_owned);
        registry.last_node_id = None;
    }

    /// Notes the node the running prompt executes (`server.last_node_id`).
    pub(crate) fn set_last_node(&self, node: Option<String>) {
        self.lock().last_node_id = node;
    }

    /// Whether the socket registered under `sid` negotiated
    /// `supports_preview_metadata: true`.
    pub(crate) fn supports_preview_metadata(&self, target: &Target) -> bool {
        let Target::Client(sid) = target else {
            return false;
        };
        self.lock().sockets.get(sid).is_some_and(|e| {
            e.feature_flags.get("supports_preview_metadata") == Some(&Value::Bool(true))
        })
    }

    /// Registers a new socket under `sid` (replacing, not closing, an older
    /// one) and queues its first frames: `status` with `sid`, then the
    /// `executing` replay when `sid` owns the running prompt.
    pub(crate) fn register(&self, sid: String, queue_remaining: usize) -> Registration {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let kill = CancellationToken::new();
        let mut registry = self.lock();
        registry.sockets.insert(
            sid.clone(),
            Entry {
                tx,
                kill: kill.clone(),
                feature_flags: Value::Object(Map::new()),
            },
        );
        if !self.faults.silent() {
            let status = object([
                (
                    "status",
                    object([(
                        "exec_info",
                        object([("queue_remaining", Value::from(queue_remaining))]),
                    )]),
                ),
                ("sid", Value::String(sid.clone())),
            ]);
            let target = Target::Client(sid.clone());
            let frame = |data: Value, event: &str| {
                Frame::Text(Utf8Bytes::from(pyjson::dumps(&object([
                    ("type", Value::String(event.to_owned())),
                    ("data", data),
                ]))))
            };
            deliver(&registry, frame(status, "status"), &target);
            if registry.client_id.as_deref() == Some(sid.as_str())
                && let Some(node) = registry.last_node_id.clone()
            {
                let replay = object([("node", Value::String(node))]);
                deliver(&registry, frame(replay, "executing"), &target);
            }
        }
        let epoch = registry.epoch;
        Registration {
            sid,
            rx,
            kill,
            epoch,
        }
    }

    /// Handles a client's text message: a first `feature_flags` message is
    /// stored and answered. Returns whether it counted as the first message.
    fn handle_text(&self, sid: &str, text: &str, first_message: bool) -> bool {
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        if first_message && message.get("type") == Some(&Value::String("feature_flags".to_owned()))
        {
            let flags = message
                .get("data")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            {
                let mut registry = self.lock();
                let Some(entry) = registry.sockets.get_mut(sid) else {
                    // ComfyUI raises a KeyError here and keeps waiting for a first message.
                    return false;
                };
                entry.feature_flags = flags;
            }
            self.send_json(
                "feature_flags",
                self.features.clone(),
                &Target::Client(sid.to_owned()),
            );
        }
        true
    }

    /// ComfyUI's `finally: self.sockets.pop(sid)`: removes whatever is
    /// registered under `sid` now, unless the registry was reset since.
    fn unregister(&self, sid: &str, epoch: u64) {
        let mut registry = self.lock();
        if registry.epoch == epoch {
            registry.sockets.remove(sid);
        }
    }

    /// Forgets every socket and the running prompt (a restart); the caller
    /// drops the connections.
    pub(crate) fn reset(&self) {
        let mut registry = self.lock();
        registry.epoch += 1;
        registry.sockets.clear();
        registry.client_id = None;
        registry.last_node_id = None;
    }
}

/// Queues `frame` for the sockets `target` names; a full queue cuts its socket.
fn deliver(registry: &Registry, frame: Frame, target: &Target) {
    let made = Instant::now();
    let send = |entry: &Entry, frame: Frame| {
        if let Err(mpsc::error::TrySendError::Full(_)) = entry.tx.try_send((made, frame)) {
            tracing::warn!("fake comfyui: websocket queue full, cutting the socket");
            entry.kill.cancel();
        }
    };
    match target {
        Target::All => {
            for entry in registry.sockets.values() {
                send(entry, frame.clone());
            }
        }
        Target::Client(sid) => {
            if let Some(entry) = registry.sockets.get(sid) {
                send(entry, frame);
            }
        }
        Target::Nobody => {}
    }
}

/// Why a socket's loop ended.
enum End {
    /// The client closed or the connection failed.
    Client,
    /// Cut by a fault, an overflow or a restart: no close frame.
    Cut,
    /// The fake is shutting down: close with 1001.
    Shutdown,
}

/// Runs one upgraded socket until the client leaves, a fault or restart
/// cuts it, or the fake shuts down.
pub(crate) async fn run_socket(
    hub: Arc<Hub>,
    mut ws: WebSocket,
    registration: Registration,
    mut drops: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let Registration {
        sid,
        mut rx,
        kill,
        epoch,
    } = registration;
    let mut rx_open = true;
    let mut first_message = true;
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break End::Shutdown,
            _ = kill.cancelled() => break End::Cut,
            _ = drops.changed() => break End::Cut,
            frame = rx.recv(), if rx_open => match frame {
                Some((made, frame)) => {
                    // The `lag` fault: sent that long after it was made, in order.
                    let lag = hub.faults.lag();
                    let send = async {
                        if let Some(lag) = lag {
                            tokio::time::sleep_until(made + lag).await;
                        }
                        ws.send(frame.into_message()).await
                    };
                    tokio::select! {
                        sent = send => if sent.is_err() { break End::Client },
                        _ = shutdown.cancelled() => break End::Shutdown,
                        _ = kill.cancelled() => break End::Cut,
                        _ = drops.changed() => break End::Cut,
                    }
                }
                // Replaced by a newer socket with the same client id: stay
                // open, receive nothing (ComfyUI does not close it either).
                None => rx_open = false,
            },
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if hub.handle_text(&sid, text.as_str(), first_message) {
                        first_message = false;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::Client,
                Some(Ok(_)) => {}
            },
        }
    };
    // Unregister before completing the close handshake, so a client that
    // saw its close acknowledged knows the registry no longer holds it.
    hub.unregister(&sid, epoch);
    let grace = std::time::Duration::from_millis(200);
    match end {
        End::Shutdown => {
            let close = Message::Close(Some(CloseFrame {
                code: 1001,
                reason: Utf8Bytes::from_static("server shutdown"),
            }));
            let _ = tokio::time::timeout(grace, ws.send(close)).await;
        }
        End::Client => {
            let _ = tokio::time::timeout(grace, SinkExt::close(&mut ws)).await;
        }
        End::Cut => {}
    }
}
