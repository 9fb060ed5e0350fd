//! What callers hold: the [`BackendSocketHandle`] of a backend's socket task (watch, submit,
//! connection state, counters, shutdown), and the [`PromptWatch`] of one prompt, a bounded
//! [`Stream`] of its events that ends after the terminal one.
//!
//! Handles only send commands and read what the task publishes: they hold no routing state and
//! never touch the socket.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::counters::CountersSnapshot;
use super::events::PromptEvent;
use super::task::{Command, Shared};
use crate::comfy::client::{ComfyClient, ComfyError, PromptJson};
use crate::comfy::wire::PromptResponse;

/// The handle of a backend's socket task. Cheap to clone.
#[derive(Clone)]
pub struct BackendSocketHandle {
    /// Requests to the socket task.
    pub(super) commands: mpsc::Sender<Command>,
    /// What the socket task publishes.
    pub(super) shared: Arc<Shared>,
    /// The backend's HTTP client.
    pub(super) client: ComfyClient,
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
    /// The error for a socket task that has stopped.
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
    pub async fn submit<P: PromptJson + ?Sized>(
        &self,
        prompt_id: Uuid,
        prompt: &P,
        extra_data: Option<&Value>,
    ) -> Result<(PromptWatch, PromptResponse), ComfyError> {
        let watch = self.watch(&prompt_id.hyphenated().to_string()).await?;
        self.post(watch, prompt_id, prompt, extra_data).await
    }

    /// The rest of [`submit`](Self::submit) for a prompt watched already (under `prompt_id`,
    /// through [`watch`](Self::watch)): posts it with this socket's clientId, then confirms.
    /// For a caller with something else to wait for in between, so that the socket task's
    /// round trip for the watch is not left for after it.
    pub async fn post<P: PromptJson + ?Sized>(
        &self,
        mut watch: PromptWatch,
        prompt_id: Uuid,
        prompt: &P,
        extra_data: Option<&Value>,
    ) -> Result<(PromptWatch, PromptResponse), ComfyError> {
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

    /// The next event if one is already waiting; `None` when none is (or
    /// the watch has ended: [`PromptWatch::next_event`] then says so).
    pub fn try_next_event(&mut self) -> Option<PromptEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.try_recv().ok()?;
        if event.is_terminal() {
            self.finished = true;
        }
        Some(event)
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
