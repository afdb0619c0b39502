// Copyright the sse authors. MIT license.
// SSEChannel under faults, served by each runtime's own server as its users
// serve it (tests/runtime/faults_serve.mjs): Deno.serve, Bun.serve, and
// Node 22 and Node 20 on `node:http` through @hono/node-server's
// getRequestListener, with the channel's default maxQueue (1 MiB). Driven
// from Deno over real sockets.
//
// Bun and Node come from `.ci/runtimes`.

import assert from "node:assert/strict";
import {
  assertPresent,
  BUN,
  ignoreWithout,
  NODE20,
  NODE22,
  runtimePackage,
  RUNTIMES,
  startServer,
  withBundle,
} from "./runtime/_runtimes.ts";
import { Events, flood, stalledClient, statsUntil } from "./runtime/_served.ts";
import type { AppOptions } from "./runtime/sse_app.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

const APP = "tests/runtime/sse_app.ts";
const SERVE = "tests/runtime/faults_serve.mjs";
/** The channel's defaults but for drainTimeout (1 s) and keep-alive (off). */
const OPTIONS: AppOptions = { maxQueue: 1024 * 1024 };
/** How long a step may wait for what it expects on a loaded machine. */
const WAIT = 20_000;

interface Target {
  name: string;
  bin: URL;
  args: string[];
  needs: URL[];
  /** Node 20 reads the app as a bundle. */
  bundled?: boolean;
}

const HONO = runtimePackage("@hono/node-server");
const TARGETS: Target[] = [
  {
    name: "Deno.serve",
    bin: new URL(`file://${Deno.execPath()}`),
    args: ["run", "--allow-net=127.0.0.1", "--allow-read"],
    needs: [],
  },
  { name: "Bun.serve", bin: BUN, args: [], needs: [BUN] },
  {
    name: "Node 22 (node:http, getRequestListener)",
    bin: NODE22,
    args: ["--experimental-strip-types", "--no-warnings"],
    needs: [NODE22, HONO],
  },
  {
    name: "Node 20 (node:http, getRequestListener, a bundle)",
    bin: NODE20,
    args: [],
    needs: [NODE20, HONO],
    bundled: true,
  },
];

/** Runs `fn` against sse_app served by `target` with `options`. */
async function served(
  target: Target,
  options: AppOptions,
  fn: (base: string) => Promise<void>,
): Promise<void> {
  const serve = async (app: string) => {
    const server = await startServer(target.bin, [
      ...target.args,
      SERVE,
      RUNTIMES.pathname,
      app,
      JSON.stringify(options),
    ]);
    try {
      await fn(server.url);
    } finally {
      await server.stop();
    }
  };
  if (target.bundled) await withBundle(APP, "sse_app.mjs", serve);
  else await serve(APP);
}

for (const target of TARGETS) {
  const name =
    `SSEChannel on ${target.name} drops a client that resumes far behind and never reads, while a reader resuming from the same id gets everything`;
  Deno.test({
    name,
    ...SANITIZED,
    ignore: ignoreWithout(name, target.needs),
    async fn() {
      assertPresent(target.needs);
      await served(target, OPTIONS, async (base) => {
        // 900 messages of 16 KiB, inside the replay window (1 000
        // messages, 16 MiB): more than the kernel's and the runtime's
        // buffers take from a peer that never reads, so its catch-up stops
        // with the rest of the history still to send.
        const [from] = await flood(base, 1, 1);
        const missed = await flood(base, 900, 16 * 1024);
        const stalled = await stalledClient(base, "/events?name=stalled", {
          "last-event-id": from!,
        });
        const reader = new Events(base, "/events?name=reader", {
          "last-event-id": from!,
        });
        const received: string[] = [];
        const reading = reader.drain((event) => received.push(event.id));
        try {
          // Before: it was never dropped (still connected after 20 s, its
          // drainTimeout 1 s), holding its connection and buffers for good.
          const after = await statsUntil(
            base,
            "the stalled resuming client is dropped as slow",
            (s) => s.disconnected.includes("stalled"),
            WAIT,
          );
          assert.equal(after.reasons.stalled, "slow");
          const deadline = Date.now() + WAIT;
          while (received.length < missed.length && Date.now() < deadline) {
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
          assert.deepEqual(received, missed, "what the reader received");
          const now = await statsUntil(
            base,
            "the reader stays connected",
            (s) => s.size === 1,
          );
          assert.ok(!now.disconnected.includes("reader"), "reader dropped");
        } finally {
          stalled.close();
          await reader.close();
          await reading;
        }
        await statsUntil(base, "no client left", (s) => s.size === 0);
      });
    },
  });
}
