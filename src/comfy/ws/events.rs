//! What a watcher of one prompt receives: [`PromptEvent`]s, ending with exactly one terminal event
//! that carries the prompt's [`Completion`] (or the [`LostReason`] it was given up for).
//!
//! Plain data: producing the events is the router's job, delivering them the socket task's.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use crate::comfy::wire::{ExecutionError, ExecutionInterrupted, HistoryEntry, NodeId, NodeOutput};

/// How a prompt ended, with its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Outputs per node: from history when it could be read, else from `executed` messages.
    pub outputs: BTreeMap<NodeId, NodeOutput>,
    /// The history entry, read after the end of the prompt; `None` when it could not be read.
    pub history: Option<Box<HistoryEntry>>,
}

/// Why a prompt was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Neither queued nor in history (deleted while pending, or the server restarted).
    NotFound,
    /// The prompt ended but its history could not be read to tell how.
    HistoryUnavailable,
    /// The socket task shut down while the prompt was in flight.
    Shutdown,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "the server has no record of the prompt",
            Self::HistoryUnavailable => "the prompt ended but its history could not be read",
            Self::Shutdown => "the backend socket shut down",
        })
    }
}

/// What happens to one watched prompt. Everything before the terminal event is best effort
/// (see the module docs on backpressure); the terminal event comes exactly once.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptEvent {
    /// `execution_start`: a worker picked the prompt up.
    Started {
        /// Server epoch milliseconds.
        timestamp: Option<i64>,
    },
    /// `execution_cached`: these nodes reuse cached results.
    Cached {
        /// The cached node ids.
        nodes: Vec<NodeId>,
    },
    /// `executing{node}`: a node started.
    NodeStarted {
        /// The node.
        node: NodeId,
        /// The node shown in the UI.
        display_node: Option<NodeId>,
    },
    /// `progress`: a node's steps.
    Progress {
        /// The node.
        node: Option<NodeId>,
        /// Steps done.
        value: f64,
        /// Steps in all.
        max: f64,
    },
    /// `executed`: a node produced its UI dict.
    Executed {
        /// The node.
        node: NodeId,
        /// The node shown in the UI.
        display_node: Option<NodeId>,
        /// The UI dict.
        output: NodeOutput,
    },
    /// A binary preview image.
    Preview {
        /// The node, when known.
        node: Option<NodeId>,
        /// MIME type of the image.
        mime: String,
        /// The encoded image.
        image: Bytes,
    },
    /// A binary TEXT frame.
    Text {
        /// The node.
        node: NodeId,
        /// The text.
        text: String,
    },
    /// The watcher was too slow: this many events were dropped since the last delivered one.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
    /// Terminal: the prompt succeeded.
    Success(Completion),
    /// Terminal: a node failed.
    Error {
        /// The `execution_error` data.
        error: Box<ExecutionError>,
        /// Outputs produced before the failure.
        completion: Completion,
    },
    /// Terminal: the prompt was interrupted.
    Interrupted {
        /// The `execution_interrupted` data.
        interrupted: ExecutionInterrupted,
        /// Outputs produced before the interrupt.
        completion: Completion,
    },
    /// Terminal: the prompt cannot be followed any more.
    Lost {
        /// Why.
        reason: LostReason,
    },
}

impl PromptEvent {
    /// Whether this is the last event of the prompt.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Success(_) | Self::Error { .. } | Self::Interrupted { .. } | Self::Lost { .. }
        )
    }
}
