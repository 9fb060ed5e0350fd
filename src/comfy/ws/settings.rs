//! How a backend's socket task behaves: timeouts, reconnect delays, channel capacities and history
//! polling ([`SocketSettings`]), with the configurable parts taken from a [`ServerConfig`].
//!
//! Plain values only: the socket task and the router read them; nothing here starts a timer.

use std::time::Duration;

use crate::config::ServerConfig;

/// How the socket task behaves. [`SocketSettings::from_config`] takes the configurable parts
/// from a [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// A submitted prompt without any message for this long is reconciled over HTTP; a socket
    /// without any frame for this long is pinged, and for twice this long replaced.
    pub silence_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min_delay: Duration,
    /// Longest reconnect delay.
    pub reconnect_max_delay: Duration,
    /// Capacity of each watcher's event channel.
    pub watch_capacity: usize,
    /// How long closing the old socket may take before it counts as unconfirmed.
    pub close_timeout: Duration,
    /// How long after an outcome message to wait for `executing{node: null}` before reading
    /// history anyway.
    pub terminal_grace: Duration,
    /// History reads after the end of a prompt before giving up on it.
    pub history_attempts: u32,
    /// Delay between those reads (grows linearly).
    pub history_interval: Duration,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            silence_timeout: Duration::from_secs(30),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(30),
            watch_capacity: 64,
            close_timeout: Duration::from_secs(2),
            terminal_grace: Duration::from_secs(1),
            history_attempts: 8,
            history_interval: Duration::from_millis(50),
        }
    }
}

impl SocketSettings {
    /// Defaults with `silence_timeout` and `reconnect_max_delay` from `config`.
    pub fn from_config(config: &ServerConfig) -> Self {
        let defaults = Self::default();
        let silence_timeout = non_zero(config.silence_timeout(), defaults.silence_timeout);
        let reconnect_max_delay =
            non_zero(config.reconnect_max_delay(), defaults.reconnect_max_delay);
        Self {
            silence_timeout,
            reconnect_max_delay,
            reconnect_min_delay: defaults.reconnect_min_delay.min(reconnect_max_delay),
            ..defaults
        }
    }
}

fn non_zero(value: Duration, fallback: Duration) -> Duration {
    if value.is_zero() { fallback } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_config() {
        let config = ServerConfig {
            silence_timeout_seconds: 0.25,
            reconnect_max_delay_seconds: 0.05,
            ..ServerConfig::default()
        };
        let settings = SocketSettings::from_config(&config);
        assert_eq!(settings.silence_timeout, Duration::from_millis(250));
        assert_eq!(settings.reconnect_max_delay, Duration::from_millis(50));
        assert_eq!(settings.reconnect_min_delay, Duration::from_millis(50));
    }
}
