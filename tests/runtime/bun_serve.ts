// Copyright the sse authors. MIT license.
// Serves tests/runtime/sse_app.ts with Bun.serve, as a Bun user serves a
// `Request => Response` handler. Prints `{"port":N}` once listening, then
// serves until killed.
//
//   bun bun_serve.ts [idleTimeout (s, Bun's default: 10)] [keepAlive (ms, default: 0)] [retry (ms)]

import { createApp } from "./sse_app.ts";

interface BunRuntime {
  argv: string[];
  serve(options: {
    hostname: string;
    port: number;
    idleTimeout?: number;
    fetch(request: Request): Promise<Response>;
  }): { port: number };
}

const bun = (globalThis as unknown as { Bun: BunRuntime }).Bun;
const [idleTimeout, keepAlive, retry] = bun.argv.slice(2).map(Number);
const server = bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  ...(idleTimeout === undefined ? {} : { idleTimeout }),
  fetch: createApp({
    ...(keepAlive === undefined ? {} : { keepAlive }),
    ...(retry === undefined ? {} : { retry }),
  }),
});
console.log(JSON.stringify({ port: server.port }));
