//! Backends going up and down: their runtime events, the executions a
//! backend that went down leaves behind, and the queued executions no
//! backend can ever run.
//!
//! One part of the [`Actor`]'s `impl`, split by concern: it imports the
//! actor's state from its parent and the executor's lower modules, never
//! another part.

use serde_json::Value;

use crate::model::{EventCategory, JsonObject, LogLevel};
use crate::runtime::bus::EventContext;
use crate::runtime::executor::failure::{Failure, FailureKind};
use crate::runtime::scheduler::{BackendId, CancelOutcome};
use crate::telemetry::metrics;

use super::{Actor, live_reason};

impl Actor {
    /// Publishes a backend's change of state as a runtime event.
    pub(super) fn backend_event(&self, backend: BackendId, up: bool, detail: String) {
        let Some(b) = self.shared.pool.get(backend) else {
            return;
        };
        let (event_type, level, message) = if up {
            (
                "backend.up",
                LogLevel::Info,
                format!("backend {} is up ({detail})", b.name),
            )
        } else {
            (
                "backend.down",
                LogLevel::Warning,
                format!("backend {} is down: {detail}", b.name),
            )
        };
        metrics::set_backend_up(&b.name, up);
        let mut data = JsonObject::new();
        data.insert("backend".into(), Value::from(b.name.clone()));
        self.shared.runtime_event(
            EventCategory::System,
            level,
            event_type,
            message,
            data,
            EventContext::default(),
        );
    }

    /// A backend went down: its executions are abandoned there and fail
    /// (retried when retries are left), or end cancelled when a cancel waits.
    pub(super) fn backend_down(&mut self, backend: BackendId) {
        let detail = self
            .shared
            .pool
            .get(backend)
            .and_then(|b| b.state().last_error)
            .unwrap_or_else(|| "it stopped answering".into());
        self.backend_event(backend, false, detail);
        let orphaned = self.scheduler.backend_down(backend);
        self.deferred_starts.retain(|(_, b)| *b != backend);
        let name = self
            .shared
            .pool
            .get(backend)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        for orphan in orphaned {
            let Some(live) = self.live.get_mut(&orphan.id) else {
                continue;
            };
            if let Some(run) = live.run.take() {
                run.abandon.cancel();
            }
            // Reports of the abandoned attempt are stale from now on.
            live.attempt += 1;
            if live.cancel_reason.is_some() {
                let reason = live_reason(Some(live));
                self.end_cancelled(orphan.id, reason);
            } else {
                let failure = Failure::transient(
                    FailureKind::BackendUnavailable,
                    format!("backend {name} stopped answering while the execution was on it"),
                );
                self.failed(orphan.id, &failure);
            }
        }
    }

    /// Fails queued executions that no backend could ever run, once every
    /// backend has told its classes.
    pub(super) fn fail_unrunnable(&mut self) {
        let all_known = self
            .shared
            .pool
            .backends()
            .iter()
            .all(|b| b.read_state(|state| state.catalogue.is_some()));
        if !all_known {
            return;
        }
        for stranded in self.scheduler.stranded() {
            if stranded.runnable_by_down_backend || stranded.missing.is_empty() {
                continue;
            }
            let missing: Vec<&str> = stranded.missing.iter().map(|c| &**c).collect();
            let failure = Failure::permanent(
                FailureKind::NoBackend,
                format!("no backend has the node classes {}", missing.join(", ")),
            );
            for sched in stranded.ids {
                if self.scheduler.cancel(sched) == CancelOutcome::Removed {
                    self.end_failed(sched, &failure);
                }
            }
        }
    }
}
