//! The one place runtime errors become `tonic::Status`: an exhaustive match
//! (no catch-all arm), each status carrying `google.rpc.ErrorInfo` with the
//! seed's error class and, for INVALID_ARGUMENT, `google.rpc.BadRequest`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{BadRequest, ErrorDetail, ErrorInfo, FieldViolation, RetryInfo, StatusExt};

use crate::api::access::{AccessError, AuthFailure, LimitExceeded};
use crate::model::ValidationError;
use crate::runtime::{ErrorClass, RuntimeError};

/// `google.rpc.ErrorInfo.domain` of every error this service raises.
pub const ERROR_DOMAIN: &str = "comfyreality.runtime.v1";

fn error_info(class: ErrorClass, metadata: HashMap<String, String>) -> ErrorDetail {
    ErrorInfo::new(class.as_str(), ERROR_DOMAIN, metadata).into()
}

/// Most field violations sent in one error. Status, message and details
/// travel in HTTP/2 headers, which many clients cap at 8 KiB.
pub const MAX_VIOLATIONS_SENT: usize = 20;
/// Longest error message or violation description sent, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest description of one violation sent, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 256;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// INVALID_ARGUMENT with one BadRequest field violation per violated rule
/// (the first [`MAX_VIOLATIONS_SENT`]; the message says how many more).
pub fn invalid_argument(err: &ValidationError) -> Status {
    let sent = &err.violations[..err.violations.len().min(MAX_VIOLATIONS_SENT)];
    let violations: Vec<FieldViolation> = sent
        .iter()
        .map(|v| {
            FieldViolation::new(
                truncate(&v.field, MAX_DESCRIPTION_BYTES),
                truncate(&v.description, MAX_DESCRIPTION_BYTES),
            )
        })
        .collect();
    let fields = truncate(
        &sent
            .iter()
            .map(|v| v.field.as_str())
            .collect::<Vec<_>>()
            .join(","),
        MAX_MESSAGE_BYTES,
    );
    let listed = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let more = err.violations.len() - sent.len();
    let suffix = if more > 0 {
        format!(" (and {more} more)")
    } else {
        String::new()
    };
    let message = format!(
        "invalid argument: {}{suffix}",
        truncate(&listed, MAX_MESSAGE_BYTES - 64)
    );
    Status::with_error_details_vec(
        Code::InvalidArgument,
        message,
        [
            error_info(
                ErrorClass::Validation,
                HashMap::from([("fields".to_owned(), fields)]),
            ),
            ErrorDetail::BadRequest(BadRequest::new(violations)),
        ],
    )
}

/// Maps a runtime error to its status code and details.
pub fn to_status(err: RuntimeError) -> Status {
    let class = err.class();
    match &err {
        RuntimeError::Validation(validation) => invalid_argument(validation),
        RuntimeError::NotFound { kind, id, version } => {
            let mut metadata = HashMap::from([
                ("kind".to_owned(), kind.as_str().to_owned()),
                ("id".to_owned(), id.clone()),
            ]);
            if let Some(version) = version {
                metadata.insert("version".to_owned(), version.clone());
            }
            Status::with_error_details_vec(
                Code::NotFound,
                err.to_string(),
                [error_info(class, metadata)],
            )
        }
        RuntimeError::AlreadyExists { kind, id, .. } => Status::with_error_details_vec(
            Code::AlreadyExists,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("kind".to_owned(), kind.as_str().to_owned()),
                    ("id".to_owned(), id.clone()),
                ]),
            )],
        ),
        RuntimeError::IllegalTransition { task_id, source } => Status::with_error_details_vec(
            Code::FailedPrecondition,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("task_id".to_owned(), task_id.clone()),
                    ("from".to_owned(), source.from.as_str().to_owned()),
                    ("to".to_owned(), source.to.as_str().to_owned()),
                ]),
            )],
        ),
        RuntimeError::FailedPrecondition { kind, id, .. } => Status::with_error_details_vec(
            Code::FailedPrecondition,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("kind".to_owned(), kind.as_str().to_owned()),
                    ("id".to_owned(), id.clone()),
                ]),
            )],
        ),
        RuntimeError::ResourceExhausted { what, retry_after } => {
            let mut status = Status::with_error_details_vec(
                Code::ResourceExhausted,
                err.to_string(),
                [
                    error_info(
                        class,
                        HashMap::from([("resource".to_owned(), what.clone())]),
                    ),
                    ErrorDetail::RetryInfo(RetryInfo::new(Some(*retry_after))),
                ],
            );
            // Whole seconds, rounded up: retrying early only earns another refusal.
            let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                .max(1)
                .to_string();
            if let Ok(value) = secs.parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        RuntimeError::OutOfRange { after, oldest } => Status::with_error_details_vec(
            Code::OutOfRange,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("after_sequence".to_owned(), after.to_string()),
                    ("oldest_sequence".to_owned(), oldest.to_string()),
                ]),
            )],
        ),
        RuntimeError::SequenceAhead { after, newest } => Status::with_error_details_vec(
            Code::OutOfRange,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("after_sequence".to_owned(), after.to_string()),
                    ("newest_sequence".to_owned(), newest.to_string()),
                ]),
            )],
        ),
        RuntimeError::StreamClosed { last_sequence } => Status::with_error_details_vec(
            Code::Unavailable,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([("last_sequence".to_owned(), last_sequence.to_string())]),
            )],
        ),
        RuntimeError::SubscriberBehind { last_sequence } => Status::with_error_details_vec(
            Code::ResourceExhausted,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([("last_sequence".to_owned(), last_sequence.to_string())]),
            )],
        ),
        RuntimeError::Unavailable(_) => Status::with_error_details_vec(
            Code::Unavailable,
            err.to_string(),
            [error_info(class, HashMap::new())],
        ),
        RuntimeError::Store(source) if source.is_unavailable() => {
            tracing::warn!(error = %source, "store unavailable");
            Status::with_error_details_vec(
                Code::Unavailable,
                "the state store is unavailable; retry shortly (a write refused this way may have been stored: retry with the same idempotency key)",
                [error_info(class, HashMap::new())],
            )
        }
        RuntimeError::Store(source) => {
            // A store failure is our bug or our disk's problem: log it in
            // full, tell the client only that it happened.
            tracing::error!(error = %source, "store failure");
            Status::with_error_details_vec(
                Code::Internal,
                "internal error; see the server log",
                [error_info(class, HashMap::new())],
            )
        }
    }
}

/// `ErrorInfo.reason` of a refusal for missing or bad credentials.
pub const REASON_UNAUTHENTICATED: &str = "AuthenticationError";
/// `ErrorInfo.reason` of a refusal for a role that may not call the method.
pub const REASON_PERMISSION_DENIED: &str = "PermissionError";
/// `ErrorInfo.reason` of a refusal for a rate limit or quota.
pub const REASON_RATE_LIMITED: &str = "RateLimitError";

/// Maps a refusal of the access layer to its status: UNAUTHENTICATED, PERMISSION_DENIED or
/// RESOURCE_EXHAUSTED (with RetryInfo and `retry-after` for a rate), each with ErrorInfo.
/// Never names the credentials presented.
pub fn access_status(err: &AccessError) -> Status {
    let info = |reason: &str, metadata: Vec<(&str, String)>| -> ErrorDetail {
        ErrorInfo::new(
            reason,
            ERROR_DOMAIN,
            metadata
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<HashMap<_, _>>(),
        )
        .into()
    };
    match err {
        AccessError::Unauthenticated(failure) => {
            let message = match failure {
                AuthFailure::Missing => {
                    "authentication required: send an api key as `authorization: Bearer <key>` \
                     (or `x-api-key`), or a client certificate"
                }
                AuthFailure::Malformed => "the api key header is malformed",
                AuthFailure::UnknownKey => "the api key is not valid",
                AuthFailure::UnknownCertificate => {
                    "the client certificate names no configured principal"
                }
                AuthFailure::UnverifiedForward => {
                    "the forwarded client identity did not verify (the replica's signature is wrong or more than a minute old)"
                }
            };
            Status::with_error_details_vec(
                Code::Unauthenticated,
                message,
                [info(
                    REASON_UNAUTHENTICATED,
                    vec![("cause", failure.cause().to_owned())],
                )],
            )
        }
        AccessError::PermissionDenied {
            method,
            role,
            required,
        } => Status::with_error_details_vec(
            Code::PermissionDenied,
            format!("{method} needs the {required} role; this principal is a {role}"),
            [info(
                REASON_PERMISSION_DENIED,
                vec![
                    ("method", method.clone()),
                    ("role", role.as_str().to_owned()),
                    ("required_role", required.as_str().to_owned()),
                ],
            )],
        ),
        AccessError::Limited(LimitExceeded::Rate { limit, retry_after }) => {
            let mut status = Status::with_error_details_vec(
                Code::ResourceExhausted,
                format!("rate limit {limit} exceeded; retry later"),
                [
                    info(REASON_RATE_LIMITED, vec![("limit", (*limit).to_owned())]),
                    ErrorDetail::RetryInfo(RetryInfo::new(Some(*retry_after))),
                ],
            );
            let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                .max(1)
                .to_string();
            if let Ok(value) = secs.parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        AccessError::Limited(LimitExceeded::Streams { max }) => Status::with_error_details_vec(
            Code::ResourceExhausted,
            format!("too many open streams: at most {max} per principal"),
            [
                info(
                    REASON_RATE_LIMITED,
                    vec![
                        ("limit", "max_streams".to_owned()),
                        ("max", max.to_string()),
                    ],
                ),
                ErrorDetail::RetryInfo(RetryInfo::new(Some(std::time::Duration::from_secs(1)))),
            ],
        ),
    }
}

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Self {
        to_status(err)
    }
}

/// The canonical name of a gRPC code (`NOT_FOUND`), as the CLI prints it and
/// audit events record it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tonic_types::StatusExt;

    use super::to_status;
    use crate::model::{TaskStatus, TransitionError, ValidationError};
    use crate::runtime::{ObjectKind, RuntimeError};
    use crate::store::StoreError;

    /// The error -> status table: every runtime error variant, its code and
    /// the seed error class sent as ErrorInfo.reason.
    #[test]
    fn error_to_status_table() {
        let cases: Vec<(RuntimeError, Code, &str)> = vec![
            (
                ValidationError::single("progress", "must be within [0, 1]").into(),
                Code::InvalidArgument,
                "ValidationError",
            ),
            (
                RuntimeError::task_not_found("t1"),
                Code::NotFound,
                "TaskError",
            ),
            (
                RuntimeError::workflow_not_found("w1", Some("1.0.0")),
                Code::NotFound,
                "WorkflowError",
            ),
            (
                RuntimeError::AlreadyExists {
                    kind: ObjectKind::Task,
                    id: "t1".into(),
                    reason: "other body".into(),
                },
                Code::AlreadyExists,
                "TaskError",
            ),
            (
                RuntimeError::IllegalTransition {
                    task_id: "t1".into(),
                    source: TransitionError {
                        from: TaskStatus::Pending,
                        to: TaskStatus::Retrying,
                    },
                },
                Code::FailedPrecondition,
                "TaskError",
            ),
            (
                RuntimeError::FailedPrecondition {
                    kind: ObjectKind::Workflow,
                    id: "w1".into(),
                    reason: "busy".into(),
                },
                Code::FailedPrecondition,
                "WorkflowError",
            ),
            (
                RuntimeError::ResourceExhausted {
                    what: "task queue".into(),
                    retry_after: Duration::from_secs(2),
                },
                Code::ResourceExhausted,
                "RuntimeError",
            ),
            (
                RuntimeError::OutOfRange {
                    after: 3,
                    oldest: 10,
                },
                Code::OutOfRange,
                "RuntimeError",
            ),
            (
                RuntimeError::SequenceAhead {
                    after: 9,
                    newest: 4,
                },
                Code::OutOfRange,
                "RuntimeError",
            ),
            (
                RuntimeError::StreamClosed { last_sequence: 7 },
                Code::Unavailable,
                "RuntimeError",
            ),
            (
                RuntimeError::SubscriberBehind { last_sequence: 7 },
                Code::ResourceExhausted,
                "RuntimeError",
            ),
            (
                RuntimeError::Unavailable("shutting down".into()),
                Code::Unavailable,
                "RuntimeError",
            ),
            (
                StoreError::Unavailable("disk on fire at /secret/path".into()).into(),
                Code::Internal,
                "RuntimeError",
            ),
        ];
        for (err, code, reason) in cases {
            let shown = err.to_string();
            let status = to_status(err);
            assert_eq!(status.code(), code, "{shown}");
            let info = status
                .get_details_error_info()
                .unwrap_or_else(|| panic!("{shown}: no ErrorInfo"));
            assert_eq!(info.reason, reason, "{shown}");
            assert_eq!(info.domain, super::ERROR_DOMAIN);
        }
    }

    #[test]
    fn many_violations_stay_small_enough_for_headers() {
        let mut err = ValidationError::default();
        for i in 0..3000 {
            err.push(format!("tags[{i}]"), "x".repeat(10_000));
        }
        let status = to_status(err.into());
        assert!(
            status.message().len() <= super::MAX_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(
            status.message().contains("and 2980 more"),
            "{}",
            status.message()
        );
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest attached");
        assert_eq!(bad.field_violations.len(), super::MAX_VIOLATIONS_SENT);
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );
    }

    #[test]
    fn invalid_argument_lists_every_field() {
        let mut err = ValidationError::single("name", "must not be empty");
        err.push("progress", "must be within [0, 1]");
        let status = to_status(err.into());
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("BadRequest attached")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["name", "progress"]);
    }

    #[test]
    fn transition_error_names_both_states() {
        let status = to_status(RuntimeError::IllegalTransition {
            task_id: "t1".into(),
            source: TransitionError {
                from: TaskStatus::Completed,
                to: TaskStatus::Running,
            },
        });
        assert!(
            status.message().contains("completed"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("running"), "{}", status.message());
    }

    #[test]
    fn internal_errors_hide_details_and_exhaustion_says_when_to_retry() {
        let status =
            to_status(StoreError::Unavailable("disk on fire at /secret/path".into()).into());
        assert!(!status.message().contains("/secret/path"));
        let status = to_status(RuntimeError::ResourceExhausted {
            what: "task queue".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        assert!(status.get_details_retry_info().is_some());
    }
}
