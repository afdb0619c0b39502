// Copyright the sse authors. MIT license.
// SSEChannel in a Durable Object under workerd (Miniflare), with a client
// that leaves while its stream is idle: workerd does not cancel that stream,
// even when a keep-alive comment goes out every second; with the
// `enable_request_signal` compatibility flag the request's signal fires at
// the next write, and the channel listens to it as long as the client is
// connected (tests/runtime/faults_worker.ts, served by
// tests/runtime/miniflare_serve.mjs). sseResponse, given the same signal,
// closes its source then.
//
// Node and Miniflare come from `.ci/runtimes`.

import assert from "node:assert/strict";
import { SSEParserStream } from "../parser.ts";
import {
  assertPresent,
  ignoreWithout,
  NODE22,
  runtimePackage,
  RUNTIMES,
  startServer,
  withBundle,
} from "./runtime/_runtimes.ts";
import { pollUntil } from "./runtime/_served.ts";
import type { WorkerStats } from "./runtime/faults_worker.ts";

const NEEDS = [NODE22, runtimePackage("miniflare")];
async function stats(base: string): Promise<WorkerStats> {
  const response = await fetch(`${base}/stats`);
  assert.equal(response.status, 200);
  return await response.json() as WorkerStats;
}

const name =
  "SSEChannel in a Durable Object, and a one-off sseResponse, notice a client that leaves while its stream is idle, from the request's signal";
Deno.test({
  name,
  sanitizeOps: true,
  sanitizeResources: true,
  ignore: ignoreWithout(name, NEEDS),
  async fn() {
    assertPresent(NEEDS);
    await withBundle(
      "tests/runtime/faults_worker.ts",
      "worker.js",
      async (bundle) => {
        const server = await startServer(
          NODE22,
          ["tests/runtime/miniflare_serve.mjs", RUNTIMES.pathname, bundle],
          { stopSignal: "SIGTERM" },
        );
        try {
          const base = server.url;
          const open = async () => {
            const abort = new AbortController();
            const response = await fetch(`${base}/events`, {
              signal: abort.signal,
            });
            assert.equal(response.status, 200);
            const reader = response.body!.pipeThrough(new SSEParserStream())
              .getReader();
            return { abort, reader };
          };
          const leaving = await open();
          const staying = await open();
          const statsUntil = (
            what: string,
            ok: (stats: WorkerStats) => boolean,
          ) => pollUntil(() => stats(base), what, ok);
          await statsUntil("two clients", (s) => s.size === 2);
          // Nothing is published: the stream is idle when its client goes.
          await leaving.reader.cancel();
          leaving.abort.abort();
          // Before: still counted after 70 s (the channel stopped listening
          // to the signal once it answered), until a burst made a write
          // fail.
          const after = await statsUntil(
            "the client that left is released",
            (s) => s.size === 1,
          );
          assert.deepEqual(after.reasons, ["client-closed"]);
          // The other one still gets what is published.
          const published = await fetch(`${base}/publish`, { method: "POST" });
          const { id } = await published.json() as { id: string };
          const { value } = await staying.reader.read();
          assert.equal(value?.id, id);
          await staying.reader.cancel();
          staying.abort.abort();
          // A one-off sseResponse given the request's signal: its source,
          // which yields nothing, is closed once its client left (at the
          // next keep-alive comment); without the signal it stayed open.
          const idle = new AbortController();
          const response = await fetch(`${base}/idle`, {
            signal: idle.signal,
          });
          const reader = response.body!.getReader();
          await reader.read();
          await reader.cancel();
          idle.abort();
          await statsUntil(
            "the idle sseResponse source is closed",
            (s) => s.idleClosed === 1,
          );
        } finally {
          await server.stop();
        }
      },
    );
  },
});
