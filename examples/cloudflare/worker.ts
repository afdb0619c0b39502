// Copyright the sse authors. MIT license.
/**
 * Server-Sent Events on Cloudflare Workers.
 *
 * A Worker's requests can run in different isolates, so a broadcast needs one
 * long-lived place that holds every client of a channel: a Durable Object.
 * `ChannelObject` holds one `SSEChannel`; the Worker routes every request for
 * `/channels/<name>/...` to the object of that name, so the clients of a
 * channel and its publishers meet there. A one-off stream (an LLM-style
 * answer) needs no Durable Object: the Worker answers it with `sseResponse`.
 *
 *   GET  /channels/<name>/events    the channel's event stream (resumes with Last-Event-ID)
 *   POST /channels/<name>/publish   publishes the body as data; answers { id }
 *   GET  /stream?q=<prompt>         a one-off stream of tokens, then `done`
 *
 * Deploy with `npx wrangler deploy` (see wrangler.jsonc beside this file);
 * tests/workers_test.ts runs it in workerd through Miniflare.
 *
 * @module
 */

import { type SSEMessage, sseResponse } from "@sse/sse";
import { SSEChannel } from "@sse/sse/server";

/** The bindings wrangler.jsonc declares. */
export interface Env {
  CHANNELS: DurableObjectNamespace;
}

/** What the Worker needs of a Durable Object namespace binding. */
export interface DurableObjectNamespace {
  idFromName(name: string): unknown;
  get(id: unknown): { fetch(request: Request): Promise<Response> };
}

/** One channel: every client of `/channels/<name>/...` lands here. */
export class ChannelObject {
  // The replay window lives in this object's memory: a client that resumes
  // after the object was evicted gets `resumed: false`.
  #channel = new SSEChannel({ replay: 1000 });

  async fetch(request: Request): Promise<Response> {
    const action = new URL(request.url).pathname.split("/")[3];
    if (request.method === "GET" && action === "events") {
      // workerd does not cancel the stream of a client that left: with the
      // enable_request_signal flag (wrangler.jsonc), this signal tells, at
      // the next keep-alive comment.
      return await this.#channel.connect(request, { signal: request.signal });
    }
    if (request.method === "POST" && action === "publish") {
      const id = await this.#channel.publish({ data: await request.text() });
      return Response.json({ id });
    }
    return new Response("Not found", { status: 404 });
  }
}

async function* tokens(prompt: string): AsyncGenerator<SSEMessage> {
  for (
    const [index, token] of ["Hello", " from", " a", " Worker:", ` ${prompt}`]
      .entries()
  ) {
    await new Promise((resolve) => setTimeout(resolve, 10)); // the model thinking
    yield { id: String(index), data: { token } };
  }
  yield { event: "done", data: "" };
}

export default {
  fetch(request: Request, env: Env): Promise<Response> | Response {
    const url = new URL(request.url);
    const [, first, name] = url.pathname.split("/");
    if (first === "channels" && name) {
      return env.CHANNELS.get(env.CHANNELS.idFromName(name)).fetch(request);
    }
    if (url.pathname === "/stream") {
      // The signal closes the source once the client has left (see above).
      return sseResponse(tokens(url.searchParams.get("q") ?? ""), {
        signal: request.signal,
      });
    }
    return new Response("Not found", { status: 404 });
  },
};
