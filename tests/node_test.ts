// Copyright the sse authors. MIT license.
// SSEChannel and sseResponse served by Node, as Node users serve them: no
// adapter of ours, @hono/node-server's getRequestListener turns the
// `Request => Response` app (tests/runtime/sse_app.ts) into a Node listener,
// mounted on `node:http`, on Express routes and on Fastify routes
// (tests/runtime/node_serve.mjs). Node 22 loads the library from its
// TypeScript sources (type stripping), Node 20 from a one-file bundle. Each
// target runs every scenario of tests/runtime/_served.ts over real sockets.
//
// Node, @hono/node-server, Express and Fastify come from `.ci/runtimes`.

import assert from "node:assert/strict";
import {
  assertPresent,
  ignoreWithout,
  NODE20,
  NODE22,
  runtimePackage,
  RUNTIMES,
  startServer,
  withBundle,
} from "./runtime/_runtimes.ts";
import { CUT_LINE, printed, runScenarios } from "./runtime/_served.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

const APP = "tests/runtime/sse_app.ts";
const SERVE = "tests/runtime/node_serve.mjs";
const PACKAGES = ["@hono/node-server", "express", "fastify"].map(
  runtimePackage,
);

const MOUNTS = {
  http: "node:http",
  express: "Express routes",
  fastify: "Fastify routes (reply.hijack)",
} as const;

interface Node {
  name: string;
  bin: URL;
  /** How the library is loaded: the sources, or a bundle. */
  form: "sources" | "bundle";
}

const NODES: Node[] = [
  { name: "Node 22", bin: NODE22, form: "sources" },
  { name: "Node 20", bin: NODE20, form: "bundle" },
];

for (const node of NODES) {
  for (const [mount, mounted] of Object.entries(MOUNTS)) {
    const name =
      `${node.name} serves SSEChannel and sseResponse on ${mounted} through getRequestListener (library from ${
        node.form === "sources" ? "its TypeScript sources" : "a bundle"
      })`;
    const needs = [node.bin, ...PACKAGES];
    Deno.test({
      name,
      ...SANITIZED,
      ignore: ignoreWithout(name, needs),
      async fn(t) {
        assertPresent(needs);
        const serve = async (app: string) => {
          const args = [SERVE, RUNTIMES.pathname, app, mount];
          const server = await startServer(
            node.bin,
            node.form === "sources"
              ? ["--experimental-strip-types", "--no-warnings", ...args]
              : args,
          );
          let output: string | undefined;
          try {
            await runScenarios(t, server.url, { cutsPendingWrite: true });
          } finally {
            output = await server.stop();
          }
          // The stream the channel cut, printed by @hono/node-server.
          assert.deepEqual(printed(output), [CUT_LINE]);
        };
        if (node.form === "sources") await serve(APP);
        else await withBundle(APP, "sse_app.mjs", serve);
      },
    });
  }
}
