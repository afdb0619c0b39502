// Copyright the sse authors. MIT license.
// HTTP pieces shared by every event-stream response (sseResponse, SSEChannel):
// the response headers, and the keep-alive timer. Private: never exported from
// mod.ts or deno.json.

import { startTimeout, type Timer } from "./_timer.ts";

/** The `content-type` of every event-stream response. */
export const SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8";

/**
 * The keep-alive frame: a comment line and a blank line. A comment dispatches
 * nothing (§9.2.6), and the blank line ends it on a frame boundary, so it can
 * go between any two frames. Parsers that report comments see "keep-alive".
 */
export const KEEP_ALIVE_FRAME = ": keep-alive\n\n";

/**
 * The first bytes of an event stream that has nothing else to send first (no
 * `retry`, no message yet): an empty comment line and a blank line. A comment
 * dispatches nothing, nor does a blank line while no data is buffered
 * (§9.2.6), and the blank line leaves the stream on a frame boundary. It
 * makes the response's head leave at once: Bun 1.4.5 holds the end of a
 * streaming response's head until the first body byte, and a proxy may hold
 * a response until its body starts, so a client's `open` would otherwise
 * wait for the first message. It is not a keep-alive (`keepAlive: 0` sends
 * it too): three bytes, once per stream.
 */
export const OPENING_FRAME = ":\n\n";

/** Default keep-alive interval, in milliseconds. */
export const DEFAULT_KEEP_ALIVE = 15_000;

/**
 * The shortest keep-alive interval, in milliseconds. Proxies close a
 * connection after tens of seconds of silence, so a keep-alive more often
 * than every second keeps nothing more open: it only costs a write per
 * client (0.0001 ticked about every millisecond).
 */
export const MIN_KEEP_ALIVE = 1000;

// Connection-specific ("hop-by-hop") fields: RFC 9110 §7.6.1 and RFC 9113
// §8.2.2. They describe one connection, which the runtime owns; HTTP/2 and
// HTTP/3 treat a response carrying them as malformed. `content-length` is not
// hop-by-hop, but an event stream has no length: a fixed one would cut the
// stream short or make the runtime refuse the response.
const DROPPED = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "te",
  "content-length",
]);

/**
 * The headers of an event-stream response, with the user's merged in.
 *
 * The rule:
 * - `content-type` is always `text/event-stream; charset=utf-8`: the body is
 *   exactly that, whatever the user passed;
 * - `cache-control` (default `no-cache`) and `x-accel-buffering` (default
 *   `no`, which stops nginx from buffering the stream) take the user's value
 *   when given, as does every other header;
 * - hop-by-hop fields (`connection`, `keep-alive`, `proxy-connection`,
 *   `transfer-encoding`, `upgrade`, `te`), any field the user's `connection`
 *   header names, and `content-length` are dropped.
 *
 * @param init The user's headers, if any.
 * @returns A new `Headers`.
 * @throws {TypeError} When `init` is not headers (`Invalid headers: …`).
 */
export function sseHeaders(init?: HeadersInit): Headers {
  let headers: Headers;
  try {
    headers = new Headers(init);
  } catch (error) {
    // The runtime's words name no option ("Failed to construct 'Headers'").
    throw new TypeError(
      `Invalid headers: ${error instanceof Error ? error.message : error}`,
      { cause: error },
    );
  }
  // RFC 9110 §7.6.1: the fields named in `connection` are hop-by-hop too.
  const named = headers.get("connection");
  if (named !== null) {
    for (const name of named.split(",")) {
      const field = name.trim().toLowerCase();
      if (field !== "") headers.delete(field);
    }
  }
  for (const name of DROPPED) headers.delete(name);
  headers.set("content-type", SSE_CONTENT_TYPE);
  if (!headers.has("cache-control")) headers.set("cache-control", "no-cache");
  if (!headers.has("x-accel-buffering")) headers.set("x-accel-buffering", "no");
  return headers;
}

/**
 * Checks a `keepAlive` option: 0 or `Infinity` turns keep-alive off, and
 * anything else is at least {@linkcode MIN_KEEP_ALIVE} milliseconds.
 *
 * @param value The option as given (`undefined` for the default).
 * @returns The interval in milliseconds, 0 when off.
 * @throws {TypeError} When it is not a number.
 * @throws {RangeError} When it is below the floor, negative or NaN.
 */
export function keepAliveInterval(value: unknown): number {
  if (value === undefined) return DEFAULT_KEEP_ALIVE;
  if (typeof value !== "number") {
    throw new TypeError(
      `Invalid keepAlive: expected a number of milliseconds, got ${typeof value}`,
    );
  }
  if (value === 0 || value === Infinity) return 0;
  if (!(value >= MIN_KEEP_ALIVE)) {
    throw new RangeError(
      `Invalid keepAlive: expected 0 or Infinity (off), or at least ${MIN_KEEP_ALIVE} milliseconds, got ${value}`,
    );
  }
  return value;
}

/**
 * Calls `onIdle` whenever `interval` milliseconds have passed without a write.
 *
 * Writers call {@linkcode KeepAliveTimer.touch} after each write; that only
 * records the time, so a busy stream costs one timer per interval, not one per
 * write. When the timer fires early (the stream wrote meanwhile) it re-arms for
 * the rest of the interval. `onIdle` counts as a write. `stop()` clears the
 * timer for good; call it on every path that ends the stream.
 *
 * `onIdle` must not throw: it runs from a timer, where nobody could catch it.
 */
export class KeepAliveTimer {
  #interval: number;
  #onIdle: () => void;
  #last: number;
  #timer: Timer | undefined;
  #stopped = false;

  /**
   * Starts the timer (does nothing when `interval` is 0).
   *
   * @param interval Milliseconds of idleness before `onIdle`; 0 turns it off.
   * @param onIdle Writes the keep-alive.
   */
  constructor(interval: number, onIdle: () => void) {
    this.#interval = interval;
    this.#onIdle = onIdle;
    this.#last = performance.now();
    if (interval > 0) this.#arm(interval);
    else this.#stopped = true;
  }

  /** Records a write: the idle time starts again from now. */
  touch(): void {
    this.#last = performance.now();
  }

  /** Clears the timer; `onIdle` is never called again. */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #arm(delay: number): void {
    this.#timer = startTimeout(this.#fire, delay);
  }

  #fire = (): void => {
    this.#timer = undefined;
    if (this.#stopped) return;
    const idle = performance.now() - this.#last;
    if (idle >= this.#interval) {
      this.#last = performance.now();
      this.#onIdle();
      if (!this.#stopped) this.#arm(this.#interval);
    } else {
      this.#arm(this.#interval - idle);
    }
  };
}

/**
 * The id a client resumes from: its `Last-Event-ID` header; when it sent
 * none (or an empty one), the query parameter `param` of its URL, which is
 * how a browser's `EventSource`, which cannot set headers, resumes after a
 * page reload (Mercure reads `lastEventID` the same way). The header wins:
 * an `EventSource` opened with the parameter sends it on every reconnection,
 * with a newer id in the header.
 *
 * Header values are ByteStrings: browsers send a non-ASCII id as its UTF-8
 * bytes, which arrive one character per byte, so they are decoded back
 * here. A query parameter is percent-decoded as UTF-8 by the URL parser.
 *
 * @param request A request.
 * @param param The query parameter, or `null` for the header alone.
 * @returns The id the client resumes from, `""` if none.
 */
export function lastEventIdOf(request: Request, param: string | null): string {
  const value = request.headers.get("last-event-id");
  if (value === null || value === "") {
    // Most requests have no query at all: no URL to parse for them.
    if (param === null || !request.url.includes("?")) return "";
    return new URL(request.url).searchParams.get(param) ?? "";
  }
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(value)) return value;
  const bytes = new Uint8Array(value.length);
  for (let i = 0; i < value.length; i++) bytes[i] = value.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/**
 * What to error a response stream with so that the runtime cuts its
 * connection (a peer that never reads would otherwise keep it, and what the
 * stream held, for good), printing at most one line and never a stack trace
 * with its default error handler:
 *
 * - `Deno.serve` and Node through `@hono/node-server` print the reason with
 *   `console.error`, which shows an Error whose `stack` is one line as
 *   `[that line]` (checked on Deno 2.9.6 and Node 20 and 22);
 * - Bun 1.4.5 prints an Error with its source lines and stack whatever its
 *   `stack` says (and a string on two lines), but nothing for `undefined`.
 *
 * @param message One line: what was cut, and why.
 * @returns An Error whose `stack` is `message`; `undefined` on Bun.
 */
export function cutReason(message: string): Error | undefined {
  if ("Bun" in globalThis) return undefined;
  const error = new Error(message);
  error.stack = message;
  return error;
}

/**
 * The answer of an event stream to a method other than GET and HEAD.
 *
 * @returns 405 with `Allow: GET, HEAD` (RFC 9110 §15.5.6).
 */
export function notAllowed(): Response {
  return new Response(
    "Method not allowed: an event stream answers GET and HEAD",
    {
      status: 405,
      headers: {
        allow: "GET, HEAD",
        "content-type": "text/plain; charset=utf-8",
      },
    },
  );
}

/**
 * A Response this runtime's server takes, from a Response of any realm or
 * library (npm undici's on Node, a polyfill): the same one when it is this
 * realm's, else a copy of its status, status text, headers and body.
 *
 * @param response A Response by its shape (see `isResponse`).
 * @returns A `Response` of this realm.
 */
export function nativeResponse(response: Response): Response {
  if (response instanceof Response) return response;
  const foreign: Response = response;
  const headers = new Headers();
  // Headers of another library iterate as Headers do; `get` alone is not.
  if (typeof foreign.headers.forEach === "function") {
    foreign.headers.forEach((value, name) => headers.append(name, value));
  }
  const body: ReadableStream<Uint8Array> | null = foreign.body;
  return new Response(
    body === null || body instanceof ReadableStream ? body : copy(body),
    { status: foreign.status, statusText: foreign.statusText, headers },
  );
}

/** A stream of this realm that reads another realm's. */
function copy(
  body: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/**
 * The answer of a closed channel.
 *
 * @returns 503.
 */
export function unavailable(): Response {
  return new Response("The event channel is closed", {
    status: 503,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
