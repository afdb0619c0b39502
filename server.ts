// Copyright the sse authors. MIT license.
/**
 * Serve event streams from any `Request => Response` runtime (`Deno.serve`,
 * Bun, Cloudflare Workers, Node through web streams).
 *
 * {@linkcode sseResponse} turns an async iterable or a `ReadableStream` of
 * {@linkcode SSEMessage}s into a streaming `Response`: the right headers,
 * keep-alive comments while idle, and a source that is closed the moment the
 * client goes away.
 *
 * {@linkcode SSEChannel} broadcasts to many clients, with topics, resume,
 * hooks, keep-alive and slow-client protection, through an
 * {@linkcode SSEBroker}: {@linkcode MemoryBroker} (the default) within one
 * process; {@linkcode BroadcastChannelBroker} between the Workers of one
 * process. Neither reaches other processes: for several servers, use
 * `RedisBroker` (`@sse/sse/redis`); on Deno Deploy, `DenoKvBroker`
 * (`@sse/sse/kv`). `BroadcastChannelBroker` is not for Deno Deploy: Deploy
 * Classic, whose `BroadcastChannel` linked isolates, was shut down on
 * 2026-07-20, and Deploy isolates are now isolated from each other.
 *
 * @example Stream an LLM's tokens from `Deno.serve`
 * ```ts
 * import { sseResponse } from "@sse/sse/server";
 *
 * async function* tokens() {
 *   for (const token of ["Hel", "lo", "!"]) yield { data: { token } };
 *   yield { event: "done", data: "" };
 * }
 *
 * const server = Deno.serve(
 *   { hostname: "127.0.0.1", port: 0, onListen() {} },
 *   () => sseResponse(tokens()),
 * );
 * const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
 * console.log(await response.text()); // data: {"token":"Hel"}\n\n…
 * await server.shutdown();
 * ```
 *
 * @module
 */

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import {
  KEEP_ALIVE_FRAME,
  keepAliveInterval,
  KeepAliveTimer,
  OPENING_FRAME,
  sseHeaders,
} from "./_http.ts";
import { observe } from "./_channel_options.ts";

export type { SSEMessage } from "./encoder.ts";

/** Options of {@linkcode sseResponse}. */
export interface SSEResponseInit {
  /**
   * Extra response headers, merged over the defaults
   * (`content-type: text/event-stream; charset=utf-8`, `cache-control:
   * no-cache`, `x-accel-buffering: no`). `content-type` cannot be changed,
   * and hop-by-hop headers (`connection`, `transfer-encoding`, `keep-alive`,
   * `upgrade`, …) and `content-length` are dropped: they describe a
   * connection, which the runtime owns, and break HTTP/2.
   *
   * @default {undefined}
   */
  headers?: HeadersInit | undefined;
  /**
   * After this many milliseconds without a write, a `: keep-alive` comment is
   * sent, so that proxies and load balancers do not close an idle stream.
   * Every write restarts the wait. `0` or `Infinity` turns keep-alive off;
   * anything else must be at least 1000 (a `RangeError` otherwise):
   * proxies wait tens of seconds before closing a silent stream, so more
   * often keeps nothing more open.
   *
   * @default {15000}
   */
  keepAlive?: number | undefined;
  /**
   * Ends the stream when aborted: the source is closed (its iterator's
   * `return()`, or the stream's `cancel()`), and the response ends cleanly.
   *
   * @default {undefined}
   */
  signal?: AbortSignal | undefined;
  /**
   * A reconnection delay in milliseconds, sent as the first frame
   * (`retry: …`) before any message. Without it, the stream starts with an
   * empty comment (`:` and a blank line) instead, so that the response's
   * head leaves at once whatever the source does (Bun holds it until the
   * first body byte).
   *
   * @default {undefined}
   */
  retry?: number | undefined;
  /**
   * Called with what the source threw (or the error of a message that
   * `encodeSSE` refused, or of closing the source) after the stream has ended
   * cleanly. The client sees a normal end of stream and no error detail. It
   * should not throw; if it does, what it threw is logged with
   * `console.error`. It may be async: nothing waits for it, and a rejection
   * is logged the same way.
   *
   * @default {(error) => console.error(…)}
   */
  onError?: ((error: unknown) => void) | undefined;
}

const encoder = new TextEncoder();

// The source, whichever kind it is: the next message, and how to close it.
interface Source {
  next(): Promise<IteratorResult<SSEMessage>>;
  close(reason: unknown): Promise<unknown>;
}

/**
 * Creates a streaming `Response` from a source of messages.
 *
 * The source is read only when the client is ready for more (the body is
 * pull-based), so a slow client never makes the server queue messages. When
 * the client disconnects (the body is cancelled) or `signal` aborts, the
 * keep-alive timer is cleared and the source is closed at once: its
 * iterator's `return()` is called (an async generator runs its `finally`
 * blocks; a `ReadableStream` is cancelled). A source that throws, or yields a
 * message `encodeSSE` refuses, ends the stream cleanly and the error goes to
 * `onError`.
 *
 * An async generator that is suspended in an `await` (for a model's next
 * token, say) runs its `finally` blocks when that `await` settles: JavaScript
 * queues `return()` behind the step in progress. Abort upstream work (a
 * `fetch` to the model) in that `finally`, and pass `signal` to it as well
 * when the server may end streams itself.
 *
 * On `Deno.serve` there is no need for the request's signal: a disconnect
 * cancels the body, which is what closes the source.
 *
 * Frames are written exactly as {@linkcode encodeSSE} writes them, one chunk
 * per message, after the `retry` frame or, without `retry`, an empty comment
 * (`:` and a blank line) that makes the response's head leave at once.
 *
 * @example A finite stream, read back
 * ```ts
 * import { sseResponse } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * async function* messages() {
 *   yield { data: "hello" };
 *   yield { event: "done", id: "1", data: "" };
 * }
 * const response = sseResponse(messages(), { retry: 2000 });
 * assert.equal(
 *   response.headers.get("content-type"),
 *   "text/event-stream; charset=utf-8",
 * );
 * assert.equal(
 *   await response.text(),
 *   "retry: 2000\n\ndata: hello\n\nevent: done\nid: 1\ndata: \n\n",
 * );
 * ```
 *
 * @example End every stream on shutdown, and report source errors
 * ```ts
 * import { type SSEMessage, sseResponse } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * async function* prices(): AsyncGenerator<SSEMessage> {
 *   for (let i = 0;; i++) yield { id: i, data: { price: 100 + i } };
 * }
 * const shutdown = new AbortController();
 * const response = sseResponse(prices(), {
 *   signal: shutdown.signal,
 *   onError: (error) => console.error("price feed failed", error),
 * });
 * const reader = response.body!.getReader();
 * await reader.read(); // id: 0, data: {"price":100}
 * shutdown.abort(); // the generator is closed and the response ends
 * assert.equal((await reader.read()).done, true);
 * ```
 *
 * @param source An async iterable (such as an async generator) or a
 * `ReadableStream` of messages. The response takes ownership of it.
 * @param init Headers, keep-alive, abort signal, initial `retry`, `onError`.
 * @returns A `Response` with status 200 whose body is the event stream.
 * @throws {TypeError} When `source` is neither, or an option has the wrong type.
 * @throws {RangeError} When `keepAlive` is below 1000 (but 0 or `Infinity`,
 * which turn it off), negative or `NaN`, or `retry` is not a non-negative
 * integer.
 */
export function sseResponse(
  source: AsyncIterable<SSEMessage> | ReadableStream<SSEMessage>,
  init: SSEResponseInit = {},
): Response {
  const { signal, retry } = init;
  const interval = keepAliveInterval(init.keepAlive);
  const onError = init.onError ?? logError;
  if (typeof onError !== "function") {
    throw new TypeError(
      `Invalid onError: expected a function, got ${typeof onError}`,
    );
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError("Invalid signal: expected an AbortSignal");
  }
  const retryFrame = retry === undefined ? undefined : encodeSSE({ retry });
  const headers = sseHeaders(init.headers);
  const input = open(source);

  let done = false;
  let timer: KeepAliveTimer | undefined;
  let controller!: ReadableStreamDefaultController<Uint8Array>;

  const report = (error: unknown): void => {
    try {
      // An async onError is not waited for, and never rejects unhandled.
      observe(onError(error), (thrown) => {
        console.error("sseResponse: onError rejected", thrown, "on", error);
      });
    } catch (thrown) {
      console.error("sseResponse: onError threw", thrown, "on", error);
    }
  };
  // Closes the source; its failure to close is reported, never thrown.
  const closeSource = (reason: unknown): Promise<void> => {
    let closing: Promise<unknown>;
    try {
      closing = input.close(reason);
    } catch (error) {
      closing = Promise.reject(error);
    }
    return closing.then(() => {}, report);
  };
  // Every way the stream ends goes through here: nothing keeps running.
  const finish = (): void => {
    done = true;
    timer?.stop();
    signal?.removeEventListener("abort", onAbort);
  };
  const onAbort = (): void => {
    if (done) return;
    finish();
    controller.close();
    closeSource(signal?.reason);
  };
  const ping = (): void => {
    // A client that has not taken what is queued gains nothing from more.
    if ((controller.desiredSize ?? 0) < 0) return;
    controller.enqueue(encoder.encode(KEEP_ALIVE_FRAME));
  };

  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      // A first byte at once, so that the head leaves at once on every
      // runtime (see OPENING_FRAME).
      c.enqueue(encoder.encode(retryFrame ?? OPENING_FRAME));
      if (signal?.aborted) {
        onAbort();
      } else {
        signal?.addEventListener("abort", onAbort, { once: true });
      }
    },
    async pull(c) {
      if (done) return;
      // Keep-alive starts with the first read: a response nobody reads
      // leaves no timer behind.
      timer ??= new KeepAliveTimer(interval, ping);
      let result: IteratorResult<SSEMessage>;
      try {
        result = await input.next();
      } catch (error) {
        // Errors after the stream ended (usually caused by ending it) are
        // the source's own business.
        if (done) return;
        finish();
        c.close();
        report(error);
        return;
      }
      if (done) return; // cancelled or aborted while waiting
      let frame: string;
      try {
        if (typeof result !== "object" || result === null) {
          throw new TypeError(
            `Invalid source: next() resolved to ${
              result === null ? "null" : typeof result
            }, not an iterator result`,
          );
        }
        if (result.done) {
          finish();
          c.close();
          return;
        }
        frame = encodeSSE(result.value);
      } catch (error) {
        // A message the encoder refuses: the source is still open.
        finish();
        c.close();
        report(error);
        await closeSource(error);
        return;
      }
      c.enqueue(encoder.encode(frame));
      timer.touch();
    },
    cancel(reason) {
      // The client went away.
      if (done) return;
      finish();
      return closeSource(reason);
    },
  }, { highWaterMark: 0 });

  return new Response(body, { status: 200, headers });
}

function open(
  source: AsyncIterable<SSEMessage> | ReadableStream<SSEMessage>,
): Source {
  if (source instanceof ReadableStream) {
    // A reader, not the stream's async iterator: its return() would wait for
    // a pending read, and reader.cancel() ends one at once.
    const reader = source.getReader();
    return {
      next: () => reader.read() as Promise<IteratorResult<SSEMessage>>,
      close: (reason) => reader.cancel(reason),
    };
  }
  const from = (source as Partial<AsyncIterable<SSEMessage>> | null)
    ?.[Symbol.asyncIterator];
  if (typeof from !== "function") {
    throw new TypeError(
      "Invalid source: expected an async iterable or a ReadableStream of messages",
    );
  }
  const iterator = from.call(source);
  return {
    next: () => iterator.next(),
    close: async () => {
      // Not awaiting a pending next(): return() is called at once, and an
      // async generator runs it as soon as its current step settles.
      await iterator.return?.();
    },
  };
}

function logError(error: unknown): void {
  console.error("sseResponse: the source failed, so the stream ended", error);
}

export { SSEChannel } from "./_channel.ts";
export type {
  SSEChannelOptions,
  SSEDisconnectReason,
} from "./_channel_options.ts";
export type { SSEChannelClient, SSEChannelMetrics } from "./_presence.ts";
export { MemoryBroker } from "./_broker.ts";
export type {
  MemoryBrokerOptions,
  SSEBroker,
  SSEBrokerEntry,
  SSEBrokerGap,
  SSEBrokerSubscribeOptions,
  SSEBrokerSubscription,
} from "./_broker.ts";
export { BroadcastChannelBroker } from "./_broadcast_broker.ts";
export type { BroadcastChannelBrokerOptions } from "./_broadcast_broker.ts";
