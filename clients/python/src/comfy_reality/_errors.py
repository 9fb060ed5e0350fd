"""Errors: every failed RPC becomes a ComfyRealityError (or one of its subclasses by status code),
with the google.rpc details the server sends in `grpc-status-details-bin` decoded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AlreadyExistsError",
    "ComfyRealityError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]

_DETAILS_KEY = "grpc-status-details-bin"


class ComfyRealityError(Exception):
    """A failed call to comfy-reality.

    Attributes:
        code: the gRPC status code.
        message: the server's message.
        reason: the `google.rpc.ErrorInfo` reason: the error class ("ValidationError",
            "TaskError", ...), or None when the server sent none.
        metadata: the ErrorInfo metadata (e.g. `last_sequence` on a dropped event stream).
        field_violations: `(field path, description)` pairs from `google.rpc.BadRequest`
            (INVALID_ARGUMENT).
        retry_after: seconds to wait before retrying (`google.rpc.RetryInfo`, else the
            `retry-after` header), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[tuple[str, str]] = list(field_violations)
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.field_violations:
            text += "".join(f"\n  {field}: {description}" for field, description in self.field_violations)
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"reason={self.reason!r}, field_violations={self.field_violations!r}, "
            f"retry_after={self.retry_after!r})"
        )


class InvalidArgumentError(ComfyRealityError):
    """INVALID_ARGUMENT: the request was rejected; `field_violations` says where and why."""


class NotFoundError(ComfyRealityError):
    """NOT_FOUND: no such execution, task, workflow or artifact."""


class AlreadyExistsError(ComfyRealityError):
    """ALREADY_EXISTS: e.g. an idempotency key reused with another body."""


class ResourceExhaustedError(ComfyRealityError):
    """RESOURCE_EXHAUSTED: the queue is full or a rate limit hit; see `retry_after`."""


class FailedPreconditionError(ComfyRealityError):
    """FAILED_PRECONDITION: the object is not in a state that allows the call."""


class UnavailableError(ComfyRealityError):
    """UNAVAILABLE: the server cannot be reached or is shutting down."""


class PermissionDeniedError(ComfyRealityError):
    """PERMISSION_DENIED."""


class UnauthenticatedError(ComfyRealityError):
    """UNAUTHENTICATED: the API key is missing or wrong."""


class DeadlineExceededError(ComfyRealityError, TimeoutError):
    """DEADLINE_EXCEEDED: the call (or `wait`) ran out of time."""


_BY_CODE: dict[grpc.StatusCode, type[ComfyRealityError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def error_class(code: grpc.StatusCode) -> type[ComfyRealityError]:
    """The exception class raised for `code`."""
    return _BY_CODE.get(code, ComfyRealityError)


def _metadata_value(metadata: object, key: str) -> str | bytes | None:
    """Looks `key` up in call metadata (a sequence of pairs, or grpc.aio.Metadata)."""
    if metadata is None:
        return None
    try:
        pairs = list(metadata)  # type: ignore[call-overload]
    except TypeError:
        return None
    for pair in pairs:
        if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == key:
            value = pair[1]
            if isinstance(value, (str, bytes)):
                return value
    return None


def from_rpc_error(error: grpc.RpcError) -> ComfyRealityError:
    """Converts a grpc (sync or asyncio) RpcError into a ComfyRealityError subclass."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = details_fn() if callable(details_fn) else None
    if not isinstance(message, str):
        message = str(error)
    trailing_fn = getattr(error, "trailing_metadata", None)
    trailing = trailing_fn() if callable(trailing_fn) else None
    initial_fn = getattr(error, "initial_metadata", None)
    initial = initial_fn() if callable(initial_fn) else None

    reason: str | None = None
    info_metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    retry_after: float | None = None
    raw = _metadata_value(trailing, _DETAILS_KEY)
    if isinstance(raw, bytes):
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except Exception:  # a malformed trailer must not hide the error itself
            status = status_pb2.Status()
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason = info.reason or None
                info_metadata.update(info.metadata)
            elif detail.Unpack(bad_request):
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Unpack(retry) and retry.HasField("retry_delay"):
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    if retry_after is None:
        header = _metadata_value(trailing, "retry-after") or _metadata_value(initial, "retry-after")
        if isinstance(header, bytes):
            header = header.decode("ascii", "replace")
        if header is not None:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
    return error_class(code)(
        message,
        code=code,
        reason=reason,
        metadata=info_metadata,
        field_violations=violations,
        retry_after=retry_after,
    )
