// Copyright the sse authors. MIT license.
// SSEChannel and sseResponse served by Deno.serve with its default onError
// (tests/runtime/deno_serve.ts), in a process of its own: every scenario of
// tests/runtime/_served.ts over real sockets, as Bun and Node run them
// (tests/bun_test.ts, tests/node_test.ts), and what Deno prints meanwhile.

import assert from "node:assert/strict";
import { startServer } from "./runtime/_runtimes.ts";
import { CUT_LINE, printed, runScenarios } from "./runtime/_served.ts";

Deno.test({
  name:
    "Deno.serve serves SSEChannel and sseResponse, and prints one line, no stack trace, for the stream the channel cut",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn(t) {
    const server = await startServer(Deno.execPath(), [
      "run",
      "--allow-net=127.0.0.1",
      "tests/runtime/deno_serve.ts",
    ]);
    let output: string | undefined;
    try {
      // Deno 2.9.6 notices that a response's body stream errored only once
      // its pending write to the socket completes: a peer that never reads
      // keeps its connection until it reads again.
      await runScenarios(t, server.url, { cutsPendingWrite: false });
    } finally {
      output = await server.stop();
    }
    // Deno.serve's default onError prints what the stream errored with:
    // an Error whose stack is one line, as `[that line]`.
    assert.deepEqual(printed(output), [CUT_LINE]);
  },
});
