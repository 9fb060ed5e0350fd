// @comfy-reality/client: the TypeScript client of comfy-reality (see README.md).
export { Code } from "@connectrpc/connect";

export {
  createClient,
  type ClientOptions,
  type ComfyRealityClient,
  type EventsOptions,
  type ExecuteOptions,
  type ListFilter,
  type WaitOptions,
  type WatchOptions,
} from "./client.js";
export { ComfyRealityError, type ComfyRealityErrorInit, type FieldViolation } from "./errors.js";
export {
  stringifyJson,
  toInputValue,
  toOverrides,
  toPriority,
  toStatus,
  type OverrideValue,
  type Overrides,
  type PriorityInput,
  type StatusInput,
  type WorkflowGraph,
  type WorkflowInput,
  type WorkflowRefInit,
} from "./requests.js";

// The generated messages, enums and service descriptors of the API.
export * from "./gen/comfyreality/runtime/v1/admin_service_pb.js";
export * from "./gen/comfyreality/runtime/v1/config_pb.js";
export * from "./gen/comfyreality/runtime/v1/event_service_pb.js";
export * from "./gen/comfyreality/runtime/v1/events_pb.js";
export * from "./gen/comfyreality/runtime/v1/execution_service_pb.js";
export * from "./gen/comfyreality/runtime/v1/task_pb.js";
export * from "./gen/comfyreality/runtime/v1/task_service_pb.js";
export * from "./gen/comfyreality/runtime/v1/workflow_pb.js";
export * from "./gen/comfyreality/runtime/v1/workflow_service_pb.js";
export {
  Health,
  HealthCheckResponse_ServingStatus,
} from "./gen/grpc/health/v1/health_pb.js";
// google.rpc error details, for reading ComfyRealityError's cause by hand.
export * from "./gen/google/rpc/error_details_pb.js";
