//! How a `SqliteStore` is opened: durability, the event cap, background
//! compaction. Plain values read from the config; nothing here touches the
//! file.

use std::time::Duration;

#[cfg(doc)] // Only the doc links name it.
use super::SqliteStore;
use super::compaction::RetentionPolicy;
use crate::config::{Config, StoreSynchronous};
#[cfg(doc)] // Only the doc links name it.
use crate::store::Store;

/// How a `SqliteStore` is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteOptions {
    /// How far a commit waits for the disk.
    pub synchronous: StoreSynchronous,
    /// Most events kept; each append deletes the ones that fall out.
    pub max_events: u64,
    /// Background compaction: how often, and what it removes. `None`: only
    /// when [`SqliteStore::compact`] is called.
    pub compaction: Option<(Duration, RetentionPolicy)>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: StoreSynchronous::Normal,
            max_events: 1_000_000,
            compaction: None,
        }
    }
}

impl SqliteOptions {
    /// The options `[store]` asks for, background compaction included.
    pub fn from_config(config: &Config) -> Self {
        let store = &config.store;
        Self {
            synchronous: store.synchronous,
            max_events: store.max_events,
            compaction: Some((
                store.compaction_interval(),
                RetentionPolicy::from_config(store),
            )),
        }
    }
}
