// The client against a server with access control: an API key over TLS with a custom CA, a
// client certificate (mTLS), and the typed errors for no credentials and another tenant's id.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Code, ComfyRealityError, createClient } from "@comfy-reality/client";

import { startFake, startSecuredServer, type Secured, type Started } from "./harness.ts";

describe("access control", () => {
  let fake: Started;
  let server: Secured;
  before(async () => {
    fake = await startFake();
    server = await startSecuredServer(fake.address);
  });
  after(async () => {
    await server?.stop();
    await fake?.stop();
  });

  const workflow = {
    "1": { class_type: "EmptyImage", inputs: { width: 16, height: 16, batch_size: 1, color: 1 } },
    "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "ts-auth" } },
  };

  test("an API key over TLS with a custom CA, and another tenant's id is unknown", async () => {
    const alice = createClient({ address: server.address, apiKey: server.keys.alice, tls: { ca: server.ca } });
    const bob = createClient({ address: server.address, apiKey: server.keys.bob, tls: { ca: server.ca } });
    try {
      const execution = await alice.execute(workflow);
      const done = await alice.wait(execution.id);
      assert.ok(done.artifacts.length > 0);
      await assert.rejects(bob.get(execution.id), (error: unknown) => {
        assert.ok(error instanceof ComfyRealityError);
        assert.equal(error.code, Code.NotFound);
        return true;
      });
    } finally {
      alice.close();
      bob.close();
    }
  });

  test("a client certificate", async () => {
    const alice = createClient({
      address: server.address,
      tls: { ca: server.ca, cert: server.aliceCert, key: server.aliceKey },
    });
    try {
      for await (const execution of alice.list()) assert.ok(execution.id);
    } finally {
      alice.close();
    }
  });

  test("no credentials: UNAUTHENTICATED", async () => {
    const anonymous = createClient({ address: server.address, tls: { ca: server.ca } });
    try {
      await assert.rejects(anonymous.get("any"), (error: unknown) => {
        assert.ok(error instanceof ComfyRealityError);
        assert.equal(error.code, Code.Unauthenticated);
        assert.equal(error.reason, "AuthenticationError");
        return true;
      });
    } finally {
      anonymous.close();
    }
  });
});
