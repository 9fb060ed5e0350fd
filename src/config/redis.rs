//! `[redis]`: how the Redis store (`runtime.queue_type = "redis"`) names its keys, holds its
//! lease, bounds its event stream and times out (not in the seed). Only settings, defaults and
//! accessors live here; bounds are checked in `validate.rs`, the url is `runtime.queue_url`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// `[redis]`: settings of the Redis store. Used only when `runtime.queue_type = "redis"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Every key starts with `{<key_prefix>}:` (one Redis Cluster hash slot, so that each
    /// multi-key step is one Lua script). Two runtimes with different prefixes share a Redis
    /// without seeing each other. Default: `comfy-reality`. Bound: 1..=64 characters, none of
    /// `{`, `}` or whitespace.
    pub key_prefix: String,
    /// The lease a runtime holds on its keys, renewed every third of it. A runtime killed without
    /// releasing it is replaced (a restart, or a standby waiting at start) once it expires.
    /// Default: 10. Bound: 1..=300 seconds.
    pub lease_seconds: f64,
    /// Events kept in the Redis stream for resumption (trimmed approximately, never below
    /// this). Default: 1,000,000. Bound: at least `events.history_len`.
    pub event_retention: u64,
    /// How long one Redis command (or a connection attempt) may take before the call fails
    /// with UNAVAILABLE. Default: 2. Bound: finite, > 0, at most 60.
    pub command_timeout_seconds: f64,
    /// The address other replicas forward calls to while this one holds the lease (it is
    /// written into the lease). `http://host:port` or `https://host:port`. Default: this
    /// process's bound `service.listen` address (`https` when `tls.cert_file` is set), with the
    /// host's name in place of an unspecified IP (`0.0.0.0`, `::`). Set it where that name
    /// does not reach the process (a Kubernetes pod: `http://$(POD_IP):50051`).
    pub advertise_url: Option<String>,
    /// Certificate authorities (PEM) a replica trusts when it forwards to an `https`
    /// advertise url, beside the system's roots. Default: the system's roots only.
    pub peer_ca_file: Option<std::path::PathBuf>,
    /// The certificate (PEM) a replica presents when it forwards to an `https` advertise url
    /// whose holder asks for client certificates (`tls.client_ca_file`): signed by that CA.
    /// It names the replica only; the caller's own certificate names travel in a signed
    /// header. With `peer_key_file`. Default: none.
    pub peer_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `peer_cert_file`.
    pub peer_key_file: Option<std::path::PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            key_prefix: "comfy-reality".to_owned(),
            lease_seconds: 10.0,
            event_retention: 1_000_000,
            command_timeout_seconds: 2.0,
            advertise_url: None,
            peer_ca_file: None,
            peer_cert_file: None,
            peer_key_file: None,
        }
    }
}

impl RedisConfig {
    /// `lease_seconds` as a duration.
    pub fn lease(&self) -> Duration {
        seconds(self.lease_seconds)
    }

    /// `command_timeout_seconds` as a duration.
    pub fn command_timeout(&self) -> Duration {
        seconds(self.command_timeout_seconds)
    }
}
