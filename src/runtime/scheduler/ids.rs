//! The scheduler's names for things: execution and backend ids, the node
//! classes an execution requires, and the key a caller submits. Plain values;
//! no scheduling decision is made here.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::model::TaskPriority;

/// Identifies one queued or dispatched execution; assigned by the caller and
/// unique among the executions the scheduler currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecutionId(pub u64);

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one ComfyUI backend of the pool; assigned by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub u32);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The node class names an execution needs a backend to have: sorted, without
/// duplicates, shared behind an `Arc` so that every queued execution of the
/// same workflow costs one pointer. Equality and hashing go by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RequiredClasses(pub(super) Arc<[Arc<str>]>);

impl RequiredClasses {
    /// The set of `classes` (sorted, duplicates removed).
    pub fn new<I, S>(classes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        let mut classes: Vec<Arc<str>> = classes.into_iter().map(Into::into).collect();
        classes.sort_unstable();
        classes.dedup();
        Self(classes.into())
    }

    /// No requirement: any up backend can run it.
    pub fn none() -> Self {
        Self::default()
    }

    /// The class names, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|class| &**class)
    }

    /// How many classes are required.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a backend with `classes` has every required class.
    pub(super) fn satisfied_by(&self, classes: &HashSet<Arc<str>>) -> bool {
        self.0.iter().all(|class| classes.contains(class))
    }
}

/// What the caller submits: the execution and what the scheduler needs to
/// place it. The workflow JSON stays with the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionKey {
    /// The execution's id.
    pub id: ExecutionId,
    /// Its priority.
    pub priority: TaskPriority,
    /// Node classes a backend must have to run it.
    pub required: RequiredClasses,
}
