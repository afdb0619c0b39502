// Copyright the sse authors. MIT license.
// Serves a bundled Worker whose `ChannelObject` export is a Durable Object
// class bound as CHANNELS (examples/cloudflare/worker.ts) in workerd through
// Miniflare, on a free port of 127.0.0.1. Prints `{"port":N}` once listening,
// then serves until killed. Run with Node 22+:
//
//   node miniflare_serve.mjs <folder holding node_modules/miniflare> <worker.js>

import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimes, workerPath] = process.argv.slice(2);
const require = createRequire(join(resolve(runtimes), "package.json"));
const { Miniflare } = await import(
  pathToFileURL(require.resolve("miniflare")).href
);

const mf = new Miniflare({
  modules: true,
  script: await readFile(workerPath, "utf8"),
  // As examples/cloudflare/wrangler.jsonc: no nodejs_compat; a request's
  // signal fires once its client has left (at the next write).
  compatibilityDate: "2025-09-01",
  compatibilityFlags: ["enable_request_signal"],
  durableObjects: { CHANNELS: "ChannelObject" },
  host: "127.0.0.1",
  port: 0,
});
const url = await mf.ready;
console.log(JSON.stringify({ port: Number(url.port) }));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => mf.dispose().then(() => process.exit(0)));
}
