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
//!
//! The files: `handle.rs` (what callers hold), `task.rs` (the socket task and its loop),
//! `connection.rs` (opening and closing one socket), `router.rs` (the routing state, pure),
//! `reconcile.rs` (the HTTP reads of reconciliation and history), `events.rs` (what watchers
//! receive), `settings.rs` and `counters.rs`. Everything public is re-exported here.

mod connection;
mod counters;
mod events;
mod handle;
mod reconcile;
mod router;
mod settings;
mod task;

pub use counters::{CountersSnapshot, SocketCounters};
pub use events::{Completion, LostReason, PromptEvent};
pub use handle::{BackendSocketHandle, PromptWatch};
pub use settings::SocketSettings;
pub use task::BackendSocket;
