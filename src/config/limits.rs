//! `[limits]`: what one principal may do (rate limits for submits and for other calls, queued
//! plus running executions, concurrent server streams), overridable per principal, and the hard
//! limits of the transport that no client can raise (HTTP/2 streams per connection, header list
//! size, keepalive, TLS handshake time). Only settings, defaults and accessors live here; bounds
//! are checked in `validate.rs`, enforcement is in `api/auth` and `server.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// `[limits]`: per-principal rate limits and quotas, and the transport's hard limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// ExecuteWorkflow and CreateTask calls per second, per principal. Default: 20.
    /// Bound: finite, > 0.
    pub submits_per_second: f64,
    /// Submits a principal may make at once before the rate applies. Default: 40. Bound: >= 1.
    pub submit_burst: u32,
    /// Every other call per second, per principal. Default: 200. Bound: finite, > 0.
    pub calls_per_second: f64,
    /// Other calls a principal may make at once before the rate applies. Default: 400.
    /// Bound: >= 1.
    pub call_burst: u32,
    /// Most queued plus running executions of one principal. Default: 1000. Bound: >= 1.
    pub max_queued: u64,
    /// Most concurrent server streams (SubscribeEvents, WatchExecution, GetArtifact) of one
    /// principal. Default: 16. Bound: >= 1.
    pub max_streams: u32,
    /// HTTP/2 streams one connection may have open at once. Default: 256. Bound: 1..=65536.
    pub max_concurrent_streams_per_connection: u32,
    /// Largest HTTP/2 header list a client may send, in bytes. Default: 16 KiB.
    /// Bound: 1024..=1048576.
    pub max_header_list_bytes: u32,
    /// A connection whose keepalive ping is not answered within this many seconds is closed.
    /// Default: 20. Bound: finite, > 0.
    pub keepalive_timeout_seconds: f64,
    /// A TLS handshake that takes longer is abandoned. Default: 10. Bound: finite, > 0.
    pub tls_handshake_timeout_seconds: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            submits_per_second: 20.0,
            submit_burst: 40,
            calls_per_second: 200.0,
            call_burst: 400,
            max_queued: 1000,
            max_streams: 16,
            max_concurrent_streams_per_connection: 256,
            max_header_list_bytes: 16 * 1024,
            keepalive_timeout_seconds: 20.0,
            tls_handshake_timeout_seconds: 10.0,
        }
    }
}

impl LimitsConfig {
    /// `keepalive_timeout_seconds` as a duration.
    pub fn keepalive_timeout(&self) -> Duration {
        seconds(self.keepalive_timeout_seconds)
    }

    /// `tls_handshake_timeout_seconds` as a duration.
    pub fn tls_handshake_timeout(&self) -> Duration {
        seconds(self.tls_handshake_timeout_seconds)
    }

    /// These limits with a principal's overrides applied.
    pub fn with(&self, overrides: &LimitsOverride) -> PrincipalLimits {
        PrincipalLimits {
            submits_per_second: overrides
                .submits_per_second
                .unwrap_or(self.submits_per_second),
            submit_burst: overrides.submit_burst.unwrap_or(self.submit_burst),
            calls_per_second: overrides.calls_per_second.unwrap_or(self.calls_per_second),
            call_burst: overrides.call_burst.unwrap_or(self.call_burst),
            max_queued: overrides.max_queued.unwrap_or(self.max_queued),
            max_streams: overrides.max_streams.unwrap_or(self.max_streams),
        }
    }
}

/// A principal's `limits = { ... }`: the per-principal keys of `[limits]`, each optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsOverride {
    /// Overrides `limits.submits_per_second`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submits_per_second: Option<f64>,
    /// Overrides `limits.submit_burst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_burst: Option<u32>,
    /// Overrides `limits.calls_per_second`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_per_second: Option<f64>,
    /// Overrides `limits.call_burst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_burst: Option<u32>,
    /// Overrides `limits.max_queued`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Overrides `limits.max_streams`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
}

impl LimitsOverride {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// The limits that apply to one principal: `[limits]` with its overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrincipalLimits {
    /// Submits per second.
    pub submits_per_second: f64,
    /// Submits at once.
    pub submit_burst: u32,
    /// Other calls per second.
    pub calls_per_second: f64,
    /// Other calls at once.
    pub call_burst: u32,
    /// Queued plus running executions.
    pub max_queued: u64,
    /// Concurrent server streams.
    pub max_streams: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn overrides_apply_per_principal_and_bounds_name_the_key() {
        let limits = LimitsConfig::default();
        let mine = limits.with(&LimitsOverride {
            submits_per_second: Some(1.5),
            max_streams: Some(2),
            ..LimitsOverride::default()
        });
        assert_eq!(mine.submits_per_second, 1.5);
        assert_eq!(mine.max_streams, 2);
        assert_eq!(mine.calls_per_second, 200.0);

        for (text, key) in [
            (
                "[limits]\nsubmits_per_second = 0\n",
                "limits.submits_per_second",
            ),
            ("[limits]\nmax_streams = 0\n", "limits.max_streams"),
            (
                "[limits]\nmax_header_list_bytes = 10\n",
                "limits.max_header_list_bytes",
            ),
            (
                "[auth]\nallow_anonymous = true\n[[auth.principals]]\nname = \"a\"\nrole = \"viewer\"\nlimits = { calls_per_second = -1.0 }\n",
                "auth.principals[0].limits.calls_per_second",
            ),
        ] {
            let (result, _, _dir) = load_toml(text);
            let error = result.unwrap_err();
            assert_eq!(only_violation(&error).key, key, "{error}");
        }
        let c = load_env(&[("COMFY_REALITY__LIMITS__MAX_QUEUED", "5")]).unwrap();
        assert_eq!(c.limits.max_queued, 5);
    }
}
