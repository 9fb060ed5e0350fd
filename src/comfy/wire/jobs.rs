//! The jobs API (servers since 0.6.0): `GET /api/jobs` and `GET /api/jobs/{id}`, and the cancel
//! routes (since 0.26.0).
//!
//! Pure data and parsing; the error body of these routes is [`SimpleError`](super::SimpleError).
//! A job's status here is ComfyUI's; mapping it to a task status is the runtime's business.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use super::lenient::{lenient_i64, lenient_u64};
use super::{ExecutionError, HistoryStatus, NodeId, NodeOutput};

/// A job's status in the jobs API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting in the queue.
    Pending,
    /// Running.
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished with an error (also interrupted jobs on 0.6-0.8).
    Failed,
    /// Interrupted or cancelled (since 0.9.0).
    Cancelled,
    /// A status this client does not know.
    Other(String),
}

impl From<String> for JobStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => Self::Other(s),
        }
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(String::deserialize(d)?.into())
    }
}

impl JobStatus {
    /// Whether the job has finished one way or another.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// `GET /api/jobs/{id}` (and each item of the list).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Job {
    /// The prompt id.
    pub id: String,
    /// Where the job stands.
    pub status: JobStatus,
    /// The queue number.
    #[serde(default)]
    pub priority: Option<Number>,
    /// Epoch ms when it was queued.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub create_time: Option<i64>,
    /// Epoch ms when it started.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub execution_start_time: Option<i64>,
    /// Epoch ms when it ended.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub execution_end_time: Option<i64>,
    /// Number of outputs.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub outputs_count: Option<u64>,
    /// Number of outputs that can be previewed (since 0.32.0).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub previewable_outputs_count: Option<u64>,
    /// One output picked for a preview.
    #[serde(default)]
    pub preview_output: Option<Value>,
    /// Outputs per node (single-job reads only).
    #[serde(default)]
    pub outputs: Option<BTreeMap<NodeId, NodeOutput>>,
    /// The history status (single-job reads only).
    #[serde(default)]
    pub execution_status: Option<HistoryStatus>,
    /// The `execution_error` data of a failed job.
    #[serde(default)]
    pub execution_error: Option<ExecutionError>,
    /// The prompt and extra_data as submitted (single-job reads only).
    #[serde(default)]
    pub workflow: Option<JobWorkflow>,
}

/// `workflow` of a job.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct JobWorkflow {
    /// The graph.
    pub prompt: Value,
    /// The extra data.
    pub extra_data: Value,
}

/// `GET /api/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JobList {
    /// The jobs on this page.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// Paging information.
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

/// `pagination` of `GET /api/jobs`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct Pagination {
    /// Index of the first job.
    #[serde(deserialize_with = "lenient_u64")]
    pub offset: Option<u64>,
    /// Page size (null when unlimited).
    #[serde(deserialize_with = "lenient_u64")]
    pub limit: Option<u64>,
    /// Total matching jobs.
    #[serde(deserialize_with = "lenient_u64")]
    pub total: Option<u64>,
    /// Whether more pages follow.
    pub has_more: bool,
}

/// `POST /api/jobs/{id}/cancel` and `POST /api/jobs/cancel` (since 0.26.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct CancelResponse {
    /// Whether anything was cancelled.
    pub cancelled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfy::wire::test_support::{responses, transcript, transcripts};
    use crate::comfy::wire::{SimpleError, from_value};

    #[test]
    fn job_list_and_cancel_bodies_parse() {
        let (mut jobs, mut lists) = (0, 0);
        for (name, t) in transcripts() {
            for (path, status, body) in responses(&t) {
                if !path.starts_with("/api/jobs") || path.ends_with("cancel") {
                    continue;
                }
                if status != 200 {
                    let error: SimpleError = from_value(body).unwrap();
                    assert!(!error.error.is_empty());
                } else if path.starts_with("/api/jobs?") {
                    let list: JobList = from_value(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(list.pagination.is_some());
                    lists += 1;
                } else {
                    let job: Job =
                        from_value(body.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(job.id, body["id"].as_str().unwrap());
                    jobs += 1;
                }
            }
        }
        assert!(jobs >= 5 && lists >= 2, "{jobs} {lists}");

        let t = transcript("execution_error.json");
        let (_, _, body) = responses(&t)
            .into_iter()
            .find(|(p, _, _)| p.starts_with("/api/jobs/"))
            .unwrap();
        let job: Job = from_value(body).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.execution_error.unwrap().node_type, "TestFail");

        let t = transcript("jobs_api.json");
        let cancels: Vec<CancelResponse> = responses(&t)
            .into_iter()
            .filter(|(p, s, _)| p.ends_with("cancel") && *s == 200)
            .map(|(_, _, b)| from_value(b).unwrap())
            .collect();
        assert!(cancels.iter().any(|c| c.cancelled) && cancels.iter().any(|c| !c.cancelled));
        let statuses: Vec<JobStatus> = responses(&t)
            .into_iter()
            .filter(|(p, s, _)| p.starts_with("/api/jobs/") && !p.ends_with("cancel") && *s == 200)
            .map(|(_, _, b)| from_value::<Job>(b).unwrap().status)
            .collect();
        assert!(statuses.contains(&JobStatus::InProgress));
        assert!(statuses.contains(&JobStatus::Pending));
        assert!(statuses.contains(&JobStatus::Cancelled));
    }
}
