//! The one WebSocket connection of a ComfyUI backend, owned by one task, and the routing of its
//! messages to the prompts that callers watch.
//!
//! [`BackendSocket::spawn`] starts the task; its [`BackendSocketHandle`] registers interest in a
//! prompt id ([`BackendSocketHandle::watch`], to be called *before* `POST /prompt`, or use
//! [`BackendSocketHandle::submit`], which does both in the right order) and returns a
//! [`PromptWatch`]: a bounded stream of [`PromptEvent`]s for that prompt only, ending with exactly
//! one terminal event (`Success`, `Error`, `Interrupted` or `Lost`).
//!
//! How messages reach a prompt:
//! - Messages that carry a `prompt_id` go to that prompt's watcher. Messages for ids nobody
//!   watches are kept briefly (a bounded buffer) so that a watch can be re-keyed to the id an old
//!   server chose ([`PromptWatch::confirm`]).
//! - The `executing{node}` replay after a reconnect has no `prompt_id`: it sets the running node
//!   of the prompt known to be running (from earlier messages, or from the `/queue` read of the
//!   reconnect's reconciliation).
//! - Binary TEXT frames carry only a node id: they go to the running prompt when it is executing
//!   that node (they are broadcast to every socket, so anything else is someone else's). Type 1
//!   previews carry nothing: they go to the running prompt. Type 4 previews carry their prompt.
//! - `status` broadcasts only feed [`BackendSocketHandle::queue_remaining`].
//!
//! When a prompt ends: `execution_success` / `execution_error` / `execution_interrupted` say how;
//! history is read after `executing{node: null}` (history is written between the two), or, when
//! that never comes, after a short grace by polling. Servers that send no outcome message end
//! with `executing{node: null}` alone and the outcome is read from history. The terminal event
//! carries the history entry and its outputs (or, when history cannot be read, the outputs seen
//! in `executed` messages).
//!
//! Never hanging: on every (re)connect, and whenever a submitted prompt has been silent for
//! `silence_timeout`, every in-flight prompt is reconciled over HTTP: `GET /queue` first, then
//! `GET /history/{id}`, and history once more when the prompt is in neither (the race in the
//! protocol README). Finished there: the terminal event comes from history. Still queued or
//! running: keep waiting. Unknown: `Lost`.
//!
//! Reconnecting: the old socket is closed, and the close confirmed, before a new one opens with
//! the same clientId (two sockets sharing a clientId orphan the new one on ComfyUI up to 0.36).
//! If the close cannot be confirmed, the new socket uses a new clientId; prompts submitted under
//! the old one then finish through reconciliation. Reconnects back off exponentially with
//! jitter up to `reconnect_max_delay`. A socket silent for `silence_timeout` is pinged; silent for
//! twice that, it is replaced.
//!
//! Backpressure: every channel is bounded and the socket task never waits on a watcher.
//! Non-terminal events are offered with `try_send`; when a watcher's channel is full, progress
//! events are coalesced (only the newest is kept and delivered when room frees up) and other
//! events are dropped and counted, then reported to the watcher as one `Lagged{missed}` event.
//! Terminal events are never dropped: a separate task waits for room (or for the watcher to go
//! away, or shutdown).
//!
//! This module knows nothing of scheduling or the store; it uses the HTTP client for
//! reconciliation, history and capability probes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::comfy::capabilities::Capabilities;
use crate::comfy::client::{ComfyClient, ComfyError, PromptLocation};
use crate::comfy::wire::{
    BinaryFrame, ExecutionError, ExecutionInterrupted, HistoryEntry, HistoryOutcome, NodeId,
    NodeOutput, PromptResponse, QueueStatus, WsMessage, feature_flags_message,
};
use crate::config::ServerConfig;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Messages kept for prompt ids nobody watches yet (for re-keying on old servers).
const ORPHAN_CAPACITY: usize = 256;
/// Commands waiting for the socket task.
const COMMAND_CAPACITY: usize = 64;
/// Reconciliation results waiting for the socket task.
const INTERNAL_CAPACITY: usize = 16;

// ---------------------------------------------------------------------------------------------
// Settings, counters, events
// ---------------------------------------------------------------------------------------------

/// How the socket task behaves. [`SocketSettings::from_config`] takes the configurable parts
/// from a [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// A submitted prompt without any message for this long is reconciled over HTTP; a socket
    /// without any frame for this long is pinged, and for twice this long replaced.
    pub silence_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min_delay: Duration,
    /// Longest reconnect delay.
    pub reconnect_max_delay: Duration,
    /// Capacity of each watcher's event channel.
    pub watch_capacity: usize,
    /// How long closing the old socket may take before it counts as unconfirmed.
    pub close_timeout: Duration,
    /// How long after an outcome message to wait for `executing{node: null}` before reading
    /// history anyway.
    pub terminal_grace: Duration,
    /// History reads after the end of a prompt before giving up on it.
    pub history_attempts: u32,
    /// Delay between those reads (grows linearly).
    pub history_interval: Duration,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            silence_timeout: Duration::from_secs(30),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(30),
            watch_capacity: 64,
            close_timeout: Duration::from_secs(2),
            terminal_grace: Duration::from_secs(1),
            history_attempts: 8,
            history_interval: Duration::from_millis(50),
        }
    }
}

impl SocketSettings {
    /// Defaults with `silence_timeout` and `reconnect_max_delay` from `config`.
    pub fn from_config(config: &ServerConfig) -> Self {
        let defaults = Self::default();
        let silence_timeout = non_zero(config.silence_timeout(), defaults.silence_timeout);
        let reconnect_max_delay =
            non_zero(config.reconnect_max_delay(), defaults.reconnect_max_delay);
        Self {
            silence_timeout,
            reconnect_max_delay,
            reconnect_min_delay: defaults.reconnect_min_delay.min(reconnect_max_delay),
            ..defaults
        }
    }
}

fn non_zero(value: Duration, fallback: Duration) -> Duration {
    if value.is_zero() { fallback } else { value }
}

/// Counters of one backend socket, for metrics. All monotonic.
#[derive(Debug, Default)]
pub struct SocketCounters {
    connects: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    client_id_changes: AtomicU64,
    messages: AtomicU64,
    malformed: AtomicU64,
    events_dropped: AtomicU64,
    reconciliations: AtomicU64,
    lost: AtomicU64,
}

impl SocketCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            connects: read(&self.connects),
            reconnects: read(&self.reconnects),
            disconnects: read(&self.disconnects),
            client_id_changes: read(&self.client_id_changes),
            messages: read(&self.messages),
            malformed: read(&self.malformed),
            events_dropped: read(&self.events_dropped),
            reconciliations: read(&self.reconciliations),
            lost: read(&self.lost),
        }
    }
}

/// A copy of [`SocketCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    /// Successful connections, the first included.
    pub connects: u64,
    /// Successful connections after the first.
    pub reconnects: u64,
    /// Connections that ended (dropped by the server, broken, or replaced for silence).
    pub disconnects: u64,
    /// Times the clientId changed because an old socket's close could not be confirmed.
    pub client_id_changes: u64,
    /// Text and binary frames received.
    pub messages: u64,
    /// Frames that could not be parsed.
    pub malformed: u64,
    /// Non-terminal events dropped or coalesced for slow watchers.
    pub events_dropped: u64,
    /// Reconciliation passes (each covers one or more prompts).
    pub reconciliations: u64,
    /// Prompts reported `Lost`.
    pub lost: u64,
}

/// How a prompt ended, with its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Outputs per node: from history when it could be read, else from `executed` messages.
    pub outputs: BTreeMap<NodeId, NodeOutput>,
    /// The history entry, read after the end of the prompt; `None` when it could not be read.
    pub history: Option<Box<HistoryEntry>>,
}

/// Why a prompt was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Neither queued nor in history (deleted while pending, or the server restarted).
    NotFound,
    /// The prompt ended but its history could not be read to tell how.
    HistoryUnavailable,
    /// The socket task shut down while the prompt was in flight.
    Shutdown,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "the server has no record of the prompt",
            Self::HistoryUnavailable => "the prompt ended but its history could not be read",
            Self::Shutdown => "the backend socket shut down",
        })
    }
}

/// What happens to one watched prompt. Everything before the terminal event is best effort
/// (see the module docs on backpressure); the terminal event comes exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptEvent {
    /// `execution_start`: a worker picked the prompt up.
    Started {
        /// Server epoch milliseconds.
        timestamp: Option<i64>,
    },
    /// `execution_cached`: these nodes reuse cached results.
    Cached {
        /// The cached node ids.
        nodes: Vec<NodeId>,
    },
    /// `executing{node}`: a node started.
    NodeStarted {
        /// The node.
        node: NodeId,
        /// The node shown in the UI.
        display_node: Option<NodeId>,
    },
    /// `progress`: a node's steps.
    Progress {
        /// The node.
        node: Option<NodeId>,
        /// Steps done.
        value: f64,
        /// Steps in all.
        max: f64,
    },
    /// `executed`: a node produced its UI dict.
    Executed {
        /// The node.
        node: NodeId,
        /// The node shown in the UI.
        display_node: Option<NodeId>,
        /// The UI dict.
        output: NodeOutput,
    },
    /// A binary preview image.
    Preview {
        /// The node, when known.
        node: Option<NodeId>,
        /// MIME type of the image.
        mime: String,
        /// The encoded image.
        image: Bytes,
    },
    /// A binary TEXT frame.
    Text {
        /// The node.
        node: NodeId,
        /// The text.
        text: String,
    },
    /// The watcher was too slow: this many events were dropped since the last delivered one.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
    /// Terminal: the prompt succeeded.
    Success(Completion),
    /// Terminal: a node failed.
    Error {
        /// The `execution_error` data.
        error: Box<ExecutionError>,
        /// Outputs produced before the failure.
        completion: Completion,
    },
    /// Terminal: the prompt was interrupted.
    Interrupted {
        /// The `execution_interrupted` data.
        interrupted: ExecutionInterrupted,
        /// Outputs produced before the interrupt.
        completion: Completion,
    },
    /// Terminal: the prompt cannot be followed any more.
    Lost {
        /// Why.
        reason: LostReason,
    },
}

impl PromptEvent {
    /// Whether this is the last event of the prompt.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Success(_) | Self::Error { .. } | Self::Interrupted { .. } | Self::Lost { .. }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Routing (pure state; the socket task does the I/O)
// ---------------------------------------------------------------------------------------------

/// An outcome message seen on the socket, waiting for history.
#[derive(Debug, Clone, PartialEq)]
enum WsOutcome {
    Success,
    Error(Box<ExecutionError>),
    Interrupted(ExecutionInterrupted),
}

/// One watched prompt.
struct Watch {
    /// Registration key (stable across re-keying).
    key: u64,
    /// The watcher's channel.
    tx: mpsc::Sender<PromptEvent>,
    /// Whether the caller confirmed the submission (only confirmed prompts are reconciled).
    confirmed: bool,
    /// Last time a message about this prompt arrived (or reconciliation found it alive).
    last_activity: Instant,
    /// Outputs from `executed` messages.
    outputs: BTreeMap<NodeId, NodeOutput>,
    /// The outcome message, and when it came.
    outcome: Option<(WsOutcome, Instant)>,
    /// The node this prompt is executing.
    current_node: Option<NodeId>,
    /// Events dropped since the last delivered one.
    missed: u64,
    /// The newest progress event that did not fit.
    pending_progress: Option<PromptEvent>,
    /// Whether a reconciliation for this prompt is in flight.
    reconciling: bool,
}

impl Watch {
    /// Offers queued-up events again; returns whether the channel is clear of backlog.
    fn flush(&mut self, counters: &SocketCounters) -> bool {
        if self.missed > 0 {
            match self.tx.try_send(PromptEvent::Lagged {
                missed: self.missed,
            }) {
                Ok(()) => self.missed = 0,
                Err(_) => return false,
            }
        }
        if let Some(progress) = self.pending_progress.take() {
            match self.tx.try_send(progress) {
                Ok(()) => {}
                Err(TrySendError::Full(progress)) => {
                    self.pending_progress = Some(progress);
                    return false;
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        let _ = counters;
        true
    }

    fn hold(&mut self, event: PromptEvent, counters: &SocketCounters) {
        if matches!(event, PromptEvent::Progress { .. }) {
            if self.pending_progress.replace(event).is_some() {
                SocketCounters::bump(&counters.events_dropped);
            }
        } else {
            self.missed += 1;
            SocketCounters::bump(&counters.events_dropped);
        }
    }

    /// Offers a non-terminal event without waiting.
    fn deliver(&mut self, event: PromptEvent, counters: &SocketCounters) {
        if !self.flush(counters) {
            self.hold(event, counters);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(event)) => self.hold(event, counters),
        }
    }
}

/// How the end of a prompt is to be delivered.
struct Finish {
    prompt_id: String,
    tx: mpsc::Sender<PromptEvent>,
    outcome: Option<WsOutcome>,
    outputs: BTreeMap<NodeId, NodeOutput>,
}

/// Work for the socket task that needs I/O.
enum Action {
    /// Read history, then deliver the terminal event.
    Finish(Finish),
    /// Deliver a terminal event that is already known.
    Deliver {
        tx: mpsc::Sender<PromptEvent>,
        event: PromptEvent,
    },
    /// Reconcile these prompts over HTTP.
    Reconcile(Vec<String>),
}

/// The result of reconciling one prompt; `None` when the server could not be asked.
type Reconciled = (String, Option<PromptLocation>);

/// Routing state: who watches what, and which prompt runs now.
struct Router {
    counters: Arc<SocketCounters>,
    watches: HashMap<String, Watch>,
    keys: HashMap<u64, String>,
    next_key: u64,
    /// Recent messages for prompt ids nobody watches.
    orphans: VecDeque<WsMessage>,
    /// The prompt executing now, as far as the messages tell.
    running: Option<String>,
    /// The node it executes.
    running_node: Option<NodeId>,
    /// A reconnect replay's node, waiting to learn its prompt from reconciliation.
    replay_node: Option<NodeId>,
    /// From the last `status` broadcast.
    queue_remaining: Option<u64>,
}

impl Router {
    fn new(counters: Arc<SocketCounters>) -> Self {
        Self {
            counters,
            watches: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
            orphans: VecDeque::new(),
            running: None,
            running_node: None,
            replay_node: None,
            queue_remaining: None,
        }
    }

    fn watch(
        &mut self,
        prompt_id: String,
        tx: mpsc::Sender<PromptEvent>,
        now: Instant,
    ) -> Result<u64, String> {
        if let Some(existing) = self.watches.get(&prompt_id) {
            if !existing.tx.is_closed() {
                return Err(prompt_id);
            }
            let key = existing.key;
            self.remove(key);
        }
        let key = self.next_key;
        self.next_key += 1;
        self.keys.insert(key, prompt_id.clone());
        self.watches.insert(
            prompt_id,
            Watch {
                key,
                tx,
                confirmed: false,
                last_activity: now,
                outputs: BTreeMap::new(),
                outcome: None,
                current_node: None,
                missed: 0,
                pending_progress: None,
                reconciling: false,
            },
        );
        Ok(key)
    }

    fn remove(&mut self, key: u64) -> Option<(String, Watch)> {
        let id = self.keys.remove(&key)?;
        let watch = self.watches.remove(&id)?;
        Some((id, watch))
    }

    /// The caller posted the prompt and the server calls it `server_id`. Re-keys the watch when
    /// the server chose another id and replays what was buffered for that id.
    fn confirm(&mut self, key: u64, server_id: String, now: Instant) -> Vec<Action> {
        let Some(id) = self.keys.get(&key).cloned() else {
            // Already finished (a fast prompt can end before its POST returns) or dropped.
            return Vec::new();
        };
        if id != server_id {
            if self.watches.contains_key(&server_id) {
                tracing::warn!(prompt_id = %server_id, "server prompt id is already watched; keeping the original id");
            } else if let Some(watch) = self.watches.remove(&id) {
                self.keys.insert(key, server_id.clone());
                self.watches.insert(server_id.clone(), watch);
            }
        }
        let Some(id) = self.keys.get(&key).cloned() else {
            return Vec::new();
        };
        if let Some(watch) = self.watches.get_mut(&id) {
            watch.confirmed = true;
            watch.last_activity = now;
        }
        let (replay, keep): (Vec<WsMessage>, Vec<WsMessage>) = self
            .orphans
            .drain(..)
            .partition(|m| m.prompt_id() == Some(id.as_str()));
        self.orphans = keep.into();
        replay
            .into_iter()
            .flat_map(|message| self.on_text(message, now))
            .collect()
    }

    fn unwatch(&mut self, key: u64) {
        self.remove(key);
    }

    fn track_running(&mut self, message: &WsMessage) {
        match message {
            WsMessage::ExecutionStart(start) => {
                self.running = Some(start.prompt_id.clone());
                self.running_node = None;
            }
            WsMessage::Executing(executing) => {
                if let Some(prompt_id) = &executing.prompt_id {
                    if executing.node.is_some() {
                        self.running = Some(prompt_id.clone());
                        self.running_node.clone_from(&executing.node);
                    } else if self.running.as_deref() == Some(prompt_id) {
                        self.running = None;
                        self.running_node = None;
                    }
                }
            }
            WsMessage::ExecutionSuccess(_)
            | WsMessage::ExecutionError(_)
            | WsMessage::ExecutionInterrupted(_)
                if self.running.as_deref() == message.prompt_id() =>
            {
                self.running_node = None;
            }
            _ => {}
        }
    }

    fn on_text(&mut self, message: WsMessage, now: Instant) -> Vec<Action> {
        match &message {
            WsMessage::Status(status) => {
                if status.queue_remaining.is_some() {
                    self.queue_remaining = status.queue_remaining;
                }
                return Vec::new();
            }
            WsMessage::FeatureFlags(_) => return Vec::new(),
            WsMessage::Executing(executing) if executing.prompt_id.is_none() => {
                // The replay after a reconnect: the running prompt is ours, at this node.
                let Some(node) = executing.node.clone() else {
                    return Vec::new();
                };
                match self.running.clone() {
                    Some(running) => {
                        self.running_node = Some(node.clone());
                        if let Some(watch) = self.watches.get_mut(&running) {
                            watch.last_activity = now;
                            watch.current_node = Some(node);
                        }
                    }
                    None => self.replay_node = Some(node),
                }
                return Vec::new();
            }
            _ => {}
        }
        self.track_running(&message);
        let Some(prompt_id) = message.prompt_id().map(str::to_owned) else {
            return Vec::new();
        };
        let counters = Arc::clone(&self.counters);
        let Some(watch) = self.watches.get_mut(&prompt_id) else {
            if self.orphans.len() == ORPHAN_CAPACITY {
                self.orphans.pop_front();
            }
            self.orphans.push_back(message);
            return Vec::new();
        };
        watch.last_activity = now;
        match message {
            WsMessage::ExecutionStart(start) => watch.deliver(
                PromptEvent::Started {
                    timestamp: start.timestamp,
                },
                &counters,
            ),
            WsMessage::ExecutionCached(cached) => {
                watch.deliver(
                    PromptEvent::Cached {
                        nodes: cached.nodes,
                    },
                    &counters,
                );
            }
            WsMessage::Executing(executing) => match executing.node {
                Some(node) => {
                    watch.current_node = Some(node.clone());
                    watch.deliver(
                        PromptEvent::NodeStarted {
                            node,
                            display_node: executing.display_node,
                        },
                        &counters,
                    );
                }
                None => return self.finish(&prompt_id).into_iter().collect(),
            },
            WsMessage::Progress(progress) => watch.deliver(
                PromptEvent::Progress {
                    node: progress.node,
                    value: progress.value,
                    max: progress.max,
                },
                &counters,
            ),
            WsMessage::Executed(executed) => {
                watch
                    .outputs
                    .insert(executed.node.clone(), executed.output.clone());
                watch.deliver(
                    PromptEvent::Executed {
                        node: executed.node,
                        display_node: executed.display_node,
                        output: executed.output,
                    },
                    &counters,
                );
            }
            WsMessage::ExecutionSuccess(_) => {
                watch.outcome.get_or_insert((WsOutcome::Success, now));
            }
            WsMessage::ExecutionError(error) => {
                watch.outcome.get_or_insert((WsOutcome::Error(error), now));
            }
            WsMessage::ExecutionInterrupted(interrupted) => {
                watch
                    .outcome
                    .get_or_insert((WsOutcome::Interrupted(interrupted), now));
            }
            // Activity only: `progress` is the baseline on every version.
            WsMessage::ProgressState(_) | WsMessage::Unknown { .. } => {}
            WsMessage::Status(_) | WsMessage::FeatureFlags(_) => {}
        }
        Vec::new()
    }

    fn on_binary(&mut self, frame: BinaryFrame, now: Instant) {
        let (prompt_id, event) = match frame {
            BinaryFrame::PreviewImage { format, image } => (
                self.running.clone(),
                PromptEvent::Preview {
                    node: self.running_node.clone(),
                    mime: format.mime().to_owned(),
                    image,
                },
            ),
            BinaryFrame::Text { node_id, text } => {
                // Broadcast to every socket: only the running prompt at that node is ours.
                let running = self.running.clone().filter(|running| {
                    self.running_node.as_deref() == Some(node_id.as_str())
                        || self
                            .watches
                            .get(running)
                            .is_some_and(|w| w.current_node.as_deref() == Some(node_id.as_str()))
                });
                (
                    running,
                    PromptEvent::Text {
                        node: node_id,
                        text,
                    },
                )
            }
            BinaryFrame::PreviewImageWithMetadata { metadata, image } => (
                metadata.prompt_id.or_else(|| self.running.clone()),
                PromptEvent::Preview {
                    node: metadata.node_id,
                    mime: if metadata.image_type.is_empty() {
                        "application/octet-stream".to_owned()
                    } else {
                        metadata.image_type
                    },
                    image,
                },
            ),
            BinaryFrame::Unknown { .. } => return,
        };
        let Some(prompt_id) = prompt_id else { return };
        let counters = Arc::clone(&self.counters);
        if let Some(watch) = self.watches.get_mut(&prompt_id) {
            watch.last_activity = now;
            watch.deliver(event, &counters);
        }
    }

    /// Ends the watch of `prompt_id`: its terminal event is read from history next.
    fn finish(&mut self, prompt_id: &str) -> Option<Action> {
        let key = self.watches.get(prompt_id)?.key;
        let (prompt_id, watch) = self.remove(key)?;
        Some(Action::Finish(Finish {
            prompt_id,
            tx: watch.tx,
            outcome: watch.outcome.map(|(outcome, _)| outcome),
            outputs: watch.outputs,
        }))
    }

    /// Reconcile every confirmed prompt that is not already ending (after a (re)connect).
    fn on_connected(&mut self, now: Instant) -> Vec<Action> {
        self.running = None;
        self.running_node = None;
        self.replay_node = None;
        let ids: Vec<String> = self
            .watches
            .iter_mut()
            .filter(|(_, w)| w.confirmed && !w.reconciling && w.outcome.is_none())
            .map(|(id, w)| {
                w.reconciling = true;
                w.last_activity = now;
                id.clone()
            })
            .collect();
        if ids.is_empty() {
            Vec::new()
        } else {
            vec![Action::Reconcile(ids)]
        }
    }

    fn on_tick(&mut self, now: Instant, settings: &SocketSettings) -> Vec<Action> {
        let gone: Vec<u64> = self
            .watches
            .values()
            .filter(|w| w.tx.is_closed())
            .map(|w| w.key)
            .collect();
        for key in gone {
            self.remove(key);
        }
        let counters = Arc::clone(&self.counters);
        let mut actions = Vec::new();
        let mut ended = Vec::new();
        let mut silent = Vec::new();
        for (id, watch) in &mut self.watches {
            watch.flush(&counters);
            match &watch.outcome {
                Some((_, at)) if now.saturating_duration_since(*at) >= settings.terminal_grace => {
                    ended.push(id.clone());
                }
                Some(_) => {}
                None if watch.confirmed
                    && !watch.reconciling
                    && now.saturating_duration_since(watch.last_activity)
                        >= settings.silence_timeout =>
                {
                    watch.reconciling = true;
                    silent.push(id.clone());
                }
                None => {}
            }
        }
        for id in ended {
            actions.extend(self.finish(&id));
        }
        if !silent.is_empty() {
            actions.push(Action::Reconcile(silent));
        }
        actions
    }

    fn on_reconciled(&mut self, results: Vec<Reconciled>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (prompt_id, location) in results {
            let Some(watch) = self.watches.get_mut(&prompt_id) else {
                continue;
            };
            watch.reconciling = false;
            match location {
                // The server could not be asked: try again after another silent period.
                None => watch.last_activity = now,
                Some(PromptLocation::Pending(_)) => watch.last_activity = now,
                Some(PromptLocation::Running(_)) => {
                    watch.last_activity = now;
                    if self.running.is_none() {
                        self.running = Some(prompt_id.clone());
                        self.running_node = self.replay_node.take();
                        watch.current_node.clone_from(&self.running_node);
                    }
                }
                Some(PromptLocation::Finished(entry)) => {
                    let key = watch.key;
                    if let Some((_, watch)) = self.remove(key) {
                        let event = terminal_event(
                            watch.outcome.map(|(o, _)| o),
                            Some(entry),
                            watch.outputs,
                        );
                        actions.push(Action::Deliver {
                            tx: watch.tx,
                            event,
                        });
                    }
                }
                Some(PromptLocation::Unknown) => {
                    let key = watch.key;
                    if let Some((_, watch)) = self.remove(key) {
                        SocketCounters::bump(&self.counters.lost);
                        tracing::warn!(prompt_id = %prompt_id, "prompt is neither queued nor in history; reporting it lost");
                        actions.push(Action::Deliver {
                            tx: watch.tx,
                            event: PromptEvent::Lost {
                                reason: LostReason::NotFound,
                            },
                        });
                    }
                }
            }
        }
        actions
    }

    /// Tells every watcher the socket is gone (without waiting on a full channel: such a
    /// watcher sees its stream end instead).
    fn on_shutdown(&mut self) {
        for (_, watch) in self.watches.drain() {
            let _ = watch.tx.try_send(PromptEvent::Lost {
                reason: LostReason::Shutdown,
            });
        }
        self.keys.clear();
    }
}

/// The terminal event from what the socket said and what history says.
fn terminal_event(
    outcome: Option<WsOutcome>,
    history: Option<Box<HistoryEntry>>,
    seen_outputs: BTreeMap<NodeId, NodeOutput>,
) -> PromptEvent {
    let outcome = match (outcome, &history) {
        (Some(outcome), _) => outcome,
        (None, Some(entry)) => match entry.outcome() {
            HistoryOutcome::Success => WsOutcome::Success,
            HistoryOutcome::Error(error) => WsOutcome::Error(error),
            HistoryOutcome::Interrupted(interrupted) => WsOutcome::Interrupted(interrupted),
            HistoryOutcome::Failed => WsOutcome::Error(Box::new(ExecutionError {
                prompt_id: entry.prompt.prompt_id.clone(),
                node_id: String::new(),
                node_type: String::new(),
                executed: Vec::new(),
                exception_message: "the prompt failed without an error message".into(),
                exception_type: String::new(),
                traceback: Vec::new(),
                current_inputs: Value::Null,
                current_outputs: Value::Null,
                timestamp: None,
            })),
        },
        (None, None) => {
            return PromptEvent::Lost {
                reason: LostReason::HistoryUnavailable,
            };
        }
    };
    let completion = Completion {
        outputs: history
            .as_ref()
            .map_or(seen_outputs, |entry| entry.outputs.clone()),
        history,
    };
    match outcome {
        WsOutcome::Success => PromptEvent::Success(completion),
        WsOutcome::Error(error) => PromptEvent::Error { error, completion },
        WsOutcome::Interrupted(interrupted) => PromptEvent::Interrupted {
            interrupted,
            completion,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The socket task
// ---------------------------------------------------------------------------------------------

enum Command {
    Watch {
        prompt_id: String,
        tx: mpsc::Sender<PromptEvent>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Confirm {
        key: u64,
        server_prompt_id: String,
        reply: oneshot::Sender<()>,
    },
    Unwatch {
        key: u64,
    },
}

struct Shared {
    /// The server, redacted, for messages.
    server: String,
    /// Counters for metrics.
    counters: Arc<SocketCounters>,
    /// The clientId in use (it changes only when an old socket's close cannot be confirmed).
    client_id: watch::Sender<String>,
    /// Whether the socket is up.
    connected: watch::Sender<bool>,
    /// From the last `status` broadcast.
    queue_remaining: watch::Sender<Option<u64>>,
    /// The socket task and the tasks it spawns.
    tracker: TaskTracker,
    /// Stops this socket (a child of the caller's token).
    cancel: CancellationToken,
    /// Capacity of each watcher's channel.
    watch_capacity: usize,
}

type ConnectFuture = Pin<Box<dyn Future<Output = ConnectOutcome> + Send>>;

struct ConnectOutcome {
    result: Result<(Box<Socket>, Capabilities), ComfyError>,
    client_id: String,
}

enum Conn {
    Up(Box<Socket>),
    Connecting(ConnectFuture),
}

enum ConnEvent {
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Connected(ConnectOutcome),
}

impl Conn {
    async fn next_event(&mut self) -> ConnEvent {
        match self {
            Self::Up(socket) => ConnEvent::Frame(socket.next().await),
            Self::Connecting(connect) => ConnEvent::Connected(connect.as_mut().await),
        }
    }
}

/// Starts the socket task of one backend.
pub struct BackendSocket;

impl BackendSocket {
    /// Spawns the task that owns the backend's one WebSocket (`/ws?clientId=<client_id>`) and
    /// returns its handle. The task runs until `cancel` (or [`BackendSocketHandle::shutdown`])
    /// and must be started inside a tokio runtime.
    pub fn spawn(
        client: ComfyClient,
        client_id: impl Into<String>,
        settings: SocketSettings,
        cancel: CancellationToken,
    ) -> BackendSocketHandle {
        let client_id = client_id.into();
        let counters = Arc::new(SocketCounters::default());
        let shared = Arc::new(Shared {
            server: client.server().to_owned(),
            counters: Arc::clone(&counters),
            client_id: watch::Sender::new(client_id.clone()),
            connected: watch::Sender::new(false),
            queue_remaining: watch::Sender::new(None),
            tracker: TaskTracker::new(),
            cancel: cancel.child_token(),
            watch_capacity: settings.watch_capacity.max(1),
        });
        let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(settings.reconnect_min_delay)
            .with_max_delay(settings.reconnect_max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let task = SocketTask {
            client: client.clone(),
            shared: Arc::clone(&shared),
            commands,
            internal_tx,
            internal_rx,
            router: Router::new(counters),
            conn: None,
            backoff_builder: backoff,
            backoff: backoff.build(),
            client_id,
            last_frame: Instant::now(),
            pinged: false,
            connected_once: false,
            settings,
        };
        shared.tracker.spawn(task.run());
        BackendSocketHandle {
            commands: commands_tx,
            shared,
            client,
        }
    }
}

struct SocketTask {
    client: ComfyClient,
    settings: SocketSettings,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    internal_tx: mpsc::Sender<Vec<Reconciled>>,
    internal_rx: mpsc::Receiver<Vec<Reconciled>>,
    router: Router,
    /// The socket, or the attempt to open one; `None` only before the first attempt.
    conn: Option<Conn>,
    backoff_builder: ExponentialBuilder,
    /// Reconnect delays; reset after each successful connect.
    backoff: ExponentialBackoff,
    /// The clientId the current (or next) socket uses.
    client_id: String,
    /// When the socket last received any frame.
    last_frame: Instant,
    /// Whether a ping went out since the last frame.
    pinged: bool,
    connected_once: bool,
}

impl SocketTask {
    fn tick_period(&self) -> Duration {
        (self.settings.silence_timeout / 4)
            .min(self.settings.terminal_grace / 2)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    async fn run(mut self) {
        let cancel = self.shared.cancel.clone();
        self.start_connecting(Duration::ZERO, None);
        let mut tick = tokio::time::interval(self.tick_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while let Some(conn) = self.conn.as_mut() {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Every handle and watch is gone: nobody can use this socket any more.
                    None => break,
                },
                Some(results) = self.internal_rx.recv() => {
                    let actions = self.router.on_reconciled(results, Instant::now());
                    self.execute(actions);
                }
                event = conn.next_event() => self.on_conn_event(event).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.router.on_shutdown();
        self.shared.connected.send_replace(false);
        if let Some(Conn::Up(socket)) = self.conn.take() {
            close_gracefully(*socket, self.settings.close_timeout).await;
        }
        self.shared.tracker.close();
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Watch {
                prompt_id,
                tx,
                reply,
            } => {
                let _ = reply.send(self.router.watch(prompt_id, tx, now));
            }
            Command::Confirm {
                key,
                server_prompt_id,
                reply,
            } => {
                let actions = self.router.confirm(key, server_prompt_id, now);
                self.execute(actions);
                let _ = reply.send(());
            }
            Command::Unwatch { key } => self.router.unwatch(key),
        }
    }

    async fn on_conn_event(&mut self, event: ConnEvent) {
        let now = Instant::now();
        match event {
            ConnEvent::Frame(Some(Ok(message))) => {
                self.last_frame = now;
                self.pinged = false;
                self.on_message(message, now);
            }
            ConnEvent::Frame(end) => {
                let reason = match end {
                    Some(Err(error)) => error.to_string().to_lowercase(),
                    _ => "closed by the server".to_owned(),
                };
                tracing::info!(server = %self.shared.server, %reason, "comfyui websocket disconnected");
                self.disconnected();
            }
            ConnEvent::Connected(outcome) => {
                self.client_id = outcome.client_id;
                self.shared.client_id.send_replace(self.client_id.clone());
                match outcome.result {
                    Ok((socket, capabilities)) => {
                        tracing::info!(
                            server = %self.shared.server,
                            reconnect = self.connected_once,
                            preview_metadata = capabilities.preview_metadata,
                            "comfyui websocket connected"
                        );
                        self.conn = Some(Conn::Up(socket));
                        self.backoff = self.backoff_builder.build();
                        SocketCounters::bump(&self.shared.counters.connects);
                        if self.connected_once {
                            SocketCounters::bump(&self.shared.counters.reconnects);
                        }
                        self.connected_once = true;
                        self.last_frame = now;
                        self.pinged = false;
                        self.shared.connected.send_replace(true);
                        let actions = self.router.on_connected(now);
                        self.execute(actions);
                    }
                    Err(error) => {
                        tracing::warn!(server = %self.shared.server, %error, "comfyui websocket connect failed");
                        let delay = self.next_delay();
                        self.start_connecting(delay, None);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, message: Message, now: Instant) {
        let counters = &self.shared.counters;
        match message {
            Message::Text(text) => {
                SocketCounters::bump(&counters.messages);
                match WsMessage::parse(&text) {
                    Ok(message) => {
                        let actions = self.router.on_text(message, now);
                        self.shared.queue_remaining.send_if_modified(|q| {
                            let changed = *q != self.router.queue_remaining;
                            *q = self.router.queue_remaining;
                            changed
                        });
                        self.execute(actions);
                    }
                    Err(error) => {
                        SocketCounters::bump(&counters.malformed);
                        tracing::debug!(server = %self.shared.server, %error, "malformed comfyui message ignored");
                    }
                }
            }
            Message::Binary(bytes) => {
                SocketCounters::bump(&counters.messages);
                match BinaryFrame::parse(bytes) {
                    Ok(frame) => self.router.on_binary(frame, now),
                    Err(error) => {
                        SocketCounters::bump(&counters.malformed);
                        tracing::debug!(server = %self.shared.server, %error, "malformed comfyui binary frame ignored");
                    }
                }
            }
            // tungstenite answers pings itself; a close is followed by the end of the stream.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.backoff
            .next()
            .unwrap_or(self.settings.reconnect_max_delay)
    }

    /// The socket ended or is being replaced: close it (confirming the close) and reconnect.
    fn disconnected(&mut self) {
        SocketCounters::bump(&self.shared.counters.disconnects);
        self.shared.connected.send_replace(false);
        let old = match self.conn.take() {
            Some(Conn::Up(socket)) => Some(*socket),
            _ => None,
        };
        let delay = self.next_delay();
        self.start_connecting(delay, old);
    }

    fn start_connecting(&mut self, delay: Duration, old: Option<Socket>) {
        let client = self.client.clone();
        let settings = self.settings.clone();
        let counters = Arc::clone(&self.shared.counters);
        let cancel = self.shared.cancel.clone();
        let mut client_id = self.client_id.clone();
        let server = self.shared.server.clone();
        self.conn = Some(Conn::Connecting(Box::pin(async move {
            if let Some(old) = old
                && !close_gracefully(old, settings.close_timeout).await
            {
                // Two sockets under one clientId orphan the new one: take a fresh id.
                let fresh = Uuid::new_v4().to_string();
                tracing::warn!(%server, "old websocket close not confirmed; reconnecting with a new client id");
                SocketCounters::bump(&counters.client_id_changes);
                client_id = fresh;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => {}
            }
            let result = connect(&client, &client_id).await;
            ConnectOutcome { result, client_id }
        })));
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let actions = self.router.on_tick(now, &self.settings);
        self.execute(actions);
        let Some(Conn::Up(socket)) = self.conn.as_mut() else {
            return;
        };
        let silent = now.saturating_duration_since(self.last_frame);
        if silent >= self.settings.silence_timeout * 2 {
            tracing::info!(server = %self.shared.server, ?silent, "comfyui websocket silent; replacing it");
            self.disconnected();
        } else if silent >= self.settings.silence_timeout && !self.pinged {
            self.pinged = true;
            let ping = tokio::time::timeout(
                self.settings.close_timeout,
                socket.send(Message::Ping(Bytes::new())),
            )
            .await;
            if !matches!(ping, Ok(Ok(()))) {
                self.disconnected();
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            let cancel = self.shared.cancel.clone();
            match action {
                Action::Deliver { tx, event } => {
                    self.shared
                        .tracker
                        .spawn(deliver_terminal(tx, event, cancel));
                }
                Action::Finish(finish) => {
                    let client = self.client.clone();
                    let settings = self.settings.clone();
                    let counters = Arc::clone(&self.shared.counters);
                    self.shared.tracker.spawn(async move {
                        let history =
                            read_history(&client, &finish.prompt_id, &settings, &cancel).await;
                        let event = terminal_event(finish.outcome, history, finish.outputs);
                        if matches!(event, PromptEvent::Lost { .. }) {
                            SocketCounters::bump(&counters.lost);
                        }
                        deliver_terminal(finish.tx, event, cancel).await;
                    });
                }
                Action::Reconcile(prompt_ids) => {
                    SocketCounters::bump(&self.shared.counters.reconciliations);
                    let client = self.client.clone();
                    let results = self.internal_tx.clone();
                    self.shared.tracker.spawn(async move {
                        let reconciled = tokio::select! {
                            reconciled = reconcile(&client, prompt_ids) => reconciled,
                            () = cancel.cancelled() => return,
                        };
                        // Bounded; the socket task drains it in its loop.
                        let _ = results.send(reconciled).await;
                    });
                }
            }
        }
    }
}

/// Sends a terminal event, waiting for room, until the watcher goes away or shutdown.
async fn deliver_terminal(
    tx: mpsc::Sender<PromptEvent>,
    event: PromptEvent,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = tx.send(event) => {}
        () = cancel.cancelled() => {}
    }
}

/// Reads a finished prompt's history, polling briefly while it is not written yet.
async fn read_history(
    client: &ComfyClient,
    prompt_id: &str,
    settings: &SocketSettings,
    cancel: &CancellationToken,
) -> Option<Box<HistoryEntry>> {
    for attempt in 0..settings.history_attempts.max(1) {
        match client.history(prompt_id).await {
            Ok(Some(entry)) => return Some(Box::new(entry)),
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%prompt_id, %error, "history read failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.history_interval * (attempt + 1)) => {}
            () = cancel.cancelled() => return None,
        }
    }
    None
}

/// Where each prompt is: `GET /queue` once, then history for those not queued (twice when the
/// first read finds nothing). `None` for a prompt the server could not be asked about.
async fn reconcile(client: &ComfyClient, prompt_ids: Vec<String>) -> Vec<Reconciled> {
    let queue: QueueStatus = match client.queue().await {
        Ok(queue) => queue,
        Err(error) => {
            tracing::debug!(server = %client.server(), %error, "reconciliation could not read the queue");
            return prompt_ids.into_iter().map(|id| (id, None)).collect();
        }
    };
    let mut results = Vec::with_capacity(prompt_ids.len());
    for prompt_id in prompt_ids {
        let location = if let Some(item) = queue
            .queue_running
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            Some(PromptLocation::Running(Box::new(item.clone())))
        } else if let Some(item) = queue
            .queue_pending
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            Some(PromptLocation::Pending(Box::new(item.clone())))
        } else {
            let mut found = Some(PromptLocation::Unknown);
            for _ in 0..2 {
                match client.history(&prompt_id).await {
                    Ok(Some(entry)) => {
                        found = Some(PromptLocation::Finished(Box::new(entry)));
                        break;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        found = None;
                        break;
                    }
                }
            }
            found
        };
        results.push((prompt_id, location));
    }
    results
}

/// Opens the socket: re-detects capabilities (the server may have changed), connects, and sends
/// `feature_flags` first when the server supports preview metadata.
async fn connect(
    client: &ComfyClient,
    client_id: &str,
) -> Result<(Box<Socket>, Capabilities), ComfyError> {
    let capabilities = client.detect_capabilities().await?;
    let ws_error = |message: String| ComfyError::WebSocket {
        server: client.server().to_owned(),
        message,
    };
    let url = client.ws_url(client_id);
    // verify_ssl = false: accept any certificate, as the HTTP client does.
    let connector = if url.scheme() == "wss" && !client.verify_ssl() {
        let config = super::tls::unverified_client_config()
            .map_err(|e| ws_error(format!("tls configuration: {e}")))?;
        Some(tokio_tungstenite::Connector::Rustls(config))
    } else {
        None
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    if let Some(authorization) = client.ws_authorization() {
        request
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
    }
    let (mut socket, _) = tokio::time::timeout(
        client.timeout(),
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector),
    )
    .await
    .map_err(|_| ws_error("handshake timed out".into()))?
    .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    if capabilities.preview_metadata {
        socket
            .send(Message::text(feature_flags_message(true)))
            .await
            .map_err(|e| ws_error(e.to_string().to_lowercase()))?;
    }
    Ok((Box::new(socket), capabilities))
}

/// Closes `socket` and waits for the end of the stream. Returns whether the close was confirmed
/// (the stream ended) within `timeout`; a socket that is already dead counts as confirmed.
async fn close_gracefully(mut socket: Socket, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        if socket.close(None).await.is_err() {
            // Already closed or broken: the server side is gone too.
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

/// The handle of a backend's socket task. Cheap to clone.
#[derive(Clone)]
pub struct BackendSocketHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    client: ComfyClient,
}

impl fmt::Debug for BackendSocketHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSocketHandle")
            .field("server", &self.shared.server)
            .field("client_id", &*self.shared.client_id.borrow())
            .field("connected", &*self.shared.connected.borrow())
            .finish()
    }
}

impl BackendSocketHandle {
    fn closed(&self) -> ComfyError {
        ComfyError::SocketClosed {
            server: self.shared.server.clone(),
        }
    }

    /// Registers interest in `prompt_id`. Call it *before* posting the prompt, or a fast prompt
    /// can finish unseen; then [`PromptWatch::confirm`] with the id the server answered. One
    /// watcher per prompt id.
    pub async fn watch(&self, prompt_id: &str) -> Result<PromptWatch, ComfyError> {
        let (tx, events) = mpsc::channel(self.shared.watch_capacity);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Watch {
                prompt_id: prompt_id.to_owned(),
                tx,
                reply,
            })
            .await
            .map_err(|_| self.closed())?;
        let key = answer
            .await
            .map_err(|_| self.closed())?
            .map_err(|prompt_id| ComfyError::InvalidArgument {
                field: "prompt_id",
                message: format!("prompt {prompt_id} is already watched"),
            })?;
        Ok(PromptWatch {
            prompt_id: prompt_id.to_owned(),
            server: self.shared.server.clone(),
            key,
            events,
            commands: self.commands.clone(),
            finished: false,
        })
    }

    /// Watches, then submits (`POST /prompt` with this socket's clientId), then confirms: the
    /// safe order. On a submission error nothing stays registered.
    pub async fn submit(
        &self,
        prompt_id: Uuid,
        prompt: &Value,
        extra_data: Option<&Value>,
    ) -> Result<(PromptWatch, PromptResponse), ComfyError> {
        let mut watch = self.watch(&prompt_id.hyphenated().to_string()).await?;
        let client_id = self.client_id();
        let response = self
            .client
            .submit_prompt(prompt_id, &client_id, prompt, extra_data)
            .await?;
        watch.confirm(&response.prompt_id).await?;
        Ok((watch, response))
    }

    /// The clientId to submit prompts with (it changes only when a reconnect could not confirm
    /// the old socket's close).
    pub fn client_id(&self) -> String {
        self.shared.client_id.borrow().clone()
    }

    /// The HTTP client of this backend.
    pub fn client(&self) -> &ComfyClient {
        &self.client
    }

    /// The counters, for metrics.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// Whether the socket is connected now.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Waits until the socket is connected; an error once the task has stopped.
    pub async fn wait_connected(&self) -> Result<(), ComfyError> {
        let mut connected = self.shared.connected.subscribe();
        tokio::select! {
            result = connected.wait_for(|up| *up) => result.map(drop).map_err(|_| self.closed()),
            () = self.shared.cancel.cancelled() => Err(self.closed()),
        }
    }

    /// `queue_remaining` from the last `status` broadcast.
    pub fn queue_remaining(&self) -> Option<u64> {
        *self.shared.queue_remaining.borrow()
    }

    /// Stops the socket task and waits for it and every task it spawned. Watchers of prompts in
    /// flight receive `Lost{Shutdown}` (or see their stream end).
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.tracker.wait().await;
    }
}

/// The events of one watched prompt. A [`Stream`]; it ends after the terminal event. Dropping
/// it unregisters the prompt.
pub struct PromptWatch {
    prompt_id: String,
    /// The server, redacted, for errors.
    server: String,
    key: u64,
    events: mpsc::Receiver<PromptEvent>,
    commands: mpsc::Sender<Command>,
    finished: bool,
}

impl fmt::Debug for PromptWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptWatch")
            .field("prompt_id", &self.prompt_id)
            .field("finished", &self.finished)
            .finish()
    }
}

impl PromptWatch {
    /// The prompt id (the server's, after [`PromptWatch::confirm`]).
    pub fn prompt_id(&self) -> &str {
        &self.prompt_id
    }

    /// Tells the socket task the prompt was accepted under `server_prompt_id` (the
    /// `prompt_id` of the `POST /prompt` answer). From then on the prompt is reconciled when
    /// silent; if the server chose another id (servers before 0.3.45), the watch follows it.
    pub async fn confirm(&mut self, server_prompt_id: &str) -> Result<(), ComfyError> {
        let (reply, done) = oneshot::channel();
        let closed = || ComfyError::SocketClosed {
            server: self.server.clone(),
        };
        self.commands
            .send(Command::Confirm {
                key: self.key,
                server_prompt_id: server_prompt_id.to_owned(),
                reply,
            })
            .await
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?;
        server_prompt_id.clone_into(&mut self.prompt_id);
        Ok(())
    }

    /// The next event; `None` after the terminal event, or when the socket task is gone.
    pub async fn next_event(&mut self) -> Option<PromptEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        if event.as_ref().is_none_or(PromptEvent::is_terminal) {
            self.finished = true;
        }
        event
    }

    /// Skips to the terminal event.
    pub async fn terminal(&mut self) -> Option<PromptEvent> {
        while let Some(event) = self.next_event().await {
            if event.is_terminal() {
                return Some(event);
            }
        }
        None
    }
}

impl Stream for PromptWatch {
    type Item = PromptEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PromptEvent>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.events.poll_recv(cx);
        if let Poll::Ready(event) = &polled
            && event.as_ref().is_none_or(PromptEvent::is_terminal)
        {
            self.finished = true;
        }
        polled
    }
}

impl Drop for PromptWatch {
    fn drop(&mut self) {
        // Best effort; if the command channel is full the socket task notices the closed
        // channel on its next tick.
        let _ = self.commands.try_send(Command::Unwatch { key: self.key });
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::comfy::wire::{self, HistoryMap};

    fn transcript(name: &str) -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/comfyui-protocol")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The socket `label`'s frames of a transcript, text and binary, in order.
    enum Frame {
        Text(WsMessage),
        Binary(BinaryFrame),
    }

    fn frames(t: &Value, label: &str) -> Vec<Frame> {
        t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "ws_recv" && e["ws"] == label)
            .map(|e| {
                if let Some(msg) = e.get("msg") {
                    return Frame::Text(WsMessage::parse(&msg.to_string()).unwrap());
                }
                let d = &e["decoded"];
                assert_eq!(d["event_type"], 3, "only TEXT frames are rebuilt here");
                let node = d["node_id"].as_str().unwrap();
                let mut bytes = 3u32.to_be_bytes().to_vec();
                bytes.extend_from_slice(&u32::try_from(node.len()).unwrap().to_be_bytes());
                bytes.extend_from_slice(node.as_bytes());
                bytes.extend_from_slice(d["text"].as_str().unwrap().as_bytes());
                Frame::Binary(BinaryFrame::parse(Bytes::from(bytes)).unwrap())
            })
            .collect()
    }

    fn history(name: &str, id: &str) -> HistoryEntry {
        let t = transcript(name);
        let body = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "http_response" && e["path"] == format!("/history/{id}"))
            .unwrap()["body"]
            .clone();
        let mut map: HistoryMap = wire::from_value(body).unwrap();
        map.remove(id).unwrap()
    }

    fn router() -> Router {
        Router::new(Arc::new(SocketCounters::default()))
    }

    fn watch(
        router: &mut Router,
        id: &str,
        capacity: usize,
        now: Instant,
    ) -> (u64, mpsc::Receiver<PromptEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        let key = router.watch(id.to_owned(), tx, now).unwrap();
        (key, rx)
    }

    fn drain(rx: &mut mpsc::Receiver<PromptEvent>) -> Vec<PromptEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn feed(router: &mut Router, frames: Vec<Frame>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for frame in frames {
            match frame {
                Frame::Text(message) => actions.extend(router.on_text(message, now)),
                Frame::Binary(frame) => router.on_binary(frame, now),
            }
        }
        actions
    }

    fn finish_of(actions: Vec<Action>) -> Finish {
        let mut finishes: Vec<Finish> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Finish(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(finishes.len(), 1, "exactly one finish");
        finishes.remove(0)
    }

    const SUCCESS_ID: &str = "a12acd6c-351a-4f4a-9bf2-99c14525783c";

    #[test]
    fn a_transcript_run_is_routed_and_ends_at_executing_null() {
        let now = Instant::now();
        let mut router = router();
        let (key, mut rx) = watch(&mut router, SUCCESS_ID, 64, now);
        let (_, mut other) = watch(&mut router, "someone-else", 64, now);
        router.confirm(key, SUCCESS_ID.into(), now);

        let actions = feed(&mut router, frames(&transcript("success.json"), "A"), now);
        let finish = finish_of(actions);
        assert_eq!(finish.prompt_id, SUCCESS_ID);
        assert_eq!(finish.outcome, Some(WsOutcome::Success));
        assert_eq!(
            finish.outputs["4"].files()[0].1.filename,
            "success_00001_.png"
        );

        let events = drain(&mut rx);
        assert!(matches!(
            events[0],
            PromptEvent::Started { timestamp: Some(_) }
        ));
        assert_eq!(events[1], PromptEvent::Cached { nodes: vec![] });
        let started: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                PromptEvent::NodeStarted { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(started, ["1", "2", "3", "4"]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PromptEvent::Executed { node, .. } if node == "4"))
        );
        assert!(
            events.iter().all(|e| !e.is_terminal()),
            "the terminal comes from the finisher"
        );
        assert!(
            drain(&mut other).is_empty(),
            "another prompt's watcher sees nothing"
        );
        assert_eq!(router.queue_remaining, Some(0));

        // The watch is gone: a repeated end message produces no second terminal.
        let again = WsMessage::parse(&format!(
            r#"{{"type":"executing","data":{{"node":null,"prompt_id":"{SUCCESS_ID}"}}}}"#
        ))
        .unwrap();
        assert!(router.on_text(again, now).is_empty());
    }

    #[test]
    fn text_frames_go_to_the_prompt_running_that_node() {
        let now = Instant::now();
        let t = transcript("progress.json");
        let id = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "http_response" && e["path"] == "/prompt")
            .unwrap()["body"]["prompt_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut router = router();
        let (_, mut rx) = watch(&mut router, &id, 256, now);
        let finish = finish_of(feed(&mut router, frames(&t, "A"), now));
        assert_eq!(finish.outcome, Some(WsOutcome::Success));
        let events = drain(&mut rx);
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                PromptEvent::Text { node, text } if node == "1" => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            ["step 1/5", "step 2/5", "step 3/5", "step 4/5", "step 5/5"]
        );
        let progress = events
            .iter()
            .filter(|e| matches!(e, PromptEvent::Progress { .. }))
            .count();
        assert!(progress >= 10, "{progress}");

        // Nothing runs now: a broadcast TEXT frame or an anonymous preview belongs to no one.
        let (_, mut idle) = watch(&mut router, "idle", 8, now);
        router.on_binary(
            BinaryFrame::Text {
                node_id: "1".into(),
                text: "someone else's".into(),
            },
            now,
        );
        router.on_binary(
            BinaryFrame::PreviewImage {
                format: wire::ImageFormat::Png,
                image: Bytes::from_static(b"png"),
            },
            now,
        );
        assert!(drain(&mut idle).is_empty());
    }

    #[test]
    fn previews_go_to_the_running_prompt_or_the_one_named() {
        let now = Instant::now();
        let mut router = router();
        let (_, mut a) = watch(&mut router, "a", 8, now);
        let (_, mut b) = watch(&mut router, "b", 8, now);
        let executing = WsMessage::parse(
            r#"{"type":"executing","data":{"node":"2","display_node":"2","prompt_id":"a"}}"#,
        )
        .unwrap();
        router.on_text(executing, now);
        router.on_binary(
            BinaryFrame::PreviewImage {
                format: wire::ImageFormat::Jpeg,
                image: Bytes::from_static(b"jpg"),
            },
            now,
        );
        router.on_binary(
            BinaryFrame::PreviewImageWithMetadata {
                metadata: wire::PreviewMetadata {
                    node_id: Some("9".into()),
                    prompt_id: Some("b".into()),
                    display_node_id: None,
                    parent_node_id: None,
                    real_node_id: None,
                    image_type: "image/png".into(),
                },
                image: Bytes::from_static(b"png"),
            },
            now,
        );
        // A TEXT frame for a node `a` is not running is someone else's.
        router.on_binary(
            BinaryFrame::Text {
                node_id: "7".into(),
                text: "x".into(),
            },
            now,
        );
        let a = drain(&mut a);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(
            a[1],
            PromptEvent::Preview {
                node: Some("2".into()),
                mime: "image/jpeg".into(),
                image: Bytes::from_static(b"jpg"),
            }
        );
        assert_eq!(
            drain(&mut b),
            [PromptEvent::Preview {
                node: Some("9".into()),
                mime: "image/png".into(),
                image: Bytes::from_static(b"png"),
            }]
        );
    }

    #[test]
    fn reconnect_replay_is_attributed_once_reconciliation_names_the_running_prompt() {
        let now = Instant::now();
        let mut router = router();
        let (key, mut rx) = watch(&mut router, "p", 8, now);
        let (_, _unconfirmed) = watch(&mut router, "q", 8, now);
        router.confirm(key, "p".into(), now);

        let actions = router.on_connected(now);
        let [Action::Reconcile(ids)] = actions.as_slice() else {
            panic!("one reconciliation expected");
        };
        assert_eq!(
            ids,
            &["p".to_owned()],
            "only confirmed prompts are reconciled"
        );

        let replay = WsMessage::parse(r#"{"type":"executing","data":{"node":"1"}}"#).unwrap();
        assert!(router.on_text(replay, now).is_empty());
        let queue: QueueStatus = wire::from_value(serde_json::json!({
            "queue_running": [[1, "p", {}, {}, ["1"]]], "queue_pending": []
        }))
        .unwrap();
        let item = queue.queue_running[0].clone();
        let actions = router.on_reconciled(
            vec![("p".into(), Some(PromptLocation::Running(Box::new(item))))],
            now,
        );
        assert!(actions.is_empty());
        router.on_binary(
            BinaryFrame::Text {
                node_id: "1".into(),
                text: "step".into(),
            },
            now,
        );
        assert_eq!(
            drain(&mut rx),
            [PromptEvent::Text {
                node: "1".into(),
                text: "step".into()
            }]
        );
    }

    #[test]
    fn reconciliation_finishes_from_history_keeps_waiting_or_reports_lost() {
        let now = Instant::now();
        let mut router = router();
        let ids = ["pending", "finished", "unknown", "unasked"];
        let mut receivers = Vec::new();
        for id in ids {
            let (key, rx) = watch(&mut router, id, 8, now);
            router.confirm(key, id.into(), now);
            receivers.push(rx);
        }
        let error_id = "6e9f15cf-c621-412a-86a0-6db8fc69168c";
        let entry = history("execution_error.json", error_id);
        let queue: QueueStatus = wire::from_value(serde_json::json!({
            "queue_running": [], "queue_pending": [[3, "pending", {}, {}, []]]
        }))
        .unwrap();
        let actions = router.on_reconciled(
            vec![
                (
                    "pending".into(),
                    Some(PromptLocation::Pending(Box::new(
                        queue.queue_pending[0].clone(),
                    ))),
                ),
                (
                    "finished".into(),
                    Some(PromptLocation::Finished(Box::new(entry))),
                ),
                ("unknown".into(), Some(PromptLocation::Unknown)),
                ("unasked".into(), None),
                ("not-watched".into(), Some(PromptLocation::Unknown)),
            ],
            now,
        );
        let mut delivered: Vec<PromptEvent> = actions
            .into_iter()
            .map(|a| match a {
                Action::Deliver { event, .. } => event,
                _ => panic!("only deliveries expected"),
            })
            .collect();
        assert_eq!(delivered.len(), 2);
        let lost = delivered.pop().unwrap();
        assert_eq!(
            lost,
            PromptEvent::Lost {
                reason: LostReason::NotFound
            }
        );
        let PromptEvent::Error { error, completion } = delivered.pop().unwrap() else {
            panic!("the history says execution_error");
        };
        assert_eq!(error.node_type, "TestFail");
        assert!(completion.history.is_some());
        assert_eq!(
            completion.outputs["3"].files()[0].1.filename,
            "err_sibling_00001_.bin"
        );
        assert_eq!(router.counters.snapshot().lost, 1);
        let mut still: Vec<&str> = router.watches.keys().map(String::as_str).collect();
        still.sort_unstable();
        assert_eq!(still, ["pending", "unasked"]);
    }

    #[test]
    fn silent_confirmed_prompts_are_reconciled_once_at_a_time() {
        let settings = SocketSettings {
            silence_timeout: Duration::from_secs(5),
            ..SocketSettings::default()
        };
        let start = Instant::now();
        let mut router = router();
        let (key, _rx) = watch(&mut router, "confirmed", 8, start);
        let (_, _rx2) = watch(&mut router, "unconfirmed", 8, start);
        router.confirm(key, "confirmed".into(), start);

        assert!(
            router
                .on_tick(start + Duration::from_secs(4), &settings)
                .is_empty()
        );
        let actions = router.on_tick(start + Duration::from_secs(5), &settings);
        let [Action::Reconcile(ids)] = actions.as_slice() else {
            panic!("a reconciliation expected");
        };
        assert_eq!(ids, &["confirmed".to_owned()]);
        // In flight: not again.
        assert!(
            router
                .on_tick(start + Duration::from_secs(20), &settings)
                .is_empty()
        );
        // Still queued: waiting resumes, and another silent period triggers another check.
        let later = start + Duration::from_secs(21);
        router.on_reconciled(vec![("confirmed".into(), None)], later);
        assert!(
            router
                .on_tick(later + Duration::from_secs(4), &settings)
                .is_empty()
        );
        assert_eq!(
            router
                .on_tick(later + Duration::from_secs(5), &settings)
                .len(),
            1
        );
    }

    #[test]
    fn an_outcome_without_executing_null_finishes_after_the_grace() {
        let settings = SocketSettings::default();
        let start = Instant::now();
        let mut router = router();
        let (_, _rx) = watch(&mut router, "p", 8, start);
        let interrupted = WsMessage::parse(
            r#"{"type":"execution_interrupted","data":{"prompt_id":"p","node_id":"1","node_type":"TestDelay","executed":[],"timestamp":1}}"#,
        )
        .unwrap();
        assert!(router.on_text(interrupted, start).is_empty());
        assert!(
            router
                .on_tick(start + settings.terminal_grace / 2, &settings)
                .is_empty()
        );
        let finish = finish_of(router.on_tick(start + settings.terminal_grace, &settings));
        assert!(
            matches!(finish.outcome, Some(WsOutcome::Interrupted(ref i)) if i.node_type == "TestDelay")
        );
        assert!(router.watches.is_empty());
    }

    #[test]
    fn a_watch_follows_the_id_an_old_server_chose_and_replays_what_it_missed() {
        let now = Instant::now();
        let mut router = router();
        let (key, mut rx) = watch(&mut router, "ours", 16, now);
        let messages = [
            r#"{"type":"execution_start","data":{"prompt_id":"theirs","timestamp":5}}"#,
            r#"{"type":"executing","data":{"node":"1","prompt_id":"theirs"}}"#,
            r#"{"type":"execution_start","data":{"prompt_id":"unrelated"}}"#,
            r#"{"type":"execution_success","data":{"prompt_id":"theirs"}}"#,
            r#"{"type":"executing","data":{"node":null,"prompt_id":"theirs"}}"#,
        ];
        for message in messages {
            assert!(
                router
                    .on_text(WsMessage::parse(message).unwrap(), now)
                    .is_empty()
            );
        }
        assert!(drain(&mut rx).is_empty());
        let finish = finish_of(router.confirm(key, "theirs".into(), now));
        assert_eq!(finish.prompt_id, "theirs");
        assert_eq!(finish.outcome, Some(WsOutcome::Success));
        assert_eq!(drain(&mut rx).len(), 2);
        assert_eq!(
            router.orphans.len(),
            1,
            "the unrelated message stays buffered"
        );
        // Confirming a prompt that already finished is harmless.
        assert!(router.confirm(key, "theirs".into(), now).is_empty());
    }

    #[test]
    fn a_slow_watcher_gets_coalesced_progress_and_a_lagged_count() {
        let now = Instant::now();
        let mut router = router();
        let (_, mut rx) = watch(&mut router, "p", 2, now);
        let text = |s: &str| WsMessage::parse(s).unwrap();
        router.on_text(
            text(r#"{"type":"execution_start","data":{"prompt_id":"p"}}"#),
            now,
        );
        router.on_text(
            text(r#"{"type":"executing","data":{"node":"1","prompt_id":"p"}}"#),
            now,
        );
        // Full now.
        for value in 1..=5 {
            router.on_text(
                text(&format!(
                    r#"{{"type":"progress","data":{{"value":{value},"max":5,"prompt_id":"p","node":"1"}}}}"#
                )),
                now,
            );
        }
        router.on_text(
            text(r#"{"type":"executed","data":{"node":"1","output":{"text":["done"]},"prompt_id":"p"}}"#),
            now,
        );
        assert_eq!(drain(&mut rx).len(), 2);
        // 4 progress events replaced by newer ones, 1 executed dropped.
        assert_eq!(router.counters.snapshot().events_dropped, 5);
        router.on_tick(now, &SocketSettings::default());
        assert_eq!(
            drain(&mut rx),
            [
                PromptEvent::Lagged { missed: 1 },
                PromptEvent::Progress {
                    node: Some("1".into()),
                    value: 5.0,
                    max: 5.0
                }
            ]
        );
        // The outputs of the dropped `executed` still reach the terminal event.
        let end = text(r#"{"type":"executing","data":{"node":null,"prompt_id":"p"}}"#);
        let finish = finish_of(router.on_text(end, now));
        assert_eq!(finish.outputs["1"].texts(), ["done"]);
    }

    #[test]
    fn terminal_events_combine_the_socket_and_history() {
        let interrupt_id = "901ff72d-a98f-45e2-bc1b-abe9750b95b9";
        let entry = history("interrupt.json", interrupt_id);
        let event = terminal_event(None, Some(Box::new(entry)), BTreeMap::new());
        assert!(
            matches!(event, PromptEvent::Interrupted { ref interrupted, .. } if interrupted.node_type == "TestDelay")
        );

        let success = history("success.json", SUCCESS_ID);
        let PromptEvent::Success(completion) = terminal_event(
            Some(WsOutcome::Success),
            Some(Box::new(success)),
            BTreeMap::new(),
        ) else {
            panic!()
        };
        assert_eq!(
            completion.outputs["4"].files()[0].1.filename,
            "success_00001_.png"
        );

        let mut seen = BTreeMap::new();
        seen.insert("9".to_owned(), NodeOutput::default());
        let PromptEvent::Success(completion) = terminal_event(Some(WsOutcome::Success), None, seen)
        else {
            panic!()
        };
        assert!(completion.history.is_none() && completion.outputs.contains_key("9"));
        assert_eq!(
            terminal_event(None, None, BTreeMap::new()),
            PromptEvent::Lost {
                reason: LostReason::HistoryUnavailable
            }
        );
    }

    #[test]
    fn watching_an_id_twice_is_refused_until_the_first_watcher_leaves() {
        let now = Instant::now();
        let mut router = router();
        let (_, rx) = watch(&mut router, "p", 1, now);
        let (tx, _rx2) = mpsc::channel(1);
        assert!(router.watch("p".into(), tx.clone(), now).is_err());
        drop(rx);
        assert!(router.watch("p".into(), tx, now).is_ok());
    }

    #[test]
    fn shutdown_tells_every_watcher() {
        let now = Instant::now();
        let mut router = router();
        let (_, mut rx) = watch(&mut router, "p", 1, now);
        router.on_shutdown();
        assert_eq!(
            drain(&mut rx),
            [PromptEvent::Lost {
                reason: LostReason::Shutdown
            }]
        );
    }

    #[test]
    fn settings_come_from_the_config() {
        let config = ServerConfig {
            silence_timeout_seconds: 0.25,
            reconnect_max_delay_seconds: 0.05,
            ..ServerConfig::default()
        };
        let settings = SocketSettings::from_config(&config);
        assert_eq!(settings.silence_timeout, Duration::from_millis(250));
        assert_eq!(settings.reconnect_max_delay, Duration::from_millis(50));
        assert_eq!(settings.reconnect_min_delay, Duration::from_millis(50));
    }
}
