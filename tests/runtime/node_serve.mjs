// Copyright the sse authors. MIT license.
// Serves tests/runtime/sse_app.ts on Node, the way a Node user mounts a
// `Request => Response` handler: @hono/node-server's getRequestListener turns
// it into a Node listener, given to `node:http`, to Express routes, or to
// Fastify routes (`reply.hijack()`, then the listener on the raw objects).
// Prints `{"port":N}` once listening, then serves until killed.
//
//   node node_serve.mjs <folder holding node_modules> <app module> http|express|fastify
//
// <app module> is sse_app.ts itself (Node 22 strips its types) or its bundle.

import { createServer } from "node:http";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimes, appModule, mount] = process.argv.slice(2);
const require = createRequire(join(resolve(runtimes), "package.json"));
/** Loads a package installed in <runtimes> (ESM entry). */
const load = (name) => import(pathToFileURL(require.resolve(name)).href);

const { createApp } = await import(pathToFileURL(resolve(appModule)).href);
const { getRequestListener } = await load("@hono/node-server");
const listener = getRequestListener(createApp());

/** The app's routes, for the frameworks that route by method and path. */
const ROUTES = [
  ["GET", "/events"],
  ["GET", "/stream"],
  ["GET", "/late"],
  ["GET", "/stats"],
  ["POST", "/flood"],
];

/** Listens on a free port of 127.0.0.1 and prints it. */
function announce(port) {
  console.log(JSON.stringify({ port }));
}

switch (mount) {
  case "http": {
    const server = createServer(listener);
    server.listen(0, "127.0.0.1", () => announce(server.address().port));
    break;
  }
  case "express": {
    const { default: express } = await load("express");
    const app = express();
    for (const [method, path] of ROUTES) {
      app[method.toLowerCase()](path, listener);
    }
    const server = app.listen(0, "127.0.0.1", () => {
      announce(server.address().port);
    });
    break;
  }
  case "fastify": {
    const { default: Fastify } = await load("fastify");
    const app = Fastify();
    for (const [method, url] of ROUTES) {
      app.route({
        method,
        url,
        handler(request, reply) {
          reply.hijack();
          return listener(request.raw, reply.raw);
        },
      });
    }
    await app.listen({ host: "127.0.0.1", port: 0 });
    announce(app.server.address().port);
    break;
  }
  default:
    throw new TypeError(`Invalid mount: expected http, express or fastify`);
}
