//! Submitting a prompt: `POST /prompt` with a client-chosen id, never
//! retried blindly. After an ambiguous failure the id is looked up (see
//! [`ComfyClient::locate`]) and the prompt resubmitted only when the server
//! has never seen it.
//!
//! It must not resubmit a prompt the server may already hold, and it never
//! sends `front` or `number`.

use backon::BackoffBuilder;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use uuid::Uuid;

use super::{ComfyClient, ComfyError, PromptLocation};
use crate::comfy::wire::{self, PromptRequest, PromptResponse, ValidationErrorBody};

impl ComfyClient {
    /// `POST /prompt` with a client-chosen `prompt_id` (sent lowercase), never with `front` or
    /// `number`. Use the `prompt_id` of the answer: servers older than 0.3.45 ignore ours.
    ///
    /// Not retried blindly. After an answer that may or may not have reached the server
    /// (transport error, timeout, 502-504), the id is looked up (`/queue`, then `/history`) and
    /// the prompt resubmitted only when the server has never seen it; when it has, the answer
    /// is rebuilt from the queue or history (without `node_errors`). A 409 on a resubmission
    /// (newer servers refuse a duplicate pending id) means the first attempt got through. On
    /// servers that ignore client ids an ambiguous failure is returned as is.
    ///
    /// A 400 is [`ComfyError::Validation`] with every node's errors.
    pub async fn submit_prompt(
        &self,
        prompt_id: Uuid,
        client_id: &str,
        prompt: &Value,
        extra_data: Option<&Value>,
    ) -> Result<PromptResponse, ComfyError> {
        if !prompt.is_object() {
            return Err(ComfyError::InvalidArgument {
                field: "prompt",
                message: "must be a json object of nodes".into(),
            });
        }
        if client_id.is_empty() {
            return Err(ComfyError::InvalidArgument {
                field: "client_id",
                message: "must not be empty".into(),
            });
        }
        if extra_data.is_some_and(|e| !e.is_object()) {
            return Err(ComfyError::InvalidArgument {
                field: "extra_data",
                message: "must be a json object".into(),
            });
        }
        let capabilities = self.capabilities().await?;
        let id = prompt_id.hyphenated().to_string();
        let body = Bytes::from(
            serde_json::to_vec(&PromptRequest {
                prompt,
                client_id,
                prompt_id: Some(&id),
                extra_data,
                partial_execution_targets: None,
            })
            .map_err(|e| ComfyError::InvalidArgument {
                field: "prompt",
                message: e.to_string(),
            })?,
        );

        let mut delays = self.backoff().build();
        let mut resubmission = false;
        loop {
            let error = match self.post_prompt_once(&body).await {
                Ok(response) => {
                    if capabilities.client_prompt_id && response.prompt_id != id {
                        tracing::warn!(
                            server = %self.inner.display, prompt_id = %id,
                            server_prompt_id = %response.prompt_id,
                            "comfyui replaced the client-chosen prompt id"
                        );
                    }
                    return Ok(response);
                }
                Err(error) if resubmission && error.status() == Some(409) => {
                    // The earlier attempt is pending or running: find its number.
                    return match self.locate(&id).await? {
                        PromptLocation::Unknown => Err(error),
                        found => Ok(accepted_response(&id, &found)),
                    };
                }
                Err(error) if error.is_ambiguous() && capabilities.client_prompt_id => error,
                Err(error) => return Err(error),
            };
            tracing::debug!(server = %self.inner.display, prompt_id = %id, %error, "submit outcome unknown; looking the prompt up");
            // Look the id up until the server answers; resubmit only if it never saw it.
            loop {
                let Some(delay) = delays.next() else {
                    return Err(error);
                };
                tokio::time::sleep(delay).await;
                match self.locate(&id).await {
                    Ok(PromptLocation::Unknown) => break,
                    Ok(found) => return Ok(accepted_response(&id, &found)),
                    Err(lookup) => {
                        tracing::debug!(server = %self.inner.display, prompt_id = %id, error = %lookup, "prompt lookup failed");
                    }
                }
            }
            resubmission = true;
        }
    }

    /// One `POST /prompt` of the encoded request, answers mapped to errors.
    async fn post_prompt_once(&self, body: &Bytes) -> Result<PromptResponse, ComfyError> {
        const ROUTE: &str = "prompt";
        if let Some(direct) = &self.inner.direct {
            let answer = direct
                .post(body.clone(), self.inner.timeout)
                .await
                .map_err(|why| self.no_answer(ROUTE, why))?;
            // A redirect (the hop did not take the prompt) goes the way of every other route:
            // through reqwest, which follows it.
            if !answer.status.is_redirection() {
                let body = answer.body.ok_or_else(|| self.too_large(ROUTE))?;
                return self.prompt_answer(answer.status, &body);
            }
        }
        let request = self
            .inner
            .http
            .post(self.endpoint(&[ROUTE])?)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .timeout(self.inner.timeout);
        let response = self.send(ROUTE, request).await?;
        match response.status() {
            status @ (StatusCode::OK | StatusCode::BAD_REQUEST) => {
                let body = self.bytes_body(ROUTE, response).await?;
                self.prompt_answer(status, &body)
            }
            _ => Err(self.http_error(ROUTE, response).await),
        }
    }

    /// What an answer to `POST /prompt` with `status` and `body` says.
    fn prompt_answer(&self, status: StatusCode, body: &[u8]) -> Result<PromptResponse, ComfyError> {
        const ROUTE: &str = "prompt";
        match status {
            StatusCode::OK => self.json_slice(ROUTE, body),
            StatusCode::BAD_REQUEST => match wire::from_slice::<ValidationErrorBody>(body) {
                Ok(validation) => Err(ComfyError::Validation(Box::new(validation))),
                Err(_) => Err(self.http_error_body(ROUTE, 400, body)),
            },
            other => Err(self.http_error_body(ROUTE, other.as_u16(), body)),
        }
    }
}

/// The answer to a submission found in the queue or history after an ambiguous failure.
fn accepted_response(prompt_id: &str, found: &PromptLocation) -> PromptResponse {
    let number = match found {
        PromptLocation::Running(item) | PromptLocation::Pending(item) => item.number.clone(),
        PromptLocation::Finished(entry) => entry.prompt.number.clone(),
        PromptLocation::Unknown => serde_json::Number::from(0),
    };
    PromptResponse {
        prompt_id: prompt_id.to_owned(),
        number,
        node_errors: Default::default(),
    }
}
