// Copyright the sse authors. MIT license.
// Where does an idle streaming connection's memory go on Deno? One server per
// variant, each holding its clients in a slightly different way, driven by
// bench/fanout/memory_probe.ts. Commands on stdin: "stats" prints
// {"type":"stats","rss","heapUsed","external","connected"} after a GC.
//
//   deno run --allow-net=127.0.0.1 --v8-flags=--expose-gc \
//     bench/fanout/probe_server.ts --variant stream
//
// Variants (each adds one thing to, or takes one thing from, `stream`):
//   tcp        no HTTP server: Deno.listen, a hand-written response head and
//              one chunk, then a pending read per connection
//   pending    Deno.serve, handler that never answers (no Response at all)
//   stream     Deno.serve + ReadableStream + Set of controllers (the bench floor)
//   hwm0       stream with highWaterMark 0 instead of the default 1
//   bytes      stream of type "bytes"
//   signal     stream + a listener on request.signal
//   headers    stream + reading request.url and a request header
//   timer      stream + one setInterval per client (a per-client keep-alive)
//   transform  a TransformStream per client, written through its writer
//   encoder    a string stream piped through a TextEncoderStream per client
//   closures   stream + a per-client object holding five closures
//   notransform  stream with `cache-control: no-cache, no-transform`
//   channel    SSEChannel from server.ts with its defaults
//
// Command "publish" sends one small event to every client, so that what a
// connection holds after it has carried data (write buffers, a compressor
// when the client sent `accept-encoding`) is counted too.

import { readArgs } from "../_args.ts";
import { stdinLines } from "./_child.ts";
import { SSEChannel } from "../../server.ts";

const encoder = new TextEncoder();
const channel = new SSEChannel();
const HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
};
const FIRST = encoder.encode(":\n\n");

const variant = readArgs({ variant: { type: "string" } }).variant ?? "stream";
// What each connection is held by; `publish` writes to every one of them.
const held = new Set<unknown>();
// Per-client objects that some variants keep next to the stream.
const extras = new Map<unknown, unknown>();
const timers = new Set<ReturnType<typeof setInterval>>();

function stats(): Record<string, unknown> {
  (globalThis as { gc?: () => void }).gc?.();
  const memory = Deno.memoryUsage();
  return {
    type: "stats",
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    heapTotal: memory.heapTotal,
    external: memory.external,
    connected: variant === "channel" ? channel.size : held.size,
  };
}

function streamResponse(
  strategy?: QueuingStrategy<Uint8Array>,
  onStart?: (controller: ReadableStreamDefaultController<Uint8Array>) => void,
  headers: HeadersInit = HEADERS,
): Response {
  let controller: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      held.add(c);
      c.enqueue(FIRST);
      onStart?.(c);
    },
    cancel() {
      held.delete(controller);
      extras.delete(controller);
    },
  }, strategy);
  return new Response(body, { headers });
}

function handle(request: Request): Response | Promise<Response> {
  switch (variant) {
    case "pending": {
      held.add(request);
      // Never answers: the cost of an accepted request alone.
      return new Promise<Response>(() => {});
    }
    case "stream":
      return streamResponse();
    case "hwm0":
      return streamResponse({ highWaterMark: 0 });
    case "bytes": {
      let controller: ReadableByteStreamController;
      const body = new ReadableStream({
        type: "bytes",
        start(c) {
          controller = c;
          held.add(c);
          c.enqueue(FIRST.slice());
        },
        cancel() {
          held.delete(controller);
        },
      });
      return new Response(body, { headers: HEADERS });
    }
    case "signal":
      return streamResponse(undefined, (controller) => {
        request.signal.addEventListener("abort", () => held.delete(controller));
      });
    case "headers": {
      const url = new URL(request.url);
      const last = request.headers.get("last-event-id") ??
        url.searchParams.get("lastEventId");
      return streamResponse(undefined, (controller) => {
        extras.set(controller, { controller, last });
      });
    }
    case "timer":
      return streamResponse(undefined, () => {
        timers.add(setInterval(() => {}, 15_000));
      });
    case "transform": {
      const { readable, writable } = new TransformStream<
        Uint8Array,
        Uint8Array
      >();
      const writer = writable.getWriter();
      held.add(writer);
      writer.write(FIRST).catch(() => held.delete(writer));
      writer.closed.catch(() => held.delete(writer));
      return new Response(readable, { headers: HEADERS });
    }
    case "encoder": {
      let controller: ReadableStreamDefaultController<string>;
      const body = new ReadableStream<string>({
        start(c) {
          controller = c;
          held.add(c);
          c.enqueue(":\n\n");
        },
        cancel() {
          held.delete(controller);
        },
      }).pipeThrough(new TextEncoderStream());
      return new Response(body, { headers: HEADERS });
    }
    case "channel":
      return channel.connect(request);
    case "notransform":
      return streamResponse(undefined, undefined, {
        ...HEADERS,
        "cache-control": "no-cache, no-transform",
      });
    case "closures":
      return streamResponse(undefined, (controller) => {
        const client = {
          send: (bytes: Uint8Array) => controller.enqueue(bytes),
          close: () => controller.close(),
          onAbort: () => held.delete(controller),
          filter: (topic: string) => topic.length > 0,
          keepAlive: () => controller.enqueue(FIRST),
        };
        extras.set(controller, client);
      });
    default:
      throw new TypeError(`Unknown variant: ${variant}`);
  }
}

function serveTcp(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const head = encoder.encode(
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n" +
      "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n3\r\n:\n\n\r\n",
  );
  (async () => {
    for await (const conn of listener) {
      held.add(conn);
      (async () => {
        const buffer = new Uint8Array(1024);
        try {
          // One read takes the request (small, one segment on loopback).
          await conn.read(buffer);
          await conn.write(head);
          while ((await conn.read(buffer)) !== null) {
            // Clients send nothing more; wait for them to close.
          }
        } catch {
          // Reset by the client.
        }
        held.delete(conn);
        conn.close();
      })();
    }
  })();
  return (listener.addr as Deno.NetAddr).port;
}

let sequence = 0;

function publish(): void {
  if (variant === "channel") {
    channel.publish({ data: { t: Date.now(), seq: ++sequence } });
    return;
  }
  const bytes = encoder.encode(
    `id: ${++sequence}\ndata: {"t":${Date.now()},"seq":${sequence}}\n\n`,
  );
  for (const target of held) {
    try {
      if (target instanceof WritableStreamDefaultWriter) {
        target.write(bytes).catch(() => {});
      } else if (target instanceof ReadableByteStreamController) {
        target.enqueue(bytes.slice());
      } else if (target instanceof ReadableStreamDefaultController) {
        target.enqueue(
          variant === "encoder" ? new TextDecoder().decode(bytes) : bytes,
        );
      } else if (variant === "tcp") {
        const conn = target as Deno.Conn;
        const head = encoder.encode(`${bytes.length.toString(16)}\r\n`);
        const chunk = new Uint8Array(head.length + bytes.length + 2);
        chunk.set(head);
        chunk.set(bytes, head.length);
        chunk.set([13, 10], head.length + bytes.length);
        conn.write(chunk).catch(() => {});
      }
    } catch {
      // Closed meanwhile.
    }
  }
}

const before = stats();
let port: number;
if (variant === "tcp") {
  port = serveTcp();
} else {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handle,
  );
  port = server.addr.port;
}
console.log(JSON.stringify({ type: "listening", port, rss: before.rss }));

for await (const command of stdinLines()) {
  if (command === "stats") console.log(JSON.stringify(stats()));
  if (command === "publish") publish();
}
for (const timer of timers) clearInterval(timer);
await channel.close();
Deno.exit(0);
