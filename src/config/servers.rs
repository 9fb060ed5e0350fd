//! `[[servers]]`: one entry per ComfyUI backend (the seed's `ServerConfig`): its URL, request and
//! WebSocket timings, TLS verification and credentials. Only settings, defaults and accessors live
//! here; urls, uniqueness and the other bounds are checked in `validate.rs`. `Debug` and
//! `Serialize` never show a credential or the password of a URL.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::redact::{Secret, redact_url, serialize_redacted_url};
use super::seconds;

/// One `[[servers]]` entry: a ComfyUI backend (the seed's `ServerConfig`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in logs and status. Default: none (the url identifies the server).
    /// Bound: not blank and unique when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Base URL of the ComfyUI HTTP API. Default: `http://127.0.0.1:8188`. Bound: an `http` or
    /// `https` URL with a host; unique across servers. A password in it is redacted when printed.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// Timeout of one HTTP request to this server, in seconds. Default: 30. Bound: finite, > 0.
    pub timeout_seconds: f64,
    /// Retries of a failed request. Default: 3. Bound: >= 0 (the type forbids negatives).
    pub max_retries: u32,
    /// Whether the server's TLS certificate is verified (HTTP and the WebSocket), against the
    /// system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set). Default: true.
    pub verify_ssl: bool,
    /// API key sent to the server. Default: none. Bound: not empty, and not the `[REDACTED]`
    /// placeholder a printed configuration holds. Never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Value of the `Authorization` header sent to the server. Default: none. Same bound as
    /// `api_key`. Never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_header: Option<Secret>,
    /// How long a submitted prompt may go without any WebSocket message before the client
    /// checks on it over HTTP (queue, then history), in seconds. Also how long a silent socket
    /// waits before it is pinged. Default: 30. Bound: finite, > 0.
    pub silence_timeout_seconds: f64,
    /// Longest wait between two WebSocket reconnect attempts (the backoff grows up to it), in
    /// seconds. Default: 30. Bound: finite, > 0.
    pub reconnect_max_delay_seconds: f64,
    /// The pid of this backend's ComfyUI process on this host, whose peak GPU memory while a
    /// task runs becomes the task's `gpu_memory_mb` (not in the seed). Default: none, meaning
    /// found by the port of a loopback `url` where `/proc` shows it (Linux), else not
    /// attributed. Bound: >= 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: "http://127.0.0.1:8188".into(),
            timeout_seconds: 30.0,
            max_retries: 3,
            verify_ssl: true,
            api_key: None,
            auth_header: None,
            silence_timeout_seconds: 30.0,
            reconnect_max_delay_seconds: 30.0,
            pid: None,
        }
    }
}

impl ServerConfig {
    /// A server at `url` with every other setting at its default.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// `timeout_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_seconds)
    }

    /// `silence_timeout_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn silence_timeout(&self) -> Duration {
        seconds(self.silence_timeout_seconds)
    }

    /// `reconnect_max_delay_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn reconnect_max_delay(&self) -> Duration {
        seconds(self.reconnect_max_delay_seconds)
    }
}

// Written by hand so that a password inside `url` is never printed.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_retries", &self.max_retries)
            .field("verify_ssl", &self.verify_ssl)
            .field("api_key", &self.api_key)
            .field("auth_header", &self.auth_header)
            .field("silence_timeout_seconds", &self.silence_timeout_seconds)
            .field(
                "reconnect_max_delay_seconds",
                &self.reconnect_max_delay_seconds,
            )
            .field("pid", &self.pid)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn server_socket_timings_load_and_are_checked() {
        let (result, _, _dir) = load_toml(
            "[[servers]]\nurl = \"http://a:1\"\nsilence_timeout_seconds = 0.25\n\
             reconnect_max_delay_seconds = 5\n",
        );
        let c = result.unwrap();
        assert_eq!(c.servers[0].silence_timeout(), Duration::from_millis(250));
        assert_eq!(c.servers[0].reconnect_max_delay(), Duration::from_secs(5));

        let (result, path, _dir) = load_toml("[[servers]]\nsilence_timeout_seconds = 0\n");
        let error = result.unwrap_err();
        let violation = only_violation(&error);
        assert_eq!(violation.key, "servers[0].silence_timeout_seconds");
        assert_eq!(
            violation.source.as_deref(),
            Some(format!("TOML file {}", path.display()).as_str())
        );
    }
}
