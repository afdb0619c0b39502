// Copyright the sse authors. MIT license.
// The control surface shared by the Deno fan-out servers, so that they differ
// only in how they hold clients and broadcast:
//
//   GET  /sse                      the event stream under test
//   POST /publish?t=<ms>&seq=<n>   broadcast `{"t":<ms>,"seq":<n>}` to every client
//   GET  /stats                    {"rss","heapUsed","external","connected","cpu"}
//                                  after a GC (cpu: the process's user + system
//                                  CPU time so far, ms, read before the GC)
//
// The first stdout line is {"type":"listening","port":P,"rss":R}. Every /stats
// reading is also printed, so the RSS before and after the clients connected
// shows in the server's own output. stderr carries errors only.
// bench/fanout/runtime_server.mjs is the same surface on Bun and Node.

import process from "node:process";

/** What a fan-out server under test provides. */
export interface FanoutServer {
  /** Answers one `GET /sse`. */
  connect(request: Request): Response | Promise<Response>;
  /** Broadcasts one event whose data is `data` (JSON text) to every client. */
  publish(data: string): unknown;
  /** Clients currently connected. */
  connected(): number;
}

/** Memory figures in bytes, after a full GC when `--expose-gc` is on. */
export interface MemoryStats {
  rss: number;
  heapUsed: number;
  external: number;
  connected: number;
  /** User + system CPU time of the process so far, ms. */
  cpu: number;
}

function stats(server: FanoutServer, collect = true): MemoryStats {
  const { user, system } = process.cpuUsage();
  if (collect) (globalThis as { gc?: () => void }).gc?.();
  const memory = Deno.memoryUsage();
  return {
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    external: memory.external,
    connected: server.connected(),
    cpu: (user + system) / 1000,
  };
}

/**
 * Serves `server` on 127.0.0.1, on the port given as `--port` (0 by default).
 *
 * @param server The server under test.
 * @param portText The value of the script's `--port`, if any.
 * @returns The running HTTP server.
 */
export function serveFanout(
  server: FanoutServer,
  portText: string | undefined,
): Deno.HttpServer {
  const port = portText === undefined ? 0 : Number(portText);
  const before = stats(server);
  return Deno.serve({
    hostname: "127.0.0.1",
    port,
    onListen(address) {
      console.log(
        JSON.stringify({
          type: "listening",
          port: address.port,
          rss: before.rss,
        }),
      );
    },
    onError(error) {
      console.error("server error:", error);
      return new Response("Internal error", { status: 500 });
    },
  }, async (request) => {
    const url = new URL(request.url);
    if (url.pathname === "/sse") return await server.connect(request);
    if (url.pathname === "/publish" && request.method === "POST") {
      const t = Number(
        url.searchParams.get("t") ?? performance.timeOrigin + performance.now(),
      );
      const seq = Number(url.searchParams.get("seq") ?? 0);
      await server.publish(JSON.stringify({ t, seq }));
      return new Response(null, { status: 204 });
    }
    if (url.pathname === "/stats") {
      const reading = stats(server, url.searchParams.get("gc") !== "0");
      console.log(JSON.stringify({ type: "stats", ...reading }));
      return Response.json(reading);
    }
    return new Response("Not found", { status: 404 });
  });
}
