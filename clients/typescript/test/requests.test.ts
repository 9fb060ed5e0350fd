// The SDK's argument conversions, without a server: override values keep their exact 64-bit
// type, priorities accept any spelling, workflows come from objects, files or references.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  Code,
  ComfyRealityError,
  TaskPriority,
  TaskStatus,
  createClient,
  stringifyJson,
  toInputValue,
  toOverrides,
  toPriority,
  toStatus,
} from "@comfy-reality/client";

describe("override values", () => {
  test("a bigint of 2^63 or more is uint_value, exactly", () => {
    assert.deepEqual(toInputValue(18446744073709551615n).kind, {
      case: "uintValue",
      value: 18446744073709551615n,
    });
    assert.deepEqual(toInputValue(2n ** 63n).kind, { case: "uintValue", value: 2n ** 63n });
  });

  test("any other bigint is int_value", () => {
    assert.deepEqual(toInputValue(2n ** 63n - 1n).kind, {
      case: "intValue",
      value: 2n ** 63n - 1n,
    });
    assert.deepEqual(toInputValue(-(2n ** 63n)).kind, { case: "intValue", value: -(2n ** 63n) });
  });

  test("an integer number is int_value, any other number double_value", () => {
    assert.deepEqual(toInputValue(42).kind, { case: "intValue", value: 42n });
    assert.deepEqual(toInputValue(-7).kind, { case: "intValue", value: -7n });
    assert.deepEqual(toInputValue(7.5).kind, { case: "doubleValue", value: 7.5 });
  });

  test("strings and booleans keep their type", () => {
    assert.deepEqual(toInputValue("a cat").kind, { case: "stringValue", value: "a cat" });
    assert.deepEqual(toInputValue(false).kind, { case: "boolValue", value: false });
  });

  test("values that cannot be sent are refused with their field path", () => {
    for (const bad of [2n ** 64n, -(2n ** 63n) - 1n, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(
        () => toOverrides({ "3": { seed: bad } }),
        (error: unknown) =>
          error instanceof ComfyRealityError &&
          error.code === Code.InvalidArgument &&
          error.fieldViolations[0]?.field === 'overrides["3"].seed',
      );
    }
  });

  test("overrides map node ids to typed inputs", () => {
    const overrides = toOverrides({ "3": { seed: 18446744073709551615n, cfg: 7.5 } });
    assert.deepEqual(Object.keys(overrides), ["3"]);
    assert.deepEqual(overrides["3"]?.inputs["seed"]?.kind, {
      case: "uintValue",
      value: 18446744073709551615n,
    });
    assert.deepEqual(overrides["3"]?.inputs["cfg"]?.kind, { case: "doubleValue", value: 7.5 });
  });
});

describe("enums", () => {
  test("a priority in any spelling", () => {
    assert.equal(toPriority("HIGH"), TaskPriority.HIGH);
    assert.equal(toPriority("high"), TaskPriority.HIGH);
    assert.equal(toPriority("Task_Priority_Critical"), TaskPriority.CRITICAL);
    assert.equal(toPriority(TaskPriority.LOW), TaskPriority.LOW);
    assert.throws(() => toPriority("urgent"), ComfyRealityError);
    assert.throws(() => toPriority("UNSPECIFIED"), ComfyRealityError);
    assert.throws(() => toPriority(99 as TaskPriority), ComfyRealityError);
  });

  test("a status in any spelling", () => {
    assert.equal(toStatus("running"), TaskStatus.RUNNING);
    assert.equal(toStatus("TASK_STATUS_COMPLETED"), TaskStatus.COMPLETED);
    assert.throws(() => toStatus("done"), ComfyRealityError);
  });
});

test("stringifyJson writes bigints as exact digits", () => {
  assert.equal(
    stringifyJson({ "1": { inputs: { seed: 18446744073709551615n, list: [1, "a", null] } } }, "w"),
    '{"1":{"inputs":{"seed":18446744073709551615,"list":[1,"a",null]}}}',
  );
  assert.throws(() => stringifyJson({ x: Number.NaN }, "w"), ComfyRealityError);
});

describe("workflow arguments refused before sending", () => {
  let dir: string;
  // Nothing listens there: a request that went out would fail with UNAVAILABLE instead.
  const client = createClient({ address: "127.0.0.1:1" });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "ts-sdk-"));
  });
  after(async () => {
    client.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("a .json file that is not JSON", async () => {
    const path = join(dir, "broken.json");
    await writeFile(path, '{"1": {"class_type": "EmptyImage",');
    await assert.rejects(client.execute(path), (error: unknown) => {
      assert.ok(error instanceof ComfyRealityError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.message, /broken\.json is not valid JSON/);
      assert.equal(error.fieldViolations[0]?.field, "workflow");
      return true;
    });
  });

  test("a .json file holding something else than an object", async () => {
    const path = join(dir, "list.json");
    await writeFile(path, "[1, 2]");
    await assert.rejects(client.execute(path), /must hold a JSON object/);
  });

  test("a string that is not a .json path", async () => {
    await assert.rejects(client.execute('{"1": {}}'), /file path ending in \.json/);
  });

  test("a missing file", async () => {
    await assert.rejects(client.execute(join(dir, "missing.json")), /cannot read workflow file/);
  });

  test("a bad priority", async () => {
    await assert.rejects(client.execute({ "1": {} }, { priority: "urgent" }), (error: unknown) => {
      assert.ok(error instanceof ComfyRealityError);
      assert.equal(error.fieldViolations[0]?.field, "priority");
      return true;
    });
  });

  test("but a real request to nowhere is UNAVAILABLE", async () => {
    await assert.rejects(
      client.get("x"),
      (error: unknown) => error instanceof ComfyRealityError && error.code === Code.Unavailable,
    );
  });
});

test("addresses: host:port or http(s) URL, anything else refused", () => {
  assert.doesNotThrow(() => createClient({ address: "127.0.0.1:50051" }).close());
  assert.doesNotThrow(() => createClient({ address: "localhost:50051", tls: true }).close());
  assert.doesNotThrow(() => createClient({ address: "http://[::1]:50051" }).close());
  assert.doesNotThrow(() => createClient({ address: "https://example.test" }).close());
  assert.throws(() => createClient({ address: "no port" }), ComfyRealityError);
  assert.throws(() => createClient({ address: "ftp://host:21" }), ComfyRealityError);
});
