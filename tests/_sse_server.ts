// Copyright the sse authors. MIT license.
// A real HTTP server on loopback for client tests, scriptable request by
// request: a test either answers every request with a handler, or waits for
// the n-th request and answers it itself (a stream it keeps writing to, a
// status, a drop).

import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";

/**
 * `Deno.test` with the op and resource sanitizers on: Deno 2.9 runs tests with
 * them off unless asked, and nothing here may leak a timer, a body or a socket.
 */
export function test(name: string, fn: () => void | Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: true, sanitizeResources: true });
}

/** One request the server received. */
export interface Exchange {
  /** 0 for the first request, 1 for the second… */
  index: number;
  method: string;
  url: URL;
  /** A copy of the request headers (Deno's close with the response). */
  headers: Headers;
  /** The request body, as text. */
  body: string;
  /** Answers the request (when the server has no handler). */
  respond(response: Response): void;
}

type Handler = (
  exchange: Exchange,
) => Response | Promise<Response>;

const encoder = new TextEncoder();

/** A loopback server that records every request. */
export class TestServer implements AsyncDisposable {
  /** The server's base URL, `http://127.0.0.1:<port>/`. */
  readonly url: URL;
  /** Every request so far, in arrival order. */
  readonly requests: Exchange[] = [];
  #server: Deno.HttpServer;
  #waiters = new Map<number, ((exchange: Exchange) => void)[]>();
  #pending = new Set<(response: Response) => void>();
  #streams = new Set<EventStream>();

  /**
   * @param handler Answers every request; without one, the test answers each
   * request through `respond`.
   */
  constructor(handler?: Handler) {
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
      // Errors of streams a test drops on purpose: not worth a log line.
      onError: () => new Response(null, { status: 500 }),
    }, async (request) => {
      const body = await request.text();
      let answer!: (response: Response) => void;
      const answered = new Promise<Response>((resolve) => {
        answer = resolve;
      });
      this.#pending.add(answer);
      const exchange: Exchange = {
        index: this.requests.length,
        method: request.method,
        url: new URL(request.url),
        headers: new Headers(request.headers),
        body,
        respond: (response) => {
          this.#pending.delete(answer);
          answer(response);
        },
      };
      this.requests.push(exchange);
      for (const waiter of this.#waiters.get(exchange.index) ?? []) {
        waiter(exchange);
      }
      this.#waiters.delete(exchange.index);
      if (handler !== undefined) exchange.respond(await handler(exchange));
      return answered;
    });
    this.url = new URL(
      `http://127.0.0.1:${(this.#server.addr as Deno.NetAddr).port}/`,
    );
  }

  /** Resolves with the `index`-th request (0-based) once it has arrived. */
  request(index: number): Promise<Exchange> {
    const exchange = this.requests[index];
    if (exchange !== undefined) return Promise.resolve(exchange);
    return new Promise((resolve) => {
      const waiters = this.#waiters.get(index) ?? [];
      waiters.push(resolve);
      this.#waiters.set(index, waiters);
    });
  }

  /** A stream response that this server ends when it closes. */
  stream(init?: ResponseInit): EventStream {
    const stream = new EventStream(init, () => this.#streams.delete(stream));
    this.#streams.add(stream);
    return stream;
  }

  /** Ends every stream, answers waiting requests with 503, and stops. */
  async close(): Promise<void> {
    for (const stream of this.#streams) stream.end();
    for (const answer of this.#pending) {
      answer(new Response(null, { status: 503 }));
    }
    this.#pending.clear();
    await this.#server.shutdown();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A `text/event-stream` response the test writes to as it goes. */
export class EventStream {
  readonly response: Response;
  /** Settles when the client cancels the stream (it disconnected). */
  readonly cancelled: Promise<void>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #open = true;
  #onDone: () => void;

  constructor(init: ResponseInit | undefined, onDone: () => void) {
    this.#onDone = onDone;
    let cancelled!: () => void;
    this.cancelled = new Promise((resolve) => {
      cancelled = resolve;
    });
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      cancel: () => {
        this.#finish();
        cancelled();
      },
    });
    const headers = new Headers(init?.headers);
    if (!headers.has("content-type")) {
      headers.set("content-type", "text/event-stream");
    }
    this.response = new Response(body, { ...init, headers });
  }

  /** Whether the stream can still be written to. */
  get open(): boolean {
    return this.#open;
  }

  /** Sends text (or bytes) as one chunk. */
  send(chunk: string | Uint8Array): void {
    if (!this.#open) return;
    this.#controller.enqueue(
      typeof chunk === "string" ? encoder.encode(chunk) : chunk,
    );
  }

  /** Ends the response normally. */
  end(): void {
    if (!this.#open) return;
    this.#finish();
    this.#controller.close();
  }

  /** Cuts the connection in the middle of the response. */
  drop(): void {
    if (!this.#open) return;
    this.#finish();
    this.#controller.error(new Error("dropped by the test"));
  }

  #finish(): void {
    this.#open = false;
    this.#onDone();
  }
}

/** A response with an event-stream body sent at once. */
export function eventStreamResponse(
  body: string | null,
  init?: ResponseInit,
): Response {
  const headers = new Headers(init?.headers);
  if (!headers.has("content-type")) {
    headers.set("content-type", "text/event-stream");
  }
  return new Response(body, { ...init, headers });
}

/**
 * A fetch whose responses are plain objects shaped like a `Response`, as npm
 * undici's or node-fetch's are in Node: not this realm's `Response` class.
 */
export function foreignFetch(
  input: string | URL | Request,
  init?: RequestInit,
): Promise<Response> {
  return fetch(input, init).then((response) =>
    ({
      status: response.status,
      statusText: response.statusText,
      ok: response.ok,
      url: response.url,
      type: response.type,
      headers: response.headers,
      body: response.body,
      bodyUsed: false,
    }) as unknown as Response
  );
}

/** Values pushed by callbacks, awaited one at a time by the test. */
export class Queue<T> {
  #items: T[] = [];
  #waiters: ((value: T) => void)[] = [];
  readonly all: T[] = [];

  push = (value: T): void => {
    this.all.push(value);
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter(value);
    else this.#items.push(value);
  };

  shift(): Promise<T> {
    if (this.#items.length > 0) return Promise.resolve(this.#items.shift()!);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The next `count` values. */
  async take(count: number): Promise<T[]> {
    const values: T[] = [];
    while (values.length < count) values.push(await this.shift());
    return values;
  }
}

/** A fake clock for the timers the client and EventSource use; real I/O runs. */
export function fakeClock(): FakeTimers.Clock {
  return FakeTimers.withGlobal(globalThis).install({
    toFake: ["setTimeout", "clearTimeout", "Date"],
  });
}

export { within } from "./_channel.ts";

/**
 * Asserts what a client facing a server that fails every attempt may do in
 * 2 s: wait 100-200 ms after the first failure, and twice as long (with
 * equal jitter) after each next one, so at most 6 requests in all.
 *
 * @param delays The waits after failures 1, 2, … in order.
 * @param requests The requests the server received in those 2 s.
 */
export function assertFailureBackoff(delays: number[], requests: number): void {
  assert.ok(requests <= 6, `${requests} requests in 2 s: ${delays}`);
  for (const [failures, delay] of delays.entries()) {
    const ceiling = 100 * 2 ** (failures + 1);
    assert.ok(
      delay >= ceiling / 2 && delay <= ceiling,
      `wait ${failures + 1}: ${delay} ms, outside [${ceiling / 2}, ${ceiling}]`,
    );
  }
}
