// Copyright the sse authors. MIT license.
// The fan-out servers on Bun and Node, with the control surface of
// bench/fanout/_serve.ts (GET /sse, POST /publish?t=&seq=, GET /stats), so
// that bench/fanout_bench.ts drives every runtime the same way:
//
//   bun  runtime_server.mjs --server channel|hand --library <server.js>
//   node --expose-gc runtime_server.mjs --server channel|hand|web-hand \
//     --library <server.js> --modules .cache/runtimes
//
// - `channel`: SSEChannel with its defaults, from `--library` (server.ts
//   bundled to one ESM file by the bench), served as a user of that runtime
//   serves a `Request => Response` handler: `Bun.serve({ fetch })`, or on Node
//   `@hono/node-server`'s `getRequestListener` given to `node:http` (from
//   `--modules`, where `.ci/runtimes` installs it).
// - `hand`: the floor for that runtime, nothing but the fan-out: on Bun a
//   `ReadableStream` per client and a Set of their controllers (as the Deno
//   floor), on Node `node:http` and a Set of responses, one shared buffer
//   written to each.
// - `web-hand` (Node): the Bun floor's loop, a `ReadableStream` per client
//   and a Set of their controllers, served through `@hono/node-server` as
//   `channel` is: what any `Request => Response` handler pays on Node for
//   the web stream and the adapter's copy of it to `node:http`, before it
//   does anything of its own.
//
// /stats reports after a full GC (`Bun.gc(true)`, or `gc()` with Node's
// --expose-gc): RSS, JS heap, external memory, connected clients, and the
// process's CPU time so far (user + system, ms, read before the GC).

import { createServer } from "node:http";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : process.argv[index + 1];
}

const Bun = globalThis.Bun;
const kind = option("server", "channel");
const port = Number(option("port", "0"));
const HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};
const encoder = new TextEncoder();

/** The server under test: connect (Request => Response), publish, connected. */
async function channelServer() {
  const library = option("library");
  if (library === undefined) throw new TypeError("Missing --library");
  const { SSEChannel } = await import(pathToFileURL(resolve(library)).href);
  const channel = new SSEChannel();
  return {
    connect: (request) => channel.connect(request),
    publish: (data) => channel.publish({ data }),
    connected: () => channel.size,
  };
}

/**
 * Bun's floor (and Node's through @hono/node-server): a Set of stream
 * controllers, one buffer to each.
 */
function webHandServer() {
  const controllers = new Set();
  const first = encoder.encode(":\n\n");
  let nextId = 0;
  return {
    connect() {
      let controller;
      const body = new ReadableStream({
        start(c) {
          controller = c;
          controllers.add(c);
          c.enqueue(first);
        },
        cancel() {
          controllers.delete(controller);
        },
      });
      return new Response(body, { headers: HEADERS });
    },
    publish(data) {
      const bytes = encoder.encode(`id: ${++nextId}\ndata: ${data}\n\n`);
      for (const controller of controllers) controller.enqueue(bytes);
    },
    connected: () => controllers.size,
  };
}

function stats(connected, collect = true) {
  // CPU first: the GC below is the reading's cost, not the server's.
  const cpu = process.cpuUsage();
  if (!collect) {
    // Just the CPU time, without a collection that a later reading counts.
  } else if (Bun !== undefined) Bun.gc(true);
  else globalThis.gc?.();
  const memory = process.memoryUsage();
  return {
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    external: memory.external,
    connected,
    cpu: (cpu.user + cpu.system) / 1000,
  };
}

function publishData(url) {
  const t = Number(
    url.searchParams.get("t") ?? performance.timeOrigin + performance.now(),
  );
  const seq = Number(url.searchParams.get("seq") ?? 0);
  return JSON.stringify({ t, seq });
}

function announce(address, rss) {
  console.log(JSON.stringify({ type: "listening", port: address, rss }));
}

/** A `Request => Response` handler over a server under test. */
function handler(server) {
  return async (request) => {
    const url = new URL(request.url);
    if (url.pathname === "/sse") return await server.connect(request);
    if (url.pathname === "/publish" && request.method === "POST") {
      await server.publish(publishData(url));
      return new Response(null, { status: 204 });
    }
    if (url.pathname === "/stats") {
      const reading = stats(
        server.connected(),
        url.searchParams.get("gc") !== "0",
      );
      console.log(JSON.stringify({ type: "stats", ...reading }));
      return Response.json(reading);
    }
    return new Response("Not found", { status: 404 });
  };
}

/** Node's floor: `node:http`, a Set of responses, one buffer to each. */
function nodeHandListener() {
  const responses = new Set();
  const first = Buffer.from(":\n\n");
  let nextId = 0;
  return (req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    if (url.pathname === "/sse") {
      res.writeHead(200, HEADERS);
      res.write(first);
      responses.add(res);
      res.on("close", () => responses.delete(res));
      return;
    }
    if (url.pathname === "/publish" && req.method === "POST") {
      const bytes = Buffer.from(
        `id: ${++nextId}\ndata: ${publishData(url)}\n\n`,
      );
      for (const response of responses) response.write(bytes);
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === "/stats") {
      const reading = stats(responses.size, url.searchParams.get("gc") !== "0");
      console.log(JSON.stringify({ type: "stats", ...reading }));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(reading));
      return;
    }
    res.writeHead(404).end("Not found");
  };
}

const before = stats(0);
if (Bun !== undefined) {
  const server = kind === "hand" ? webHandServer() : await channelServer();
  const bun = Bun.serve({
    hostname: "127.0.0.1",
    port,
    // Idle streams are the point: no idle timeout cuts them.
    idleTimeout: 0,
    fetch: handler(server),
    error(error) {
      console.error("server error:", error);
      return new Response("Internal error", { status: 500 });
    },
  });
  announce(bun.port, before.rss);
} else {
  let listener;
  if (kind === "hand") {
    listener = nodeHandListener();
  } else {
    const modules = resolve(option("modules", ".cache/runtimes"));
    const require = createRequire(join(modules, "package.json"));
    const { getRequestListener } = await import(
      pathToFileURL(require.resolve("@hono/node-server")).href
    );
    const server = kind === "web-hand"
      ? webHandServer()
      : await channelServer();
    listener = getRequestListener(handler(server));
  }
  const server = createServer(listener);
  server.on("clientError", (error, socket) => {
    // A load client killed mid-request resets its socket: not a server error.
    if (error.code !== "ECONNRESET") console.error("client error:", error);
    socket.destroy();
  });
  server.listen(port, "127.0.0.1", () => {
    announce(server.address().port, before.rss);
  });
}
