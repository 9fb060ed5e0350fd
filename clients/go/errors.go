package comfyreality

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Error is an error the server answered with: its gRPC code and message plus the
// google.rpc details it carried (ErrorInfo, BadRequest, RetryInfo). Every method of
// [Client] returns server errors as *Error; reach it with errors.As or the Is* helpers.
type Error struct {
	// Code is the gRPC status code (codes.NotFound, codes.InvalidArgument, ...).
	Code codes.Code
	// Message is the status message.
	Message string
	// Reason is google.rpc.ErrorInfo's reason: the error class ("ValidationError",
	// "TaskError", "WorkflowError", "ConfigurationError", "RuntimeError"); empty without one.
	Reason string
	// Domain is google.rpc.ErrorInfo's domain.
	Domain string
	// Metadata is google.rpc.ErrorInfo's metadata (e.g. "last_sequence" on a stream that ended
	// early, "oldest_sequence" on OUT_OF_RANGE).
	Metadata map[string]string
	// FieldViolations are google.rpc.BadRequest's, one per bad field (INVALID_ARGUMENT).
	FieldViolations []FieldViolation
	// RetryAfter is when to try again (google.rpc.RetryInfo, else the retry-after header);
	// zero when the server did not say.
	RetryAfter time.Duration

	status *status.Status
}

// FieldViolation names one bad field of a request.
type FieldViolation struct {
	// Field is the field's path, e.g. `workflow_json["3"].inputs.images` or
	// `overrides["3"].seed`.
	Field string
	// Description says what is wrong with it.
	Description string
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "comfyreality: %s: %s", e.Code, e.Message)
	for _, v := range e.FieldViolations {
		if !strings.Contains(e.Message, v.Description) {
			fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
		}
	}
	return b.String()
}

// GRPCStatus returns the gRPC status the error was made from, so status.FromError and
// status.Code work on it too.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Is reports whether target is an *Error with the same code (errors.Is(err,
// &comfyreality.Error{Code: codes.NotFound})).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// FromError turns a gRPC error into an *Error, decoding its google.rpc details. It returns
// nil for nil, err itself when it already is an *Error, and nil when err carries no gRPC
// status (a local error).
func FromError(err error) *Error {
	return fromError(err, nil)
}

// fromError is FromError with the call's response metadata (headers and trailers), which may
// carry a retry-after header.
func fromError(err error, md metadata.MD) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	e = &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
			e.Domain = d.GetDomain()
			e.Metadata = d.GetMetadata()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{
					Field:       v.GetField(),
					Description: v.GetDescription(),
				})
			}
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil {
				e.RetryAfter = delay.AsDuration()
			}
		}
	}
	if e.RetryAfter == 0 {
		for _, value := range md.Get("retry-after") {
			if seconds, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil && seconds > 0 {
				e.RetryAfter = time.Duration(seconds * float64(time.Second))
				break
			}
		}
	}
	return e
}

// wrapError returns err as an *Error when it carries a gRPC status, else unchanged.
func wrapError(err error, md metadata.MD) error {
	if e := fromError(err, md); e != nil {
		return e
	}
	return err
}

// Code returns the gRPC code of err: its *Error's or status's code, codes.OK for nil and
// codes.Unknown for an error that carries none.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// IsNotFound reports whether err is NOT_FOUND (an unknown execution, task or workflow id).
func IsNotFound(err error) bool { return Code(err) == codes.NotFound }

// IsInvalidArgument reports whether err is INVALID_ARGUMENT (see [Error.FieldViolations]).
func IsInvalidArgument(err error) bool { return Code(err) == codes.InvalidArgument }

// IsAlreadyExists reports whether err is ALREADY_EXISTS (an idempotency key reused with another
// body).
func IsAlreadyExists(err error) bool { return Code(err) == codes.AlreadyExists }

// IsResourceExhausted reports whether err is RESOURCE_EXHAUSTED (a full queue: see
// [Error.RetryAfter]).
func IsResourceExhausted(err error) bool { return Code(err) == codes.ResourceExhausted }

// IsUnavailable reports whether err is UNAVAILABLE (the server is shutting down or
// unreachable).
func IsUnavailable(err error) bool { return Code(err) == codes.Unavailable }

// IsFailedPrecondition reports whether err is FAILED_PRECONDITION (an illegal state
// transition, an artifact no longer on disk).
func IsFailedPrecondition(err error) bool { return Code(err) == codes.FailedPrecondition }

// IsOutOfRange reports whether err is OUT_OF_RANGE (a sequence no longer retained).
func IsOutOfRange(err error) bool { return Code(err) == codes.OutOfRange }

// IsUnauthenticated reports whether err is UNAUTHENTICATED (a missing or wrong API key).
func IsUnauthenticated(err error) bool { return Code(err) == codes.Unauthenticated }

// IsPermissionDenied reports whether err is PERMISSION_DENIED.
func IsPermissionDenied(err error) bool { return Code(err) == codes.PermissionDenied }

// IsDeadlineExceeded reports whether err is DEADLINE_EXCEEDED.
func IsDeadlineExceeded(err error) bool { return Code(err) == codes.DeadlineExceeded }

// IsCanceled reports whether err is CANCELLED (the call's context was cancelled).
func IsCanceled(err error) bool { return Code(err) == codes.Canceled }
