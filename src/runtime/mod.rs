//! The runtime core: the task registry (client-reported tasks and their state
//! machine), the workflow registry, and runtime facts for operators. It knows
//! neither tonic nor the generated protobuf types; `api/` converts.

mod error;
mod fingerprint;
pub mod scheduler;
mod tasks;
pub mod workflow_checks;
mod workflows;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use error::{ErrorClass, ObjectKind, RuntimeError};
pub use tasks::{NewTaskRequest, ProgressUpdate, TaskRegistry};
pub use workflows::{RegisterWorkflowRequest, WorkflowRegistry};

use crate::config::Config;
use crate::store::Store;

/// Default page size of listings.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size of listings.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A cheap, cloneable handle to the runtime, given to every gRPC handler.
#[derive(Clone)]
pub struct Runtime {
    /// Shared state behind the handle.
    inner: Arc<Inner>,
}

struct Inner {
    /// Client-reported tasks.
    tasks: TaskRegistry,
    /// Registered workflows.
    workflows: WorkflowRegistry,
    /// The effective configuration, as loaded and validated at startup.
    config: Config,
    /// When this runtime started.
    started_at: DateTime<Utc>,
}

impl Runtime {
    /// A runtime over `store` with the given (validated) configuration.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tasks: TaskRegistry::new(Arc::clone(&store)),
                workflows: WorkflowRegistry::new(store),
                config,
                started_at: Utc::now(),
            }),
        }
    }

    /// The task registry.
    pub fn tasks(&self) -> &TaskRegistry {
        &self.inner.tasks
    }

    /// The workflow registry.
    pub fn workflows(&self) -> &WorkflowRegistry {
        &self.inner.workflows
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// When the runtime started.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.inner.started_at
    }
}
