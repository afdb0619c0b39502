// Copyright the sse authors. MIT license.
// The connection machinery shared by SSEClient and EventSource: building one
// attempt's request (refusing what can never succeed, see _refusal.ts),
// classifying its response, reading its body with an idle timeout, the
// backoff between failed attempts, and tearing it all down at once. Policy
// (when to retry, what to report) stays with the callers.
// Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#the-eventsource-interface

import {
  checkRequest,
  codePoint,
  describeFailure,
  headersProblem,
  isRefusal,
  unsendable,
} from "./_refusal.ts";
import { describe } from "./_json.ts";
import { isResponse } from "./_response.ts";
import { MAX_DELAY, startTimeout, type Timer, timerDelay } from "./_timer.ts";

/** `readyState` values, as EventSource has them. */
export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 2;
export type ReadyState = typeof CONNECTING | typeof OPEN | typeof CLOSED;

/** The `fetch` a client uses: the global one, or one that was injected. */
export type FetchLike = (
  input: string | URL | Request,
  init?: RequestInit,
) => Promise<Response>;

/** Request headers: a value, or a function called before every attempt. */
export type HeadersSource =
  | HeadersInit
  | (() => HeadersInit | Promise<HeadersInit>);

const DONE = { done: true } as ReadableStreamReadDoneResult<Uint8Array>;

// What a wait races against, settled by close(): a value no fetch, headers
// function or callback can resolve to (they may all resolve to undefined).
const STOPPED: unique symbol = Symbol("stopped");

// The buffer a body is read into, when its stream lets the reader bring one
// (a byte stream: fetch's, in Deno, Bun, Node and Workers): read after read,
// the same memory, instead of a new 64 KiB buffer for each chunk, which costs
// more than parsing the chunk.
const READ_BUFFER_SIZE = 64 * 1024;

function ignore(): void {}

/**
 * Resolves `url` against the document's location when there is one (browsers,
 * `deno run --location`), so relative URLs work where they mean something.
 * Throws a `TypeError` when it cannot be parsed.
 */
export function resolveURL(url: string | URL): URL {
  const base = (globalThis as { location?: { href?: string } }).location
    ?.href;
  return new URL(url, base);
}

/**
 * The `fetch` option, checked: the one given, else the global `fetch`.
 * Throws a `TypeError` when that is not a function.
 */
export function fetchOption(fetch: FetchLike | undefined): FetchLike {
  const chosen = fetch ?? globalThis.fetch;
  if (typeof chosen !== "function") {
    throw new TypeError(
      `Invalid fetch: expected a function, got ${typeof chosen}`,
    );
  }
  return chosen;
}

/**
 * The `headers` option, checked once rather than at every attempt: a value
 * must be one `Headers` accepts (else its `TypeError`) and fetch can send
 * (see {@linkcode headersProblem}); a function is called, and its result
 * checked, before every attempt.
 */
export function headersOption(
  headers: HeadersSource | undefined,
): HeadersSource | undefined {
  if (headers !== undefined && typeof headers !== "function") {
    const problem = headersProblem(new Headers(headers));
    if (problem !== undefined) throw new TypeError(problem);
  }
  return headers;
}

/**
 * Header values are ByteStrings: a non-ASCII last event ID goes out as its
 * UTF-8 bytes, as browsers send it (§9.2.3 "encoded as UTF-8"), one Latin-1
 * character per byte.
 */
export function toByteString(text: string): string {
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(text)) return text;
  const bytes = new TextEncoder().encode(text);
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    out += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return out;
}

/**
 * The text of a header value: its bytes (one Latin-1 character each) read as
 * UTF-8, the inverse of {@linkcode toByteString}; the value itself when they
 * are not UTF-8.
 */
export function fromByteString(value: string): string {
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(value)) return value;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(
      Uint8Array.from(value, (char) => char.charCodeAt(0)),
    );
  } catch {
    return value;
  }
}

/**
 * The headers of one attempt: the caller's, then `Accept` (unless the caller
 * chose one and `forceAccept` is off), then `Last-Event-ID` when one is known
 * and can be sent (see {@linkcode unsendableId}).
 */
export function requestHeaders(
  init: HeadersInit | undefined,
  lastEventId: string,
  forceAccept: boolean,
): Headers {
  const headers = new Headers(init);
  if (forceAccept || !headers.has("accept")) {
    headers.set("accept", "text/event-stream");
  }
  // The protocol owns this header: the caller's never goes out, and after an
  // empty `id` none does (§9.2.3: only "if the last event ID string is not
  // the empty string").
  headers.delete("last-event-id");
  if (lastEventId !== "" && unsendableId(lastEventId) === undefined) {
    headers.set("last-event-id", toByteString(lastEventId));
  }
  return headers;
}

/**
 * Why a last event ID cannot go out as `Last-Event-ID`, if it cannot. The
 * event stream allows any character but NUL, CR and LF in an `id`; a header
 * value does not allow the other control characters (fetch refuses the whole
 * request), nor a leading or trailing space or tab (`Headers` strips them, so
 * the server would read another ID: " 5 " as "5"). Such an ID is left out,
 * so that reconnection still reaches the server (which then starts the
 * client afresh), instead of failing before a byte is sent, every time, or
 * resuming from the wrong place.
 *
 * @returns `undefined` when it can be sent, else a sentence saying why not.
 */
export function unsendableId(lastEventId: string): string | undefined {
  const bad = unsendable(lastEventId);
  let why: string;
  if (bad !== undefined) {
    why = `it contains ${codePoint(bad.char)} at index ${bad.index}`;
  } else if (/^[\t ]/.test(lastEventId)) {
    why = `it begins with ${
      codePoint(lastEventId[0]!)
    }, which a header value cannot`;
  } else if (/[\t ]$/.test(lastEventId)) {
    why = `it ends with ${
      codePoint(lastEventId.at(-1)!)
    }, which a header value cannot`;
  } else {
    return undefined;
  }
  return `Last event ID ${
    JSON.stringify(lastEventId)
  } cannot be sent as Last-Event-ID (${why})`;
}

/**
 * The essence of a `Content-Type` (type/subtype, lowercase, no parameters),
 * or `""` when there is none.
 */
export function mimeEssence(contentType: string | null): string {
  if (contentType === null) return "";
  const semicolon = contentType.indexOf(";");
  const essence = semicolon === -1
    ? contentType
    : contentType.slice(0, semicolon);
  // HTTP whitespace only (tab, LF, CR, space), as the MIME Sniffing standard.
  return essence.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "").toLowerCase();
}

/** Whether the response declares an event stream, parameters and case aside. */
export function isEventStream(response: Response): boolean {
  return mimeEssence(response.headers.get("content-type")) ===
    "text/event-stream";
}

/**
 * A `Retry-After` header in milliseconds from `now`: delay-seconds or an
 * HTTP-date (RFC 9110 §10.2.3). `undefined` when absent or unreadable.
 */
export function parseRetryAfter(
  value: string | null,
  now: number,
): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return date > now ? date - now : 0;
}

/** Default for how much the wait grows with each failure in a row. */
export const DEFAULT_BACKOFF_FACTOR = 2;

/** Default for the longest wait backoff and `Retry-After` may reach, in ms. */
export const DEFAULT_MAX_RETRY_DELAY = 30_000;

/**
 * The least wait after a failed attempt, in milliseconds, whatever the
 * server's `retry`: a server that asks for `retry: 0` and then fails, or
 * closes every stream before an event, is not hammered in a loop.
 */
export const MIN_FAILURE_WAIT = 100;

/**
 * A connection that delivered events and lived less than this, in
 * milliseconds, is short: a run of short connections is a reconnect storm.
 */
export const SHORT_CONNECTION = 1000;

/**
 * How many short connections in a row reconnect after exactly the
 * reconnection time, before the waits grow.
 */
export const STORM_ALLOWANCE = 3;

/**
 * The waits between connections, so that no server can make a client
 * reconnect in a loop.
 *
 * - A failed attempt is one that delivered no event: a network error, a
 *   retryable status, or a stream that opened and ended (or dropped) before
 *   an event. Failures in a row wait longer and longer (see
 *   {@linkcode Backoff.next}). A successful open does not end the run: a
 *   server that accepts every connection and closes it at once is failing.
 * - A connection that delivered events ends the run of failures, and the
 *   next attempt waits exactly the reconnection time, as the standard says
 *   and the web-platform-tests check; unless it is part of a reconnect storm
 *   (see {@linkcode Backoff.afterProgress}): a server that sends one event
 *   (the same snapshot, say) and closes, with `retry: 0`, is hammered too.
 *
 * Every wait is at most {@linkcode MAX_DELAY}, the longest a timer holds
 * (about 24.8 days): a server's `retry: 2147483648` or more is a long wait,
 * not "never", which would arm no timer and let a script whose main loop is
 * the iteration exit at once.
 */
export class Backoff {
  #factor: number;
  #maxDelay: number;
  #failures = 0;
  #short = 0;
  #storming = false;

  /**
   * @param factor How much the wait grows with each failure in a row.
   * @param maxDelay The longest wait that growth and `Retry-After` reach.
   */
  constructor(factor: number, maxDelay: number) {
    this.#factor = factor;
    this.#maxDelay = maxDelay;
  }

  /**
   * Whether the last connection that delivered events was part of a
   * reconnect storm: it is no progress (SSEClient's `maxRetries` keeps
   * counting through it).
   */
  get storming(): boolean {
    return this.#storming;
  }

  /**
   * Counts a connection that delivered events, and returns the wait before
   * the next one: the reconnection time, exactly; but from the
   * ({@linkcode STORM_ALLOWANCE} + 1)th short connection in a row (one that
   * lived less than {@linkcode SHORT_CONNECTION}), while the reconnection
   * time is below that too, the wait grows as after failures, one step per
   * short connection beyond the allowance. A connection that lived long
   * enough ends the run.
   *
   * @param base The reconnection time: the server's `retry`, or the default.
   * @param lived How long the connection was open, in milliseconds.
   */
  afterProgress(base: number, lived: number): number {
    this.#failures = 0;
    this.#short = lived < SHORT_CONNECTION ? this.#short + 1 : 0;
    const beyond = this.#short - STORM_ALLOWANCE;
    this.#storming = beyond > 0 && base < SHORT_CONNECTION;
    return this.#storming
      ? this.#grow(base, beyond)
      : Math.min(base, MAX_DELAY);
  }

  /**
   * Counts a failed attempt and returns the wait before the next one: from
   * the reconnection time (raised to {@linkcode MIN_FAILURE_WAIT}), times
   * the factor per failure in a row, up to the maximum delay, randomised
   * between half and all of that ("equal jitter", so clients that failed
   * together spread out) but never below the reconnection time; and at
   * least `Retry-After`, up to the maximum delay.
   *
   * @param base The reconnection time: the server's `retry`, or the default.
   * @param retryAfter A `Retry-After` header, in milliseconds, if any.
   */
  next(base: number, retryAfter?: number): number {
    let wait = this.#grow(base, ++this.#failures);
    if (retryAfter !== undefined) {
      wait = Math.max(wait, Math.min(retryAfter, this.#maxDelay));
    }
    return Math.min(wait, MAX_DELAY);
  }

  #grow(base: number, steps: number): number {
    const floor = Math.max(base, MIN_FAILURE_WAIT);
    const ceiling = Math.min(this.#maxDelay, floor * this.#factor ** steps);
    return Math.round(Math.max(floor, ceiling * (0.5 + Math.random() / 2)));
  }
}

/**
 * One connection attempt and, when it succeeds, its open stream. `close()`
 * ends everything it holds at once: it cancels the body (aborting the fetch
 * alone can leave a read pending forever on Deno), aborts the fetch, and
 * releases every await.
 *
 * The idle timeout covers the whole attempt: each wait for the caller's
 * promises (a headers function, a response callback), for the response, and
 * for each chunk. When it fires, the connection closes and the wait rejects
 * with a `TimeoutError`.
 */
export class Connection {
  #controller = new AbortController();
  #response: Response | undefined = undefined;
  #reader:
    | ReadableStreamDefaultReader<Uint8Array>
    | ReadableStreamBYOBReader
    | undefined = undefined;
  // With a BYOB reader: the buffer of the next read (the last chunk read
  // lies in it until then).
  #view: Uint8Array | undefined = undefined;
  #closed = false;
  // Settles when close() is called, to release awaits the fetch signal cannot
  // reach (a headers function, an injected fetch that ignores its signal).
  #stop!: () => void;
  #stopped: Promise<typeof STOPPED>;
  #idleTimeout: number;
  #timer: Timer | undefined = undefined;
  // What the armed timer waits for, for its error message.
  #waitingFor = "";
  #timedOut: DOMException | undefined = undefined;

  /**
   * @param idleTimeout Milliseconds any one wait of the attempt may last
   * (see above); `Infinity` turns it off.
   */
  constructor(idleTimeout: number) {
    this.#idleTimeout = idleTimeout;
    this.#stopped = new Promise<typeof STOPPED>((resolve) => {
      this.#stop = () => resolve(STOPPED);
    });
  }

  /** Whether close() was called (by the owner, or by the idle timeout). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the idle timeout closed it. */
  get timedOut(): boolean {
    return this.#timedOut !== undefined;
  }

  /**
   * Waits for `promise`, or until close() is called (then `undefined`):
   * for awaits that no abort signal reaches. The idle timeout applies.
   *
   * @param promise What to wait for.
   * @param what Names it in the timeout's message.
   * @throws {DOMException} A `TimeoutError` when the idle timeout fires first.
   */
  async until<T>(
    promise: T | Promise<T>,
    what: string,
  ): Promise<T | undefined> {
    this.#arm(`${what} did not settle within ${this.#idleTimeout} ms`);
    try {
      const value = await Promise.race([promise, this.#stopped]);
      if (this.#timedOut !== undefined) throw this.#timedOut;
      return value === STOPPED || this.#closed ? undefined : value;
    } finally {
      this.#disarm();
    }
  }

  /**
   * Sends the request. Resolves with the response (whatever its status),
   * whose body this connection owns from then on; rejects on a network
   * error (a network-error response included), an idle timeout or close(),
   * with a `TypeError` before anything is sent when the request can never
   * succeed (see _refusal.ts), and with an {@linkcode InvalidResponse} when
   * an injected fetch resolves to something that is not a response.
   *
   * A response is anything shaped like one (a numeric `status`, `headers`
   * with `get`, and a `body` that is `null` or has `getReader`), not only
   * this realm's `Response`: npm undici's, node-fetch's, a polyfill's.
   */
  async open(
    fetch: FetchLike,
    url: string,
    init: RequestInit,
  ): Promise<Response> {
    checkRequest(url, init);
    init.signal = this.#controller.signal;
    this.#arm(`No bytes received for ${this.#idleTimeout} ms`);
    try {
      const pending = Promise.resolve(fetch(url, init));
      const result = await Promise.race([pending, this.#stopped]);
      if (result === STOPPED || this.#closed) {
        // Closed first: a response that still arrives is released unread.
        pending.then(discard, ignore);
        throw this.#timedOut ??
          new DOMException("The connection was closed", "AbortError");
      }
      const response = asResponse(result);
      if (response.type === "error" || response.status === 0) {
        // Fetch §2.2.6: a network error, as a response (Response.error()).
        discard(response);
        throw new TypeError(
          "Network error: the fetch option resolved to a network error response (status 0)",
        );
      }
      this.#response = response;
      return response;
    } finally {
      this.#disarm();
    }
  }

  /**
   * Reads the next chunk of the body, which stays valid until the next
   * read (its memory is reused). After close() it resolves as done; an idle
   * timeout rejects it with a `TimeoutError`.
   */
  read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    const reader = this.#reader ?? this.#takeReader();
    if (reader === undefined) {
      return this.#timedOut === undefined
        ? Promise.resolve(DONE)
        : Promise.reject(this.#timedOut);
    }
    const view = this.#view;
    const read = view === undefined
      ? (reader as ReadableStreamDefaultReader<Uint8Array>).read()
      : (reader as ReadableStreamBYOBReader).read(view).then(this.#reuse);
    // Hot path: no timer.
    if (timerDelay(this.#idleTimeout) === undefined) return read;
    this.#arm(`No bytes received for ${this.#idleTimeout} ms`);
    return read.then(this.#afterRead, this.#afterReadError);
  }

  // The read moved the buffer into its result; the next one reuses it.
  #reuse = (
    result: ReadableStreamReadResult<Uint8Array>,
  ): ReadableStreamReadResult<Uint8Array> => {
    const value = result.value;
    if (value !== undefined) this.#view = new Uint8Array(value.buffer);
    return result;
  };

  /**
   * The start of the body, as text, for an error report: at most `limit`
   * bytes, and what arrives within `ms` milliseconds. Closes the connection.
   *
   * @returns The text, or `undefined` when there is no body, or it was
   * already read (by a response callback).
   */
  async text(limit: number, ms: number): Promise<string | undefined> {
    const body = this.#response?.body;
    if (
      body === null || body === undefined ||
      (this.#reader === undefined && (body.locked || this.#response!.bodyUsed))
    ) {
      this.close();
      return undefined;
    }
    const deadline = startTimeout(() => this.close(), ms);
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      while (size < limit) {
        const { done, value } = await this.read();
        if (done) break;
        chunks.push(value.slice()); // the next read reuses its memory
        size += value.length;
      }
    } catch {
      // A body cut short: what came is what there is.
    } finally {
      if (deadline !== undefined) clearTimeout(deadline);
      this.close();
    }
    const bytes = new Uint8Array(Math.min(size, limit));
    let offset = 0;
    for (const chunk of chunks) {
      if (offset === bytes.length) break;
      const part = chunk.subarray(0, bytes.length - offset);
      bytes.set(part, offset);
      offset += part.length;
    }
    // A character cut by the limit is dropped, not turned into U+FFFD.
    return new TextDecoder().decode(bytes, { stream: true });
  }

  #takeReader():
    | ReadableStreamDefaultReader<Uint8Array>
    | ReadableStreamBYOBReader
    | undefined {
    const body = this.#response?.body;
    if (this.#closed || body === null || body === undefined) return undefined;
    try {
      this.#reader = body.getReader({ mode: "byob" });
      this.#view = new Uint8Array(READ_BUFFER_SIZE);
    } catch {
      // Not a byte stream (a Response made from a plain stream, say).
      this.#reader = body.getReader();
    }
    return this.#reader;
  }

  #afterRead = (
    result: ReadableStreamReadResult<Uint8Array>,
  ): ReadableStreamReadResult<Uint8Array> => {
    this.#disarm();
    if (result.done && this.#timedOut !== undefined) throw this.#timedOut;
    return result;
  };

  #afterReadError = (error: unknown): never => {
    this.#disarm();
    throw this.#timedOut ?? error;
  };

  #arm(message: string): void {
    this.#waitingFor = message;
    // A timeout longer than a timer can hold means none (see _timer.ts).
    this.#timer = startTimeout(this.#onIdle, this.#idleTimeout);
  }

  #disarm(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #onIdle = (): void => {
    this.#timer = undefined;
    this.#timedOut = new DOMException(this.#waitingFor, "TimeoutError");
    this.close();
  };

  /** Cancels the body, aborts the fetch, releases every await. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#disarm();
    this.#stop();
    const reader = this.#reader;
    if (reader !== undefined) {
      this.#reader = undefined;
      // Cancelling settles a pending read at once, whatever the transport.
      reader.cancel().catch(ignore);
    } else if (this.#response !== undefined) {
      // Never read: released unread (a body a callback locked is ended by
      // the abort below).
      const body = this.#response.body;
      if (body !== null && !body.locked) body.cancel().catch(ignore);
    }
    this.#response = undefined;
    this.#controller.abort();
  }
}

// Releases whatever a fetch resolved to, unread: a response's body is
// cancelled; anything else is left alone.
function discard(value: unknown): void {
  try {
    const body = (value as { body?: unknown } | null | undefined)?.body as
      | { locked?: unknown; cancel?: unknown }
      | null
      | undefined;
    if (typeof body?.cancel === "function" && body.locked !== true) {
      (body as ReadableStream).cancel().catch(ignore);
    }
  } catch {
    // A getter that throws: nothing to release.
  }
}

/**
 * What an injected fetch resolved to when it is not a response: a wrapper
 * that forgot to `return`, a mock, a string. The same fetch will resolve to
 * the same, so it is final.
 */
export class InvalidResponse extends TypeError {
  override name = "TypeError";
}

// Fetch results are told apart by shape, never with `instanceof Response`
// (see _response.ts).
function asResponse(value: unknown): Response {
  if (isResponse(value)) return value;
  throw new InvalidResponse(
    `Invalid response: the fetch option resolved to ${
      describe(value)
    }, not a Response (status, headers and a body stream)`,
  );
}

/**
 * Why the body of a response to be read as a stream cannot be read, if it
 * cannot: a callback locked or read it first.
 *
 * @returns `undefined` when it can be read, else a sentence saying why not.
 */
export function unreadableBody(response: Response): string | undefined {
  const body = response.body;
  if (body !== null && (body.locked || response.bodyUsed === true)) {
    return "its body was locked or read before the client could read it";
  }
  return undefined;
}

/**
 * How a failed attempt ends, when it must end the iteration (SSEClient) or
 * fail the connection (EventSource): an error the same request will always
 * meet. `undefined` for a failure that may not happen again (a network
 * error, a timeout), which is retried.
 *
 * @param error What {@linkcode Connection.open} rejected with.
 * @returns The message of the final error, or `undefined`.
 */
export function finalFailure(error: unknown): string | undefined {
  if (error instanceof InvalidResponse) return error.message;
  if (isRefusal(error)) return `Request refused: ${describeFailure(error)}`;
  return undefined;
}
