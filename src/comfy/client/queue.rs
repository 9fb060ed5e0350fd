//! Where prompts are and what can be done to them once submitted: the
//! queue, the history, the jobs API (`/api/jobs/{id}`), deleting pending
//! prompts, targeted interrupts and job cancels.
//!
//! It never sends a bare `POST /interrupt`, which would interrupt whatever
//! runs: without targeted interrupt, [`ComfyClient::interrupt`] is an error.

use super::checks::check_prompt_id;
use super::{ComfyClient, ComfyError};
use crate::comfy::wire::{
    CancelResponse, HistoryEntry, HistoryMap, InterruptRequest, Job, QueueDeleteRequest, QueueItem,
    QueueStatus,
};

/// Where a prompt is, according to the server (see [`ComfyClient::locate`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptLocation {
    /// Executing now.
    Running(Box<QueueItem>),
    /// Waiting in the queue.
    Pending(Box<QueueItem>),
    /// Finished; its history entry.
    Finished(Box<HistoryEntry>),
    /// Neither queued nor in history: never submitted, deleted while pending, or lost in a
    /// server restart.
    Unknown,
}

impl ComfyClient {
    /// `GET /history/{id}`: the entry, or `None` while the prompt is queued, running or unknown.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        check_prompt_id(prompt_id)?;
        let mut map: HistoryMap = self.get_json(&["history", prompt_id], &[]).await?;
        Ok(map.remove(prompt_id))
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueStatus, ComfyError> {
        self.get_json(&["queue"], &[]).await
    }

    /// Where a prompt is: `GET /queue` first, then `GET /history/{id}`, and when it is in
    /// neither, history once more. This order cannot miss a prompt that finishes between the
    /// reads (history-then-queue can).
    pub async fn locate(&self, prompt_id: &str) -> Result<PromptLocation, ComfyError> {
        let queue = self.queue().await?;
        if let Some(item) = queue
            .queue_running
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            return Ok(PromptLocation::Running(Box::new(item.clone())));
        }
        if let Some(item) = queue
            .queue_pending
            .iter()
            .find(|i| i.prompt_id == prompt_id)
        {
            return Ok(PromptLocation::Pending(Box::new(item.clone())));
        }
        for _ in 0..2 {
            if let Some(entry) = self.history(prompt_id).await? {
                return Ok(PromptLocation::Finished(Box::new(entry)));
            }
        }
        Ok(PromptLocation::Unknown)
    }

    /// `POST /queue {"delete": ids}`: removes pending prompts (a running one is untouched,
    /// unknown ids are ignored). Retried.
    pub async fn delete_from_queue(&self, prompt_ids: &[String]) -> Result<(), ComfyError> {
        if prompt_ids.is_empty() {
            return Ok(());
        }
        for id in prompt_ids {
            check_prompt_id(id)?;
        }
        self.post_idempotent(
            &["queue"],
            &QueueDeleteRequest {
                delete: prompt_ids,
                clear: false,
            },
        )
        .await
    }

    /// `POST /interrupt {"prompt_id"}`: interrupts the prompt if it is the one running, and does
    /// nothing otherwise. Refused (without sending anything) on servers before 0.3.57, where
    /// any interrupt is global. Retried.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.targeted_interrupt {
            return Err(self.unsupported("targeted interrupt", &capabilities));
        }
        self.post_idempotent(&["interrupt"], &InterruptRequest { prompt_id })
            .await
    }

    /// `POST /api/jobs/{id}/cancel` (servers since 0.26.0): interrupts the prompt if it runs,
    /// dequeues it if it waits. Returns whether anything was cancelled. Retried (idempotent).
    pub async fn cancel_job(&self, prompt_id: &str) -> Result<bool, ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.jobs_cancel {
            return Err(self.unsupported("job cancel", &capabilities));
        }
        let segments = ["api", "jobs", prompt_id, "cancel"];
        let url = self.endpoint(&segments)?;
        let route = segments.join("/");
        self.idempotent(&route, || async {
            let request = self
                .inner
                .http
                .post(url.clone())
                .timeout(self.inner.timeout);
            let response = self.send(&route, request).await?;
            let response = self.expect_success(&route, response).await?;
            self.json_body::<CancelResponse>(&route, response)
                .await
                .map(|r| r.cancelled)
        })
        .await
    }

    /// `GET /api/jobs/{id}` (servers since 0.6.0): the job, or `None` when unknown (also for a
    /// prompt deleted while pending).
    pub async fn job(&self, prompt_id: &str) -> Result<Option<Job>, ComfyError> {
        check_prompt_id(prompt_id)?;
        let capabilities = self.capabilities().await?;
        if !capabilities.jobs_api {
            return Err(self.unsupported("the jobs api", &capabilities));
        }
        self.get_json_optional(&["api", "jobs", prompt_id]).await
    }
}
