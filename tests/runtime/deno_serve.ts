// Copyright the sse authors. MIT license.
// Serves tests/runtime/sse_app.ts with Deno.serve and its default onError,
// as a Deno user serves a `Request => Response` handler. Prints `{"port":N}`
// once listening, then serves until killed.
//
//   deno run --allow-net=127.0.0.1 deno_serve.ts

import { createApp } from "./sse_app.ts";

Deno.serve({
  hostname: "127.0.0.1",
  port: 0,
  onListen: ({ port }) => console.log(JSON.stringify({ port })),
}, createApp());
