// The comfy-reality client: a thin layer over the generated service descriptors and connect's
// gRPC transport that turns friendly arguments into requests, every RPC error into a
// ComfyRealityError, paging into async iteration, and event streams into resumable ones.
import type * as http2 from "node:http2";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient as createConnectClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  EventService,
  SubscribeEventsRequestSchema,
  type Event,
} from "./gen/comfyreality/runtime/v1/event_service_pb.js";
import { EventCategory, LogLevel } from "./gen/comfyreality/runtime/v1/events_pb.js";
import {
  ExecuteWorkflowRequestSchema,
  ExecutionService,
} from "./gen/comfyreality/runtime/v1/execution_service_pb.js";
import {
  TaskEventType,
  TaskStatus,
  type TaskDependencySchema,
} from "./gen/comfyreality/runtime/v1/task_pb.js";
import type { WorkflowExecution } from "./gen/comfyreality/runtime/v1/workflow_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { ComfyRealityError, invalidArgument } from "./errors.js";
import {
  toOverrides,
  toPriority,
  toStatus,
  workflowOneof,
  type Overrides,
  type PriorityInput,
  type StatusInput,
  type WorkflowInput,
} from "./requests.js";

/** How to reach the server. */
export interface ClientOptions {
  /** `host:port` (plaintext unless `tls`), or a URL: `http://host:port`, `https://host:port`. */
  address: string;
  /** Sent as `authorization: Bearer <apiKey>` on every call. */
  apiKey?: string | undefined;
  /**
   * TLS: `true` for the system's trusted roots, or node's TLS options (`ca`, `cert`, `key`,
   * `servername`, ...). Unset: TLS when the address is an `https://` URL.
   */
  tls?: boolean | http2.SecureClientSessionOptions | undefined;
}

/** Options of {@link ComfyRealityClient.execute}. */
export interface ExecuteOptions {
  /** Unset means NORMAL. */
  priority?: PriorityInput | undefined;
  /** Tags of the execution's root task. */
  tags?: string[] | undefined;
  /** Literal inputs for this run only: `{ "3": { seed: 18446744073709551615n } }`. */
  overrides?: Overrides | undefined;
  /** Running-time limit in seconds; unset means the server's default. */
  timeoutSeconds?: number | undefined;
  /** Retries after a transient failure, 0 to 100; unset means the server's default. */
  maxRetries?: number | undefined;
  /** The same key with the same body returns the same execution. */
  idempotencyKey?: string | undefined;
  /** Name of the root task; unset means the workflow's name. */
  name?: string | undefined;
  /** Tasks this execution depends on. */
  dependencies?: MessageInitShape<typeof TaskDependencySchema>[] | undefined;
  signal?: AbortSignal | undefined;
}

/** Filters of {@link ComfyRealityClient.list}. */
export interface ListFilter {
  /** Only executions in one of these states (one state or several). */
  status?: StatusInput | StatusInput[] | undefined;
  /** Only executions whose root task has all of these tags. */
  tags?: string[] | undefined;
  /** Only executions of this workflow. */
  workflowId?: string | undefined;
  /** Executions fetched per call (the iteration still goes over every page). */
  pageSize?: number | undefined;
  signal?: AbortSignal | undefined;
}

/** Filters of {@link ComfyRealityClient.events}. Empty lists mean no filter. */
export interface EventsOptions {
  /** Resume after this sequence (the last one you saw); unset means from now on. */
  after?: bigint | number | undefined;
  taskIds?: string[] | undefined;
  executionIds?: string[] | undefined;
  workflowIds?: string[] | undefined;
  tags?: string[] | undefined;
  eventTypes?: TaskEventType[] | undefined;
  categories?: EventCategory[] | undefined;
  minLevel?: LogLevel | undefined;
  /** Whether events about single nodes of executions are wanted. */
  includeNodeEvents?: boolean | undefined;
  /** Ends the iteration (it then throws a CANCELED ComfyRealityError). */
  signal?: AbortSignal | undefined;
}

/** Options of {@link ComfyRealityClient.watch}. */
export interface WatchOptions {
  signal?: AbortSignal | undefined;
}

/** Options of {@link ComfyRealityClient.wait}. */
export interface WaitOptions {
  /** Give up after this long with DEADLINE_EXCEEDED (the execution goes on). */
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

/** The client returned by {@link createClient}. */
export interface ComfyRealityClient {
  /** Queues a workflow (a graph object, a `.json` file path, or a registered workflow). */
  execute(workflow: WorkflowInput, options?: ExecuteOptions): Promise<WorkflowExecution>;
  /** One execution with its tasks. */
  get(id: string): Promise<WorkflowExecution>;
  /** Every matching execution, oldest first, fetching page after page. */
  list(filter?: ListFilter): AsyncIterable<WorkflowExecution>;
  /** Cancels an execution; a finished one comes back unchanged. */
  cancel(id: string, reason?: string): Promise<WorkflowExecution>;
  /**
   * The execution's events (its root task's and its nodes'), from now until the event that
   * ends its root task, which is the last one yielded; nothing when it has already ended.
   * One server stream, resumed without gaps if it drops.
   */
  watch(id: string, options?: WatchOptions): AsyncIterable<Event>;
  /** Waits until the execution ends and returns it. */
  wait(id: string, options?: WaitOptions): Promise<WorkflowExecution>;
  /** One of the execution's artifacts (an entry of its `artifacts`), whole. */
  download(executionId: string, artifactPath: string): Promise<Uint8Array>;
  /** The matching events, resumed without gaps if the stream drops; never ends by itself. */
  events(options?: EventsOptions): AsyncIterable<Event>;
  /** The serving status name ("SERVING", "NOT_SERVING", ...) of a service ("" = the server). */
  health(service?: string): Promise<string>;
  /** Closes the connection; calls in flight fail. */
  close(): void;
}

/** Reconnects in a row, without a message in between, before a stream gives up. */
const MAX_RECONNECTS = 5;
const FIRST_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 2000;

const TERMINAL_STATUSES = new Set([
  TaskStatus.COMPLETED,
  TaskStatus.FAILED,
  TaskStatus.CANCELLED,
]);
const TERMINAL_EVENTS = new Set([
  TaskEventType.COMPLETED,
  TaskEventType.FAILED,
  TaskEventType.CANCELLED,
]);

/** Connects to a comfy-reality server (lazily: the connection opens on the first call). */
export function createClient(options: ClientOptions): ComfyRealityClient {
  return new Client(options);
}

class Client implements ComfyRealityClient {
  private readonly sessions: Http2SessionManager;
  private readonly executions;
  private readonly eventService;
  private readonly healthService;

  constructor(options: ClientOptions) {
    const { baseUrl, secure } = baseUrlOf(options.address, options.tls);
    const tlsOptions = typeof options.tls === "object" ? options.tls : {};
    this.sessions = new Http2SessionManager(baseUrl, undefined, secure ? tlsOptions : {});
    const interceptors: Interceptor[] = [];
    if (options.apiKey !== undefined) {
      const authorization = `Bearer ${options.apiKey}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", authorization);
        return next(request);
      });
    }
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.sessions,
      interceptors,
    });
    this.executions = createConnectClient(ExecutionService, transport);
    this.eventService = createConnectClient(EventService, transport);
    this.healthService = createConnectClient(Health, transport);
  }

  async execute(workflow: WorkflowInput, options: ExecuteOptions = {}): Promise<WorkflowExecution> {
    const request = create(ExecuteWorkflowRequestSchema, {
      workflow: await workflowOneof(workflow),
      tags: options.tags ?? [],
      overrides: options.overrides ? toOverrides(options.overrides) : {},
      dependencies: options.dependencies ?? [],
    });
    if (options.priority !== undefined) request.priority = toPriority(options.priority);
    if (options.timeoutSeconds !== undefined) request.timeoutSeconds = options.timeoutSeconds;
    if (options.maxRetries !== undefined) {
      if (!Number.isInteger(options.maxRetries) || options.maxRetries < 0) {
        throw invalidArgument("max_retries", `${options.maxRetries} is not a whole number >= 0`);
      }
      request.maxRetries = options.maxRetries;
    }
    if (options.idempotencyKey !== undefined) request.idempotencyKey = options.idempotencyKey;
    if (options.name !== undefined) request.name = options.name;
    const response = await rpc(() =>
      this.executions.executeWorkflow(request, withSignal(options.signal)),
    );
    return present(response.execution, "ExecuteWorkflow");
  }

  async get(id: string): Promise<WorkflowExecution> {
    const response = await rpc(() => this.executions.getExecution({ id }));
    return present(response.execution, "GetExecution");
  }

  async *list(filter: ListFilter = {}): AsyncIterable<WorkflowExecution> {
    const statuses =
      filter.status === undefined
        ? []
        : (Array.isArray(filter.status) ? filter.status : [filter.status]).map(toStatus);
    let pageToken = "";
    do {
      const page = await rpc(() =>
        this.executions.listExecutions(
          {
            statuses,
            tags: filter.tags ?? [],
            pageSize: filter.pageSize ?? 0,
            pageToken,
            ...(filter.workflowId === undefined ? {} : { workflowId: filter.workflowId }),
          },
          withSignal(filter.signal),
        ),
      );
      yield* page.executions;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  async cancel(id: string, reason?: string): Promise<WorkflowExecution> {
    const response = await rpc(() =>
      this.executions.cancelExecution(reason === undefined ? { id } : { id, reason }),
    );
    return present(response.execution, "CancelExecution");
  }

  async *watch(id: string, options: WatchOptions = {}): AsyncIterable<Event> {
    let rootTaskId: string | undefined;
    const endsExecution = (event: Event): boolean => {
      if (event.payload.case !== "taskEvent" || !TERMINAL_EVENTS.has(event.payload.value.eventType)) {
        return false;
      }
      // Without a root task id (never expected), the execution's own (non-node) task event.
      return rootTaskId !== undefined
        ? event.payload.value.taskId === rootTaskId
        : event.executionId === id && !event.node;
    };
    const stream = this.subscribe(
      { executionIds: [id], includeNodeEvents: true },
      options.signal,
      async () => {
        const execution = await this.get(id);
        rootTaskId = execution.rootTaskId;
        return TERMINAL_STATUSES.has(execution.status);
      },
    );
    for await (const event of stream) {
      yield event;
      if (endsExecution(event)) {
        return;
      }
    }
  }

  async wait(id: string, options: WaitOptions = {}): Promise<WorkflowExecution> {
    const signals: AbortSignal[] = [];
    if (options.signal) signals.push(options.signal);
    const timeout =
      options.timeoutMs === undefined ? undefined : AbortSignal.timeout(options.timeoutMs);
    if (timeout) signals.push(timeout);
    try {
      for await (const _ of this.watch(id, { signal: anySignal(signals) })) {
        // Only the end matters.
      }
    } catch (error) {
      if (timeout?.aborted) {
        throw new ComfyRealityError(
          Code.DeadlineExceeded,
          `execution ${id} did not end within ${options.timeoutMs} ms`,
          { cause: error },
        );
      }
      throw error;
    }
    return this.get(id);
  }

  async download(executionId: string, artifactPath: string): Promise<Uint8Array> {
    return rpc(async () => {
      const chunks: Uint8Array[] = [];
      let length = 0;
      let expected: bigint | undefined;
      for await (const chunk of this.executions.getArtifact({ executionId, path: artifactPath })) {
        if (chunk.size !== undefined && expected === undefined) expected = chunk.size;
        chunks.push(chunk.data);
        length += chunk.data.length;
      }
      if (expected !== undefined && BigInt(length) !== expected) {
        throw new ComfyRealityError(
          Code.DataLoss,
          `artifact ${artifactPath} of execution ${executionId}: got ${length} bytes of ${expected}`,
        );
      }
      const data = new Uint8Array(length);
      let offset = 0;
      for (const chunk of chunks) {
        data.set(chunk, offset);
        offset += chunk.length;
      }
      return data;
    });
  }

  events(options: EventsOptions = {}): AsyncIterable<Event> {
    return this.subscribe(
      {
        ...(options.after === undefined ? {} : { afterSequence: BigInt(options.after) }),
        taskIds: options.taskIds ?? [],
        executionIds: options.executionIds ?? [],
        workflowIds: options.workflowIds ?? [],
        tags: options.tags ?? [],
        eventTypes: options.eventTypes ?? [],
        categories: options.categories ?? [],
        includeNodeEvents: options.includeNodeEvents ?? false,
        ...(options.minLevel === undefined ? {} : { minLevel: options.minLevel }),
      },
      options.signal,
    );
  }

  async health(service = ""): Promise<string> {
    const response = await rpc(() => this.healthService.check({ service }));
    return HealthCheckResponse_ServingStatus[response.status] ?? String(response.status);
  }

  close(): void {
    this.sessions.abort();
  }

  /**
   * SubscribeEvents, resumed after the last sequence seen (event or heartbeat) whenever the
   * stream drops (UNAVAILABLE, a reset connection, RESOURCE_EXHAUSTED "subscriber behind", or an
   * early end), giving up after MAX_RECONNECTS failed reopens in a row. Yields events, not
   * heartbeats. `onOpen` runs once the first stream's headers arrived (and again after a reopen
   * that could not resume exactly); when it returns true the iteration ends.
   */
  private async *subscribe(
    filter: MessageInitShape<typeof SubscribeEventsRequestSchema>,
    signal: AbortSignal | undefined,
    onOpen?: () => Promise<boolean>,
  ): AsyncGenerator<Event, void, undefined> {
    let after = filter.afterSequence === undefined ? undefined : BigInt(filter.afterSequence);
    let checkPending = onOpen !== undefined;
    let failures = 0;
    for (;;) {
      const call = new AbortController();
      const stopCall = (): void => call.abort();
      signal?.addEventListener("abort", stopCall, { once: true });
      let lastError: ComfyRealityError;
      try {
        signal?.throwIfAborted();
        let opened!: () => void;
        const headers = new Promise<void>((resolve) => (opened = resolve));
        const request = create(SubscribeEventsRequestSchema, filter);
        if (after !== undefined) request.afterSequence = after;
        else delete request.afterSequence;
        const responses = this.eventService
          .subscribeEvents(request, { signal: call.signal, onHeader: () => opened() })
          [Symbol.asyncIterator]();
        let next = responses.next();
        // Settled later, when the stream is read (or never, when onOpen ends it).
        next.catch(() => undefined);
        await Promise.race([headers, next]);
        if (checkPending && onOpen) {
          if (await onOpen()) return;
          checkPending = false;
        }
        for (;;) {
          const result = await next;
          if (result.done) break;
          failures = 0;
          const item = result.value.item;
          if (item.case === "heartbeat") {
            if (after === undefined || item.value.lastSequence > after) {
              after = item.value.lastSequence;
            }
          } else if (item.case === "event") {
            after = item.value.sequence;
            yield item.value;
          }
          next = responses.next();
          next.catch(() => undefined);
        }
        lastError = new ComfyRealityError(Code.Unavailable, "the event stream ended early");
      } catch (error) {
        lastError = ComfyRealityError.from(error);
        if (signal?.aborted || !isDrop(lastError)) throw lastError;
      } finally {
        signal?.removeEventListener("abort", stopCall);
        call.abort();
      }
      failures += 1;
      if (failures > MAX_RECONNECTS) throw lastError;
      if (after === undefined) {
        // Nothing seen yet: resume where the server says it stopped, or check again.
        const lastSequence = lastError.metadata["last_sequence"];
        if (lastSequence !== undefined && /^\d+$/.test(lastSequence)) {
          after = BigInt(lastSequence);
        } else {
          checkPending = onOpen !== undefined;
        }
      }
      const backoff = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (failures - 1));
      await sleep(Math.max(backoff, lastError.retryAfterMs ?? 0), signal);
    }
  }
}

/** Whether a stream error is a dropped stream worth resuming (not an answer to the request). */
function isDrop(error: ComfyRealityError): boolean {
  switch (error.code) {
    case Code.Unavailable:
    case Code.ResourceExhausted:
    case Code.Aborted:
      return true;
    case Code.Internal:
    case Code.Unknown:
      // connect-node reports a reset connection or HTTP/2 stream this way.
      return /reset|ECONNRESET|GOAWAY|RST_STREAM|stream closed|socket hang up|EPIPE/i.test(
        error.rawMessage,
      );
    default:
      return false;
  }
}

function withSignal(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal === undefined ? {} : { signal };
}

/** Runs one RPC, throwing any error as a ComfyRealityError. */
async function rpc<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw ComfyRealityError.from(error);
  }
}

function present(execution: WorkflowExecution | undefined, method: string): WorkflowExecution {
  if (execution === undefined) {
    throw new ComfyRealityError(Code.Internal, `${method} answered without an execution`);
  }
  return execution;
}

function baseUrlOf(
  address: string,
  tls: ClientOptions["tls"],
): { baseUrl: string; secure: boolean } {
  const trimmed = address.trim();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed)) {
    const url = new URL(trimmed);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw invalidArgument("address", `${address}: the URL scheme must be http or https`);
    }
    const secure = tls === undefined ? url.protocol === "https:" : tls !== false;
    url.protocol = secure ? "https:" : "http:";
    return { baseUrl: url.toString().replace(/\/$/, ""), secure };
  }
  if (!/^(\[[0-9a-f:.]+\]|[^\s/:]+):\d+$/i.test(trimmed)) {
    throw invalidArgument("address", `${address} is neither host:port nor an http(s) URL`);
  }
  const secure = tls !== undefined && tls !== false;
  return { baseUrl: `${secure ? "https" : "http"}://${trimmed}`, secure };
}

function anySignal(signals: AbortSignal[]): AbortSignal | undefined {
  if (signals.length <= 1) return signals[0];
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(ComfyRealityError.from(signal.reason));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(ComfyRealityError.from(signal?.reason));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
