//! [`ComfyError`]: why a ComfyUI call failed, and which failures a retry
//! may fix or leave the outcome unknown.
//!
//! Messages are lowercase and never carry credentials; building the errors
//! from responses is `request`'s business.

use std::time::Duration;

use crate::comfy::wire::ValidationErrorBody;

/// Why a ComfyUI call failed. Messages are lowercase and never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// The server configuration cannot be used (bad URL, unusable credential).
    #[error("invalid comfyui server configuration: {0}")]
    Config(String),
    /// The request did not get an answer: connection refused or reset, DNS, TLS.
    #[error("comfyui at {server} unreachable on {route}: {message}")]
    Transport {
        /// The server, with any password redacted.
        server: String,
        /// The route, e.g. `history/<id>`.
        route: String,
        /// What went wrong.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("comfyui at {server} did not answer {route} within {timeout:?}")]
    Timeout {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server answered with an unexpected status.
    #[error(
        "comfyui at {server} answered {status} on {route}{}",
        body_suffix(body)
    )]
    Http {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body (at most 2 KiB), e.g. the 500 `text/plain` page.
        body: String,
    },
    /// `POST /prompt` answered 400: the prompt is invalid. Every node's errors are kept.
    #[error("comfyui rejected the prompt: {0}")]
    Validation(Box<ValidationErrorBody>),
    /// The server answered 200 with a body that is not what the protocol says.
    #[error("unexpected answer from comfyui at {server} on {route}: {message}")]
    Protocol {
        /// The server, with any password redacted.
        server: String,
        /// The route.
        route: String,
        /// What was wrong.
        message: String,
    },
    /// The server is too old (or too different) for the operation.
    #[error("{what} is not supported by comfyui {version}")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The server's version, or `of unknown version`.
        version: String,
    },
    /// An argument was refused before anything was sent.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The argument.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A download was restricted to a prompt's outputs and the file is not one of them.
    #[error("file {filename} is not an output of prompt {prompt_id}")]
    NotAnOutput {
        /// The prompt.
        prompt_id: String,
        /// The file asked for.
        filename: String,
    },
    /// The WebSocket could not be opened or broke.
    #[error("websocket to comfyui at {server}: {message}")]
    WebSocket {
        /// The server, with any password redacted.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// The backend's socket task has stopped (shut down).
    #[error("the websocket task of comfyui at {server} has stopped")]
    SocketClosed {
        /// The server, with any password redacted.
        server: String,
    },
}

/// The `: body` ending of an [`ComfyError::Http`] message, empty for a blank body.
fn body_suffix(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ComfyError {
    /// Whether retrying the same idempotent request may succeed: transport failures, timeouts,
    /// 429 and 5xx answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Http { status, .. } => *status == 429 || (500..600).contains(status),
            _ => false,
        }
    }

    /// Whether a `POST` may or may not have reached the server: no answer, or a gateway error.
    pub(super) fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Http { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The HTTP status, for [`ComfyError::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Validation(_) => Some(400),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors() {
        let http = |status| ComfyError::Http {
            server: "s".into(),
            route: "r".into(),
            status,
            body: String::new(),
        };
        assert!(http(503).is_retryable() && http(429).is_retryable() && http(500).is_retryable());
        assert!(!http(404).is_retryable() && !http(400).is_retryable());
        assert!(http(502).is_ambiguous() && !http(500).is_ambiguous());
        let timeout = ComfyError::Timeout {
            server: "s".into(),
            route: "r".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable() && timeout.is_ambiguous());
        assert_eq!(http(404).to_string(), "comfyui at s answered 404 on r");
        assert_eq!(
            ComfyError::Http {
                server: "s".into(),
                route: "r".into(),
                status: 500,
                body: "boom\n".into(),
            }
            .to_string(),
            "comfyui at s answered 500 on r: boom"
        );
    }
}
