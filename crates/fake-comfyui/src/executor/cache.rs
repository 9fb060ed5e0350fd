//! The worker's output cache: node results keyed by input signature (see
//! `graph::signatures`), the oldest evicted first, cleared by
//! `POST /free {"free_memory": true}`.
//!
//! It only stores and evicts; what counts as unchanged is decided by the
//! signatures, and when to use an entry by the run.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::nodes::Datum;

/// How many node results the output cache keeps.
const CACHE_LIMIT: usize = 1024;

/// A node's cached result.
#[derive(Debug)]
pub(super) struct CacheEntry {
    /// One value per output slot.
    pub(super) outputs: Vec<Datum>,
    /// `{"meta": …, "output": …}` when the node has a UI.
    pub(super) ui: Option<(Value, Value)>,
}

/// ComfyUI's output cache, keyed by input signature, oldest evicted first.
#[derive(Debug, Default)]
pub(super) struct OutputCache {
    /// Entries by signature.
    entries: HashMap<u64, Arc<CacheEntry>>,
    /// Signatures in insertion order, for eviction.
    order: VecDeque<u64>,
}

impl OutputCache {
    /// The entry of `signature`, if cached.
    pub(super) fn get(&self, signature: u64) -> Option<Arc<CacheEntry>> {
        self.entries.get(&signature).cloned()
    }

    /// Stores an entry, evicting the oldest beyond the limit.
    pub(super) fn insert(&mut self, signature: u64, entry: Arc<CacheEntry>) {
        if self.entries.insert(signature, entry).is_none() {
            self.order.push_back(signature);
        }
        while self.order.len() > CACHE_LIMIT {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    /// Forgets every entry.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}
