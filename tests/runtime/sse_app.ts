// Copyright the sse authors. MIT license.
// One `Request => Response` app, served unchanged by each runtime's own HTTP
// server (Node's `http` and Express through @hono/node-server, Bun.serve,
// Deno.serve) for tests/node_test.ts, tests/bun_test.ts and tests/deno_test.ts:
//
//   GET  /events          SSEChannel.connect; `?name=` names the client
//   POST /flood           publishes `?count=` messages of `?size=` bytes (no
//                         request body: frameworks that parse bodies first
//                         leave it alone); answers { ids }
//   GET  /stream          a one-off sseResponse: event i every `?every=` ms
//                         (0: as fast as the client reads), `?size=` bytes each
//   GET  /late            a one-off sseResponse whose source yields its one
//                         event after `?first=` ms (a model that thinks)
//   GET  /stats           what the server saw (see Stats)
//
// It uses web-standard APIs only, so the same code runs on every runtime.

import { SSEChannel, type SSEMessage, sseResponse } from "../../server.ts";

/** What the server saw, as GET /stats answers it. */
export interface Stats {
  /** `SSEChannel.size`. */
  size: number;
  /** The clients whose `onDisconnect` ran, by name, in order. */
  disconnected: string[];
  /** Why each of them was disconnected (`onDisconnect`'s `reason`). */
  reasons: Record<string, string>;
  /** Published messages. */
  published: number;
  /** One-off streams begun, and those whose source was closed. */
  streams: { started: number; closed: number; yielded: number };
}

/** Options of {@linkcode createApp}. */
export interface AppOptions {
  /** The channel's `maxQueue`. @default {65536} */
  maxQueue?: number;
  /** The channel's `keepAlive` (ms). @default {0} */
  keepAlive?: number;
  /** The channel's `drainTimeout` (ms). @default {1000} */
  drainTimeout?: number;
  /** The channel's `retry` (ms). @default {undefined} */
  retry?: number;
}

/** The app: a `Request => Response` handler. */
export function createApp(
  options: AppOptions = {},
): (request: Request) => Promise<Response> {
  const disconnected: string[] = [];
  const reasons: Record<string, string> = {};
  const streams = { started: 0, closed: 0, yielded: 0 };
  let published = 0;
  let clients = 0;
  // No keep-alive and no retry by default: a connection's first bytes are
  // the headers alone, so a server that holds them until a body write is
  // caught.
  const channel = new SSEChannel<string>({
    keepAlive: options.keepAlive ?? 0,
    maxQueue: options.maxQueue ?? 64 * 1024,
    drainTimeout: options.drainTimeout ?? 1000,
    ...(options.retry === undefined ? {} : { retry: options.retry }),
    onConnect: (request) =>
      new URL(request.url).searchParams.get("name") ?? `client-${++clients}`,
    onDisconnect(name, { reason }) {
      disconnected.push(name);
      reasons[name] = reason;
    },
  });

  async function* ticks(every: number, size: number) {
    streams.started++;
    const padding = "x".repeat(size);
    try {
      for (let i = 0;; i++) {
        streams.yielded++;
        yield { id: String(i), data: `${i} ${padding}` };
        await new Promise((resolve) => setTimeout(resolve, every));
      }
    } finally {
      streams.closed++;
    }
  }

  // A ReadableStream, so that the client's leaving cancels the wait at once.
  function late(first: number): ReadableStream<SSEMessage> {
    streams.started++;
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new ReadableStream({
      start(controller) {
        timer = setTimeout(() => {
          streams.yielded++;
          controller.enqueue({ id: "0", data: "0" });
        }, first);
      },
      cancel() {
        clearTimeout(timer);
        streams.closed++;
      },
    });
  }

  return async (request) => {
    const url = new URL(request.url);
    const query = (name: string, fallback: number) =>
      Number(url.searchParams.get(name) ?? fallback);
    switch (`${request.method} ${url.pathname}`) {
      case "GET /events":
        return await channel.connect(request);
      case "POST /flood": {
        const padding = "x".repeat(query("size", 1024));
        const ids: string[] = [];
        for (let i = query("count", 1); i > 0; i--) {
          ids.push(await channel.publish({ data: `${published} ${padding}` }));
          published++;
        }
        return Response.json({ ids });
      }
      case "GET /stream":
        return sseResponse(ticks(query("every", 20), query("size", 0)), {
          keepAlive: 0,
        });
      case "GET /late":
        return sseResponse(late(query("first", 0)), { keepAlive: 0 });
      case "GET /stats":
        return Response.json(
          {
            size: channel.size,
            disconnected,
            reasons,
            published,
            streams,
          } satisfies Stats,
        );
      default:
        return new Response("not found", { status: 404 });
    }
  };
}
