// Copyright the sse authors. MIT license.
// Serves tests/runtime/sse_app.ts with the app options given as JSON, on the
// server of whichever runtime runs it, as its users serve a
// `Request => Response` handler: Deno.serve, Bun.serve (idleTimeout 0, as
// the README says), or Node's `node:http` through @hono/node-server's
// getRequestListener. For tests/served_faults_test.ts. Prints `{"port":N}`
// once listening, then serves until killed.
//
//   <runtime> faults_serve.mjs <folder holding node_modules> <app module> <options JSON>
//
// <app module> is sse_app.ts itself (Deno, Bun, Node 22 with type
// stripping) or its bundle (Node 20).

const [runtimes, appModule, options] = globalThis.Deno?.args ??
  globalThis.process.argv.slice(2);
const appURL = new URL(
  appModule,
  `file://${globalThis.Deno?.cwd() ?? globalThis.process.cwd()}/`,
);
const { createApp } = await import(appURL.href);
const app = createApp(JSON.parse(options));

function announce(port) {
  console.log(JSON.stringify({ port }));
}

if (globalThis.Deno !== undefined) {
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => announce(port),
  }, app);
} else if (globalThis.Bun !== undefined) {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0,
    fetch: app,
  });
  announce(server.port);
} else {
  const { createServer } = await import("node:http");
  const { createRequire } = await import("node:module");
  const { join, resolve } = await import("node:path");
  const { pathToFileURL } = await import("node:url");
  const require = createRequire(join(resolve(runtimes), "package.json"));
  const { getRequestListener } = await import(
    pathToFileURL(require.resolve("@hono/node-server")).href
  );
  const server = createServer(getRequestListener(app));
  server.listen(0, "127.0.0.1", () => announce(server.address().port));
}
