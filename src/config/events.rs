//! `[events]`: how many events are kept in memory for resumption and how subscriptions are
//! buffered and kept alive (not in the seed). Only settings, defaults and accessors live here;
//! bounds are checked in `validate.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// `[events]`: how many events are kept in memory for resumption, and how
/// subscriptions behave (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept in memory (older ones are read from the store). Default: 8192 (about 10 MB when full; a subscriber further behind is caught up from the store).
    /// Bound: >= 16.
    pub history_len: usize,
    /// Most events waiting for one subscriber's client at once: a page of history while it
    /// catches up (at most 512 are read at once whatever the setting). Live events wait in the
    /// live channel shared by every subscriber; one that falls behind it is caught up from
    /// history. Default: 256.
    /// Bound: 1..=65536.
    pub subscriber_buffer: usize,
    /// An idle subscription gets a heartbeat this often, in seconds. Default: 15.
    /// Bound: finite, > 0.
    pub heartbeat_seconds: f64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            history_len: 8_192,
            subscriber_buffer: 256,
            heartbeat_seconds: 15.0,
        }
    }
}

impl EventsConfig {
    /// `heartbeat_seconds` as a duration.
    pub fn heartbeat(&self) -> Duration {
        seconds(self.heartbeat_seconds)
    }
}
