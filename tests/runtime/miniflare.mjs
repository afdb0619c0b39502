// Copyright the sse authors. MIT license.
// Runs the bundled Worker in workerd through Miniflare and prints what it
// answers as one JSON line. Run with Node 22+:
//   node miniflare.mjs <folder holding node_modules/miniflare> <worker.js> <module>...
// where each <module> has a /serve/<module> route.

import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimes, workerPath, ...served] = process.argv.slice(2);
const require = createRequire(join(resolve(runtimes), "package.json"));
const { Miniflare } = await import(
  pathToFileURL(require.resolve("miniflare")).href
);

const mf = new Miniflare({
  modules: true,
  script: await readFile(workerPath, "utf8"),
  // No compatibility flags: web-standard APIs only, no nodejs_compat.
  compatibilityDate: "2025-09-01",
});
try {
  const smokes = await (await mf.dispatchFetch("http://localhost/smoke"))
    .json();
  const responses = {};
  for (const module of served) {
    const response = await mf.dispatchFetch(
      `http://localhost/serve/${module}`,
    );
    responses[module] = {
      status: response.status,
      headers: Object.fromEntries(response.headers),
      body: await response.text(),
    };
  }
  console.log(JSON.stringify({ smokes, served: responses }));
} finally {
  await mf.dispose();
}
