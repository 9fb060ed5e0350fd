// Turns the SDK's friendly arguments (workflow objects and files, priority names, override values)
// into the generated request messages' fields. Pure: no I/O except reading a workflow file.
import { readFile } from "node:fs/promises";

import { create } from "@bufbuild/protobuf";

import {
  InputValueSchema,
  NodeOverridesSchema,
  WorkflowRefSchema,
  type InputValue,
  type NodeOverrides,
  type WorkflowRef,
} from "./gen/comfyreality/runtime/v1/execution_service_pb.js";
import { TaskPriority, TaskStatus } from "./gen/comfyreality/runtime/v1/task_pb.js";
import { invalidArgument } from "./errors.js";

/** A ComfyUI API-format graph: `{"NODE_ID": {"class_type": ..., "inputs": {...}}}`. */
export type WorkflowGraph = Record<string, unknown>;

/** A registered workflow, by id and (unset: the highest) version. */
export interface WorkflowRefInit {
  id: string;
  version?: string | undefined;
}

/**
 * What to execute: an API-format graph object, the path of a `.json` file holding one, or a
 * registered workflow (`{ workflowRef: { id, version? } }` or a generated `WorkflowRef`).
 */
export type WorkflowInput = WorkflowGraph | string | { workflowRef: WorkflowRefInit } | WorkflowRef;

/**
 * One override value. A `bigint` keeps 64-bit integers exact: at least 2^63 goes out as
 * `uint_value`, any other bigint as `int_value`; an integer `number` is `int_value`, any other
 * number `double_value`.
 */
export type OverrideValue = bigint | number | string | boolean;

/** Literal inputs to set for one execution: `{ [nodeId]: { [inputName]: value } }`. */
export type Overrides = Record<string, Record<string, OverrideValue>>;

/** A priority: `TaskPriority.HIGH`, or its name in any case, with or without `TASK_PRIORITY_`. */
export type PriorityInput = TaskPriority | "LOW" | "NORMAL" | "HIGH" | "CRITICAL" | (string & {});

/** A status: `TaskStatus.RUNNING`, or its name in any case, with or without `TASK_STATUS_`. */
export type StatusInput = TaskStatus | (string & {});

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

/** The request's `workflow` oneof. */
export type WorkflowOneof =
  | { case: "workflowRef"; value: WorkflowRef }
  | { case: "workflowJson"; value: string };

/** Resolves a {@link WorkflowInput} (reading a `.json` file) into the request's oneof. */
export async function workflowOneof(workflow: WorkflowInput): Promise<WorkflowOneof> {
  if (typeof workflow === "string") {
    return { case: "workflowJson", value: await readWorkflowFile(workflow) };
  }
  if (workflow === null || typeof workflow !== "object" || Array.isArray(workflow)) {
    throw invalidArgument(
      "workflow",
      "must be an API-format graph object, a .json file path or a { workflowRef }",
    );
  }
  if (isWorkflowRefMessage(workflow)) {
    return { case: "workflowRef", value: workflow };
  }
  const ref = (workflow as { workflowRef?: unknown }).workflowRef;
  if (ref !== undefined && Object.keys(workflow).length === 1) {
    if (ref === null || typeof ref !== "object" || typeof (ref as WorkflowRefInit).id !== "string") {
      throw invalidArgument("workflow_ref", "must be { id: string, version?: string }");
    }
    const { id, version } = ref as WorkflowRefInit;
    return {
      case: "workflowRef",
      value: create(WorkflowRefSchema, version === undefined ? { id } : { id, version }),
    };
  }
  return { case: "workflowJson", value: stringifyJson(workflow, "workflow") };
}

function isWorkflowRefMessage(value: object): value is WorkflowRef {
  return (value as { $typeName?: unknown }).$typeName === WorkflowRefSchema.typeName;
}

/**
 * Reads a workflow file and checks that it holds a JSON object; the text is sent as it is, so
 * every number in it (a seed of 18446744073709551615) stays exact.
 */
async function readWorkflowFile(path: string): Promise<string> {
  if (!path.toLowerCase().endsWith(".json")) {
    throw invalidArgument(
      "workflow",
      `a workflow given as a string is a file path ending in .json, not ${JSON.stringify(path)}`,
    );
  }
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw invalidArgument("workflow", `cannot read workflow file ${path}: ${String(error)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw invalidArgument("workflow", `workflow file ${path} is not valid JSON: ${why}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw invalidArgument(
      "workflow",
      `workflow file ${path} must hold a JSON object (an API-format graph)`,
    );
  }
  return text;
}

/**
 * JSON text of a value, like JSON.stringify, except that a `bigint` is written as its exact
 * digits (so a graph object can carry a seed above 2^53).
 */
export function stringifyJson(value: unknown, field: string): string {
  const out: string[] = [];
  const seen = new Set<object>();
  const write = (item: unknown, path: string): void => {
    if (typeof item === "bigint") {
      out.push(item.toString());
    } else if (typeof item === "number") {
      if (!Number.isFinite(item)) {
        throw invalidArgument(path, `${item} is not a finite number`);
      }
      out.push(JSON.stringify(item));
    } else if (typeof item === "string" || typeof item === "boolean" || item === null) {
      out.push(JSON.stringify(item));
    } else if (typeof item === "object") {
      if (seen.has(item)) {
        throw invalidArgument(path, "is circular");
      }
      seen.add(item);
      if (Array.isArray(item)) {
        out.push("[");
        item.forEach((element, index) => {
          if (index > 0) out.push(",");
          write(element === undefined ? null : element, `${path}[${index}]`);
        });
        out.push("]");
      } else {
        out.push("{");
        let first = true;
        for (const [key, element] of Object.entries(item)) {
          if (element === undefined || typeof element === "function") continue;
          if (!first) out.push(",");
          first = false;
          out.push(JSON.stringify(key), ":");
          write(element, `${path}[${JSON.stringify(key)}]`);
        }
        out.push("}");
      }
      seen.delete(item);
    } else {
      throw invalidArgument(path, `a ${typeof item} cannot be written as JSON`);
    }
  };
  write(value, field);
  return out.join("");
}

/** `TaskPriority.HIGH`, "HIGH", "high" or "TASK_PRIORITY_HIGH" -> `TaskPriority.HIGH`. */
export function toPriority(priority: PriorityInput): TaskPriority {
  return toEnum(TaskPriority, "TASK_PRIORITY_", priority, "priority") as TaskPriority;
}

/** `TaskStatus.RUNNING`, "RUNNING", "running" or "TASK_STATUS_RUNNING" -> `TaskStatus.RUNNING`. */
export function toStatus(status: StatusInput): TaskStatus {
  return toEnum(TaskStatus, "TASK_STATUS_", status, "statuses") as TaskStatus;
}

function toEnum(
  enumObject: Record<string, string | number>,
  prefix: string,
  value: number | string,
  field: string,
): number {
  const names = Object.keys(enumObject).filter(
    (key) => Number.isNaN(Number(key)) && key !== "UNSPECIFIED",
  );
  if (typeof value === "number") {
    if (typeof enumObject[value] === "string" && enumObject[value] !== "UNSPECIFIED") {
      return value;
    }
  } else {
    let name = value.trim().toUpperCase();
    if (name.startsWith(prefix)) name = name.slice(prefix.length);
    const number = enumObject[name];
    if (typeof number === "number" && name !== "UNSPECIFIED") {
      return number;
    }
  }
  throw invalidArgument(field, `${JSON.stringify(value)} is not one of ${names.join(", ")}`);
}

/** `{ node: { input: value } }` -> the request's typed `overrides` map. */
export function toOverrides(overrides: Overrides): { [node: string]: NodeOverrides } {
  const result: { [node: string]: NodeOverrides } = {};
  for (const [node, inputs] of Object.entries(overrides)) {
    if (inputs === null || typeof inputs !== "object" || Array.isArray(inputs)) {
      throw invalidArgument(
        `overrides[${JSON.stringify(node)}]`,
        "must be an object of input name -> value",
      );
    }
    const typed: { [input: string]: InputValue } = {};
    for (const [input, value] of Object.entries(inputs)) {
      typed[input] = toInputValue(value, `overrides[${JSON.stringify(node)}].${input}`);
    }
    result[node] = create(NodeOverridesSchema, { inputs: typed });
  }
  return result;
}

/** One override value -> its `InputValue`, exact for 64-bit integers given as bigint. */
export function toInputValue(value: OverrideValue, field = "value"): InputValue {
  switch (typeof value) {
    case "bigint":
      return create(InputValueSchema, { kind: integerKind(value, field) });
    case "number":
      if (!Number.isFinite(value)) {
        throw invalidArgument(field, `${value} is not a finite number`);
      }
      if (Number.isInteger(value)) {
        return create(InputValueSchema, { kind: integerKind(BigInt(value), field) });
      }
      return create(InputValueSchema, { kind: { case: "doubleValue", value } });
    case "string":
      return create(InputValueSchema, { kind: { case: "stringValue", value } });
    case "boolean":
      return create(InputValueSchema, { kind: { case: "boolValue", value } });
    default:
      throw invalidArgument(
        field,
        `a ${typeof value} is not an override value (bigint, number, string, boolean)`,
      );
  }
}

function integerKind(
  value: bigint,
  field: string,
): { case: "intValue"; value: bigint } | { case: "uintValue"; value: bigint } {
  if (value >= INT64_MIN && value <= INT64_MAX) {
    return { case: "intValue", value };
  }
  if (value > INT64_MAX && value <= UINT64_MAX) {
    return { case: "uintValue", value };
  }
  throw invalidArgument(field, `${value} does not fit in 64 bits`);
}
