//! `[store]`: where the durable embedded store (an SQLite file) lives, how long finished work and
//! events are kept, and how far a commit waits for the disk (not in the seed). Only settings,
//! defaults and accessors live here; bounds are checked in `validate.rs`, and nothing here opens
//! or creates a file.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;

/// The store's file name inside `service.data_dir` when `store.path` is not set.
pub const STORE_FILE_NAME: &str = "comfy-reality.db";

/// `[store]`: the durable embedded store (an SQLite file) that keeps tasks, executions with
/// their prompts, workflows, events and idempotency keys across restarts (not in the seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The database file, relative to the working directory unless absolute. Default: none,
    /// meaning `<service.data_dir>/comfy-reality.db` (see [`Config::store_path`]). Bound: not
    /// empty when given.
    ///
    /// [`Config::store_path`]: super::Config::store_path
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Finished tasks and executions (completed, failed, cancelled), and events, are deleted
    /// this many days after they last changed. Default: 30. Bound: >= 1.
    pub retention_days: u32,
    /// Most events kept; the oldest beyond it are deleted, 1% of it (at most 1,024) at a
    /// time, so 99-100% of it stays. Default: 1000000. Bound: >= 1.
    pub max_events: u64,
    /// How far a commit waits for the disk: `normal` (survives a crash of the process; the
    /// last commits can be lost on power loss) or `full` (survives power loss, slower).
    /// Default: `normal`.
    pub synchronous: StoreSynchronous,
    /// How often old data is compacted away, in seconds. Default: 3600. Bound: finite, > 0.
    pub compaction_interval_seconds: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention_days: 30,
            max_events: 1_000_000,
            synchronous: StoreSynchronous::Normal,
            compaction_interval_seconds: 3600.0,
        }
    }
}

impl StoreConfig {
    /// `retention_days` as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }

    /// `compaction_interval_seconds` as a duration (zero when out of range, which a validated
    /// configuration never is).
    pub fn compaction_interval(&self) -> Duration {
        seconds(self.compaction_interval_seconds)
    }
}

/// How far a store commit waits for the disk (`store.synchronous`), SQLite's `synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreSynchronous {
    /// Durable across a crash of the process; on power loss the last commits may be lost.
    #[default]
    Normal,
    /// Durable across power loss: every commit waits for the disk.
    Full,
}

impl StoreSynchronous {
    /// The configuration spelling: `normal` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for StoreSynchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn store_section_loads_from_file_and_environment() {
        let (result, _, _dir) = load_toml(
            "[service]\ndata_dir = \"/srv/cr\"\n\
             [store]\nretention_days = 7\nmax_events = 5000\nsynchronous = \"full\"\n\
             compaction_interval_seconds = 60\n",
        );
        let config = result.unwrap();
        assert_eq!(
            config.store_path(),
            PathBuf::from("/srv/cr/comfy-reality.db")
        );
        assert_eq!(config.store.retention_days, 7);
        assert_eq!(config.store.max_events, 5000);
        assert_eq!(config.store.synchronous, StoreSynchronous::Full);
        assert_eq!(config.store.compaction_interval(), Duration::from_secs(60));

        let config = load_env(&[
            ("COMFY_REALITY__STORE__PATH", "/var/lib/cr/state.db"),
            ("COMFY_REALITY__STORE__SYNCHRONOUS", "full"),
        ])
        .unwrap();
        assert_eq!(config.store_path(), PathBuf::from("/var/lib/cr/state.db"));
        assert_eq!(config.store.synchronous, StoreSynchronous::Full);

        let (result, _, _dir) = load_toml("[store]\nsynchronous = \"extra\"\n");
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("store.synchronous")
        );
        let (result, _, _dir) = load_toml("[store]\nretention = 3\n");
        assert!(result.unwrap_err().to_string().contains("store.retention"));
    }
}
