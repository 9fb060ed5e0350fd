//! The one place runtime errors become `tonic::Status`: an exhaustive match
//! (no catch-all arm), each status carrying `google.rpc.ErrorInfo` with the
//! seed's error class and, for INVALID_ARGUMENT, `google.rpc.BadRequest`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{BadRequest, ErrorDetail, ErrorInfo, FieldViolation, RetryInfo, StatusExt};

use crate::model::ValidationError;
use crate::runtime::{ErrorClass, RuntimeError};

/// `google.rpc.ErrorInfo.domain` of every error this service raises.
pub const ERROR_DOMAIN: &str = "comfyreality.runtime.v1";

fn error_info(class: ErrorClass, metadata: HashMap<String, String>) -> ErrorDetail {
    ErrorInfo::new(class.as_str(), ERROR_DOMAIN, metadata).into()
}

/// INVALID_ARGUMENT with one BadRequest field violation per violated rule.
pub fn invalid_argument(err: &ValidationError) -> Status {
    let violations: Vec<FieldViolation> = err
        .violations
        .iter()
        .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
        .collect();
    let fields = err
        .violations
        .iter()
        .map(|v| v.field.as_str())
        .collect::<Vec<_>>()
        .join(",");
    Status::with_error_details_vec(
        Code::InvalidArgument,
        err.to_string(),
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
        RuntimeError::NotFound { kind, id } => Status::with_error_details_vec(
            Code::NotFound,
            err.to_string(),
            [error_info(
                class,
                HashMap::from([
                    ("kind".to_owned(), kind.as_str().to_owned()),
                    ("id".to_owned(), id.clone()),
                ]),
            )],
        ),
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
            let secs = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = secs.parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        RuntimeError::Unavailable(_) => Status::with_error_details_vec(
            Code::Unavailable,
            err.to_string(),
            [error_info(class, HashMap::new())],
        ),
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

impl From<RuntimeError> for Status {
    fn from(err: RuntimeError) -> Self {
        to_status(err)
    }
}
