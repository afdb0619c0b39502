// Copyright the sse authors. MIT license.
// The floor for this runtime: `Deno.serve`, a Set of stream controllers, and
// one encoded buffer enqueued to each on every publish. No ids, replay,
// keep-alive or topics: nothing but the fan-out itself.
//
//   deno run --allow-net=127.0.0.1 --v8-flags=--expose-gc bench/fanout/handwritten_server.ts

import { readArgs } from "../_args.ts";
import { serveFanout } from "./_serve.ts";

const encoder = new TextEncoder();
const controllers = new Set<ReadableStreamDefaultController<Uint8Array>>();
const HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};
let nextId = 0;

serveFanout({
  connect() {
    let controller: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
        controllers.add(c);
        // Flushes the head at once, as any SSE server does.
        c.enqueue(encoder.encode(":\n\n"));
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
  connected() {
    return controllers.size;
  },
}, readArgs({ port: { type: "string" } }).port);
