// The SDK's one error type: every RPC error (and every argument the SDK refuses before sending)
// is thrown as a ComfyRealityError, with the server's google.rpc details decoded.
import { Code, ConnectError } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** One invalid field of a request, from `google.rpc.BadRequest`. */
export interface FieldViolation {
  /** The field's path, e.g. `workflow_json["3"].inputs.images` or `overrides["3"].seed`. */
  field: string;
  /** What is wrong with it. */
  description: string;
}

/** Options of {@link ComfyRealityError}'s constructor. */
export interface ComfyRealityErrorInit {
  /** The error class (`ErrorInfo.reason`), e.g. "ValidationError", "TaskError". */
  reason?: string | undefined;
  /** `ErrorInfo.metadata`, e.g. `last_sequence` on a dropped event stream. */
  metadata?: Record<string, string> | undefined;
  fieldViolations?: FieldViolation[] | undefined;
  retryAfterMs?: number | undefined;
  cause?: unknown;
}

/**
 * An error from comfy-reality: `code` is the gRPC status code (connect's `Code`), `reason` the
 * server's error class from `google.rpc.ErrorInfo`, `fieldViolations` the
 * `google.rpc.BadRequest` entries of an INVALID_ARGUMENT, and `retryAfterMs` when to retry a
 * RESOURCE_EXHAUSTED (from `google.rpc.RetryInfo`, else the `retry-after` header).
 */
export class ComfyRealityError extends Error {
  override readonly name = "ComfyRealityError";
  /** The gRPC status code. */
  readonly code: Code;
  /** The error class from `google.rpc.ErrorInfo.reason`; empty when the server sent none. */
  readonly reason: string;
  /** `google.rpc.ErrorInfo.metadata` (e.g. `last_sequence`, `oldest_sequence`). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The invalid fields of an INVALID_ARGUMENT, each with its path and what is wrong. */
  readonly fieldViolations: readonly FieldViolation[];
  /** How long to wait before retrying, in milliseconds, when the server said. */
  readonly retryAfterMs: number | undefined;
  /** The server's message, without the code in front. */
  readonly rawMessage: string;

  constructor(code: Code, message: string, init: ComfyRealityErrorInit = {}) {
    super(`[${Code[code]}] ${message}`, { cause: init.cause });
    this.code = code;
    this.rawMessage = message;
    this.reason = init.reason ?? "";
    this.metadata = init.metadata ?? {};
    this.fieldViolations = init.fieldViolations ?? [];
    this.retryAfterMs = init.retryAfterMs;
  }

  /**
   * Converts anything an RPC threw into a ComfyRealityError (returned as is when it already is
   * one), decoding the `grpc-status-details-bin` details.
   */
  static from(error: unknown): ComfyRealityError {
    if (error instanceof ComfyRealityError) {
      return error;
    }
    const connectError = ConnectError.from(error);
    const info = connectError.findDetails(ErrorInfoSchema)[0];
    const fieldViolations = connectError
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) => badRequest.fieldViolations)
      .map(({ field, description }) => ({ field, description }));
    return new ComfyRealityError(connectError.code, connectError.rawMessage, {
      reason: info?.reason,
      metadata: info ? { ...info.metadata } : undefined,
      fieldViolations,
      retryAfterMs: retryAfterMs(connectError),
      cause: error,
    });
  }
}

/** RetryInfo's delay, else the `retry-after` header (seconds), in milliseconds. */
function retryAfterMs(error: ConnectError): number | undefined {
  const delay = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
  if (delay) {
    return Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6);
  }
  const header = error.metadata.get("retry-after");
  if (header !== null) {
    const seconds = Number(header.trim());
    if (header.trim() !== "" && Number.isFinite(seconds) && seconds >= 0) {
      return seconds * 1000;
    }
  }
  return undefined;
}

/** A request argument the SDK refuses before sending: INVALID_ARGUMENT naming the field. */
export function invalidArgument(field: string, description: string): ComfyRealityError {
  return new ComfyRealityError(Code.InvalidArgument, `${field}: ${description}`, {
    reason: "ValidationError",
    fieldViolations: [{ field, description }],
  });
}
