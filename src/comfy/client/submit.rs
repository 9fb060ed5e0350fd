//! Submitting a prompt: `POST /prompt` with a client-chosen id, never
//! retried blindly. After an ambiguous failure the id is looked up (see
//! [`ComfyClient::locate`]) and the prompt resubmitted only when the server
//! has never seen it.
//!
//! It must not resubmit a prompt the server may already hold, and it never
//! sends `front` or `number`.

use backon::BackoffBuilder;
use bytes::{BufMut, Bytes};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use uuid::Uuid;

use super::{ComfyClient, ComfyError, PromptLocation};
use crate::comfy::wire::{self, PromptResponse, ValidationErrorBody};

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
    ///
    /// The prompt is a JSON tree ([`Value`]) or the text of one ([`PromptText`], posted as it
    /// is, with no tree built to write it again).
    pub async fn submit_prompt<P: PromptJson + ?Sized>(
        &self,
        prompt_id: Uuid,
        client_id: &str,
        prompt: &P,
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
        let body = prompt_body(prompt, client_id, &id, extra_data).map_err(|e| {
            ComfyError::InvalidArgument {
                field: "prompt",
                message: e.to_string(),
            }
        })?;

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

/// A prompt as [`ComfyClient::submit_prompt`] posts it: a JSON object of nodes, as a tree or as
/// its text. Implemented for [`Value`] and [`PromptText`] only (sealed).
pub trait PromptJson: Sync + sealed::Sealed {
    /// Whether it is a JSON object (ComfyUI takes no other prompt).
    fn is_object(&self) -> bool;

    /// Appends its JSON text to `out`.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;

    /// Its text's length when known without writing it (the body is made that much larger
    /// at once).
    fn text_len(&self) -> usize {
        0
    }
}

mod sealed {
    /// Keeps [`super::PromptJson`] to the two prompts whose text is known to be one JSON
    /// object: the body is written around it.
    pub trait Sealed {}
    impl Sealed for serde_json::Value {}
    impl Sealed for super::PromptText {}
}

impl PromptJson for Value {
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }

    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }
}

/// A prompt's JSON text, posted as it is: for a prompt written once already (the runtime
/// writes each to its store when it is submitted), with no tree to build and write again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptText(Bytes);

impl PromptText {
    /// `text` as a prompt, when it is one JSON object (white space around it allowed, and
    /// left out of what is posted); `None` otherwise. The text is read whole to check it.
    pub fn new(text: Bytes) -> Option<Self> {
        let raw = serde_json::from_slice::<&serde_json::value::RawValue>(&text).ok()?;
        let object = raw.get().as_bytes();
        object
            .starts_with(b"{")
            .then(|| Self(text.slice_ref(object)))
    }

    /// `text` as a prompt, known to be one JSON object without white space around it: the
    /// runtime's queued prompts, written by `json_text` and read whole by the dispatch
    /// (`runtime/executor/prompt_nodes.rs`) before they are posted.
    pub(crate) fn checked(text: Bytes) -> Self {
        Self(text)
    }

    /// The text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl PromptJson for PromptText {
    fn is_object(&self) -> bool {
        // Checked when it was made.
        true
    }

    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(&self.0);
        Ok(())
    }

    fn text_len(&self) -> usize {
        self.0.len()
    }
}

/// The body of `POST /prompt`: what serde_json writes for a [`PromptRequest`] without
/// `partial_execution_targets`, byte for byte (a test holds the two together), with the prompt
/// written by `prompt` itself.
fn prompt_body<P: PromptJson + ?Sized>(
    prompt: &P,
    client_id: &str,
    prompt_id: &str,
    extra_data: Option<&Value>,
) -> Result<Bytes, serde_json::Error> {
    // Room for the request's other fields: the ids, a client id up to about 70 bytes.
    let mut body = Vec::with_capacity(prompt.text_len() + 128);
    body.put_slice(br#"{"prompt":"#);
    prompt.write_json(&mut body)?;
    body.put_slice(br#","client_id":"#);
    serde_json::to_writer(&mut body, client_id)?;
    body.put_slice(br#","prompt_id":"#);
    serde_json::to_writer(&mut body, prompt_id)?;
    if let Some(extra_data) = extra_data {
        body.put_slice(br#","extra_data":"#);
        serde_json::to_writer(&mut body, extra_data)?;
    }
    body.put_u8(b'}');
    Ok(Bytes::from(body))
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::comfy::wire::PromptRequest;
    use crate::comfy::wire::test_support::arb_json;

    /// What serde_json writes for the request.
    fn serialized(
        prompt: &Value,
        client_id: &str,
        prompt_id: &str,
        extra: Option<&Value>,
    ) -> Vec<u8> {
        serde_json::to_vec(&PromptRequest {
            prompt,
            client_id,
            prompt_id: Some(prompt_id),
            extra_data: extra,
            partial_execution_targets: None,
        })
        .unwrap()
    }

    #[test]
    fn prompt_text_takes_an_object_only() {
        for text in [&b"{}"[..], b" {\"1\": {}}\n", b"{\"a\":1}"] {
            assert!(
                PromptText::new(Bytes::from_static(text)).is_some(),
                "{text:?}"
            );
        }
        for text in [
            &b""[..],
            b"{",
            b"}",
            b"[]",
            b"null",
            b"\"{}\"",
            b"{} x",
            b"x {}",
            // Two objects, or one with request fields after it: never pasted into a body.
            b"{}{}",
            b"{\"1\":{}},\"front\":true,\"x\":{}",
            b"{\"1\": {\"a\": [}}",
            // A form feed is not JSON's white space.
            b"\x0c{}",
        ] {
            assert!(
                PromptText::new(Bytes::from_static(text)).is_none(),
                "{text:?}"
            );
        }
        // White space around the object is not posted.
        let padded = PromptText::new(Bytes::from_static(b" \n{\"a\": 1}\t")).unwrap();
        assert_eq!(padded.as_bytes(), b"{\"a\": 1}");
    }

    proptest! {
        /// The body written by hand is serde_json's for the request, byte for byte, for a
        /// tree and for its text alike.
        #[test]
        fn the_body_is_the_requests_serialization(
            prompt in arb_json(),
            client_id in "\\PC{0,12}",
            extra in proptest::option::of(arb_json()),
        ) {
            let prompt = Value::Object([("1".to_owned(), prompt)].into_iter().collect());
            let id = "0190c0de-0000-4000-8000-000000000001";
            let want = serialized(&prompt, &client_id, id, extra.as_ref());
            let tree = prompt_body(&prompt, &client_id, id, extra.as_ref()).unwrap();
            prop_assert_eq!(&tree[..], &want[..]);
            let text = PromptText::new(Bytes::from(serde_json::to_vec(&prompt).unwrap())).unwrap();
            let text = prompt_body(&text, &client_id, id, extra.as_ref()).unwrap();
            prop_assert_eq!(&text[..], &want[..]);
        }
    }
}
