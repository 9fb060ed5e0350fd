//! What the Redis store knows of its own health: whether Redis answered
//! lately, and whether this runtime lost its lease. Written by the writer and
//! lease threads, read by readiness.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::StoreError;

/// Shared between the store's threads.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// The last attempt to reach Redis failed.
    down: AtomicBool,
    /// Why it failed (logged once per outage).
    reason: Mutex<String>,
    /// Set for good once another runtime holds the lease: who holds it.
    fenced: Mutex<Option<String>>,
}

impl Health {
    /// Redis answered.
    pub fn reached(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("redis is reachable again");
        }
    }

    /// Redis could not be reached; logged once per outage.
    pub fn unreachable(&self, reason: &str) {
        if let Ok(mut last) = self.reason.lock() {
            reason.clone_into(&mut last);
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(
                reason,
                "redis is unreachable; writes wait for it, calls that need it fail with UNAVAILABLE"
            );
        }
    }

    /// Another runtime holds the lease now.
    pub fn fence(&self, holder: &str) {
        if let Ok(mut fenced) = self.fenced.lock()
            && fenced.is_none()
        {
            tracing::error!(
                holder,
                "this runtime lost its lease on the redis store to another runtime; it stops writing"
            );
            *fenced = Some(holder.to_owned());
        }
    }

    /// The store's state as [`crate::store::Store::health`] reports it.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Ok(fenced) = self.fenced.lock()
            && let Some(holder) = fenced.as_ref()
        {
            return Err(StoreError::Fenced(format!("held by {holder}")));
        }
        if self.down.load(Ordering::Acquire) {
            let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
            return Err(StoreError::Unreachable(reason));
        }
        Ok(())
    }
}
