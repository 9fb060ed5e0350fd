// The client's side of the protocol against a scripted in-process gRPC server (connect-node):
// the API key header, error details (ErrorInfo, BadRequest, RetryInfo, retry-after), and the
// watch algorithm's resumption (after_sequence from the last event or heartbeat, the end at the
// root task's terminal event, giving up after repeated drops).
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { after, before, beforeEach, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  ComfyRealityError,
  EventSchema,
  EventService,
  ExecutionService,
  Health,
  HealthCheckResponse_ServingStatus,
  SubscribeEventsResponseSchema,
  TaskEventSchema,
  TaskEventType,
  TaskStatus,
  WorkflowExecutionSchema,
  createClient,
  type ComfyRealityClient,
  type SubscribeEventsRequest,
  type SubscribeEventsResponse,
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "@comfy-reality/client";

const ROOT = "root-task";

/** What one SubscribeEvents call does: send these items, then fail with this error (or end). */
interface Script {
  items: SubscribeEventsResponse[];
  error?: ConnectError;
}

let scripts: Script[] = [];
let requests: SubscribeEventsRequest[] = [];
let authorization: (string | null)[] = [];
let status = TaskStatus.RUNNING;
/** Resolves when a stream that stayed open sees its client go away. */
let streamLeft: Promise<void>;
let markStreamLeft: () => void;

function event(sequence: number, taskId: string, type: TaskEventType): SubscribeEventsResponse {
  return create(SubscribeEventsResponseSchema, {
    item: {
      case: "event",
      value: create(EventSchema, {
        sequence: BigInt(sequence),
        executionId: "exec",
        taskId,
        node: taskId !== ROOT,
        payload: {
          case: "taskEvent",
          value: create(TaskEventSchema, { taskId, eventType: type, sequence: BigInt(sequence) }),
        },
      }),
    },
  });
}

function heartbeat(lastSequence: number): SubscribeEventsResponse {
  return create(SubscribeEventsResponseSchema, {
    item: { case: "heartbeat", value: { lastSequence: BigInt(lastSequence) } },
  });
}

function routes(router: ConnectRouter): void {
  router.service(Health, {
    check(request, context) {
      authorization.push(context.requestHeader.get("authorization"));
      if (request.service === "busy") {
        throw new ConnectError("queue full", Code.ResourceExhausted, { "retry-after": "3" }, [
          { desc: ErrorInfoSchema, value: { reason: "QueueFullError", domain: "test" } },
        ]);
      }
      if (request.service === "retry-info") {
        throw new ConnectError("rate limited", Code.ResourceExhausted, undefined, [
          { desc: RetryInfoSchema, value: { retryDelay: { seconds: 1n, nanos: 500_000_000 } } },
        ]);
      }
      if (request.service === "bad") {
        throw new ConnectError("invalid argument", Code.InvalidArgument, undefined, [
          { desc: ErrorInfoSchema, value: { reason: "ValidationError" } },
          {
            desc: BadRequestSchema,
            value: {
              fieldViolations: [
                { field: "a.b", description: "is wrong" },
                { field: "c", description: "is missing" },
              ],
            },
          },
        ]);
      }
      return { status: HealthCheckResponse_ServingStatus.NOT_SERVING };
    },
  });
  router.service(ExecutionService, {
    getExecution(request) {
      return {
        execution: create(WorkflowExecutionSchema, { id: request.id, status, rootTaskId: ROOT }),
      };
    },
  });
  router.service(EventService, {
    async *subscribeEvents(request, context) {
      requests.push(request);
      const script = scripts.shift() ?? { items: [] };
      for (const item of script.items) yield item;
      if (script.error) throw script.error;
      // Without an error, stay open like an idle live stream until the client leaves.
      await new Promise<void>((done) =>
        context.signal.addEventListener("abort", () => done(), { once: true }),
      );
      markStreamLeft();
    },
  });
}

let server: http2.Http2Server;
let client: ComfyRealityClient;

before(async () => {
  server = http2.createServer(connectNodeAdapter({ routes }));
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const address = server.address();
  assert.ok(address !== null && typeof address === "object");
  client = createClient({ address: `http://127.0.0.1:${address.port}`, apiKey: "s3cret" });
});

after(async () => {
  client?.close();
  await new Promise<void>((done) => server.close(() => done()));
});

beforeEach(() => {
  scripts = [];
  requests = [];
  authorization = [];
  status = TaskStatus.RUNNING;
  streamLeft = new Promise((done) => (markStreamLeft = done));
});

test("the API key goes out as a bearer token; the status comes back by name", async () => {
  assert.equal(await client.health(), "NOT_SERVING");
  assert.deepEqual(authorization, ["Bearer s3cret"]);
});

test("ErrorInfo, BadRequest, RetryInfo and retry-after decode", async () => {
  await assert.rejects(client.health("bad"), (error: unknown) => {
    assert.ok(error instanceof ComfyRealityError);
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, "ValidationError");
    assert.deepEqual(error.fieldViolations, [
      { field: "a.b", description: "is wrong" },
      { field: "c", description: "is missing" },
    ]);
    return true;
  });
  await assert.rejects(client.health("busy"), (error: unknown) => {
    assert.ok(error instanceof ComfyRealityError);
    assert.equal(error.code, Code.ResourceExhausted);
    assert.equal(error.reason, "QueueFullError");
    assert.equal(error.retryAfterMs, 3000);
    return true;
  });
  await assert.rejects(client.health("retry-info"), (error: unknown) => {
    assert.ok(error instanceof ComfyRealityError);
    assert.equal(error.retryAfterMs, 1500);
    assert.equal(error.reason, "");
    return true;
  });
});

test("watch resumes after the last event or heartbeat and ends at the root task's end", async () => {
  scripts = [
    {
      items: [event(5, "node-1", TaskEventType.STARTED), heartbeat(7)],
      error: new ConnectError("shutting down", Code.Unavailable),
    },
    {
      items: [event(8, "node-1", TaskEventType.PROGRESS)],
      error: new ConnectError("subscriber behind", Code.ResourceExhausted, undefined, [
        { desc: ErrorInfoSchema, value: { reason: "TaskError", metadata: { last_sequence: "8" } } },
      ]),
    },
    {
      items: [
        event(9, "node-1", TaskEventType.COMPLETED),
        event(10, ROOT, TaskEventType.COMPLETED),
        event(11, "node-2", TaskEventType.STARTED),
      ],
    },
  ];
  const sequences: bigint[] = [];
  for await (const item of client.watch("exec")) sequences.push(item.sequence);
  assert.deepEqual(sequences, [5n, 8n, 9n, 10n]);
  assert.deepEqual(
    requests.map((request) => request.afterSequence),
    [undefined, 7n, 8n],
  );
  for (const request of requests) {
    assert.deepEqual(request.executionIds, ["exec"]);
    assert.equal(request.includeNodeEvents, true);
  }
});

test("watch of a finished execution yields nothing", async () => {
  status = TaskStatus.FAILED;
  scripts = [{ items: [event(3, ROOT, TaskEventType.CREATED)] }];
  const items = [];
  for await (const item of client.watch("exec")) items.push(item);
  assert.deepEqual(items, []);
  assert.equal(requests.length, 1, "the subscription opened before the status was read");
});

test("watch gives up after repeated drops with the last error", async () => {
  scripts = Array.from({ length: 10 }, () => ({
    items: [],
    error: new ConnectError("backend gone", Code.Unavailable),
  }));
  await assert.rejects(
    (async () => {
      for await (const _ of client.watch("exec"));
    })(),
    (error: unknown) => {
      assert.ok(error instanceof ComfyRealityError);
      assert.equal(error.code, Code.Unavailable);
      assert.match(error.message, /backend gone/);
      return true;
    },
  );
  assert.equal(requests.length, 6, "the first stream and five reconnects");
});

test("watch does not retry an answer such as NOT_FOUND", async () => {
  scripts = [{ items: [], error: new ConnectError("execution exec not found", Code.NotFound) }];
  // GetExecution answers first here, so script the stream to fail after the headers.
  await assert.rejects(
    (async () => {
      for await (const _ of client.watch("exec"));
    })(),
    (error: unknown) => error instanceof ComfyRealityError && error.code === Code.NotFound,
  );
  assert.equal(requests.length, 1);
});

test("wait gives up after timeoutMs with DEADLINE_EXCEEDED", async () => {
  // The stream stays open with nothing but a heartbeat: the execution never ends.
  scripts = [{ items: [heartbeat(1)] }];
  await assert.rejects(client.wait("exec", { timeoutMs: 200 }), (error: unknown) => {
    assert.ok(error instanceof ComfyRealityError);
    assert.equal(error.code, Code.DeadlineExceeded);
    assert.match(error.message, /execution exec did not end within 200 ms/);
    return true;
  });
  assert.equal(requests.length, 1, "no reconnect after the caller gave up");
});

test("a watch the caller leaves early closes its stream", async () => {
  scripts = [{ items: [event(1, "node-1", TaskEventType.STARTED), heartbeat(2)] }];
  for await (const item of client.watch("exec")) {
    assert.equal(item.sequence, 1n);
    break;
  }
  assert.equal(requests.length, 1);
  // The server sees the client leave (the abort reaches it over the network); a stream left
  // open would hang the test here.
  await streamLeft;
});
