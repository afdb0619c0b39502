// Copyright the sse authors. MIT license.
// A Durable Object holding an SSEChannel, as examples/cloudflare/worker.ts
// (its clients' `request.signal` passed as `signal`), with a keep-alive
// comment every second, that also tells who left and why, for
// tests/workers_faults_test.ts:
//
//   GET  /events     the channel's event stream
//   GET  /stats      { size, reasons }: SSEChannel.size, and each
//                    onDisconnect reason in order
//   POST /publish    publishes one message; answers { id }
//   GET  /idle       a one-off sseResponse (keep-alive every second) whose
//                    source yields nothing; the Worker answers it itself

import { SSEChannel, sseResponse } from "../../server.ts";

/** What GET /stats answers. */
export interface WorkerStats {
  size: number;
  reasons: string[];
  /** How many /idle sources were cancelled (the Worker's, not the object's). */
  idleClosed?: number;
}

let idleClosed = 0;

/** The one channel (every request is routed to one object). */
export class ChannelObject {
  #reasons: string[] = [];
  #channel = new SSEChannel({
    keepAlive: 1000,
    onDisconnect: (_context, { reason }) => {
      this.#reasons.push(reason);
    },
  });

  async fetch(request: Request): Promise<Response> {
    switch (`${request.method} ${new URL(request.url).pathname}`) {
      case "GET /events":
        return await this.#channel.connect(request, {
          signal: request.signal,
        });
      case "GET /stats":
        return Response.json(
          {
            size: this.#channel.size,
            reasons: this.#reasons,
          } satisfies WorkerStats,
        );
      case "POST /publish":
        return Response.json({
          id: await this.#channel.publish({ data: "x" }),
        });
      default:
        return new Response("Not found", { status: 404 });
    }
  }
}

interface Namespace {
  idFromName(name: string): unknown;
  get(id: unknown): { fetch(request: Request): Promise<Response> };
}

export default {
  async fetch(
    request: Request,
    env: { CHANNELS: Namespace },
  ): Promise<Response> {
    const path = new URL(request.url).pathname;
    if (path === "/idle") {
      const source = new ReadableStream({
        cancel() {
          idleClosed++;
        },
      });
      return sseResponse(source, { keepAlive: 1000, signal: request.signal });
    }
    const response = await env.CHANNELS.get(env.CHANNELS.idFromName("one"))
      .fetch(request);
    if (path !== "/stats") return response;
    return Response.json({ ...await response.json(), idleClosed });
  },
};
