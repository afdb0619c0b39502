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

import { SSEChannel } from "../../server.ts";

/** What GET /stats answers. */
export interface WorkerStats {
  size: number;
  reasons: string[];
}

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
  fetch(request: Request, env: { CHANNELS: Namespace }): Promise<Response> {
    return env.CHANNELS.get(env.CHANNELS.idFromName("one")).fetch(request);
  },
};
