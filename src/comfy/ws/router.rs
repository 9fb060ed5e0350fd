//! The routing state of one backend socket: who watches which prompt, which prompt runs now and
//! at which node, and what each message or frame means for the watchers (see the `ws` module
//! docs for the rules). It also holds each watcher's backpressure: events that do not fit are
//! coalesced or counted, never waited for.
//!
//! Pure state, driven by the socket task: it must do no I/O and never await. What needs I/O
//! (reading history, reconciling, delivering a terminal event) it returns as an [`Action`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::counters::SocketCounters;
use super::events::{Completion, LostReason, PromptEvent};
use super::reconcile::Reconciled;
use super::settings::SocketSettings;
use crate::comfy::client::PromptLocation;
use crate::comfy::wire::{
    BinaryFrame, ExecutionError, ExecutionInterrupted, HistoryEntry, HistoryOutcome, NodeId,
    NodeOutput, WsMessage,
};
use crate::model::FastMap;

/// Messages kept for prompt ids nobody watches yet (for re-keying on old servers).
const ORPHAN_CAPACITY: usize = 256;

/// An outcome message seen on the socket, waiting for history.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum WsOutcome {
    /// `execution_success`.
    Success,
    /// `execution_error`.
    Error(Box<ExecutionError>),
    /// `execution_interrupted`.
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
    /// Whether the socket may not have said everything about this prompt:
    /// a node came from the cache (its outputs are only in history), the
    /// socket reconnected, or messages were replayed under another id. Its
    /// end is then read from history; otherwise the socket's messages are
    /// the whole record and history is not read.
    gap: bool,
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

    /// Keeps an event that did not fit: the newest progress, or a count of the others.
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
pub(super) struct Finish {
    /// The prompt that ended.
    pub(super) prompt_id: String,
    /// Its watcher's channel.
    pub(super) tx: mpsc::Sender<PromptEvent>,
    /// The outcome message, if the socket sent one.
    pub(super) outcome: Option<WsOutcome>,
    /// Outputs seen in `executed` messages, for when history cannot be read.
    pub(super) outputs: BTreeMap<NodeId, NodeOutput>,
}

/// Work for the socket task that needs I/O.
pub(super) enum Action {
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

/// Routing state: who watches what, and which prompt runs now.
pub(super) struct Router {
    counters: Arc<SocketCounters>,
    watches: FastMap<String, Watch>,
    keys: FastMap<u64, String>,
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
    pub(super) queue_remaining: Option<u64>,
}

impl Router {
    /// An empty router that bumps `counters`.
    pub(super) fn new(counters: Arc<SocketCounters>) -> Self {
        Self {
            counters,
            watches: FastMap::default(),
            keys: FastMap::default(),
            next_key: 0,
            orphans: VecDeque::new(),
            running: None,
            running_node: None,
            replay_node: None,
            queue_remaining: None,
        }
    }

    /// Registers a watcher of `prompt_id`; `Err(prompt_id)` when a live watcher has it already.
    pub(super) fn watch(
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
                gap: false,
            },
        );
        Ok(key)
    }

    /// Removes the watch registered under `key`, returning its prompt id and state.
    fn remove(&mut self, key: u64) -> Option<(String, Watch)> {
        let id = self.keys.remove(&key)?;
        let watch = self.watches.remove(&id)?;
        Some((id, watch))
    }

    /// The caller posted the prompt and the server calls it `server_id`. Re-keys the watch when
    /// the server chose another id and replays what was buffered for that id.
    pub(super) fn confirm(&mut self, key: u64, server_id: String, now: Instant) -> Vec<Action> {
        let Some(id) = self.keys.get(&key).cloned() else {
            // Already finished (a fast prompt can end before its POST returns) or dropped.
            return Vec::new();
        };
        if id != server_id {
            if self.watches.contains_key(&server_id) {
                tracing::warn!(prompt_id = %server_id, "server prompt id is already watched; keeping the original id");
            } else if let Some(mut watch) = self.watches.remove(&id) {
                watch.gap = true;
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

    /// Forgets the watch registered under `key` (its watcher went away).
    pub(super) fn unwatch(&mut self, key: u64) {
        self.remove(key);
    }

    /// Follows which prompt runs now, and at which node, from the messages that say.
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

    /// Routes a text message; returns the I/O it calls for (the end of a prompt).
    pub(super) fn on_text(&mut self, message: WsMessage, now: Instant) -> Vec<Action> {
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
                watch.gap |= !cached.nodes.is_empty();
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

    /// Routes a binary frame to the prompt it belongs to, if any.
    pub(super) fn on_binary(&mut self, frame: BinaryFrame, now: Instant) {
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

    /// Ends the watch of `prompt_id`. A success the socket followed whole
    /// (no cached node, no reconnect) is delivered at once with the outputs
    /// of its `executed` messages; any other end is read from history next.
    fn finish(&mut self, prompt_id: &str) -> Option<Action> {
        let key = self.watches.get(prompt_id)?.key;
        let (prompt_id, watch) = self.remove(key)?;
        if !watch.gap && matches!(watch.outcome, Some((WsOutcome::Success, _))) {
            return Some(Action::Deliver {
                tx: watch.tx,
                event: terminal_event(Some(WsOutcome::Success), None, watch.outputs),
            });
        }
        Some(Action::Finish(Finish {
            prompt_id,
            tx: watch.tx,
            outcome: watch.outcome.map(|(outcome, _)| outcome),
            outputs: watch.outputs,
        }))
    }

    /// Reconcile every confirmed prompt that is not already ending (after a (re)connect).
    pub(super) fn on_connected(&mut self, now: Instant) -> Vec<Action> {
        // Whatever was said while the socket was down is lost: the end of
        // every open prompt is read from history.
        for watch in self.watches.values_mut() {
            watch.gap = true;
        }
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

    /// Periodic work: drops gone watchers, flushes held events, finishes prompts whose outcome
    /// came without `executing{node: null}`, and reconciles silent ones.
    pub(super) fn on_tick(&mut self, now: Instant, settings: &SocketSettings) -> Vec<Action> {
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

    /// Applies reconciliation results: keep waiting, finish from history, or report `Lost`.
    pub(super) fn on_reconciled(&mut self, results: Vec<Reconciled>, now: Instant) -> Vec<Action> {
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
    pub(super) fn on_shutdown(&mut self) {
        for (_, watch) in self.watches.drain() {
            let _ = watch.tx.try_send(PromptEvent::Lost {
                reason: LostReason::Shutdown,
            });
        }
        self.keys.clear();
    }
}

/// The terminal event from what the socket said and what history says.
pub(super) fn terminal_event(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::comfy::wire::test_support::{history, transcript};
    use crate::comfy::wire::{ImageFormat, PreviewMetadata, QueueStatus, from_value};

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

    /// The one success delivered without reading history.
    fn delivered_success(actions: Vec<Action>) -> Completion {
        let mut delivered: Vec<PromptEvent> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Deliver { event, .. } => Some(event),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 1, "exactly one delivery");
        match delivered.remove(0) {
            PromptEvent::Success(completion) => completion,
            other => panic!("not a success: {other:?}"),
        }
    }

    const SUCCESS_ID: &str = "a12acd6c-351a-4f4a-9bf2-99c14525783c";

    #[test]
    fn a_transcript_run_is_routed_and_ends_at_executing_null() {
        let now = Instant::now();
        let mut router = router();
        let (key, mut rx) = watch(&mut router, SUCCESS_ID, 64, now);
        let (_, mut other) = watch(&mut router, "someone-else", 64, now);
        router.confirm(key, SUCCESS_ID.into(), now);

        // The socket said everything (no cached node, no reconnect): the
        // success is delivered with its outputs, history is not read.
        let actions = feed(&mut router, frames(&transcript("success.json"), "A"), now);
        let completion = delivered_success(actions);
        assert!(completion.history.is_none());
        assert_eq!(
            completion.outputs["4"].files()[0].1.filename,
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
    fn a_success_with_cached_nodes_or_a_reconnect_is_read_from_history() {
        let now = Instant::now();
        let message = |json: String| WsMessage::parse(&json).unwrap();
        let end = |router: &mut Router, id: &str| {
            router.on_text(
                message(format!(
                    r#"{{"type":"execution_success","data":{{"prompt_id":"{id}"}}}}"#
                )),
                now,
            );
            router.on_text(
                message(format!(
                    r#"{{"type":"executing","data":{{"node":null,"prompt_id":"{id}"}}}}"#
                )),
                now,
            )
        };

        // A node came from the cache: its outputs are only in history.
        let mut router = router();
        let (key, _rx) = watch(&mut router, "cached", 64, now);
        router.confirm(key, "cached".into(), now);
        router.on_text(
            message(
                r#"{"type":"execution_cached","data":{"nodes":["4"],"prompt_id":"cached"}}"#.into(),
            ),
            now,
        );
        let finish = finish_of(end(&mut router, "cached"));
        assert_eq!(finish.outcome, Some(WsOutcome::Success));

        // The socket reconnected while the prompt ran.
        let (key, _rx) = watch(&mut router, "reconnected", 64, now);
        router.confirm(key, "reconnected".into(), now);
        router.on_connected(now);
        let finish = finish_of(end(&mut router, "reconnected"));
        assert_eq!(finish.prompt_id, "reconnected");

        // Neither: delivered at once.
        let (key, _rx) = watch(&mut router, "whole", 64, now);
        router.confirm(key, "whole".into(), now);
        assert!(
            delivered_success(end(&mut router, "whole"))
                .history
                .is_none()
        );
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
        delivered_success(feed(&mut router, frames(&t, "A"), now));
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
                format: ImageFormat::Png,
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
                format: ImageFormat::Jpeg,
                image: Bytes::from_static(b"jpg"),
            },
            now,
        );
        router.on_binary(
            BinaryFrame::PreviewImageWithMetadata {
                metadata: PreviewMetadata {
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
        let queue: QueueStatus = from_value(serde_json::json!({
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
        let queue: QueueStatus = from_value(serde_json::json!({
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
}
