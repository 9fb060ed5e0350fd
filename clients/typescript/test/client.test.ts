// The client against the real comfy-reality server and the fake ComfyUI, both started here on
// free ports: execute (object, file, overrides), watch, wait, download, cancel, list, errors,
// health, and a watch that survives its connection being cut.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { Socket, createServer, type Server } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  Code,
  ComfyRealityError,
  TaskEventType,
  TaskStatus,
  createClient,
  type ComfyRealityClient,
  type Event,
  type WorkflowExecution,
} from "@comfy-reality/client";

import { startFake, startServer, type Started } from "./harness.ts";

/** EmptyImage -> ImageInvert -> SaveImage: one small real PNG. */
function imageWorkflow(prefix: string): Record<string, unknown> {
  return {
    "1": {
      class_type: "EmptyImage",
      inputs: { width: 64, height: 48, batch_size: 1, color: 7691863 },
    },
    "2": { class_type: "ImageInvert", inputs: { image: ["1", 0] } },
    "3": { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: prefix } },
  };
}

/** One TestDelay node: `seconds` (× the fake's time scale 0.05) in `steps` progress steps. */
function delayWorkflow(seconds: number, steps: number, nonce = 0): Record<string, unknown> {
  return {
    "1": { class_type: "TestDelay", inputs: { seconds, steps, nonce } },
  };
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

function isRootEnd(event: Event, execution: WorkflowExecution, type: TaskEventType): boolean {
  return (
    event.payload.case === "taskEvent" &&
    event.payload.value.taskId === execution.rootTaskId &&
    event.payload.value.eventType === type
  );
}

/** Asserts the stream's sequences strictly increase (no duplicate, no reordering). */
function assertIncreasing(events: Event[]): void {
  for (let i = 1; i < events.length; i++) {
    assert.ok(
      events[i]!.sequence > events[i - 1]!.sequence,
      `sequence ${events[i]!.sequence} after ${events[i - 1]!.sequence}`,
    );
  }
}

let fake: Started;
let server: Started;
let client: ComfyRealityClient;

before(async () => {
  fake = await startFake();
  server = await startServer(fake.address);
  client = createClient({ address: server.address });
});

after(async () => {
  client?.close();
  await server?.stop();
  await fake?.stop();
});

test("health is SERVING", async () => {
  assert.equal(await client.health(), "SERVING");
  assert.equal(await client.health("comfyreality.runtime.v1.ExecutionService"), "SERVING");
});

test("execute an object, watch it to the end, download the artifact byte for byte", async () => {
  const prefix = `object-${randomUUID().slice(0, 8)}`;
  const queued = await client.execute(imageWorkflow(prefix), {
    priority: "high",
    tags: ["ts-sdk", "object"],
    name: "ts object",
  });
  assert.ok(queued.id);
  assert.ok(queued.rootTaskId);
  assert.deepEqual(queued.tags, ["object", "ts-sdk"]);

  const events = await collect(client.watch(queued.id));
  const done = await client.get(queued.id);
  assert.equal(done.status, TaskStatus.COMPLETED, done.error);
  if (events.length > 0) {
    // It may have ended before the watch began; then watch yields nothing.
    assertIncreasing(events);
    assert.ok(isRootEnd(events.at(-1)!, done, TaskEventType.COMPLETED));
  }

  assert.equal(done.artifacts.length, 1);
  const artifact = done.artifacts[0]!;
  const bytes = await client.download(done.id, artifact);
  // The fake saved it under <output>/<subfolder>/<filename>, subfolder as the outputs say.
  const outputs = JSON.parse(done.outputs) as Record<
    string,
    { images: { filename: string; subfolder: string }[] }
  >;
  const image = outputs["3"]!.images[0]!;
  assert.equal(image.filename, artifact);
  const written = await readFile(join(fake.dir, image.subfolder, image.filename));
  assert.ok(bytes.length > 8);
  assert.deepEqual(Buffer.from(bytes), written);
  assert.deepEqual([...bytes.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
});

test("execute from a .json file, watch a slow one from its start to COMPLETED", async () => {
  const path = join(fake.dir, "delay.json");
  await writeFile(path, JSON.stringify(delayWorkflow(4, 8)));
  const queued = await client.execute(path, { tags: ["ts-sdk", "file"] });
  const events = await collect(client.watch(queued.id));
  const done = await client.get(queued.id);
  assert.equal(done.status, TaskStatus.COMPLETED, done.error);
  // 4 s × 0.05 = 200 ms of progress: the watch saw the node run and the root task end last.
  assertIncreasing(events);
  assert.ok(isRootEnd(events.at(-1)!, done, TaskEventType.COMPLETED));
  assert.ok(events.some((event) => event.node), "node events are included");
  const progress = events.filter(
    (event) =>
      event.payload.case === "taskEvent" &&
      event.payload.value.eventType === TaskEventType.PROGRESS,
  );
  assert.ok(progress.length > 0, "progress events of the TestDelay node");
  // Nothing after the end: a second watch of the finished execution yields nothing.
  assert.deepEqual(await collect(client.watch(queued.id)), []);
});

test("wait returns the finished execution", async () => {
  const queued = await client.execute(delayWorkflow(1, 2));
  const done = await client.wait(queued.id, { timeoutMs: 30_000 });
  assert.equal(done.id, queued.id);
  assert.equal(done.status, TaskStatus.COMPLETED);
});

test("cancel a slow execution while it runs", async () => {
  // 3600 s × 0.05 = 3 minutes: it only ends this quickly because it is cancelled.
  const queued = await client.execute(delayWorkflow(3600, 1000), { tags: ["ts-sdk", "cancel"] });
  const events: Event[] = [];
  let cancelled: WorkflowExecution | undefined;
  for await (const event of client.watch(queued.id)) {
    events.push(event);
    if (
      cancelled === undefined &&
      event.payload.case === "taskEvent" &&
      event.payload.value.eventType === TaskEventType.PROGRESS
    ) {
      cancelled = await client.cancel(queued.id, "the test is done with it");
    }
  }
  assert.ok(cancelled, "the execution made progress before the cancel");
  const done = await client.get(queued.id);
  assert.equal(done.status, TaskStatus.CANCELLED);
  assert.ok(isRootEnd(events.at(-1)!, done, TaskEventType.CANCELLED));
  // Cancelling a finished execution returns it unchanged.
  assert.equal((await client.cancel(queued.id)).status, TaskStatus.CANCELLED);
});

test("an invalid workflow: INVALID_ARGUMENT with decoded field violations", async () => {
  const workflow = imageWorkflow("invalid");
  (workflow["3"] as { inputs: Record<string, unknown> }).inputs["images"] = ["9", 0];
  await assert.rejects(client.execute(workflow), (error: unknown) => {
    assert.ok(error instanceof ComfyRealityError, String(error));
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.reason, "ValidationError");
    assert.deepEqual(error.fieldViolations, [
      {
        field: 'workflow_json["3"].inputs.images',
        description: "node 3 input images links to missing node 9",
      },
    ]);
    return true;
  });
});

test("an unknown execution id: NOT_FOUND", async () => {
  const id = randomUUID();
  for (const call of [
    () => client.get(id),
    () => client.cancel(id),
    () => client.wait(id),
    () => collect(client.watch(id)),
    () => client.download(id, "x.png"),
  ]) {
    await assert.rejects(call(), (error: unknown) => {
      assert.ok(error instanceof ComfyRealityError, String(error));
      assert.equal(error.code, Code.NotFound);
      assert.match(error.message, new RegExp(id));
      assert.notEqual(error.reason, "");
      return true;
    });
  }
});

test("list goes over every page", async () => {
  const tag = `list-${randomUUID().slice(0, 8)}`;
  const created: string[] = [];
  for (let i = 0; i < 5; i++) {
    created.push((await client.execute(imageWorkflow(`list${i}`), { tags: [tag] })).id);
  }
  const listed = await collect(client.list({ tags: [tag], pageSize: 2 }));
  assert.deepEqual(
    listed.map((execution) => execution.id),
    created,
    "all five, oldest first, over three pages",
  );
  for (const id of created) await client.wait(id);
  const completed = await collect(client.list({ tags: [tag], status: "completed", pageSize: 2 }));
  assert.equal(completed.length, 5);
  assert.deepEqual(await collect(client.list({ tags: [tag], status: ["FAILED"] })), []);
});

test("overrides: a seed of 18446744073709551615 reaches ComfyUI exactly", async () => {
  const queued = await client.execute(delayWorkflow(0, 1), {
    overrides: { "1": { nonce: 18446744073709551615n, steps: 2 } },
    timeoutSeconds: 60,
    maxRetries: 0,
  });
  const done = await client.wait(queued.id, { timeoutMs: 30_000 });
  assert.equal(done.status, TaskStatus.COMPLETED, done.error);
  assert.ok(done.promptId, "the execution has a ComfyUI prompt id");
  const response = await fetch(new URL(`/history/${done.promptId}`, fake.address));
  assert.equal(response.status, 200);
  // Read as text: JSON.parse would round the number to a double.
  const history = await response.text();
  assert.match(history, /"nonce":\s*18446744073709551615[,}\s]/);
  assert.match(history, /"steps":\s*2[,}\s]/);
});

describe("a watch whose connection is cut", () => {
  let proxy: CuttableProxy;
  let proxied: ComfyRealityClient;

  before(async () => {
    const [host, port] = splitAddress(server.address);
    proxy = await CuttableProxy.start(host, port);
    proxied = createClient({ address: `127.0.0.1:${proxy.port}`, apiKey: "not-checked" });
  });
  after(async () => {
    proxied?.close();
    await proxy?.close();
  });

  test("resumes after the last sequence: no gap, no duplicate", async () => {
    const queued = await proxied.execute(delayWorkflow(20, 40), { tags: ["ts-sdk", "resume"] });
    const events: Event[] = [];
    let cuts = 0;
    for await (const event of proxied.watch(queued.id)) {
      events.push(event);
      const isProgress =
        event.payload.case === "taskEvent" &&
        event.payload.value.eventType === TaskEventType.PROGRESS;
      if (isProgress && cuts < 2 && events.length % 5 === 0) {
        proxy.cut();
        cuts += 1;
      }
    }
    assert.equal(cuts, 2, "the connection was cut twice while the node ran");
    assert.ok(proxy.connections >= 3, `reconnected (${proxy.connections} connections)`);
    const done = await client.get(queued.id);
    assert.equal(done.status, TaskStatus.COMPLETED, done.error);
    assertIncreasing(events);
    assert.ok(isRootEnd(events.at(-1)!, done, TaskEventType.COMPLETED));

    // The server's own history of this execution, from the first event the watch saw.
    const seen = events.map((event) => event.sequence);
    const listed = await listSequences(queued.id, seen[0]!, seen.at(-1)!);
    assert.deepEqual(seen, listed);
  });
});

/** The sequences of an execution's events in [from, to], read back with events(). */
async function listSequences(executionId: string, from: bigint, to: bigint): Promise<bigint[]> {
  const controller = new AbortController();
  const sequences: bigint[] = [];
  for await (const event of client.events({
    after: from - 1n,
    executionIds: [executionId],
    includeNodeEvents: true,
    signal: controller.signal,
  })) {
    if (event.sequence > to) break;
    sequences.push(event.sequence);
    if (event.sequence === to) break;
  }
  return sequences;
}

function splitAddress(address: string): [string, number] {
  const index = address.lastIndexOf(":");
  return [address.slice(0, index), Number(address.slice(index + 1))];
}

/** A TCP proxy to the server whose open connections can be cut (reset) at any moment. */
class CuttableProxy {
  /** How many client connections it accepted. */
  connections = 0;
  private readonly sockets = new Set<Socket>();
  private readonly server: Server;

  private constructor(
    private readonly host: string,
    private readonly upstreamPort: number,
  ) {
    this.server = createServer((socket) => this.accept(socket));
  }

  static async start(host: string, port: number): Promise<CuttableProxy> {
    const proxy = new CuttableProxy(host, port);
    await new Promise<void>((done) => proxy.server.listen(0, "127.0.0.1", done));
    return proxy;
  }

  get port(): number {
    const address = this.server.address();
    assert.ok(address !== null && typeof address === "object");
    return address.port;
  }

  private accept(socket: Socket): void {
    this.connections += 1;
    const upstream = new Socket();
    upstream.connect(this.upstreamPort, this.host);
    this.sockets.add(socket);
    this.sockets.add(upstream);
    socket.pipe(upstream);
    upstream.pipe(socket);
    const drop = (): void => {
      socket.destroy();
      upstream.destroy();
      this.sockets.delete(socket);
      this.sockets.delete(upstream);
    };
    for (const side of [socket, upstream]) {
      side.on("error", drop);
      side.on("close", drop);
    }
  }

  /** Resets every open connection, as a failing network would. */
  cut(): void {
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((done) => this.server.close(() => done()));
  }
}
