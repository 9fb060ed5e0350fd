//! What the socket task asks over HTTP about prompts it follows: where a silent prompt is
//! ([`reconcile`]: `GET /queue`, then history) and how a finished prompt ended ([`read_history`],
//! polling briefly while history is not written yet).
//!
//! Reads only: it never changes the server's queue, and it decides nothing about a watcher;
//! the router turns its answers into events.

use tokio_util::sync::CancellationToken;

use super::settings::SocketSettings;
use crate::comfy::client::{ComfyClient, PromptLocation};
use crate::comfy::wire::{HistoryEntry, QueueStatus};

/// The result of reconciling one prompt; `None` when the server could not be asked.
pub(super) type Reconciled = (String, Option<PromptLocation>);

/// Reads a finished prompt's history, polling briefly while it is not written yet.
pub(super) async fn read_history(
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
pub(super) async fn reconcile(client: &ComfyClient, prompt_ids: Vec<String>) -> Vec<Reconciled> {
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
