//! The socket task of one backend: [`BackendSocket::spawn`] starts it, and it owns the WebSocket,
//! the [`Router`] and every task it spawns. Its loop takes commands from the handles, frames from
//! the socket and results of reconciliation; it reconnects with backoff, pings a silent socket
//! and replaces a dead one, and runs the I/O the router asks for (history reads, reconciliation,
//! terminal deliveries) as tracked tasks.
//!
//! It never waits on a watcher: non-terminal events go through the router's `try_send`, and a
//! terminal event is delivered by a task of its own ([`deliver_terminal`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::connection::{Socket, close_gracefully, connect};
use super::counters::SocketCounters;
use super::events::PromptEvent;
use super::handle::BackendSocketHandle;
use super::reconcile::{Reconciled, read_history, reconcile};
use super::router::{Action, Router, terminal_event};
use super::settings::SocketSettings;
use crate::comfy::capabilities::Capabilities;
use crate::comfy::client::{ComfyClient, ComfyError};
use crate::comfy::wire::{BinaryFrame, WsMessage};

/// Commands waiting for the socket task.
const COMMAND_CAPACITY: usize = 64;
/// Reconciliation results waiting for the socket task.
const INTERNAL_CAPACITY: usize = 16;

/// A request from a handle or a watch to the socket task.
pub(super) enum Command {
    /// Register a watcher of `prompt_id`; replies with its key, or the id when already watched.
    Watch {
        prompt_id: String,
        tx: mpsc::Sender<PromptEvent>,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// The prompt of `key` was accepted under `server_prompt_id`.
    Confirm {
        key: u64,
        server_prompt_id: String,
        reply: oneshot::Sender<()>,
    },
    /// The watch of `key` was dropped.
    Unwatch { key: u64 },
}

/// What the socket task shares with its handles.
pub(super) struct Shared {
    /// The server, redacted, for messages.
    pub(super) server: String,
    /// Counters for metrics.
    pub(super) counters: Arc<SocketCounters>,
    /// The clientId in use (it changes only when an old socket's close cannot be confirmed).
    pub(super) client_id: watch::Sender<String>,
    /// Whether the socket is up.
    pub(super) connected: watch::Sender<bool>,
    /// From the last `status` broadcast.
    pub(super) queue_remaining: watch::Sender<Option<u64>>,
    /// The socket task and the tasks it spawns.
    pub(super) tracker: TaskTracker,
    /// Stops this socket (a child of the caller's token).
    pub(super) cancel: CancellationToken,
    /// Capacity of each watcher's channel.
    pub(super) watch_capacity: usize,
}

/// An attempt to (re)connect, started by [`SocketTask::start_connecting`].
type ConnectFuture = Pin<Box<dyn Future<Output = ConnectOutcome> + Send>>;

/// How a connect attempt ended, and the clientId it used.
struct ConnectOutcome {
    result: Result<(Box<Socket>, Capabilities), ComfyError>,
    client_id: String,
}

/// The socket, or the attempt to open one.
enum Conn {
    Up(Box<Socket>),
    Connecting(ConnectFuture),
}

/// What [`Conn::next_event`] saw: a frame (or the end of the stream), or a finished connect.
enum ConnEvent {
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Connected(ConnectOutcome),
}

impl Conn {
    /// Waits for the next frame, or for the connect attempt to finish.
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

/// The task that owns the socket and the [`Router`], and does the I/O the router asks for.
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

    /// Replaces the connection with an attempt that first closes `old`, then waits `delay`.
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
